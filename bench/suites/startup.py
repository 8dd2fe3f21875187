"""startup_s: a fresh `python -m lorachat --model tiny` process, from its start to its first prompt.

In script mode lorachat echoes each input line as `> LINE` just before running it: the first echo
is the moment the prompt would appear. The tiny model is built beforehand (not part of the figure).
Knows nothing about the other figures.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def figures(device: str, home, repeats: int) -> dict:
    from lorachat.models.tiny import ensure_tiny

    ensure_tiny()
    times = [_once(device, home) for _ in range(repeats)]
    return dict(startup_s=round(statistics.median(times), 3), startup_runs=len(times))


def _once(device: str, home) -> float:
    return first_prompt(["--model", "tiny", "--device", device, "--home", str(home)], [":quit"])[0]


def first_prompt(args: list[str], lines: list[str], **env) -> tuple[float, str]:
    """A fresh `python -m lorachat ARGS` fed `lines`: seconds to the echo of the first line (the moment
    the prompt would appear), and what it printed after it."""
    argv = [sys.executable, "-m", "lorachat", *args]
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                text=True, env=dict(os.environ, PYTHONUNBUFFERED="1", **env))
        proc.stdin.write("".join(f"{line}\n" for line in lines))
        proc.stdin.close()
        first = proc.stdout.readline()
        seconds = time.perf_counter() - start
        rest = proc.stdout.read()
        proc.wait(timeout=300)
        errors.seek(0)
        if not first.startswith(f"> {lines[0]}") or proc.returncode != 0:
            raise RuntimeError(f"lorachat did not start (exit {proc.returncode}): {(first + rest + errors.read())[-500:]}")
    return seconds, rest
