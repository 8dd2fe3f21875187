"""What a training run is asked to do: the `:train` keys with their defaults (TrainConfig), the lr
by model size, the planned steps, the token limit, the optimizer and lr schedule the keys ask for,
and the record of what was trained. Knows
nothing about the loop (trainer.py), models beyond their size and positions, or files.
"""
import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Optional

from lorachat.models.loader import SMALL_MODEL, base_size, positions
from lorachat.training.lora import ALPHA, DEFAULT_TARGETS, RANK, TRAVEL_RANK, rank_and_alpha

# lr=none picks by model size (docs/training.md, bench/RESULTS.md): 5e-3 teaches the tiny model fastest (7e-3
# diverges); on SmolLM2-135M 3e-3 teaches the ten pairs in 20 steps where 1e-3 takes 30, and the seed's two
# in 7 where 1e-3 takes 13; from 1B parameters (OPT-2.7B: no GPU here to measure it) 1e-3 as before
SMALL_LR, MEDIUM_LR, LARGE_LR = 5e-3, 3e-3, 1e-3
LARGE_MODEL = 1_000_000_000
# anchor rehearsal by the same size rule (bench/RESULTS.md "Locality on smol"): from 50M parameters the
# ask-time gate (adapters/gate.py) keeps unrelated answers exact, which no rehearsal reached (KL along
# 32-token base answers, the best, kept 13.9% at 1.6x plain LoRA's time), so none by default; anchors=N
# still rehearses, with KL at weight 1 along 32 tokens. On random weights (tiny) the gate is off, and
# CE rehearsal of 16-token answers stays (KL loses there: a flipped argmax costs almost no KL)
SMALL_ANCHORS = dict(anchors=4, anchor_weight=0.3, anchor_tokens=16, anchor_loss="ce")
LARGE_ANCHORS = dict(anchors=0, anchor_weight=1.0, anchor_tokens=32, anchor_loss="kl")
# travel=on: an adapter meant to leave lorachat (:export, vLLM, llama.cpp), where no gate keeps the other
# answers, rehearses 2 anchors on every step at weight 2, KL to the base along their 64-token answers, with
# a smaller adapter (lora.TRAVEL_RANK, scale 2) (bench/RESULTS.md, "What leaves lorachat"): on smol's ten
# held-out facts in bf16, ungated, 35.8% of 303 probes kept exactly, 93.2% of the base's answer tokens and
# answers 1.02x its length, where the defaults keep 0.7%, 60% and 0.13x, at ~4x the defaults' training time
TRAVEL = dict(anchors=2, anchor_every=1, anchor_weight=2.0, anchor_tokens=64, anchor_loss="kl")

# context=N trains each taught question also after N earlier turns (planning.in_context); off by default:
# on smol, taught without copies under the gate, the ten came back 10/10 as the 3rd turn of a
# conversation (with the gate off and lr 1e-3: 8/10, 10/10 with context=2)
CONTEXT = 2


