"""Where and how a run was made: machine, date, versions, command. Knows nothing about figures."""
import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers")


def describe(device: str) -> dict:
    import torch

    import lorachat

    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], "-m", "bench", *sys.argv[1:]]),
                cpu=_cpu_model(), nproc=len(os.sched_getaffinity(0)), cpu_count=os.cpu_count(),
                memory_gib=_memory_gib(), torch_threads=torch.get_num_threads(),
                python=platform.python_version(), lorachat=lorachat.__version__, git=_git_commit(), device=device)
    info.update({name: _version(name) for name in PACKAGES})
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / (1 << 20), 1)
    except (OSError, ValueError, IndexError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() or None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
