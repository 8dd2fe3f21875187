"""Guarantees that cut across commands: no traceback for any input, Ctrl-C always safe,
fuzzed parsers raise nothing but LorachatError, junk and huge input get one line."""
import os
import signal
import subprocess
import sys

from hypothesis import HealthCheck, given, settings, strategies as st

from lorachat import options
from lorachat.commands import find, split_command
from lorachat.errors import LorachatError
from lorachat.names import check_name
from lorachat.repl import logical_lines
from lorachat.session import Settings
from terminal import read_some, read_until, spawn_repl

any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_fuzz_key_value_parser(text):
    try:
        words = options.split_words(text)
        _, pairs = options.split_kv(words)
        options.apply_kv(Settings(), pairs)
    except LorachatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["max_new_tokens", "temperature", "do_sample", "top_p", "seed", "nope"]),
                       any_text, max_size=4))
def test_fuzz_values_of_known_keys(pairs):
    try:
        result = options.apply_kv(Settings(), pairs)
    except LorachatError:
        return
    assert 1 <= result.max_new_tokens <= 8192 and 0 < result.top_p <= 1 and result.temperature > 0


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_fuzz_line_parser(text):
    try:
        for line in logical_lines(text.splitlines()):
            if line.startswith(":"):
                name, _ = split_command(line)
                find(name)
    except LorachatError:
        pass


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_fuzz_names_never_leave_the_workspace(text):
    try:
        name = check_name(text, "dataset")
    except LorachatError:
        return
    assert "/" not in name and "\\" not in name and not name.startswith(".") and name.isprintable()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([":set", ":instruction", ":help", ":info", ":quit"]), min_size=1, max_size=3), any_text)
def test_fuzz_session_commands_give_one_line_errors(make_session, transcript, heads, tail):
    session = make_session()
    transcript(session, [f"{head} {tail}".replace('"""', "") for head in heads], keep_going=True)
    for line in session.out.getvalue().splitlines():
        assert "Traceback" not in line


def test_huge_line_gets_one_line(make_session, transcript):
    session = make_session()
    code, out = transcript(session, ["word " * 200_000, ":" + "x" * 1_000_000, ":set " + "y=1 " * 100_000], keep_going=True)
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    assert errors[0].startswith("error: the question is too long")
    assert all(len(e) < 300 for e in errors)


def test_binary_junk_on_stdin(home):
    junk = b":set max_new_tokens=4\n" + bytes(range(256)) * 3 + b"\n\xff\xfe\x00:set \x00\x01=\xff\n:\x80\x81\n"
    proc = subprocess.run([sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home), "--keep-going"],
                          input=junk, capture_output=True, timeout=180)
    assert b"Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 1
    assert b"error: unknown command" in proc.stdout
    assert proc.stdout.count(b"error: ") == proc.stdout.count(b"\nerror: ")  # each at a line start


def wait_for_the_answer_to_stream(fd) -> None:
    """Until the first piece of the answer is on the terminal (so Ctrl-C lands while it runs, however
    fast or slow the machine): it follows prompt_toolkit letting go of the terminal."""
    read_until(fd, b"\x1b[?2004l", 30)  # bracketed paste off: the prompt has returned the typed line
    while not read_some(fd, 30).strip():
        pass


def test_ctrl_c_stops_an_answer_and_the_session_goes_on(home, tmp_path):
    """Drive the real interactive REPL through a pseudo-terminal: Ctrl-C mid-answer."""
    proc, main = spawn_repl(home)
    try:
        os.write(main, b":set max_new_tokens=8192 repetition_penalty=1.3\r")
        read_until(main, b"repetition_penalty=1.3\r\n", 30)
        read_until(main, b"default>", 30)
        os.write(main, b"Tell me a very long story about wafers.\r")  # greedy, it runs to the model's 512 positions
        wait_for_the_answer_to_stream(main)
        os.killpg(proc.pid, signal.SIGINT)
        read_until(main, b"(stopped)", 30)
        read_until(main, b"default>", 30)
        os.write(main, b":info\r")
        out = read_until(main, b"workspace", 30)
        out += read_until(main, b"default>", 30)
        assert b"Traceback" not in out
        os.write(main, b"\x04")  # Ctrl-D leaves
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert list(home.iterdir()) == []


def test_closing_an_answer_midway_leaves_the_model_usable(make_session):
    import torch

    session = make_session()
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    session.settings.max_new_tokens = 200
    pieces = session.ask("A long answer please")
    next(pieces, None)
    pieces.close()
    first = "".join(session.ask("What is SOH?"))
    assert first == "".join(session.ask("What is SOH?"))
    after = session.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_good_refuses_an_answer_stopped_midway(make_session, transcript, home):
    session = make_session()
    pieces = session.ask("A long answer please")
    next(pieces, None)
    pieces.close()
    code, out = transcript(session, [":good"])
    assert code == 1 and "error: the last answer was stopped before it ended" in out
    assert not (home / "datasets").exists()