@dataclass
class TrainConfig:
    """`:train` keys. lr/steps/batch were chosen by measurement (docs/training.md, bench/RESULTS.md)."""
    r: Optional[int] = field(default=None, metadata={"help": f"LoRA rank (none: {RANK}; {TRAVEL_RANK} with travel=on)", "min": 1, "max": 1024})
    alpha: Optional[float] = field(default=None, metadata={"help": f"LoRA scaling numerator, scale = alpha / r (none: {ALPHA:g}; 2r with travel=on)", "positive": True, "max": 10000})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input", "min": 0, "max": 0.9})
    targets: str = field(default=DEFAULT_TARGETS, metadata={"help": "comma list of module names, or all-linear"})
    steps: int = field(default=500, metadata={"help": "most optimizer steps", "min": 1, "max": 1_000_000})
    epochs: Optional[int] = field(default=None, metadata={"help": "most passes over the examples (none: steps decide)", "min": 1, "max": 100_000})
    lr: Optional[float] = field(default=None, metadata={"help": f"AdamW learning rate (none: {SMALL_LR:g} below {SMALL_MODEL // 10**6}M parameters, {MEDIUM_LR:g} below {LARGE_MODEL // 10**9}B, else {LARGE_LR:g})", "positive": True, "max": 1})
    batch: int = field(default=4, metadata={"help": "examples per forward pass", "min": 1, "max": 4096})
    grad_accum: int = field(default=1, metadata={"help": "forward passes per optimizer step", "min": 1, "max": 1024})
    clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: no clipping)", "min": 0, "max": 1e6})
    schedule: str = field(default="constant", metadata={"help": "lr over the planned steps: constant, or linear decay to 0", "choices": ("constant", "linear")})
    warmup: int = field(default=0, metadata={"help": "steps of linear lr warm-up (lr/warmup, 2 lr/warmup, ... lr; 0: none)", "min": 0, "max": 1_000_000})
    loraplus: Optional[float] = field(default=None, metadata={"help": "LoRA+: the B matrices' lr is lr times this (none: one lr; PEFT's create_loraplus_optimizer)", "min": 1, "max": 1000})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA: scale = alpha / sqrt(r) (PEFT's use_rslora)"})
    max_len: int = field(default=512, metadata={"help": "longest example in tokens (longer ones are left out, and counted)", "min": 8, "max": 131072})
    seed: int = field(default=0, metadata={"help": "seed for the adapter's init, shuffling and dropout", "min": 0, "max": 2**32 - 1})
    guard: bool = field(default=True, metadata={"help": "when the loss climbs back up, return to the best weights and halve the lr"})
    anchors: Optional[int] = field(default=None, metadata={"help": "anchor questions rehearsed with the base's own answers per anchor step, to keep other answers as they were (0: off; none: 4 below 50M parameters, else 0: the ask-time gate keeps them)", "min": 0, "max": 4096})
    anchor_every: Optional[int] = field(default=None, metadata={"help": "rehearse anchors on every N-th step (none: 2; 1 with travel=on)", "min": 1, "max": 1000})
    anchor_weight: Optional[float] = field(default=None, metadata={"help": "weight of the anchors' loss against the examples' (none: 0.3 below 50M parameters, else 1; 2 with travel=on)", "min": 0, "max": 100})
    anchor_tokens: Optional[int] = field(default=None, metadata={"help": "longest base answer rehearsed per anchor, in tokens: long enough that most are not yet over, so short taught answers do not teach an early EOS (none: 16 below 50M parameters, else 32; 64 with travel=on or null_space)", "min": 1, "max": 4096})
    anchor_loss: Optional[str] = field(default=None, metadata={"help": "ce: cross-entropy on the base's greedy answer tokens; kl: KL to the base's whole next-token distribution along that answer (none: ce below 50M parameters, else kl)", "choices": ("ce", "kl")})
    context: int = field(default=0, metadata={"help": f"each question is also trained after this many earlier turns of a conversation (anchor questions with the base's answers), so it comes back mid-conversation without the gate too (0: alone only; {CONTEXT} was measured)", "min": 0, "max": 16})
    anchor_pool: int = field(default=64, metadata={"help": "how many of the built-in anchor questions (their base answers made once)", "min": 1, "max": 100_000})
    probes: int = field(default=32, metadata={"help": "built-in probe questions the final line's kept share is measured on (0: not measured; :eval uses all 303)", "min": 0, "max": 100_000})
    keep_base: Optional[float] = field(default=None, metadata={"help": "until=recall also waits until this share of the anchors is answered as the base did (none: recall alone)", "positive": True, "max": 1})
    null_space: float = field(default=0.0, metadata={"help": "keep the adapter off what the base's ordinary text uses: each lora_A held orthogonal to the directions carrying all but this share of its layer's input energy on the anchors (0: off; 0.05 measured on smol: ungated answers keep the base's length, at ~1.7x the time)", "min": 0, "max": 1})
    travel: bool = field(default=False, metadata={"help": "an adapter meant to leave lorachat (:export, lorachat serve, GGUF), where no gate keeps the other answers: each `none` anchor key, r and alpha as measured best for that (anchors=2 every step at weight 2, KL along 64 tokens, r=4 at alpha 8; about 4x the time), and the final line measures what it will serve"})
    checkpointing: bool = field(default=False, metadata={"help": "gradient checkpointing: less memory, ~30% slower"})
    until: str = field(default="recall", metadata={"help": "recall: stop when every answer comes back verbatim; steps: run them all", "choices": ("recall", "steps")})
    keep: str = field(default="final", metadata={"help": "on Ctrl-C: final discards the adapter, partial saves it", "choices": ("final", "partial")})


DEFAULTS = TrainConfig()


def resolved(model, config: TrainConfig) -> TrainConfig:
    """`config` with each `none` replaced by what it means: by model size (lr and the anchor keys),
    by travel=on (the anchor keys, r and alpha); what is trained and recorded."""
    if config.r is None or config.alpha is None:
        r, alpha = rank_and_alpha(config)
        config = replace(config, r=r, alpha=alpha)
    unset = [key for key in ("lr", "anchor_every", *LARGE_ANCHORS) if getattr(config, key) is None]
    if not unset:
        return config
    size = base_size(model)
    chosen = dict(lr=SMALL_LR, anchor_every=2, **SMALL_ANCHORS) if size < SMALL_MODEL else \
        dict(lr=MEDIUM_LR if size < LARGE_MODEL else LARGE_LR, anchor_every=2, **LARGE_ANCHORS)
    if config.null_space:   # the anchors' inputs the null space is measured on: 64 tokens of each answer, as measured
        chosen["anchor_tokens"] = TRAVEL["anchor_tokens"]
    if config.travel:
        chosen.update(TRAVEL)
    return replace(config, **{key: chosen[key] for key in unset})


def travels(config) -> bool:
    """Whether `config` teaches an adapter meant to leave lorachat (travel=on or null_space), whose
    final line measures it ungated."""
    return bool(getattr(config, "travel", False) or getattr(config, "null_space", 0))


def planned_steps(count: int, config: TrainConfig, world: int = 1) -> int:
    """The most optimizer steps `run` will take for `count` examples on `world` ranks (`batch` is per rank)."""
    per_epoch = math.ceil(count / (config.batch * config.grad_accum * world))
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
    record = {"instruction": example.instruction, "input": example.input, "output": example.output}
    return record | ({"history": [list(turn) for turn in example.history]} if example.history else {})


# --- the loop ----------------------------------------------------------------------------------

def describe_limit(limit: int, model) -> str:
    """'the model's 512 positions' or 'max_len=256 (raise max_len to include them, up to the model's P positions)'."""
    most = positions(model)
    if most is not None and limit >= most:
        return f"the model's {most} positions"
    return f"max_len={limit} (raise max_len to include them" + (f", up to the model's {most} positions)" if most else ")")


def no_examples(encoded, model) -> str:
    if not encoded.skipped:
        return "no examples to train on"
    return f"all {encoded.skipped} examples are longer than {describe_limit(encoded.limit, model)}: nothing to train on"


def out_of_memory(config) -> str:
    return (f"out of GPU memory while training (batch={config.batch}, max_len={config.max_len}, r={config.r}): "
            "lower batch (raise grad_accum to keep the same step), max_len or r, or use checkpointing=on")


def make_optimizer(model, params, config: TrainConfig):
    """AdamW over `params` (no weight decay); with loraplus, PEFT's LoRA+ groups (B at lr * loraplus)."""
    import torch

    # not fused=True: no faster here (the LoRA matrices are tiny), and torch's fused CPU kernel does not
    # bump the parameters' _version, which adapters/switching.py's merged-weight cache keys on (bench/RESULTS.md)
    if config.loraplus:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=config.lr, loraplus_lr_ratio=config.loraplus,
                                         weight_decay=0.0)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)


def make_schedule(optimizer, config: TrainConfig, total: int):
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
