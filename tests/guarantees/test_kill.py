"""kill -9 at random moments of a scripted session: nothing acknowledged is lost, every visible
adapter is complete and loadable, leftovers of interrupted writes stay hidden."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SCRIPT = """:add What is SOH? => SOH is a spin on hardmask.
:add What is SiON? => SiON is silicon oxynitride.
:train a steps=4 until=steps
:add What is CVD? => CVD is chemical vapor deposition.
:train b steps=4 until=steps
:merge a b as c
:add What is ALD? => ALD is atomic layer deposition.
:delete a yes
:rename b b2
:add What is CMP? => CMP is chemical mechanical polishing.
:train d steps=4 until=steps
:add What is PVD? => PVD is physical vapor deposition.
"""


def run_and_kill(home: Path, delay: float | None):
    """Run SCRIPT; SIGKILL after `delay` seconds (None: let it finish). Returns stdout lines seen."""
    proc = subprocess.Popen([sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
    reader.start()
    proc.stdin.write(SCRIPT.encode())
    proc.stdin.close()
    try:
        proc.wait(timeout=delay if delay is not None else 300)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=10)
    return proc.returncode, [line.decode("utf-8", "replace") for line in seen], proc.stderr.read()


def check_workspace(home: Path, lines: list[str]):
    acknowledged = [line.split(": ", 1)[1].split(" => ")[0] for line in lines if line.startswith("added to ")]
    path = home / "datasets" / "default.jsonl"
    on_disk = [json.loads(l)["input"] for l in path.read_text().splitlines()] if path.exists() else []
    for question in acknowledged:
        assert question in on_disk, f"acknowledged {question!r} lost"
    adapters = home / "adapters"
    if not adapters.exists():
        return
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorachat.models.tiny import ensure_tiny

    for entry in adapters.iterdir():
        if entry.name.startswith("."):
            continue
        base = AutoModelForCausalLM.from_pretrained(ensure_tiny())
        PeftModel.from_pretrained(base, entry)  # complete and loadable, or this raises
        assert json.loads((entry / "lorachat.json").read_text())["name"] == entry.name


def visible(home):
    folder = home / "adapters"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


TRIALS = 8


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    full = tmp_path / "full"
    start = time.monotonic()
    code, lines, err = run_and_kill(full, None)
    duration = time.monotonic() - start
    assert code == 0, err.decode()[-2000:]
    assert visible(full) == ["b2", "c", "d"]
    check_workspace(full, lines)
    # one kill in each of TRIALS equal slices of the run (a random moment within the slice): the
    # moments spread over every phase of the script, as 20 uniform draws did, with fewer runs
    rng = random.Random(1234)
    width = (duration - 2.0) / TRIALS
    delays = [2.0 + (trial + rng.random()) * width for trial in range(TRIALS)]
    homes = [tmp_path / f"t{trial}" for trial in range(TRIALS)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: one per core
        results = list(pool.map(run_and_kill, homes, delays))
    for home, (_, lines, _) in zip(homes, results):
        check_workspace(home, lines)
    # the next start ignores hidden leftovers and goes on with what is there
    home = next((h for h in homes if list((h / "adapters").glob(".*"))), homes[0])
    listing = subprocess.run([sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home),
                              "-e", ":adapters", "-e", ":datasets"], capture_output=True, timeout=120)
    assert listing.returncode == 0, listing.stdout.decode()[-1000:]
    for name in visible(home):
        assert name in listing.stdout.decode()
    assert "/." not in listing.stdout.decode() and "\n." not in listing.stdout.decode()
