"""bf16_*: `--dtype auto` on this CPU (models/precision.py) against `--dtype float32`, on SmolLM2-135M
(`--model smol`; the tiny model in smoke runs), both loaded in one process and measured in turn.

- bf16_native / bf16_flags / bf16_auto_dtype: what lorachat detected (torch's oneDNN check, the cpuinfo
  flags) and the dtype `auto` chose;
- bf16_step_speedup: seconds per optimizer step of lorachat's training loop (trainer.run, `:train`'s
  defaults, the ten pairs, until=steps) in float32 over the same under `auto`; bf16_autocast_step_speedup
  beside it: float32 weights under accelerate's bf16 autocast (the other way to train in bf16, measured
  and not chosen). The runs alternate, `rounds` each; the median step of each side counts;
- smol_two_facts_seconds / smol_two_facts_seconds_float32 / smol_two_facts_ratio: `:train r=4` on the
  seed's two facts in a fresh session, Enter to the next prompt, warm cache (a throwaway `:train` per
  dtype first), alternating, the median of `rounds` each; the ratio is auto over float32;
- smol_two_facts_asked / _float32: the two questions asked afterwards (greedy, as the REPL answers):
  how many answers come back verbatim; smol_two_facts_kept / _float32: `:train`'s kept share;
- smol_ten_facts_*: `:train` with its defaults on the ten pairs, once per dtype (full runs only): seconds
  (Enter to the next prompt), steps, recall as `:train` checks it, the ten asked, kept share.
Knows nothing about the seed's recipe or other models.
"""
import copy
import dataclasses
import os
import re
import statistics
import time

from bench.kit import pairs, teaching
from bench.kit.workspace import command, session_for

KEPT = re.compile(r"kept (\d+)% of base answers")


FIGURES = ("bf16_native", "bf16_step_speedup", "smol_two_facts_seconds", "smol_two_facts_ratio")


def figures(device: str, mode, home, log=lambda text: None) -> tuple[dict, dict]:
    """mode (bench.__main__.Mode): smoke runs tiny, one step, one round; quick one round; full three."""
    from lorachat.models import precision
    from lorachat.models.loader import load_model

    if device != "cpu":
        return {}, dict.fromkeys(FIGURES, "a CPU figure")
    smoke = mode.name == "smoke"
    model = "tiny" if smoke else str(_smol())
    rounds, steps = (1, 2) if smoke else (1, 8) if mode.name == "quick" else (3, 8)
    native = precision.cpu_bf16()
    bases = {dtype: load_model(model, device="cpu", dtype=dtype) for dtype in ("float32", "auto")}
    out = dict(bf16_native=native.bf16, bf16_flags=list(native.flags), bf16_model=model if smoke else "smol",
               bf16_auto_dtype=str(bases["auto"].dtype).replace("torch.", ""), bf16_rounds=rounds)
    out.update(step_times(bases, steps, rounds, log))
    out.update(two_facts(bases, home, rounds, 1 if smoke else None, log))
    if mode.name == "full":
        out.update(ten_facts(bases, home, log))
    return out, {}


def _smol():
    from bench.suites.smol import smol_folder

    return smol_folder()


def step_times(bases: dict, steps: int, rounds: int, log) -> dict:
    """Median seconds per optimizer step of trainer.run (`:train` defaults, the ten pairs, until=steps)
    per side: float32, auto, and float32 weights under bf16 autocast (accelerate's mixed precision)."""
    sides = {"float32": (bases["float32"], None), "auto": (bases["auto"], None), "autocast": (bases["float32"], "bf16")}
    times = {name: [] for name in sides}
    for round_ in range(rounds):
        for name in (list(sides) if round_ % 2 == 0 else list(sides)[::-1]):
            times[name] += _steps(*sides[name], steps)
    median = {name: statistics.median(values) for name, values in times.items()}
    log(f"bf16: seconds a step {', '.join(f'{k} {v:.3f}' for k, v in median.items())}")
    return dict(bf16_step_seconds={k: round(v, 4) for k, v in median.items()},
                bf16_step_speedup=round(median["float32"] / median["auto"], 3),
                bf16_autocast_step_speedup=round(median["float32"] / median["autocast"], 3))


