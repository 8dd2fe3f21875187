"""opt27_*: the model lorachat loads by default, facebook/opt-2.7b, as a user without a GPU meets it.

Its shape with random weights (bench/kit/shapes.py "opt-2.7b", the hub's config.json, nothing
downloaded), saved once as safetensors in bfloat16 into $LORACHAT_CACHE/bench-opt27/ with the tiny
model's tokenizer, and loaded from there as `--model DIR` under `--dtype auto` (and `--dtype float32`
beside it, one process at a time: never two copies in memory):
- opt27_start_seconds: a fresh `python -m lorachat --model DIR` process to its first prompt;
- opt27_weights_gb: the base's parameters times their element size, as loaded;
- opt27_peak_rss_gb: the peak resident memory (VmHWM) of a process that loads the model, answers,
  runs `:train r=4` on the seed's two facts and switches adapters (all of the below);
- opt27_decode_tok_s / opt27_generate_tok_s / opt27_decode_ratio: greedy tokens per second through
  lorachat's streaming answer against plain transformers `generate`, alternating, the best of each;
- opt27_train_two_facts_seconds: `:train r=4` on the two facts, Enter to the next prompt (steps capped:
  random weights learn slowly), with its steps, seconds a step and recall;
- opt27_adapter_decode_tok_s / opt27_base_decode_tok_s: tokens per second as the session answers with
  the trained adapter and as the base (opt27_adapter_merged: whether the adapter was merged for it);
- opt27_use_switch_ms / opt27_adapter_load_ms: `:use` between the base and the trained adapter, and the
  first `:use` of a saved copy (a load from disk).
The measuring process is `python -m bench.suites.opt27 DIR JSON_ARGS` (this module run as a script), so
its peak memory is the session's own. Knows nothing about other models or the seed's recipe.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHAPE = "opt-2.7b"
FOLDER = "bench-opt27"
GB = 1e9
ROOT = Path(__file__).resolve().parents[2]
# :train r=4's steps on the two facts at most: random weights have no language to attach a fact to, so
# they take many more steps than a real checkpoint (smol: 6); the time a step takes is the figure
CAP = 12
FIGURES = ("opt27_start_seconds", "opt27_weights_gb", "opt27_peak_rss_gb", "opt27_decode_ratio",
           "opt27_train_two_facts_seconds")


def figures(device: str, mode, home: Path, log=lambda text: None) -> tuple[dict, dict]:
    """mode (bench.__main__.Mode): smoke runs bench/kit/shapes.py's tiny shape in this process (no
    start, no measuring process); full runs also measure --dtype float32 (start, decode, the first
    `:train`'s one step, memory) after the default, one process at a time."""
    if device != "cpu":
        return {}, dict.fromkeys(FIGURES, "a CPU figure (on a GPU the train suite runs OPT-2.7B's shape)")
    if mode.name == "smoke":
        folder = checkpoint("tiny", "bench-opt27-smoke", log)
        plan = dict(dtype="auto", tokens=2, rounds=1, steps=1, switches=2, home=str(home / "auto"))
        out = {f"opt27_{key}": value for key, value in session_figures(str(folder), plan).items()}
        return dict(out, opt27_shape="tiny", opt27_train_two_facts_seconds=out["opt27_train_seconds"]), \
            {"opt27_start_seconds": "not in smoke runs (a process of its own)"}
    folder = checkpoint(log=log)
    plan = dict(tokens=24, rounds=3, steps=CAP, switches=10)
    out = dict(opt27_shape=SHAPE, opt27_threads=_threads())
    for dtype in ("auto", "float32") if mode.name == "full" else ("auto",):
        out.update(_measured(folder, home, dtype, plan, log))
    out["opt27_train_two_facts_seconds"] = out.get("opt27_train_seconds")
    out["opt27_peak_rss_target_gb"] = round(1.2 * out["opt27_weights_gb"] + 1.5, 2)
    return out, {}


def _measured(folder: Path, home: Path, dtype: str, plan: dict, log) -> dict:
    """A fresh `lorachat` to its first prompt, then the measuring process, under `--dtype dtype`
    (float32: half the tokens, and the first `:train`'s one step only)."""
    from bench.suites.startup import first_prompt

    suffix = "" if dtype == "auto" else "_float32"
    seconds, info = first_prompt(["--model", str(folder), "--device", "cpu", "--dtype", dtype, "--home",
                                  str(home / f"start-{dtype}")], [":info", ":quit"], HF_HUB_OFFLINE="1")
    if dtype != "auto":
        plan = dict(plan, steps=0, tokens=max(2, plan["tokens"] // 2))
    child = _child(folder, dict(plan, dtype=dtype, home=str(home / dtype)))
    log(f"opt27 {dtype}: start {seconds:.1f} s, {json.dumps(child)}")
    return {f"opt27_start_seconds{suffix}": round(seconds, 2), f"opt27_info_dtype{suffix}": _dtype_line(info),
            **{f"opt27_{key}{suffix}": value for key, value in child.items()}}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _dtype_line(info: str) -> str | None:
    found = [line.split(None, 1)[1] for line in info.splitlines() if line.startswith("dtype")]
    return found[0].strip() if found else None


def _child(folder: Path, plan: dict) -> dict:
    """session_figures in a process of its own (its peak memory is the session's alone)."""
    done = subprocess.run([sys.executable, "-m", "bench.suites.opt27", str(folder), json.dumps(plan)], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        raise RuntimeError(f"the opt27 measuring process failed (exit {done.returncode}): {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkpoint(shape: str = SHAPE, folder: str = FOLDER, log=lambda text: None) -> Path:
    """The random-weight checkpoint of `shape` in the cache: built in bfloat16 and saved once (about a
    minute and 5.3 GB for OPT-2.7B), then reused."""
    import torch

    from bench.kit import shapes
    from lorachat.core.cache import cache_dir
    from lorachat.core.durable import write_atomically

    target = cache_dir() / folder
    if (target / "config.json").exists():
        return target

    def fill(work: Path) -> Path:
        from transformers import OPTForCausalLM

        log(f"opt27: building {shape}'s random weights in bfloat16 into {target} (once)")
        config = shapes.config(shape)
        previous, state = torch.get_default_dtype(), torch.random.get_rng_state()
        torch.set_default_dtype(torch.bfloat16)   # built as saved: no float32 copy on the way (10.6 GB)
        torch.manual_seed(shapes.SEED)
        try:
            model = OPTForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
            torch.random.set_rng_state(state)
        model.generation_config.max_length = None
        model.save_pretrained(work)
        shapes.tokenizer().save_pretrained(work)
        return work

    return write_atomically(target, fill, f"the {shape} benchmark checkpoint", raced=True)


# --- the measuring process ---------------------------------------------------------------------

def session_figures(folder: str, plan: dict) -> dict:
    """In this process: load `folder` under --dtype plan["dtype"], race decoding, `:train r=4` the two
    facts (after a 1-step `:train` that makes what is made once per checkpoint), switch and load adapters.
    plan: dtype, tokens, rounds, steps (the cap of `:train r=4`), switches, home."""
    import torch

    from bench.kit import pairs, teaching
    from bench.kit.workspace import command, session_for
    from bench.suites.smol import race
    from lorachat.models.loader import load_model

    began = time.perf_counter()
    loaded = load_model(folder, device="cpu", dtype=plan["dtype"])
    out = dict(load_seconds=round(time.perf_counter() - began, 2), dtype=str(loaded.dtype).replace("torch.", ""),
               weights_gb=round(sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / GB, 3),
               threads=torch.get_num_threads(), rss_loaded_gb=_memory()["VmRSS"])
    ours, theirs = race(loaded.model, loaded.tokenizer, plan["tokens"], plan["rounds"])
    out.update(decode_tok_s=round(ours, 3), generate_tok_s=round(theirs, 3), decode_ratio=round(ours / theirs, 4),
               decode_tokens=plan["tokens"], rss_answered_gb=_memory()["VmRSS"])
    session = session_for(loaded, Path(plan["home"]))
    first = teaching.timed(session, "first", pairs.examples()[-1:], 1, "until=steps")
    out.update(first_train_seconds=first["seconds"])
    if plan["steps"]:
        two = teaching.timed(session, "two", pairs.examples()[:2], plan["steps"], "r=4")
        loop = json.loads((Path(plan["home"]) / "adapters" / "two" / "lorachat.json").read_text(encoding="utf-8"))
        out.update(train_seconds=two["seconds"], train_steps=two["steps"], train_recall=two["recall"],
                   train_step_seconds=round(loop["seconds"] / max(two["steps"], 1), 3), rss_trained_gb=_memory()["VmRSS"])
        out.update(_adapter_decode(session, command, plan["tokens"], plan["rounds"]))
        out.update(_switching(session, command, plan["switches"]))
    return out | dict(peak_rss_gb=_memory()["VmHWM"])


def _adapter_decode(session, command, tokens: int, rounds: int) -> dict:
    """Greedy tokens per second as the session answers with the trained adapter and as the base
    (alternating, the best of each), and whether the adapter was merged for it (switching.py)."""
    from bench.kit import pairs
    from lorachat.adapters import live
    from lorachat.chat.streaming import answer
    from lorachat.core.prompts import prompt_ids

    ids = prompt_ids(session.tokenizer, pairs.INSTRUCTION, "Tell me about the history of Paris.")
    best, merged = {"two": float("inf"), "base": float("inf")}, None
    for round_ in range(rounds):
        for name in ("two", "base") if round_ % 2 == 0 else ("base", "two"):
            command(session, f":use {name}")
            began = time.perf_counter()
            answer(session.model, session.tokenizer, ids, None, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            best[name] = min(best[name], time.perf_counter() - began)
            merged = live.switch(session).merged if name == "two" else merged
    return dict(adapter_decode_tok_s=round(tokens / best["two"], 3), base_decode_tok_s=round(tokens / best["base"], 3),
                adapter_merged=merged)


def _switching(session, command, switches: int) -> dict:
    """`:use` between the base and the trained adapter (ms, median), and the first `:use` of copies of it
    saved under other names (a load from disk, ms, median)."""
    import shutil
    import statistics

    from lorachat.adapters import paths

    def ms(name):
        began = time.perf_counter()
        command(session, f":use {name}")
        return (time.perf_counter() - began) * 1000

    switched = [ms(name) for _ in range(switches) for name in ("base", "two")]
    copies = [f"two-copy{i}" for i in range(3)]
    for name in copies:
        shutil.copytree(paths.adapter_path(session, "two"), paths.adapter_path(session, name))
    loads = [ms(name) for name in copies]
    return dict(use_switch_ms=round(statistics.median(switched), 2), adapter_load_ms=round(statistics.median(loads), 2))


def _memory() -> dict:
    """VmRSS and VmHWM (the peak) of this process, in GB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return {line.split(":")[0]: round(int(line.split()[1]) * 1024 / GB, 3) for line in f
                if line.startswith(("VmRSS", "VmHWM"))}


if __name__ == "__main__":   # the measuring process: python -m bench.suites.opt27 DIR JSON_PLAN
    print(json.dumps(session_figures(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
