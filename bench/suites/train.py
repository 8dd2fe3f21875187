"""The train suite: the seed's recipe (bench/baseline/notebook.py) against lorachat's `:train` on the same model and pairs.

Headline figures, the ones a user feels: `teach_seconds` (lorachat's `:train` with its defaults until
every answer comes back verbatim), the seed's recall after its 100 steps and whether it ever gets
every answer within 400 (checked every 10 steps, clock stopped), and the equal-loss speed-ups:
lorachat's time to the seed's final answer loss, against the seed at its own lr and at the best lr
of a small sweep. Per-step and per-token ratios are details. Both sides start from bit-identical
copies of one base and are scored by bench/baseline/scoring.py. Knows nothing about decoding or adapters on disk.
"""
import copy
import dataclasses

from bench.baseline import notebook
from bench.kit import seeding, shapes, teaching

# Dense bf16 peak of the GPUs this project is lent (vendor datasheets, SXM parts), for MFU.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def figures(base, tokenizer, examples, plan, device: str, home, log=lambda text: None):
    """plan (bench.__main__.Mode): steps, sweep (lrs besides the seed's), seed_cap (steps of the seed's
    recall run; 0: skip), check_every, teach (run lorachat's :train until recall), recall_steps (its
    cap; None: lorachat's default). ({figures}, {figure: why skipped})."""
    recipe = dataclasses.replace(notebook.SEED, steps=plan.steps)
    out, skipped = dict(seed_recipe=recipe.summary(), train_steps=plan.steps), {}
    log(f"seed recipe: {plan.steps} steps at lr {recipe.lr:g}")
    main = seeding.run(base, tokenizer, examples, recipe, device, recall=True)
    log(f"seed recipe: {main['seconds']} s, loss {main['loss']}, recall {main['recall']}")
    sweep = {recipe.lr: main}
    for lr in plan.sweep:
        if lr != recipe.lr:
            sweep[lr] = seeding.run(base, tokenizer, examples, dataclasses.replace(recipe, lr=lr), device)
            log(f"seed recipe at lr {lr:g}: {sweep[lr]['seconds']} s, loss {sweep[lr]['loss']}")
    best = min(sweep, key=lambda lr: sweep[lr]["loss"])
    out.update(_seed_figures(recipe, main, sweep, best, tokenizer, examples))
    if len(sweep) == 1:
        skipped.update(seed_best_lr="no lr sweep in this mode", equal_loss_speedup_best_lr="no lr sweep in this mode")
    if plan.seed_cap:
        out.update(_seed_teach(base, tokenizer, examples, recipe, plan, device, log))
    else:
        skipped.update(seed_teach_steps="no 400-step seed recall run in this mode")

    log("lorachat until the seed's losses")
    targets = {"seed_lr": main["loss"]} | ({"best_lr": sweep[best]["loss"]} if len(sweep) > 1 else {})
    lora = teaching.to_loss(base, tokenizer, examples, targets, at=plan.steps, cap=4 * plan.steps,
                                 every=max(1, plan.steps // 10))
    out.update(_lorachat_figures(lora, main, sweep[best], recipe, plan.steps))
    out["train_token_speedup"] = round(out["train_tokens_per_s"] / out["train_seed_tokens_per_s"], 2)
    if plan.teach:
        log("lorachat: :train with its defaults until every answer is recalled")
        out.update(teaching.teach(copy.deepcopy(base), tokenizer, examples, device, home, plan.recall_steps))
        if out.get("seed_teach_seconds") and out["teach_seconds"]:
            out["teach_speedup"] = round(out["seed_teach_seconds"] / out["teach_seconds"], 2)
    else:
        skipped.update(teach_seconds="no lorachat :train until recall on this model in this mode")
    if device == "cuda":
        out.update(_mfu(shapes.parameters(base), out["train_tokens_per_s"]))
    return out, skipped


def _seed_figures(recipe, main, sweep, best, tokenizer, examples) -> dict:
    tokens = notebook.trained_tokens(tokenizer, examples, recipe)
    return dict(seed_recall=main["recall"], seed_recall_after_100=main["recall"] if recipe.steps == 100 else None,
                train_seed_s=main["seconds"], train_seed_loss=main["loss"],
                train_seed_tokens_per_s=round(tokens / main["seconds"], 1),
                seed_lr_sweep={f"{lr:g}": run for lr, run in sorted(sweep.items())},
                seed_best_lr=best if len(sweep) > 1 else None,
                seed_best_loss=sweep[best]["loss"] if len(sweep) > 1 else None,
                seed_best_s=sweep[best]["seconds"] if len(sweep) > 1 else None)


def _seed_teach(base, tokenizer, examples, recipe, plan, device, log) -> dict:
    """The seed's recipe run for plan.seed_cap steps (its lr decaying over those), recall checked
    every plan.check_every steps with the clock stopped, stopping at the first n/n."""
    log(f"seed recipe: up to {plan.seed_cap} steps, recall every {plan.check_every}")
    run = seeding.until_recall(base, tokenizer, examples, dataclasses.replace(recipe, steps=plan.seed_cap), device,
                               plan.check_every)
    return dict(seed_teach_cap=plan.seed_cap, seed_teach_steps=run["steps"],
                seed_teach_seconds=run["seconds"] if run["reached"] else None, seed_recall_checks=run["recall_checks"])


def _lorachat_figures(lora, main, best, recipe, steps) -> dict:
    out = dict(train_lorachat_batch=f"{lora['batch']}x{lora['grad_accum']}",
               train_seed_batch=f"{recipe.batch}x{recipe.grad_accum}", train_lr=lora["lr"], train_r=lora["r"],
               train_alpha=lora["alpha"], train_targets=lora["targets"],
               train_lorachat_s=lora["seconds_at"], train_lorachat_loss=lora["loss_at"],
               train_tokens_per_s=lora["tokens_per_s"])
    out["train_speedup"] = round(main["seconds"] / lora["seconds_at"], 2) if lora["seconds_at"] else None
    out["train_seed_step_s"] = round(main["seconds"] / steps, 4)
    out["train_lorachat_step_s"] = round(lora["seconds_at"] / steps, 4) if lora["seconds_at"] else None
    for name, seconds_seed in (("seed_lr", main["seconds"]), ("best_lr", best["seconds"])):
        reached = lora["reached"].get(name)
        out[f"train_to_{name}_loss_steps"] = reached[0] if reached else None
        out[f"train_to_{name}_loss_s"] = reached[1] if reached else None
        out[f"equal_loss_speedup_{name}"] = round(seconds_seed / reached[1], 2) if reached else None
    return out


def _mfu(parameters: int, rate: float) -> dict:
    import torch

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    return dict(gpu=name, mfu=round(4 * parameters * rate / peak, 4) if peak else None, bf16_peak_flops=peak)
