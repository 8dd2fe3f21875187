"""lorachat's side of the train suite: training to given answer losses, and `:train` until every answer is known.

`to_loss` drives lorachat.train.run (the loop `:train` runs) with lorachat's defaults, or with
`changes` to them (how bench/research/candidates.py measures other settings), and scores with bench/baseline/scoring.py
every few steps with the clock stopped. `teach` and `timed` are the user's `:train` command, timed whole.
Knows nothing about the seed's recipe.
"""
import copy
import dataclasses
import json
import re
import time

from bench.baseline import scoring
from bench.kit.workspace import command, make_session

DONE = re.compile(r"trained \S+: (\d+) steps?, loss \S+, recall (\d+)/(\d+)")


def to_loss(base, tokenizer, examples, targets: dict, at: int, cap: int, every: int, changes=None) -> dict:
    """Train a copy of `base` with lorachat's defaults (plus `changes`) until its answer loss is at or
    below every value in `targets` and `at` steps are done, at most `cap` steps; loss checked every
    `every` steps (and at `at`) with the clock stopped. reached: {name: (steps, seconds)}."""

    from lorachat.training import lora, planning, recipe, trainer

    model = copy.deepcopy(base)
    config = recipe.resolved(model, dataclasses.replace(recipe.DEFAULTS, steps=cap, until="steps", **(changes or {})))
    model = lora.wrapped(model, config)
    clock = dict(start=time.perf_counter(), paused=0.0, last=0.0)
    state = dict(reached={}, losses={}, loss_at=None, seconds_at=None, step=0)

    def on_step(step, total, loss, known, kept=None):
        stopped = time.perf_counter()
        elapsed = stopped - clock["start"] - clock["paused"]
        state.update(step=step, seconds=elapsed)
        if step % every == 0 or step == at:
            value = scoring.answer_loss(model, tokenizer, examples)
            model.train()
            state["losses"][step] = round(value, 4)
            state["reached"].update({name: (step, round(elapsed, 3)) for name, target in targets.items()
                                     if name not in state["reached"] and value <= target})
            if step == at:
                state.update(loss_at=round(value, 4), seconds_at=round(elapsed, 3))
        clock["paused"] += time.perf_counter() - stopped

    def should_stop():
        return state["step"] >= at and len(state["reached"]) == len(targets)

    result = trainer.run(model, tokenizer, planning.plan(model, tokenizer, examples, config), on_step=on_step,
                         should_stop=should_stop)
    return dict(state, lr=config.lr, r=config.r, alpha=config.alpha, targets=config.targets, batch=config.batch,
                grad_accum=config.grad_accum, tokens_per_s=round(result.tokens / state["seconds"], 1))


def teach(model, tokenizer, examples, device: str, home, steps: int | None = None, keys: str = "") -> dict:
    """`:train` with lorachat's defaults (or `keys`) in a fresh session over `model` (wrapped in place),
    timed whole: adapter creation, training with its recall checks, saving. `steps` caps it (smoke only)."""
    run = timed(make_session(model, tokenizer, "bench-base", device, home), "teach", examples, steps, keys)
    return dict(teach_seconds=run["seconds"] if run["recalled"] else None, teach_steps=run["steps"],
                teach_recall=run["recall"], teach_train_s=run["seconds"])


def timed(session, name: str, examples, steps: int | None = None, keys: str = "") -> dict:
    """`timed_train` with what `:train` recorded in adapters/NAME/lorachat.json: {seconds, steps, recall
    "k/n", recalled (n/n), tokens_per_s (non-pad tokens its training passes took, per second of its loop)}."""
    from lorachat.adapters import paths, provenance

    seconds, done, known, total = timed_train(session, name, examples, steps, keys)
    meta = json.loads((paths.adapter_path(session, name) / provenance.META_FILE).read_text(encoding="utf-8"))
    return dict(seconds=round(seconds, 3), steps=done, recall=f"{known}/{total}", recalled=known == total,
                tokens_per_s=round(meta["tokens"] / meta["seconds"], 1) if meta.get("seconds") else None)


def timed_train(session, name: str, examples, steps: int | None = None, keys: str = "") -> tuple:
    """`:train NAME` on `examples` (as dataset NAME) in `session`, timed around the command itself:
    (seconds, steps, recalled, total)."""
    from lorachat.lessons import jsonl

    jsonl.append_examples(session.home, name, examples)
    session.dataset = name
    line = f":train {name}" + (f" steps={steps}" if steps else "") + (f" {keys}" if keys else "")
    start = time.perf_counter()
    printed = command(session, line)
    seconds = time.perf_counter() - start
    done = DONE.search(printed)
    if done is None:
        raise RuntimeError(f"{line!r} printed no 'trained ...' line: {printed[-300:]!r}")
    return seconds, int(done.group(1)), int(done.group(2)), int(done.group(3))
