"""smol_train: the headline on real weights (issue 26), the seed's recipe (bench/baseline/notebook.py)
against lorachat's `:train` on SmolLM2-135M-Instruct (`--model smol`): the seed on the base loaded in
float32 (the notebook's CPU precision), lorachat on the base as `--dtype auto` loads it (bfloat16 on a
CPU that computes it natively, models/precision.py; smol_train_dtype says which).

- smol_first_answer_seconds: `:train r=4` on the seed's two facts (SOH, SiON) in a fresh session, Enter
  to the next prompt, both answered verbatim as asked; beside it the seed at lr 5e-3 on the same two
  facts until it recalls both (smol_seed_first_answer_seconds, at most plan.first_cap steps);
- smol_seed_recall_after_100: the seed's recipe exactly (lr 1e-4, 100 steps) on the ten pairs, k/10;
- smol_seed_teach_seconds_seed_lr / _best_lr: the seed's time to 10/10 at its own lr and at the best of
  a sweep (`sweep`), at most plan.smol_cap steps each (its lr decaying over those), recall checked every
  plan.check_every steps with the clock stopped; where 10/10 never comes, the capped run's time (a lower
  bound) and ..._reached_... false;
- smol_teach_seconds: `:train` with its defaults on the ten pairs in a fresh session, Enter to the next
  prompt, 10/10 verbatim as asked (else null), and the speed-ups against both seed times;
- smol_tokens_per_s / smol_seed_tokens_per_s / smol_token_speedup: non-pad training tokens per second
  (lorachat's as its lorachat.json records them, the seed's over its 100-step run);
- smol_equal_loss_speedup_seed_lr (detail): the seed's 100 steps against lorachat's loop (teaching.to_loss)
  reaching the same answer loss on the seed's rendering (a prompt lorachat does not train on here).
Before the timed `:train`s a throwaway `:train` in another session over the same base fills whatever cache
of the base's answers lorachat keeps on disk. Knows nothing about decoding, startup or other models.
"""
import copy
import dataclasses

from bench.baseline import notebook
from bench.kit import pairs, seeding, teaching
from bench.kit.workspace import session_for
from bench.suites.smol import smol_folder

FIRST_LR = 5e-3  # the seed on its two facts: the highest lr of the sweep (the best of it on random weights)
# what only the ten-pair run measures (a mode with plan.smol_cap 0 skips them)
TEN_PAIRS = ("smol_teach_speedup_best_lr", "smol_teach_speedup_seed_lr", "smol_teach_seconds", "smol_teach_steps",
             "smol_seed_teach_seconds_seed_lr", "smol_seed_teach_seconds_best_lr", "smol_seed_best_lr",
             "smol_seed_recall_after_100", "smol_token_speedup", "smol_tokens_per_s", "smol_seed_tokens_per_s",
             "smol_equal_loss_speedup_seed_lr")


def figures(device: str, home, plan, log=lambda text: None) -> tuple[dict, dict]:
    """plan (bench.__main__.Mode): first_cap, smol_cap (the seed's steps per lr on the ten pairs; 0: the
    two facts only), sweep (lrs besides the seed's), steps (the seed's recall run), check_every,
    recall_steps (caps every :train; None: its default). ({figures}, {figure: why skipped})."""
    from lorachat.models.loader import load_model

    seed = load_model(str(smol_folder()), device, dtype="float32")
    loaded = load_model(str(smol_folder()), device, dtype="auto")   # lorachat's side, as a user starts it
    ten, two = pairs.examples(), pairs.examples()[:2]
    out = _seed_first(seed, two, plan, device, log)
    out["smol_train_dtype"] = str(loaded.dtype).replace("torch.", "")
    if plan.smol_cap:
        out.update(_seed_ten(seed, ten, plan, device, log))
    _warm(loaded, device, home, log)
    first = _timed(loaded, device, home, "first", two, plan.recall_steps, "r=4", log)
    seconds = first["seconds"] if first["recalled"] else None
    out.update(smol_first_answer_seconds=seconds, smol_first_answer_recall=first["recall"],
               smol_first_answer_steps=first["steps"], smol_first_answer_speedup=ratio(out["smol_seed_first_answer_seconds"], seconds))
    if not plan.smol_cap:
        return out, dict.fromkeys(TEN_PAIRS, "the seed's two facts only in this mode")
    out.update(_teach(loaded, ten, plan, device, home, log, out))
    out.update(_equal_loss(loaded, ten, plan, out["smol_seed_run"], log))
    return out, {}


def _seed_first(loaded, two, plan, device, log) -> dict:
    """The seed at FIRST_LR on its own two facts until it recalls both (at most plan.first_cap steps)."""
    recipe = dataclasses.replace(notebook.SEED, lr=FIRST_LR, steps=plan.first_cap)
    run = seeding.until_recall(loaded.model, loaded.tokenizer, two, recipe, device, plan.check_every)
    log(f"smol: the seed on its two facts at lr {FIRST_LR:g}: {ended(run, len(two), plan.first_cap)}, {run['seconds']} s")
    return dict(smol_seed_first_answer_lr=FIRST_LR, smol_seed_first_answer_seconds=run["seconds"],
                smol_seed_first_answer_reached=run["reached"], smol_seed_first_answer_steps=run["steps"],
                smol_seed_first_answer_checks=run["recall_checks"])


