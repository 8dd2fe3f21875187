"""train_*: the notebook's recipe and lorachat's `:train` on the same model, examples, r/alpha/targets/lr.

Both start from bit-identical copies of one randomly initialised base and run the same number of
optimizer steps, each with its own batch (the notebook's 4 x 4 sequences, lorachat's defaults), so
non-pad tokens per second are reported too; both are scored by lorachat.batches.answer_loss afterwards
(mean answer-token cross-entropy, eval mode). Knows nothing about decoding or adapters on disk.
"""
import copy
import dataclasses
import gc
import time

from bench import recall, seed, shapes
from bench.workspace import command, make_session

# Dense bf16 peak of the GPUs this project is lent (vendor datasheets, SXM parts), for MFU.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def figures(base, tokenizer, examples, steps: int, device: str, home, log=lambda text: None):
    """The train_* figures (and the trained session is dropped: decode and switch make their own)."""
    from lorachat import batches, datasets, train

    config = train.resolved(base, dataclasses.replace(train.DEFAULTS, steps=steps, until="steps"))
    recipe = seed.Recipe(r=config.r, alpha=config.alpha, dropout=config.dropout, targets=config.targets.split(","),
                         lr=config.lr, steps=steps, batch=seed.NOTEBOOK_BATCH, grad_accum=seed.NOTEBOOK_GRAD_ACCUM,
                         seed=config.seed)
    log(f"seed recipe: {steps} steps")
    seed_model, seed_s = seed.train(copy.deepcopy(base), tokenizer, examples, recipe, device)
    seed_loss = batches.answer_loss(seed_model, tokenizer, examples)
    per_pass = [min(len(tokenizer(t)["input_ids"]), seed.MAX_LENGTH) for t in seed.texts(tokenizer, examples)]
    seed_tokens = steps * recipe.batch * recipe.grad_accum * sum(per_pass) / len(per_pass)  # non-pad, as sampled
    del seed_model
    free(device)

    log(f"seed recipe: {seed_s:.1f} s, loss {seed_loss:.4f}; lorachat: {steps} steps")
    # the session wraps its model in place (PEFT injects LoRA layers): base itself stays untrained for to_loss
    session = make_session(copy.deepcopy(base), tokenizer, "bench-base", device, home)
    datasets.append_examples(session.home, "bench", examples)
    session.dataset = "bench"
    start = time.perf_counter()
    printed = command(session, f":train bench steps={steps} until=steps")
    lorachat_s = time.perf_counter() - start
    done = recall.DONE.search(printed)
    if done is None or int(done.group(1)) != steps:
        raise RuntimeError(f":train did not run {steps} steps: {printed[-300:]!r}")
    lorachat_loss = batches.answer_loss(session.model, tokenizer, examples)
    lengths = [len(ids) for ids, _ in batches.encode(tokenizer, examples, 1 << 20).items]
    tokens = steps * min(config.batch * config.grad_accum, len(examples)) * sum(lengths) / len(lengths)
    out = dict(train_steps=steps, train_lorachat_batch=f"{config.batch}x{config.grad_accum}",
               train_seed_batch=f"{recipe.batch}x{recipe.grad_accum}", train_lr=config.lr, train_r=config.r,
               train_alpha=config.alpha, train_targets=config.targets,
               train_seed_s=round(seed_s, 3), train_lorachat_s=round(lorachat_s, 3),
               train_speedup=round(seed_s / lorachat_s, 2),
               train_seed_loss=round(seed_loss, 4), train_lorachat_loss=round(lorachat_loss, 4),
               train_seed_step_s=round(seed_s / steps, 4), train_lorachat_step_s=round(lorachat_s / steps, 4),
               train_lorachat_recall=f"{done.group(2)}/{done.group(3)}",
               # non-pad tokens trained on per second: the comparison that does not depend on batch sizes
               train_tokens_per_s=round(tokens / lorachat_s, 1), train_seed_tokens_per_s=round(seed_tokens / seed_s, 1))
    out["train_token_speedup"] = round(out["train_tokens_per_s"] / out["train_seed_tokens_per_s"], 2)
    del session
    free(device)
    log(f"lorachat: {lorachat_s:.1f} s, loss {lorachat_loss:.4f}; lorachat until the seed's loss")
    out.update(to_loss(base, tokenizer, examples, config, seed_loss, seed_s, cap=4 * steps,
                       every=max(1, steps // 10)))
    if device == "cuda":
        out.update(_mfu(shapes.parameters(base), tokens / lorachat_s))
    return out


def to_loss(model, tokenizer, examples, config, target: float, seed_s: float, cap: int, every: int = 10) -> dict:
    """Seconds of lorachat training (train.run, its defaults) until its answer loss is at most `target`,
    checked every `every` steps with the clock stopped; None if `cap` steps do not get there."""
    from peft import get_peft_model

    from lorachat import batches, shape, train

    if any("lora_" in name for name, _ in model.named_parameters()):
        raise RuntimeError("to_loss needs the untrained base: this model already holds LoRA layers")
    config = dataclasses.replace(config, steps=cap, until="steps")
    model = shape.seeded_add(config.seed, lambda: get_peft_model(model, shape.lora_config(model, config)))
    paused, state = 0.0, dict(loss=None, step=0)

    def on_step(step, total, loss, known, kept=None):
        nonlocal paused
        if step % every == 0:
            start = time.perf_counter()
            state.update(loss=batches.answer_loss(model, tokenizer, examples), step=step)
            model.train()
            paused += time.perf_counter() - start

    begun = time.perf_counter()
    train.run(model, tokenizer, examples, config, on_step=on_step,
              should_stop=lambda: state["loss"] is not None and state["loss"] <= target)
    seconds = time.perf_counter() - begun - paused
    reached = state["loss"] is not None and state["loss"] <= target
    return dict(train_to_seed_loss_steps=state["step"] if reached else None,
                train_to_seed_loss_s=round(seconds, 3) if reached else None,
                train_equal_loss_speedup=round(seed_s / seconds, 2) if reached else None)


def _mfu(parameters: int, rate: float) -> dict:
    import torch

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    return dict(gpu=name, mfu=round(4 * parameters * rate / peak, 4) if peak else None, bf16_peak_flops=peak)


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