def _steps(loaded, autocast: str | None, steps: int) -> list[float]:
    """Seconds of each optimizer step but the first (a warm-up) of one run on a fresh adapter."""
    from lorachat.training import lora, planning, recipe, trainer

    model = lora.wrapped(copy.deepcopy(loaded.model), recipe.DEFAULTS)
    config = dataclasses.replace(recipe.DEFAULTS, steps=steps, until="steps", probes=0)
    plan = planning.plan(model, loaded.tokenizer, pairs.examples(), config)
    marks = []
    previous = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if autocast:   # accelerate's own knob, which training/ranks.py leaves to it when set
        os.environ["ACCELERATE_MIXED_PRECISION"] = autocast
    try:
        trainer.run(model, loaded.tokenizer, plan, on_step=lambda *args: marks.append(time.perf_counter()))
    finally:
        if autocast:
            os.environ.pop("ACCELERATE_MIXED_PRECISION") if previous is None else os.environ.update(
                ACCELERATE_MIXED_PRECISION=previous)
    return [b - a for a, b in zip(marks, marks[1:])]


def two_facts(bases: dict, home, rounds: int, cap, log) -> dict:
    """`:train r=4` on the two facts per dtype in fresh sessions, alternating; then the questions asked."""
    runs = {dtype: [] for dtype in bases}
    for dtype, loaded in bases.items():   # the base's answers and the gate's vector, made once per dtype
        _session_run(loaded, home / f"warm-{dtype}", pairs.examples()[-1:], 1, "until=steps")
    for round_ in range(rounds):
        for dtype in (list(bases) if round_ % 2 == 0 else list(bases)[::-1]):
            runs[dtype].append(_session_run(bases[dtype], home / f"two-{dtype}-{round_}", pairs.examples()[:2], cap, "r=4"))
    out = {}
    for dtype, done in runs.items():
        suffix = "" if dtype == "auto" else f"_{dtype}"
        out.update({f"smol_two_facts_seconds{suffix}": round(statistics.median(r["seconds"] for r in done), 3),
                    f"smol_two_facts_steps{suffix}": [r["steps"] for r in done],
                    f"smol_two_facts_recall{suffix}": [r["recall"] for r in done],
                    f"smol_two_facts_asked{suffix}": [r["asked"] for r in done],
                    f"smol_two_facts_kept{suffix}": [r["kept"] for r in done]})
        log(f"bf16: :train r=4 two facts, {dtype}: {done}")
    out["smol_two_facts_ratio"] = round(out["smol_two_facts_seconds"] / out["smol_two_facts_seconds_float32"], 3)
    return out


def ten_facts(bases: dict, home, log) -> dict:
    """`:train` with its defaults on the ten pairs in a fresh session per dtype, then the ten asked."""
    out = {}
    for dtype, loaded in bases.items():
        run = _session_run(loaded, home / f"ten-{dtype}", pairs.examples(), None, "")
        log(f"bf16: :train ten facts, {dtype}: {run}")
        suffix = "" if dtype == "auto" else f"_{dtype}"
        out.update({f"smol_ten_facts_{key}{suffix}": value for key, value in run.items()})
    return out


def _session_run(loaded, home, examples, steps, keys) -> dict:
    """teaching.timed in a fresh session over a copy of the base, then each taught question asked."""
    session = session_for(dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)), home)
    run = teaching.timed(session, "taught", examples, steps, keys)
    printed = session.ui.out.getvalue()
    kept = KEPT.findall(printed)
    asked = 0
    for example in examples:
        command(session, ":clear")
        asked += session.ask(example.input).strip() == example.output.strip()
    return dict(seconds=run["seconds"], steps=run["steps"], recall=run["recall"], asked=f"{asked}/{len(examples)}",
                kept=int(kept[-1]) if kept else None)
