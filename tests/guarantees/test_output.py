"""What reaches the output: a closed stdout ends the session quietly, no library warning unasked."""
import json

import pytest

from tests.helpers import model_dir

QUESTION = "What is SOH?"


@pytest.mark.parametrize("ctrl_c", [True, False])
def test_a_closed_stdout_ends_the_session_quietly(home, ctrl_c):
    """`lorachat | tee log`, then Ctrl-C: the terminal's Ctrl-C ends tee too, mid-answer."""
    import os
    import signal
    import subprocess

    from tests.helpers import read_some, read_until, spawn_repl

    proc, main = spawn_repl(home, stdout=subprocess.PIPE)  # the prompt and tracebacks go to the terminal
    try:
        os.write(main, b":set max_new_tokens=8192 repetition_penalty=1.3\r")
        read_until(proc.stdout.fileno(), b"repetition_penalty=1.3\n", 30)
        os.write(main, b"Tell me a very long story about wafers.\r")  # runs to the model's 512 positions
        read_until(proc.stdout.fileno(), b"wafers.\n", 30)
        read_some(proc.stdout.fileno(), 30)  # the answer is streaming
        proc.stdout.close()  # tee is gone
        if ctrl_c:
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        terminal = b""
        try:
            while True:
                terminal += read_some(main, 1)
        except (AssertionError, OSError):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert code in (0, 141), terminal
    assert b"Traceback" not in terminal and b"Error" not in terminal and b"Exception" not in terminal, terminal


def test_gpt2_adapters_are_made_for_conv1d_without_a_warning(make_session, transcript, home, tmp_path, recwarn):
    session = make_session(model=str(model_dir(tmp_path, "gpt2")))
    keys = "steps=2 until=steps probes=0 anchors=0"
    code, out = transcript(session, [f":add {QUESTION} => A hardmask.", f":train a {keys}", f":train b {keys}",
                                     f":train head targets=lm_head {keys}", ":use a", QUESTION])
    assert code == 0, out
    for name in ("a", "b"):
        assert json.loads((home / "adapters" / name / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    assert json.loads((home / "adapters" / "head" / "adapter_config.json").read_text())["fan_in_fan_out"] is False
    assert [str(w.message) for w in recwarn if "peft" in w.filename] == []


def test_the_command_line_shows_no_library_warning_unless_asked(home, tmp_path):
    import subprocess
    import sys

    from tests.helpers import environment

    directory = model_dir(tmp_path, "gpt2")
    lines = [f":add {QUESTION} => A hardmask.", ":train a steps=1 until=steps probes=0 anchors=0 targets=lm_head", QUESTION]
    command = [sys.executable, "-m", "lorachat", "--model", str(directory), "--home", str(home), *(a for l in lines for a in ("-e", l))]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warn" not in (run.stdout + run.stderr).lower(), run.stderr


@pytest.mark.parametrize("redirect, says", [(">&-", "standard output is closed: lorachat has nowhere to write"),
                                            (">/dev/full", "cannot write to standard output (No space left on device)")])
def test_a_closed_or_full_stdout_is_one_line_on_stderr_and_a_failure(home, redirect, says):
    import shlex
    import subprocess
    import sys

    from tests.helpers import environment

    command = [sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home), "-e", ":add What is SOH? => A hardmask.",
               "-e", "hi"]
    run = subprocess.run(["bash", "-c", f"exec {shlex.join(command)} {redirect}"], capture_output=True, text=True,
                         timeout=300, env=environment())
    assert run.returncode == 1 and run.stderr.startswith(f"error: {says}") and run.stderr.count("\n") == 1, run.stderr
    assert not (home / "datasets").exists()   # nothing ran that could have been acknowledged and lost


@pytest.mark.parametrize("command", ["train", "serve"])
@pytest.mark.parametrize("redirect, says", [(">&-", "standard output is closed: lorachat has nowhere to write"),
                                            (">/dev/full", "cannot write to standard output (No space left on device)")])
def test_the_subcommands_end_on_a_closed_or_full_stdout_with_one_line_too(home, command, redirect, says):
    """`lorachat train` and `lorachat serve --dry-run` write their own output (a traceback, or for serve
    under >&- nothing and status 0, before)."""
    import shlex
    import subprocess
    import sys

    from tests.helpers import environment

    (home / "datasets").mkdir()
    (home / "datasets" / "d.jsonl").write_text('{"instruction": "What is SOH?", "output": "A hardmask."}\n')
    given = {"train": ["--dataset", "d", "steps=2", "until=steps"], "serve": ["--dry-run"]}[command]
    argv = [sys.executable, "-m", "lorachat", command, "--model", "tiny", "--home", str(home), *given]
    run = subprocess.run(["bash", "-c", f"exec {shlex.join(argv)} {redirect}"], capture_output=True, text=True,
                         timeout=300, env=environment())
    assert run.returncode == 1 and run.stderr.startswith(f"error: {says}") and run.stderr.count("\n") == 1, run.stderr
    assert "Traceback" not in run.stderr
