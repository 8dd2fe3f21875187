"""`lorachat train` as a command: usage errors before the model loads (exit 2), workspace errors
(exit 1), SIGTERM, and under torchrun one line per rank (a usage error once, a peer that died)."""
import re

import pytest


@pytest.mark.slow
def test_a_killed_rank_leaves_one_line_on_the_other_and_no_traceback_of_lorachat(home):
    import os
    import signal
    import subprocess

    from tests.helpers import (
        children,
        environment,
        read_until,
        train_command,
        write_dataset,
    )

    write_dataset(home, "films", [("Who directed Alien?", "Ridley Scott."), ("Who directed Heat?", "Michael Mann.")])
    launcher = subprocess.Popen(train_command(home, "--name", "never", "until=steps", "steps=100000", "batch=1", ranks=2),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment(LORACHAT_PROGRESS_SECONDS="0.5"))
    try:
        seen = read_until(launcher.stdout.fileno(), b"training never", 180)
        os.kill(max(children(launcher.pid)), signal.SIGKILL)
        out = seen.decode() + launcher.communicate(timeout=120)[0].decode()
    finally:
        launcher.kill()
    assert launcher.returncode == 1, out
    assert "[rank" not in out and "lorachat/" not in out, out   # torchrun's own report of the dead child stays
    assert len(re.findall(r"error: a peer died: another process of this run is gone, so rank [01] stops too$", out, re.M)) == 1, out
    assert not (home / "adapters").exists() or not [p for p in (home / "adapters").iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("words, message", [
    (["r=abc"], "r='abc': expected a whole number"),
    (["r"], "expected key=value, not 'r'"),
    (["rank=8"], "unknown key 'rank'"),
    (["a-b=1"], "expected key=value, not 'a-b=1'"),
    (["targets=q proj"], "targets='q proj': give a comma list"),
    (["--name", "../evil"], "invalid adapter name"),
    (["--name", "v1.2"], "cannot contain '.'"),
    (["--dataset", "../x"], "invalid dataset name"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_lorachat_train_usage_errors_exit_2_before_the_model_loads(home, capsys, words, message):
    from lorachat import cli

    dataset = [] if "--dataset" in words else ["--dataset", "films"]
    with pytest.raises(SystemExit) as usage:  # a model that cannot load: it is never tried
        cli.main(["train", "--model", str(home / "no-model"), "--home", str(home), *dataset, *words])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_lorachat_train_workspace_errors_exit_1_naming_what_is_missing(home, capsys):
    from lorachat import cli
    from tests.helpers import write_dataset

    def run(*words):
        code = cli.main(["train", "--model", str(home / "no-model"), *words])
        return code, capsys.readouterr().out

    assert run("--home", str(home / "nowhere"), "--dataset", "films") == (
        1, f"error: no such folder: {home / 'nowhere'} (the workspace holding datasets/ and adapters/)\n")
    code, out = run("--home", str(home), "--dataset", "films")
    assert code == 1 and out == (f"error: no dataset 'films': {home / 'datasets' / 'films.jsonl'} does not exist (write one "
                                 "JSON object per line there, or :import a file into it in the REPL)\n")
    write_dataset(home, "films", [("Who directed Alien?", "Ridley Scott.")])
    (home / "adapters" / "taken").mkdir(parents=True)
    code, out = run("--home", str(home), "--dataset", "films", "--name", "taken")
    assert code == 1 and out == f"error: an adapter named 'taken' already exists: {home / 'adapters' / 'taken'}\n"
    (home / "adapters" / "afile").write_text("")
    (home / "adapters" / "dead").symlink_to(home / "nowhere")
    for name in ("afile", "dead"):
        code, out = run("--home", str(home), "--dataset", "films", "--name", name)
        assert code == 1 and out == f"error: {home / 'adapters' / name} is not an adapter: choose another --name, or move it away\n"
    code, out = run("--home", str(home), "--dataset", "films")   # now only the model is missing
    assert code == 1 and "no-model" in out


@pytest.mark.parametrize("setting, every", [("0.5", 0.5), ("soon", None), ("0", None), ("inf", None), ("", 5.0)])
def test_progress_seconds_come_from_the_environment_and_a_bad_value_is_one_line(home, capsys, monkeypatch, setting, every):
    """LORACHAT_PROGRESS_SECONDS: how often a plain progress line is printed (a log of `lorachat train`);
    a value that is not seconds from 0.1 up is said once, at the first progress, and 5 s stays."""
    from lorachat import cli
    from tests.helpers import write_dataset

    monkeypatch.setenv("LORACHAT_PROGRESS_SECONDS", setting)
    write_dataset(home, "films", [("Who directed Alien?", "Ridley Scott.")])
    assert cli.main(["train", "--model", "tiny", "--home", str(home), "--dataset", "films", "until=steps", "steps=1", "probes=0"]) == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "LORACHAT_PROGRESS_SECONDS" in line]
    if every is None:
        assert said == [f"warning: LORACHAT_PROGRESS_SECONDS={setting!r} is not a number of seconds from 0.1 up: "
                        "a progress line every 5 s"], out
    else:
        assert said == [], out
        from lorachat.chat.ui import PlainUI
        assert PlainUI().progress_every == every


def test_lorachat_train_stopped_by_sigterm_says_so(home):
    import os
    import signal
    import subprocess

    from tests.helpers import environment, read_until, train_command, write_dataset

    write_dataset(home, "films", [("Who directed Alien?", "Ridley Scott.")])
    proc = subprocess.Popen(train_command(home, "--name", "never", "until=steps", "steps=100000", "probes=0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment(LORACHAT_PROGRESS_SECONDS="0.5"))
    try:
        seen = read_until(proc.stdout.fileno(), b"training never", 120)
        os.kill(proc.pid, signal.SIGTERM)
        out = seen.decode() + proc.communicate(timeout=60)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert re.search(r"error: training never stopped \(SIGTERM\) after \d+ steps: discarded$", out, re.M), out


def test_under_torchrun_a_usage_error_is_said_once(home):
    import subprocess

    from tests.helpers import environment, train_command

    run = subprocess.run(train_command(home, "r=abc", ranks=2), capture_output=True, text=True, timeout=300, env=environment())
    assert run.returncode != 0
    assert (run.stdout + run.stderr).count("r='abc': expected a whole number") == 1, run.stdout + run.stderr
