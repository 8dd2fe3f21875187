"""The LoRA training loop: examples -> answer-only loss -> optimizer steps until every answer is known.

A plain torch loop (measured against HF Trainer: see README "Training"): dynamic padding per batch,
loss on answer tokens only, recall checked by one teacher-forced forward pass in eval mode. Reports
progress through `on_step` and never prints; knows nothing about terminals, sessions or files — the
caller creates the adapter (adapters.add_new), activates it, and saves or discards it afterwards.
"""
import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Optional

from lorachat.batches import Encoded, answer_logits, autocast, chunks, collate, encode, known, model_device, padding_id
from lorachat.errors import LorachatError
from lorachat.guard import Guard
from lorachat.models import positions
from lorachat.prompts import IGNORE
from lorachat.recall import Asking, Recall
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
    max_len: int = field(default=512, metadata={"help": "longest example in tokens (longer ones are left out, and counted)", "min": 8, "max": 131072})
    seed: int = field(default=0, metadata={"help": "seed for the adapter's init, shuffling and dropout", "min": 0, "max": 2**32 - 1})
    guard: bool = field(default=True, metadata={"help": "when the loss climbs back up, return to the best weights and halve the lr"})
    checkpointing: bool = field(default=False, metadata={"help": "gradient checkpointing: less memory, ~30% slower"})
    until: str = field(default="recall", metadata={"help": "recall: stop when every answer comes back verbatim; steps: run them all", "choices": ("recall", "steps")})
    keep: str = field(default="final", metadata={"help": "on Ctrl-C: final discards the adapter, partial saves it", "choices": ("final", "partial")})


DEFAULTS = TrainConfig()


@dataclass
class TrainResult:
    steps: int            # optimizer steps taken
    loss: float           # mean answer-token loss of the last step (nan before any)
    recall: int           # k: questions that come back verbatim when asked (recall.Recall)
    total: int            # n: questions trained on (raw-text examples are trained, not asked)
    seconds: float
    cancelled: bool = False
    tokens: int = 0       # non-pad tokens processed by training forward passes
    epochs: float = 0.0
    skipped: int = 0      # examples longer than `limit` tokens, left out
    limit: int = 0
    known: int = 0        # examples (text included) known as trained: what until=recall waits for
    examples: int = 0     # examples trained on (text included)
    check_seconds: float = 0.0   # of `seconds`, spent on recall checks
    reasons: list = field(default_factory=list)  # why some questions cannot come back whole when asked
    max_answer_tokens: int | None = None         # the longest taught answer, EOS not counted
    notes: list = field(default_factory=list)    # what the divergence guard did
    lr: float = 0.0                              # the lr at the end (lower when the guard halved it)


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
    most = positions(model)
    return min(config.max_len, most) if most else config.max_len


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


def run(model, tokenizer, data, config: TrainConfig, on_step=None, should_stop=None, asking=None) -> TrainResult:
    """Train the model's trainable (LoRA) parameters on `data` (examples, or batches.encode's
    result); the base stays frozen. Examples longer than max_len (or the model's positions) are
    left out and counted. Recall is reported as asking under `asking` would return it.

    Stops at `config.steps` or `config.epochs`, when every answer is known (`until=recall`), or at
    the next step boundary once `should_stop()` is true or Ctrl-C arrives (cancelled=True)."""
    import torch

    config = resolved(model, config)
    encoded = data if isinstance(data, Encoded) else encode(tokenizer, data, max_tokens(model, config))
    if not encoded.items:
        raise LorachatError(no_examples(encoded, model))
    params = trainable(model)
    if not params:
        raise LorachatError("the model has no trainable (adapter) parameters")
    asking = asking or Asking(context=positions(model) or 1 << 20)
    checker = Recall(tokenizer, encoded.examples, encoded.items, asking)
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        result = _Loop(model, tokenizer, encoded, checker, config, params, on_step, should_stop).run()
    return dataclasses.replace(result, skipped=encoded.skipped, limit=encoded.limit)


def no_examples(encoded, model) -> str:
    if not encoded.skipped:
        return "no examples to train on"
    return f"all {encoded.skipped} examples are longer than {describe_limit(encoded.limit, model)}: nothing to train on"


def describe_limit(limit: int, model) -> str:
    """'the model's 512 positions' or 'max_len=256 (max_len=N takes more, up to the model's P positions)'."""
    most = positions(model)
    if most is not None and limit >= most:
        return f"the model's {most} positions"
    return f"max_len={limit} (raise max_len to include them" + (f", up to the model's {most} positions)" if most else ")")


