"""ddp_*: `lorachat train` as one rank with 2 threads against 2 ranks (torchrun, gloo) with 1 thread
each, on this machine's 2 cores, the same global batch: tokens/s on the generated 1,000-row
dataset (bench/suites/dataset.py) at until=steps, and seconds to recall the ten pairs (bench/kit/pairs.py).
On a GPU: `lorachat train` on one GPU against the REPL's in-process `:train` on the same data.
Each run is a fresh process, timed by what it records in lorachat.json (training and checks, not
start-up). Knows nothing about the other figures.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

STEPS = {"full": 30, "quick": 5, "smoke": 1}


def figures(device: str, home: Path, mode: str) -> dict:
    from bench.kit import pairs
    from bench.suites import dataset
    from lorachat.lessons import jsonl

    jsonl.append_examples(home, "rows", dataset.rows(200 if mode == "smoke" else dataset.ROWS))
    jsonl.append_examples(home, "pairs", pairs.examples())
    steps = STEPS.get(mode, STEPS["full"])
    out = {}
    if device == "cuda":
        return _gpu(home, steps)
    for label, ranks, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
        batch = 4 // ranks
        rows = _train(home, "rows", f"rows-{label}", ranks, threads, f"until=steps steps={steps} batch={batch}")
        out[f"ddp_{label}_tokens_per_s"] = round(rows["tokens"] / rows["seconds"], 1)
        if mode == "full":  # seconds to recall: full runs only (--quick stays under 3 minutes)
            pairs = _train(home, "pairs", f"pairs-{label}", ranks, threads, f"batch={batch}")
            out[f"ddp_{label}_recall_s"] = round(pairs["seconds"], 2) if pairs["recall"] == pairs["total"] else None
            out[f"ddp_{label}_recall_steps"] = pairs["steps"]
    out["ddp_token_speedup"] = round(out["ddp_2x1_tokens_per_s"] / out["ddp_1x2_tokens_per_s"], 3)
    return out


def _train(home: Path, dataset: str, name: str, ranks: int, threads: int, keys: str, device: str = "cpu") -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] \
        if ranks > 1 else [sys.executable]
    command = [*launcher, "-m", "lorachat", "train", "--model", "tiny", "--device", device, "--home", str(home),
               "--dataset", dataset, "--name", name, *keys.split()]
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(done.stdout + done.stderr)[-600:]}")
    return json.loads((home / "adapters" / name / "lorachat.json").read_text(encoding="utf-8"))


def _gpu(home: Path, steps: int) -> dict:
    """One GPU: `lorachat train` (a process of its own) against `:train` in a REPL session."""
    import time

    from bench.kit.workspace import command, session_for
    from lorachat.models.loader import load_model

    headless = _train(home, "rows", "rows-gpu", 1, os.cpu_count() or 1, f"until=steps steps={steps}", device="cuda")
    session = session_for(load_model("tiny", "cuda"), home)
    session.dataset = "rows"
    began = time.perf_counter()
    command(session, f":train rows-repl until=steps steps={steps}")
    repl_s = time.perf_counter() - began
    return dict(ddp_gpu_train_tokens_per_s=round(headless["tokens"] / headless["seconds"], 1),
                ddp_gpu_train_s=headless["seconds"], ddp_gpu_repl_s=round(repl_s, 2))
