"""On a terminal and in scripts: Ctrl-C, pipes, byte-order marks, bugs that show their traceback, narrow screens."""
import os
import re
import signal
import subprocess

import pytest

from lorachat.chat import commands
from lorachat.chat.commands import COMMANDS
from tests.helpers import read_some, read_until, spawn_repl


def wait_for_the_answer_to_stream(fd) -> None:
    """Until the first piece of the answer is on the terminal (so Ctrl-C lands while it runs, however
    fast or slow the machine): it follows prompt_toolkit letting go of the terminal. Its escape
    sequences (cursor shown, colours) are not the answer: they follow the 2004l, and a SIGINT sent on
    them reached prompt_toolkit's own handler before the answer started, which then ran to its end."""
    read_until(fd, b"\x1b[?2004l", 30)  # bracketed paste off: the prompt has returned the typed line
    seen = b""
    while not re.sub(rb"\x1b(\[[0-9;?]*[A-Za-z]?)?", b"", seen).strip():  # a sequence may be cut between reads
        seen += read_some(fd, 30)


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
    class Enough(Exception):
        pass

    def stop(piece):   # as the caller stopping it midway (Ctrl-C raises in its place)
        raise Enough()

    with pytest.raises(Enough):
        session.ask("A long answer please", stop)
    assert session.last_answer_complete is False and session.turns == []
    first = session.ask("What is SOH?")
    assert first == session.ask("What is SOH?")
    after = session.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_good_refuses_an_answer_stopped_midway(make_session, transcript, home):
    session = make_session()

    def stop(piece):   # the caller stops it after its first piece, as Ctrl-C does
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.ask("A long answer please", stop)
    code, out = transcript(session, [":good"])
    assert code == 1 and "error: the last answer was stopped before it ended" in out
    assert not (home / "datasets").exists()


@pytest.fixture
def buggy_command():
    def boom(session, args):
        raise ValueError("a bug")
    commands.command("boom")(boom)
    yield
    del COMMANDS["boom"]


def test_a_bug_on_a_terminal_shows_its_traceback_and_the_session_goes_on(make_session, buggy_command, capsys):
    from lorachat.chat.repl import Repl

    session = make_session()
    session.settings.max_new_tokens = 7
    repl = Repl(session)
    repl.respond(":boom")
    repl.respond(":set")
    assert "ValueError: a bug" in capsys.readouterr().err
    out = session.out.getvalue()
    assert "error: that was a bug in lorachat (traceback above); the session goes on" in out
    assert re.search(r"^max_new_tokens +7 ", out, re.M)


def test_a_script_file_with_a_byte_order_mark_and_crlf_runs_its_commands(home, tmp_path, capsys):
    from lorachat import cli
    from lorachat.lessons import jsonl

    script = tmp_path / "windows.txt"
    script.write_bytes("\ufeff:add What is SOH? => A hardmask.\r\n:examples\r\n\"\"\"\r\n:add x\r\n\"\"\"\r\n".encode("utf-8"))
    assert cli.main(["--model", "tiny", "--home", str(home), "--script", str(script), "--keep-going"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("> :add What is SOH? => A hardmask.\nadded to default (1 example)")
    assert "\r" not in out and "\ufeff" not in out and "error: write :add QUESTION => ANSWER" in out
    assert [e.output for e in jsonl.load_dataset(home, "default").examples] == ["A hardmask."]


def test_lines_from_anywhere_lose_a_leading_byte_order_mark(make_session, transcript):
    session = make_session()
    code, out = transcript(session, ["\ufeff:set seed=3\r\n", ":instruction\r\n"])
    assert code == 0 and out == "> :set seed=3\nset seed=3\n> :instruction\ninstruction: Answer the question.\n"


def test_piped_output_and_an_unwritable_history_keep_an_interactive_session_plain(home, tmp_path, tiny_cache):
    """`lorachat --model tiny | tee log` with a history file that cannot be written: the mode follows
    stdin (a terminal), the output stays plain, and history falls back to memory with one note."""
    import os

    from tests.helpers import read_until, spawn_repl

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-v1").symlink_to(tiny_cache / "tiny-v1")
    (cache / "history").mkdir()  # unwritable as a file, even for root
    proc, main = spawn_repl(home, stdout=subprocess.PIPE, LORACHAT_CACHE=str(cache))  # prompt drawn on stderr
    try:
        terminal = b""
        for line in (b":nosuch\r", b":set seed=4\r"):
            os.write(main, line)
            terminal += read_until(main, b"default>", 30)  # a failing line does not end the session
        os.write(main, b"\x04")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert proc.returncode == 0
    assert b"Traceback" not in terminal and b"Press ENTER" not in terminal
    assert b"\x1b" not in out
    assert out.count(b"input history is kept in memory only for this session: cannot write") == 1
    assert b"> :nosuch\nerror: unknown command ':nosuch'" in out and b"> :set seed=4\nset seed=4\n" in out


LONG = [":set max_new_tokens=8192 repetition_penalty=1.3", "Tell me a very long story about wafers."]  # runs to the model's 512 positions


def test_ctrl_c_during_an_answer_in_a_script_fails_that_line_and_the_script_goes_on(make_session, transcript):
    import os
    import signal
    import threading
    import time

    session = make_session()
    marker = f"> {LONG[1]}\n"

    def interrupt_once_streaming():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = session.out.getvalue()
            if marker in out and out.split(marker, 1)[1].strip():  # the answer is visibly under way
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=interrupt_once_streaming)
    watcher.start()
    try:
        code, out = transcript(session, [*LONG, ":set seed=5"], keep_going=True)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the script")
    finally:
        watcher.join()
    assert code == 1
    answer, rest = out.split(marker, 1)[1].split("\n", 1)
    assert answer and rest == "error: the answer stopped by Ctrl-C\n> :set seed=5\nset seed=5\n"
    assert session.last_answer_complete is False


def test_adapters_at_80_columns_shows_whole_names_and_short_targets(make_session, transcript):
    import io

    from peft import LoraConfig
    from rich.console import Console

    from lorachat.adapters import disk, live
    from lorachat.chat.ui import RichUI

    session = make_session()
    long_name = "an_adapter_with_a_rather_long_name_x"
    made = {"m_cat": ["q_proj", "v_proj"], "m_cat_w": "all-linear", long_name: ["q_proj"]}
    for name, targets in made.items():
        live.add_new(session, name, LoraConfig(r=4, target_modules=targets))
        disk.save(session, name, {"train": {"targets": targets if isinstance(targets, str) else ",".join(targets)}})
    plain = transcript(session, [":adapters"])[1]
    assert "all-linear" in plain and "q_proj,v_proj" in plain and "model.decoder" not in plain
    console = Console(file=io.StringIO(), width=80)
    session.ui = RichUI(console)
    transcript(session, [":adapters"])
    out = console.file.getvalue()
    names = [line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│")]
    assert names == sorted(made) and all(len(line) <= 80 for line in out.splitlines())
    assert "(not shown at this width: alpha, base model, dataset, created, loss, size)" in out