class _Loop:
    """One training run's state: the optimizer, where it is, what the training passes showed."""

    def __init__(self, model, tokenizer, encoded, checker, config, params, on_step, should_stop):
        import torch

        self.model, self.tokenizer, self.items, self.checker = model, tokenizer, encoded.items, checker
        self.config, self.params, self.on_step, self.should_stop = config, params, on_step, should_stop
        # constant lr by default: with until=recall the last step is not known; linear decay (as HF
        # Trainer) is schedule=linear. Clipping at 1.0 (HF's default) keeps a too-high lr from diverging.
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        self.scaler = _scaler(model)
        self.order = random.Random(config.seed)
        self.per_epoch = math.ceil(len(self.items) / (config.batch * config.grad_accum))
        self.total = planned_steps(len(self.items), config)
        self.schedule = _schedule(self.optimizer, config, self.total)
        self.step, self.loss, self.tokens, self.cancelled = 0, float("nan"), 0, False
        self.seen = {}              # example index -> known in its latest training pass (a free hint)
        self.complete = False       # the last check found every example known
        self.check_seconds, self.last_check, self.since_check = 0.0, 0.0, 0.0
        self.guard = Guard(params, self.optimizer, self.schedule, window=max(2 * self.per_epoch, GUARD_WINDOW))

    def run(self) -> TrainResult:
        import torch

        start = time.perf_counter()
        if self.config.checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        try:
            while self.step < self.total and not self._done():
                for group in _epoch(self.items, self.order, self.config):
                    if self.should_stop is not None and self.should_stop():
                        self.cancelled = True
                    if self._done():
                        break
                    self._step(group)
                    if self.step >= self.total:
                        break
        except KeyboardInterrupt:
            self.cancelled = True
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            raise LorachatError(_out_of_memory(self.config)) from None
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            if self.config.checkpointing:
                self.model.gradient_checkpointing_disable()
            self.model.eval()
        notes = self.guard.describe()
        if self.config.guard and not self.cancelled and self.guard.finish():
            self.complete = False
            notes.append(f"the run ended with the loss climbing: kept step {self.guard.best_step}'s weights")
        return dataclasses.replace(self._result(start), notes=notes, lr=self.optimizer.param_groups[0]["lr"])

    def _done(self) -> bool:
        return self.cancelled or self.complete and self.config.until == "recall"

    def _step(self, group) -> None:
        began = time.perf_counter()
        self.loss = _step(self.model, self.tokenizer, group, self.optimizer, self.scaler, self, self.config.clip)
        self.schedule.step()
        self.step += 1
        if self.config.guard:
            self.guard.after_step(self.step, self.loss)
        self.since_check += time.perf_counter() - began
        self._check()
        if self.on_step is not None:
            self.on_step(self.step, self.total, self.loss, sum(self.seen.values()))

    def _check(self) -> None:
        """Between steps, with until=recall: whether every example is known now. Run when the
        training passes themselves got every example right (their argmax is the hint, exact with
        dropout 0 but one update behind), and every CHECK_EVERY steps in case dropout hides it,
        then only while checks stay under a tenth of the training time. A failing check stops
        at its first unknown example, the likely ones checked first."""
        if self.config.until != "recall" or self.step >= self.total:
            return  # the last step's check is the final one, in _result
        hinted = len(self.seen) == len(self.items) and all(self.seen.values())
        due = self.step % CHECK_EVERY == 0 and self.since_check >= CHECK_SHARE * self.last_check
        if not (hinted or due):
            return
        began = time.perf_counter()
        self.complete = self.checker.all_known(self.model, [i for i, ok in self.seen.items() if not ok])
        self.last_check = time.perf_counter() - began
        self.check_seconds += self.last_check
        self.since_check = 0.0

    def _result(self, start: float) -> TrainResult:
        """The final check, full and exact (skipped for a cancelled run that is discarded)."""
        began = time.perf_counter()
        if self.cancelled and self.config.keep != "partial":
            trained, recalled = [False] * len(self.items), 0
        else:
            complete = self.complete and self.step < self.total or None
            trained, recalled = self.checker.count(self.model, [self.seen.get(i, False) for i in range(len(self.items))],
                                                   trained=[True] * len(self.items) if complete else None)
        self.check_seconds += time.perf_counter() - began
        return TrainResult(steps=self.step, loss=self.loss, recall=recalled, total=len(self.checker.questions),
                           seconds=time.perf_counter() - start, cancelled=self.cancelled, tokens=self.tokens,
                           epochs=self.step / self.per_epoch, known=sum(trained), examples=len(self.items),
                           check_seconds=self.check_seconds, reasons=self.checker.reasons(),
                           max_answer_tokens=self.checker.longest_answer())


def _out_of_memory(config) -> str:
    return (f"out of GPU memory while training (batch={config.batch}, max_len={config.max_len}, r={config.r}): "
            "lower batch (raise grad_accum to keep the same step), max_len or r, or use checkpointing=on")


def _epoch(items, order: random.Random, config):
    """One shuffled pass, as optimizer steps: each a list of batches (grad_accum of them) of
    (index, (input_ids, labels))."""
    indices = list(range(len(items)))
    order.shuffle(indices)
    batches = chunks([(i, items[i]) for i in indices], config.batch)
    return chunks(batches, config.grad_accum)


def _step(model, tokenizer, group, optimizer, scaler, run, clip: float) -> float:
    """One optimizer step over `group` (grad_accum batches); the step's mean answer-token loss.
    Records in `run.seen` which examples this pass already got right, and counts `run.tokens`."""
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
        run.tokens += int(mask.sum())
        for (index, _), ok in zip(batch, known(shifted.detach(), targets, rows, len(batch)).tolist()):
            run.seen[index] = ok
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
    return loss_sum


CHECK_EVERY = 10      # steps between checks when the training passes give no hint
GUARD_WINDOW = 10     # steps the divergence guard smooths the loss over (at least two epochs)
CHECK_SHARE = 9.0     # ... and only after this many times the last check's cost in training


def _schedule(optimizer, config, total: int):
    """The lr schedule over the planned steps (as HF Trainer's linear: lr * (1 - step/total))."""
    import torch

    if config.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _scaler(model):
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    import torch

    base = next((p.dtype for p in model.parameters() if not p.requires_grad), None)
    if model_device(model).type == "cuda" and base == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None

