"""python -m bench.research.candidates [--shape tiny|opt-125m] [--target LOSS] [--cap N] 'KEYS' ...: other `:train` settings.

For each candidate (a string of `:train` keys; '' is lorachat's defaults):
- on `tiny` (the built-in model): `:train` until recall on the ten pairs, as bench/suites/recall.py times it:
  steps and seconds to 10/10;
- on a benchmark shape (opt-125m): lorachat's loop from the same random base until the answer loss
  (bench/baseline/scoring.py) is at or below --target, checked every 10 steps with the clock stopped: steps,
  seconds and the losses on the way; or with --teach, `:train` until recall there (as teach_seconds);
  or with --step-time, seconds per step side by side.
One JSON line per candidate, so a long list can be stopped and resumed. How bench/RESULTS.md
"Closing the gap" was measured; not part of `python -m bench`.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.research.candidates", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny", choices=["tiny", "opt-125m"])
    p.add_argument("--target", type=float, help="answer loss to reach (the shape runs; the seed's best)")
    p.add_argument("--cap", type=int, default=400, help="most steps on a shape")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--teach", action="store_true", help="on a shape: `:train` until recall (as teach_seconds), not --target")
    p.add_argument("--step-time", type=int, metavar="STEPS",
                   help="instead: seconds per optimizer step over STEPS steps (after 5 unmeasured), candidates "
                        "interleaved over 2 rounds; the candidate 'seed' is the seed's recipe")
    p.add_argument("candidates", nargs="+", help="`:train` keys, e.g. 'lr=0.002 warmup=20'")
    args = p.parse_args(argv)
    if args.step_time:
        return step_times(args.shape, args.candidates, args.step_time)
    if args.shape != "tiny" and args.target is None and not args.teach:
        p.error("--target or --teach is needed with a model shape")
    for keys in args.candidates:
        start = time.perf_counter()
        if args.shape == "tiny":
            out = tiny(keys)
        elif args.teach:
            out = teach(args.shape, keys)
        else:
            out = shape(args.shape, keys, args.target, args.cap, args.every)
        print(json.dumps(dict(shape=args.shape, keys=keys, **out, wall_s=round(time.perf_counter() - start, 1))), flush=True)
    return 0


def changes(keys: str) -> dict:
    """`:train` keys -> {key: value}, converted and checked as `:train` does."""
    from lorachat.chat import options
    from lorachat.training import recipe

    _, pairs = options.split_kv(options.split_words(keys))
    config = options.apply_kv(recipe.DEFAULTS, pairs)
    return {k: getattr(config, k) for k in pairs}


def tiny(keys: str) -> dict:
    from bench.kit import pairs
    from bench.kit.teaching import timed_train
    from bench.kit.workspace import session_for
    from lorachat.models.loader import load_model

    session = session_for(load_model("tiny", "cpu"), Path(tempfile.mkdtemp(prefix="bench-candidates-")))
    seconds, steps, known, total = timed_train(session, "ten", pairs.examples(), keys=keys)
    return dict(steps=steps, recall=f"{known}/{total}", seconds=round(seconds, 2))


def shape(name: str, keys: str, target: float, cap: int, every: int) -> dict:
    from bench.kit import pairs, shapes, teaching

    base = shapes.build(name, "cpu")
    out = teaching.to_loss(base, shapes.tokenizer(), pairs.examples(), {"target": target}, at=every, cap=cap,
                                every=every, changes=changes(keys))
    reached = out["reached"].get("target")
    return dict(steps=reached[0] if reached else None, seconds=reached[1] if reached else None,
                step_s=round(out["seconds"] / out["step"], 3), lr=out["lr"], losses=out["losses"])


def teach(name: str, keys: str) -> dict:
    from bench.kit import pairs, shapes, teaching

    home = Path(tempfile.mkdtemp(prefix="bench-candidates-"))
    return teaching.teach(shapes.build(name, "cpu"), shapes.tokenizer(), pairs.examples(), "cpu", home, keys=keys)


def step_times(name: str, candidates, steps: int) -> int:
    """Seconds per step, best of 2 interleaved rounds, each after 5 warm-up steps (not timed; the
    seed measured between its 5th and last step, lorachat between its 5th and the one before its last,
    which carries a recall check). STEPS: a multiple of 5."""
    import dataclasses

    from bench.baseline import notebook
    from bench.kit import pairs, shapes

    base, tokenizer, examples = shapes.build(name, "cpu"), shapes.tokenizer(), pairs.examples()
    best = {}
    for _ in range(2):
        for keys in candidates:
            if keys == "seed":
                recipe = dataclasses.replace(notebook.SEED, lr=5e-3, steps=5 + steps)
                stamps = []
                notebook.train(_copy(base), tokenizer, examples, recipe, "cpu", check=lambda m: stamps.append(time.perf_counter()), every=5)
                seconds = (stamps[-1] - stamps[0]) / steps
            else:
                seconds = _lorachat_step(base, tokenizer, examples, keys, steps)
            best[keys] = min(best.get(keys, float("inf")), seconds)
            print(json.dumps(dict(shape=name, keys=keys, step_s=round(seconds, 4))), flush=True)
    print(json.dumps(dict(shape=name, best_step_s={k: round(v, 4) for k, v in best.items()})), flush=True)
    return 0


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _lorachat_step(base, tokenizer, examples, keys: str, steps: int) -> float:
    import dataclasses

    from lorachat.training import lora, planning, recipe, trainer

    model = _copy(base)
    config = recipe.resolved(model, dataclasses.replace(recipe.DEFAULTS, steps=6 + steps, until="steps", **changes(keys)))
    model = lora.wrapped(model, config)
    stamps = {}
    trainer.run(model, tokenizer, planning.plan(model, tokenizer, examples, config),
                on_step=lambda step, *_: stamps.setdefault(step, time.perf_counter()))
    return (stamps[5 + steps] - stamps[5]) / steps


if __name__ == "__main__":
    sys.exit(main())
