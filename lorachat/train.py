"""The LoRA training loop: examples -> answer-only loss -> optimizer steps until every answer is known.

A plain torch loop (measured against HF Trainer: see README "Training"): dynamic padding per batch,
loss on answer tokens only, recall checked by one teacher-forced forward pass in eval mode. Reports
progress through `on_step` and never prints; knows nothing about terminals, sessions or files — the
caller creates the adapter (adapters.add_new), activates it, and saves or discards it afterwards.
"""
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Optional

from lorachat.batches import answer_logits, autocast, chunks, collate, encode, known, model_device, padding_id, recall
from lorachat.errors import LorachatError
from lorachat.prompts import IGNORE
from lorachat.shape import DEFAULT_TARGETS

# lr=none picks by model size (README "Training"): 5e-3 teaches the tiny model fastest (7e-3 diverges);
# on OPT-125m's shape it stalls at answer loss ~9 for 400 steps, where 1e-3 reaches 1.6 by step 300
SMALL_MODEL, SMALL_LR, LARGE_LR = 50_000_000, 5e-3, 1e-3


@dataclass
class TrainConfig:
    """`:train` keys. lr/steps/batch were chosen by measurement (README "Training")."""
    r: int = field(default=16, metadata={"help": "LoRA rank", "min": 1, "max": 1024})
    alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)", "positive": True, "max": 10000})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input", "min": 0, "max": 0.9})
    targets: str = field(default=DEFAULT_TARGETS, metadata={"help": "comma list of module names, or all-linear"})
    steps: int = field(default=500, metadata={"help": "most optimizer steps", "min": 1, "max": 1_000_000})
    epochs: Optional[int] = field(default=None, metadata={"help": "most passes over the examples (none: steps decide)", "min": 1, "max": 100_000})
    lr: Optional[float] = field(default=None, metadata={"help": f"AdamW learning rate (none: {SMALL_LR:g} below {SMALL_MODEL // 10**6}M parameters, else {LARGE_LR:g})", "positive": True, "max": 1})
    batch: int = field(default=4, metadata={"help": "examples per forward pass", "min": 1, "max": 4096})
    grad_accum: int = field(default=1, metadata={"help": "forward passes per optimizer step", "min": 1, "max": 1024})
    clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: no clipping)", "min": 0, "max": 1e6})
    schedule: str = field(default="constant", metadata={"help": "lr over the planned steps: constant, or linear decay to 0", "choices": ("constant", "linear")})
    warmup: int = field(default=0, metadata={"help": "steps of linear lr warm-up (lr/warmup, 2 lr/warmup, ... lr; 0: none)", "min": 0, "max": 1_000_000})
    loraplus: Optional[float] = field(default=None, metadata={"help": "LoRA+: the B matrices' lr is lr times this (none: one lr; PEFT's create_loraplus_optimizer)", "min": 1, "max": 1000})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA: scale = alpha / sqrt(r) (PEFT's use_rslora)"})
    max_len: int = field(default=512, metadata={"help": "longest example in tokens (longer ones are refused)", "min": 8, "max": 131072})
    seed: int = field(default=0, metadata={"help": "seed for the adapter's init, shuffling and dropout", "min": 0, "max": 2**32 - 1})
    checkpointing: bool = field(default=False, metadata={"help": "gradient checkpointing: less memory, ~30% slower"})
    until: str = field(default="recall", metadata={"help": "recall: stop when every answer comes back verbatim; steps: run them all", "choices": ("recall", "steps")})
    keep: str = field(default="final", metadata={"help": "on Ctrl-C: final discards the adapter, partial saves it", "choices": ("final", "partial")})


DEFAULTS = TrainConfig()


@dataclass
class TrainResult:
    steps: int            # optimizer steps taken
    loss: float           # mean answer-token loss of the last step (nan before any)
    recall: int           # k: examples reproduced verbatim at the end
    total: int            # n: examples trained on
    seconds: float
    cancelled: bool = False
    tokens: int = 0       # non-pad tokens processed by training forward passes
    epochs: float = 0.0


def resolved(model, config: TrainConfig) -> TrainConfig:
    """`config` with lr=none replaced by the lr for this model's size (what is trained and recorded)."""
    if config.lr is not None:
        return config
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    size = sum(p.numel() for name, p in base.named_parameters() if "lora_" not in name)
    return replace(config, lr=SMALL_LR if size < SMALL_MODEL else LARGE_LR)


def planned_steps(count: int, config: TrainConfig) -> int:
    """The most optimizer steps `run` will take for `count` examples."""
    per_epoch = math.ceil(count / (config.batch * config.grad_accum))
    return min(config.steps, config.epochs * per_epoch) if config.epochs else config.steps


def max_tokens(model, config: TrainConfig) -> int:
    """max_len, capped by the positions the model has."""
    positions = getattr(model.config, "max_position_embeddings", None)
    return min(config.max_len, positions) if positions else config.max_len


def records_sha256(examples) -> str:
    """sha256 of the exact training records: one sorted-key JSON object per example, newline-joined."""
    lines = [json.dumps(_record(e), sort_keys=True, ensure_ascii=False) for e in examples]
    return "sha256:" + hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _record(example) -> dict:
    if example.text is not None:
        return {"text": example.text}
    return {"instruction": example.instruction, "input": example.input, "output": example.output}


# --- the loop ----------------------------------------------------------------------------------

def trainable(model) -> list:
    """The parameters the optimizer moves (the active adapter's LoRA matrices), kept in fp32:
    fp16 LoRA weights fail with 'Attempting to unscale FP16 gradients'."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return params


def run(model, tokenizer, examples, config: TrainConfig, on_step=None, should_stop=None) -> TrainResult:
    """Train the model's trainable (LoRA) parameters on `examples`; the base stays frozen.

    Stops at `config.steps` or `config.epochs`, when every answer is known (`until=recall`), or at
    the next step boundary once `should_stop()` is true or Ctrl-C arrives (cancelled=True)."""
    import torch

    if not examples:
        raise LorachatError("no examples to train on")
    config = resolved(model, config)
    params = trainable(model)
    if not params:
        raise LorachatError("the model has no trainable (adapter) parameters")
    encoded = encode(tokenizer, examples, max_tokens(model, config))
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _loop(model, tokenizer, examples, encoded, config, params, on_step, should_stop)


def _loop(model, tokenizer, examples, encoded, config, params, on_step, should_stop):
    import torch

    # constant lr by default: with until=recall the last step is not known; linear decay (as HF
    # Trainer) is schedule=linear. Clipping at 1.0 (HF's default) keeps a too-high lr from diverging.
    optimizer = _optimizer(model, params, config)
    scaler = _scaler(model)
    order = random.Random(config.seed)
    per_epoch = math.ceil(len(encoded) / (config.batch * config.grad_accum))
    total = planned_steps(len(encoded), config)
    schedule = _schedule(optimizer, config, total)
    state = dict(step=0, loss=float("nan"), known=None, tokens=0, cancelled=False, seen={})
    start = time.perf_counter()
    if config.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        while state["step"] < total:
            batches = _epoch(encoded, order, config)
            for group in batches:
                if should_stop is not None and should_stop():
                    state["cancelled"] = True
                    break
                _step(model, tokenizer, group, optimizer, scaler, state, config.clip)
                schedule.step()
                state["known"] = _check(model, tokenizer, examples, config, state, total)
                if on_step is not None:
                    on_step(state["step"], total, state["loss"], state["known"])
                if state["step"] >= total or state["known"] == len(examples) and config.until == "recall":
                    break
            if state["cancelled"] or state["known"] == len(examples) and config.until == "recall":
                break
    except KeyboardInterrupt:
        state["cancelled"] = True
    except torch.OutOfMemoryError:
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        raise LorachatError(f"out of GPU memory while training (batch={config.batch}, max_len={config.max_len}, "
                            f"r={config.r}): lower batch (raise grad_accum to keep the same step), max_len or r, "
                            "or use checkpointing=on") from None
    finally:
        optimizer.zero_grad(set_to_none=True)
        if config.checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
    known = state["known"] if state["known"] is not None and not state["cancelled"] else recall(model, tokenizer, examples)
    return TrainResult(steps=state["step"], loss=state["loss"], recall=known, total=len(examples),
                       seconds=time.perf_counter() - start, cancelled=state["cancelled"], tokens=state["tokens"],
                       epochs=state["step"] / per_epoch)


def _epoch(encoded, order: random.Random, config):
    """One shuffled pass, as optimizer steps: each a list of batches (grad_accum of them) of
    (index, (input_ids, labels))."""
    indices = list(range(len(encoded)))
    order.shuffle(indices)
    batches = chunks([(i, encoded[i]) for i in indices], config.batch)
    return chunks(batches, config.grad_accum)


def _step(model, tokenizer, group, optimizer, scaler, state, clip: float):
    import torch
    import torch.nn.functional as F

    device = model_device(model)
    answer_tokens = sum(sum(1 for t in labs[1:] if t != IGNORE) for batch in group for _, (_, labs) in batch)
    loss_sum = 0.0
    for batch in group:
        input_ids, labels, mask = collate([item for _, item in batch], padding_id(tokenizer), device)
        with autocast(model):
            shifted, targets, rows = answer_logits(model, input_ids, labels, mask)
        # summed then divided by the step's answer tokens: every answer token weighs the same
        loss = F.cross_entropy(shifted, targets, reduction="sum") / answer_tokens
        scaler.scale(loss).backward() if scaler else loss.backward()
        loss_sum += loss.item()
        state["tokens"] += int(mask.sum())
        # free hint for the recall check: which examples this (train-mode) pass already gets right
        for (index, _), ok in zip(batch, known(shifted.detach(), targets, rows, len(batch)).tolist()):
            state["seen"][index] = ok
    if clip:
        if scaler:
            scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state["step"] += 1
    state["loss"] = loss_sum


def _check(model, tokenizer, examples, config, state, total):
    """Recall after this step, when it is worth a forward pass: once the training passes got
    every example right (a free hint, but in train mode with dropout, before the update), every
    CHECK_EVERY steps in case dropout hides it, and at the last step. None when not checked."""
    last = state["step"] >= total
    if config.until != "recall" and not last:
        return None
    hinted = len(state["seen"]) == len(examples) and all(state["seen"].values())
    if hinted or last or state["step"] % CHECK_EVERY == 0:
        return recall(model, tokenizer, examples)
    return None


CHECK_EVERY = 10


def _optimizer(model, params, config):
    """AdamW over `params` (no weight decay); with loraplus, PEFT's LoRA+ groups (B at lr * loraplus)."""
    import torch

    # not fused=True: no faster here (the LoRA matrices are tiny), and torch's fused CPU kernel does not
    # bump the parameters' _version, which switch.py's merged-weight cache keys on (bench/RESULTS.md)
    if config.loraplus:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=config.lr, loraplus_lr_ratio=config.loraplus,
                                         weight_decay=0.0)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)


def _schedule(optimizer, config, total: int):
    """The lr schedule over the planned steps: `warmup` steps rising linearly to lr (the first at
    lr/warmup), then constant, or decaying linearly towards 0 over the steps left (as HF Trainer's
    linear: lr * (1 - step/total) without warm-up)."""
    import torch

    warmup = config.warmup

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "linear":
            return max(0.0, 1 - (step - warmup) / max(1, total - warmup))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _scaler(model):
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    import torch

    base = next((p.dtype for p in model.parameters() if not p.requires_grad), None)
    if model_device(model).type == "cuda" and base == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None

