"""Examples -> padded batches, and what a model makes of them: answer logits, recall, answer loss.

Shared by training (train.py) and measuring (:eval, the benchmarks). Knows nothing about
optimizers, adapters or files: it runs forward passes on whatever model it is given.
"""
import contextlib

from lorachat.errors import LorachatError
from lorachat.prompts import IGNORE, example_ids

# --- batches -----------------------------------------------------------------------------------

def encode(tokenizer, examples, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; one refusing line when an example does not fit max_len."""
    encoded = [example_ids(tokenizer, e) for e in examples]
    for number, (ids, _) in enumerate(encoded, 1):
        if len(ids) > max_len:
            raise LorachatError(f"example {number} is {len(ids)} tokens, longer than max_len={max_len}: "
                                "raise max_len or shorten it")
    return encoded


def collate(items, pad_id: int, device):
    """Right-padded tensors for one batch, padded only to its longest example."""
    import torch

    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(items):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(labs)] = torch.tensor(labs)
        mask[row, :len(ids)] = 1
    return input_ids.to(device), labels.to(device), mask.to(device)


def chunks(items, size):
    # longest first inside the batch list keeps padding low without changing what is trained on
    return [items[i:i + size] for i in range(0, len(items), size)]


def padding_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def model_device(model):
    return next(p for p in model.parameters()).device


def answer_logits(model, input_ids, labels, mask):
    """The logits at answer positions only: (logits, targets, row of each), in fp32.

    Logits at position t predict label t+1. Where the model takes `logits_to_keep` (transformers'
    own knob), the vocabulary projection runs only at positions where some row has an answer
    token next, not over the prompts and padding; the cross-entropy and argmax then work on a
    contiguous (K, vocab) block of the K answer positions."""
    keep = (labels[:, 1:] != IGNORE).any(0).nonzero()[:, 0]
    if takes_logits_to_keep(model):
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, keep]
    targets = labels[:, keep + 1]
    where = targets != IGNORE
    return logits[where].float(), targets[where], where.nonzero()[:, 0]


def takes_logits_to_keep(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


# --- measuring ---------------------------------------------------------------------------------

def eval_batches(model, tokenizer, examples, batch: int = 16):
    import torch

    encoded = [example_ids(tokenizer, e) for e in examples]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(model):
            for items in chunks(encoded, batch):
                input_ids, labels, mask = collate(items, padding_id(tokenizer), model_device(model))
                yield (*answer_logits(model, input_ids, labels, mask), len(items))
    finally:
        model.train(was_training)


def known(logits, targets, rows, count: int):
    """Per row: True when the argmax at every answer position is the next answer token."""
    import torch

    wrong = (logits.argmax(-1) != targets).to(torch.int32)
    return torch.zeros(count, dtype=torch.int32, device=wrong.device).index_add_(0, rows, wrong) == 0


def recall(model, tokenizer, examples, batch: int = 16) -> int:
    """How many examples greedy decoding reproduces verbatim: teacher-forced argmax, eval mode,
    one forward pass per batch (no generation)."""
    return sum(int(known(*parts).sum()) for parts in eval_batches(model, tokenizer, examples, batch))


def answer_loss(model, tokenizer, examples, batch: int = 16) -> float:
    """Mean cross-entropy over all answer tokens (prompt tokens excluded), eval mode."""
    import torch.nn.functional as F

    total, count = 0.0, 0
    for logits, targets, _, _ in eval_batches(model, tokenizer, examples, batch):
        total += float(F.cross_entropy(logits, targets, reduction="sum"))
        count += len(targets)
    return total / max(count, 1)


# --- precision ---------------------------------------------------------------------------------

def autocast(model):
    """On a GPU with a half-precision base: autocast to it, so fp32 LoRA weights meet bf16/fp16 maths."""
    import torch

    param = next(p for p in model.parameters())
    dtype = next((p.dtype for p in model.parameters() if not p.requires_grad), param.dtype)
    if param.device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