def _seed_ten(loaded, ten, plan, device, log) -> dict:
    """The seed's recipe on the ten pairs: its plan.steps (recall, loss, tokens/s), then the sweep of its
    time to 10/10 (at most plan.smol_cap steps per lr)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    recipe = dataclasses.replace(notebook.SEED, steps=plan.steps)
    main = seeding.run(model, tokenizer, ten, recipe, device, recall=True)
    log(f"smol: the seed's recipe, {plan.steps} steps: recall {main['recall']}, {main['seconds']} s")

    def run(lr, give_up):
        capped = dataclasses.replace(notebook.SEED, lr=lr, steps=plan.smol_cap)
        done = seeding.until_recall(model, tokenizer, ten, capped, device, plan.check_every, give_up)
        log(f"smol: the seed at lr {lr:g}: {ended(done, len(ten), plan.smol_cap)}, {done['seconds']} s")
        return done

    done = sweep(run, plan.sweep, notebook.SEED.lr)
    best = best_lr(done)
    out = dict(smol_seed_run=dict(main, steps=plan.steps, lr=recipe.lr),
               smol_seed_recall_after_100=main["recall"] if plan.steps == 100 else None,
               smol_seed_tokens_per_s=round(notebook.trained_tokens(tokenizer, ten, recipe) / main["seconds"], 1),
               smol_seed_best_lr=best, smol_seed_teach_cap=plan.smol_cap,
               smol_seed_sweep={f"{lr:g}": dict(run, ended=ended(run, len(ten), plan.smol_cap)) for lr, run in done.items()})
    for name, lr in (("seed_lr", notebook.SEED.lr), ("best_lr", best)):
        out.update({f"smol_seed_teach_seconds_{name}": done[lr]["seconds"],
                    f"smol_seed_teach_reached_{name}": done[lr]["reached"], f"smol_seed_teach_steps_{name}": done[lr]["steps"]})
    return out


def sweep(run, lrs, own: float) -> dict:
    """run(lr, give_up) -> seeding.until_recall's dict, for `own` and each of `lrs`, highest lr first.
    Every lr but `own` is given up once its clock-stopped time passes the best time to n/n found so
    far (it cannot be the best any more); `own` runs to n/n or its cap. {lr: run's dict}."""
    done, best = {}, None
    for lr in sorted(set(lrs) | {own}, reverse=True):
        done[lr] = run(lr, None if lr == own else best)
        if done[lr]["reached"] and (best is None or done[lr]["seconds"] < best):
            best = done[lr]["seconds"]
    return done


def best_lr(done: dict) -> float:
    """The lr with the least time to n/n; where none got there, the highest final recall, then the least time."""
    reached = [lr for lr, run in done.items() if run["reached"]]
    if reached:
        return min(reached, key=lambda lr: done[lr]["seconds"])
    return max(done, key=lambda lr: (_final(done[lr]), -done[lr]["seconds"]))


def _final(run: dict) -> int:
    return run["recall_checks"][-1][1] if run["recall_checks"] else 0


def ended(run: dict, n: int, cap: int) -> str:
    """How a seed run ended, in words: 'n/n at step S', 'cut off at S s' or 'k/n after CAP steps'."""
    if run["reached"]:
        return f"{n}/{n} at step {run['steps']}"
    if run["cut_off"]:
        return f"cut off at {run['seconds']} s ({_final(run)}/{n})"
    return f"{_final(run)}/{n} after {cap} steps"


def _warm(loaded, device, home, log) -> None:
    """A throwaway 1-step `:train` on another dataset, in its own session over the same base: fills the
    base's answers lorachat caches on disk (where it does), so the timed sessions find them there."""
    run = _timed(loaded, device, home, "warmup", pairs.examples()[-1:], 1, "until=steps")
    log(f"smol: warm-up :train, {run['seconds']} s")


def _timed(loaded, device, home, name, examples, steps, keys, log=lambda text: None) -> dict:
    """teaching.timed in a fresh session (its own workspace home/NAME) over a copy of the base."""
    session = session_for(dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)), home / name)
    try:
        run = teaching.timed(session, name, examples, steps, keys)
    finally:
        del session
        seeding.free(device)
    log(f"smol: :train {name} {keys}: {run['steps']} steps, recall {run['recall']}, {run['seconds']} s")
    return run


def _teach(loaded, ten, plan, device, home, log, seed: dict) -> dict:
    """lorachat's `:train` with its defaults on the ten pairs, its speed-ups against the seed's times."""
    run = _timed(loaded, device, home, "teach", ten, plan.recall_steps, "", log)
    seconds = run["seconds"] if run["recalled"] else None
    return dict(smol_teach_seconds=seconds, smol_teach_steps=run["steps"], smol_teach_recall=run["recall"],
                smol_tokens_per_s=run["tokens_per_s"],
                smol_token_speedup=ratio(run["tokens_per_s"], seed["smol_seed_tokens_per_s"]),
                smol_teach_speedup_seed_lr=ratio(seed["smol_seed_teach_seconds_seed_lr"], seconds),
                smol_teach_speedup_best_lr=ratio(seed["smol_seed_teach_seconds_best_lr"], seconds))


def _equal_loss(loaded, ten, plan, seed_run: dict, log) -> dict:
    """lorachat's loop until the seed's answer loss after its steps (checked every 5 % of them, at most
    that many steps): the seed's seconds over lorachat's."""
    lora = teaching.to_loss(loaded.model, loaded.tokenizer, ten, {"seed_lr": seed_run["loss"]}, at=1, cap=plan.steps,
                            every=max(1, plan.steps // 20))
    reached = lora["reached"].get("seed_lr")
    log(f"smol: lorachat to the seed's loss {seed_run['loss']}: {reached or 'not reached'}")
    return dict(smol_to_seed_lr_loss_steps=reached[0] if reached else None,
                smol_to_seed_lr_loss_s=reached[1] if reached else None,
                smol_equal_loss_speedup_seed_lr=ratio(seed_run["seconds"], reached[1] if reached else None))


def ratio(seed, lorachat) -> float | None:
    return round(seed / lorachat, 2) if seed and lorachat else None
