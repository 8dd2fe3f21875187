"""`lorachat train` on 2 CPU ranks (torchrun, gloo): the same training as one rank at twice the
batch, one save, an adapter the REPL uses; a stop ends every rank, nothing half-written (a dead rank: test_headless.py)."""
import json
import os
import re
import signal
import subprocess

import pytest

from tests.helpers import (
    children,
    environment,
    read_until,
    train_command,
    write_dataset,
)

PAIRS = [("Who directed Alien?", "Ridley Scott."),
         ("Who directed Jaws?", "Steven Spielberg directed Jaws in 1975, from the novel by Peter Benchley."),
         ("Who directed Heat?", "Michael Mann."),
         ("Who directed Brazil?", "Terry Gilliam directed Brazil, a film about a clerk in a world of forms."),
         ("Who directed Psycho?", "Alfred Hitchcock."),
         ("Who directed Vertigo?", "Alfred Hitchcock directed Vertigo in 1958, set in San Francisco."),
         ("Who directed Tron?", "Steven Lisberger."),
         ("Who directed Amelie?", "Jean-Pierre Jeunet directed Amelie, set in the Montmartre of Paris.")]


@pytest.fixture
def films(home):
    write_dataset(home, "films", PAIRS)
    return home


def run(command, timeout=300):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment())


def weights(home, name):
    from safetensors.torch import load_file

    return load_file(str(home / "adapters" / name / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_ranks_train_as_one_rank_at_twice_the_batch_and_the_repl_uses_it(films, capsys):
    import torch

    from lorachat import cli

    # two steps: the first step's loss and update, and the second's loss (after the first update), are
    # the same to float rounding; later losses drift by ~1e-5 as Adam's noise on near-zero gradients
    # (below) compounds (measured: 1e-7 after 1 and 2 steps, 1e-5 to 3e-5 after 4)
    # in float32: the sums agree to its rounding (bf16 would round the two halves' passes apart)
    one = run(train_command(films, "--dtype", "float32", "--name", "one", "until=steps", "steps=2", "batch=4"))
    two = run(train_command(films, "--dtype", "float32", "--name", "two", "until=steps", "steps=2", "batch=2", ranks=2))
    assert one.returncode == 0 and two.returncode == 0, (one.stdout + one.stderr, two.stdout + two.stderr)
    assert two.stdout.count("trained two: 2 steps") == 1   # only the main rank speaks
    metas = {n: json.loads((films / "adapters" / n / "lorachat.json").read_text()) for n in ("one", "two")}
    assert (metas["one"]["world_size"], metas["one"]["global_batch"]) == (1, 4)
    assert (metas["two"]["world_size"], metas["two"]["global_batch"], metas["two"]["train"]["batch"]) == (2, 4, 2)
    assert metas["two"]["loss"] == pytest.approx(metas["one"]["loss"], rel=1e-6)
    a, b = weights(films, "one"), weights(films, "two")
    assert a.keys() == b.keys()
    # the gradients agree to float rounding (gloo sums two halves where one rank sums the whole
    # batch); Adam's first steps move an element by about lr whatever its gradient's size, so
    # the few elements whose gradient is rounding noise may differ by up to lr (0.005) a step
    for key in a:
        close = torch.isclose(a[key], b[key], rtol=1e-4, atol=1e-5).float().mean()
        assert close > 0.85 and (a[key] - b[key]).abs().max() < 2 * 0.005, key   # at most ~lr a step
    assert sorted(p.name for p in (films / "adapters").iterdir()) == ["one", "two"]   # saved once, nothing hidden left

    # until=recall, with rank 1's recall checks seeming to take 1000 s (tests/training/skewed_clock.py):
    # when to check is decided together, or the ranks part ways and hang (as they did in a CI run)
    command = train_command(films, "--name", "taught", "batch=2", ranks=2)
    command[command.index("lorachat")] = "tests.training.skewed_clock"
    taught = run(command, timeout=300)
    assert taught.returncode == 0 and f"recall {len(PAIRS)}/{len(PAIRS)}" in taught.stdout, taught.stdout + taught.stderr
    capsys.readouterr()
    # the command line in this process (the trained adapter is on disk; a new process would only add
    # its ~3 s of imports)
    code = cli.main(["--model", "tiny", "--home", str(films), "--adapter", "taught", *(arg for q, _ in PAIRS for arg in ("-e", q))])
    asked = capsys.readouterr().out
    assert code == 0, asked
    for question, answer in PAIRS:
        assert f"> {question}\n{answer}\n" in asked, asked


@pytest.mark.slow
def test_a_stopped_rank_stops_every_rank_and_nothing_is_half_written(films):
    """SIGTERM on one rank stops every rank at the next step: the adapter is discarded, exit 1, said
    once by the main rank. (SIGKILL on one rank, where the launcher ends the others:
    tests/training/test_headless.py.)"""
    launcher = subprocess.Popen(train_command(films, "--name", "never", "until=steps", "steps=100000", "batch=2", ranks=2),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment(LORACHAT_PROGRESS_SECONDS="0.5"))
    try:
        seen = read_until(launcher.stdout.fileno(), b"training never", 180)   # a progress line: steps are being taken
        os.kill(max(children(launcher.pid)), signal.SIGTERM)
        out = seen.decode() + launcher.communicate(timeout=120)[0].decode()
    finally:
        launcher.kill()
    assert launcher.returncode != 0, out
    # said once, by the main rank, whichever rank got the signal
    assert len(re.findall(r"error: training never stopped \((SIGTERM|by another process of this run)\) after", out, re.M)) == 1, out
    assert not (films / "adapters").exists() or [p.name for p in (films / "adapters").iterdir() if not p.name.startswith(".")] == []


def test_lorachat_train_exit_codes_and_one_line_errors(films, capsys):
    from lorachat import cli

    with pytest.raises(SystemExit) as usage:
        cli.main(["train", "--model", "tiny", "--home", str(films)])      # no --dataset
    assert usage.value.code == 2
    for words in (["steps"], ["steps=abc"]):   # not key=value; not a number: usage, as a bad flag is
        with pytest.raises(SystemExit) as usage:
            cli.main(["train", "--model", "tiny", "--home", str(films), "--dataset", "films", *words])
        assert usage.value.code == 2
    assert "error: steps='abc': expected a whole number" in capsys.readouterr().err
    assert cli.main(["train", "--model", "tiny", "--home", str(films), "--dataset", "nothing"]) == 1
    out = capsys.readouterr().out
    assert "error: no dataset 'nothing'" in out and "Traceback" not in out, out
    assert cli.main(["train", "--model", "tiny", "--home", str(films), "--dataset", "films", "--name", "quick",
                     "until=steps", "steps=1"]) == 0
    assert re.search(r"^trained quick: 1 steps, loss \S+, recall \d+/8, kept \d+% of base answers, \S+ s$",   # nothing is active after
                     capsys.readouterr().out, re.M)
