"""A lorachat Session around a model built in this process, in a temporary workspace, and the
`:command` path into it. Knows nothing about timing; never imports lorachat.repl or prompt_toolkit.
"""
import io

from lorachat.chat.session import Session
from lorachat.chat.ui import PlainUI
from lorachat.models.loader import LoadedModel


class Missing(Exception):
    """A lorachat API or command the figure needs is not there (yet): the figure is reported as null."""


def make_session(model, tokenizer, name: str, device: str, home) -> Session:
    dtype = next(model.parameters()).dtype
    return session_for(LoadedModel(model, tokenizer, name, "(built in memory, random weights)", device, dtype), home)


def session_for(loaded, home) -> Session:
    """A session printing into a buffer that `command` reads back."""
    return Session(loaded, home, PlainUI(io.StringIO(), progress_every=3600))


def command(session, line: str) -> str:
    """Run one `:command` as the REPL would; what it printed. A user error is a bug here: re-raised."""
    from lorachat.chat.commands import COMMANDS, run_command

    name = line[1:].split()[0]
    if name not in COMMANDS:
        raise Missing(f":{name} is not implemented")
    out = session.ui.out
    start = out.tell()
    run_command(session, line)
    out.seek(start)
    text = out.read()
    out.seek(0, io.SEEK_END)
    return text


def trained_session(base, tokenizer, examples, name: str, device: str, home, steps: int = 1) -> Session:
    """A session over `base` whose adapter `name` was made by `:train` (saved, active): what the
    decode and switch figures work on. Its values do not matter there, only that it is a real one."""
    from lorachat.lessons import jsonl

    session = make_session(base, tokenizer, "bench-base", device, home)
    jsonl.append_examples(session.home, name, examples)
    session.dataset = name
    command(session, f":train {name} steps={steps} until=steps probes=0")  # probes: the kept share is locality's
    return session


def taught_session(folder, count: int, keys: str = ""):
    """A fresh session over the model folder `folder` (fp32, CPU) that has taught the first `count`
    pairs of bench/kit/pairs.py with `:train taught KEYS`; (session, :train's final line)."""
    import tempfile

    from bench.kit import pairs
    from lorachat.lessons import jsonl
    from lorachat.models.loader import load_model

    session = session_for(load_model(str(folder), device="cpu", dtype="float32"), tempfile.mkdtemp())
    jsonl.append_examples(session.home, "taught", pairs.examples()[:count])
    session.dataset = "taught"
    return session, command(session, f":train taught {keys}").strip().splitlines()[0]
