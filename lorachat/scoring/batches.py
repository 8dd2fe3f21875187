"""Examples -> padded batches, and what a model makes of them: answer logits, recall, answer loss.

Shared by training (training/trainer.py) and measuring (:eval, the benchmarks). Knows nothing about
optimizers, adapters or files: it runs forward passes on whatever model it is given.
"""
import contextlib
from dataclasses import dataclass

from lorachat.core.prompts import IGNORE, example_ids

# --- batches -----------------------------------------------------------------------------------

@dataclass
class Encoded:
    """The examples that fit, encoded once: `items[k]` is (input_ids, labels) of `examples[k]`."""
    examples: list
    items: list
    skipped: int = 0      # examples longer than the limit, left out
    limit: int = 0        # the most tokens an example may have


def encode(tokenizer, examples, limit: int) -> Encoded:
    """(input_ids, labels) per example; examples longer than `limit` tokens are left out (counted)."""
    kept, items = [], []
    for example in examples:
        item = example_ids(tokenizer, example)
        if len(item[0]) <= limit:
            kept.append(example)
            items.append(item)
    return Encoded(kept, items, len(examples) - len(kept), limit)


def sorted_batches(indices, length, max_rows: int = 16, max_tokens: int = 8192) -> list[list]:
    """`indices` in batches of similar length (sorted by `length(i)`): padding stays low, and a
    batch holds at most `max_rows` rows and `max_tokens` tokens with its padding."""
    batches, current = [], []
    for index in sorted(indices, key=length):
        if current and (len(current) >= max_rows or (len(current) + 1) * length(index) > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    return batches + [current] if current else batches


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


def answer_logits(model, input_ids, labels, mask, positions: bool = False):
    """The logits at answer positions only: (logits, targets, row of each[, position of each]), in fp32.

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
    found = where.nonzero()
    if positions:
        return logits[where].float(), targets[where], found[:, 0], keep[found[:, 1]]
    return logits[where].float(), targets[where], found[:, 0]


def takes_logits_to_keep(model) -> bool:
    import inspect

    model = getattr(model, "module", model)   # through a DDP wrapper
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


# --- measuring ---------------------------------------------------------------------------------

@contextlib.contextmanager
def evaluating(model):
    """`model` in eval mode for the block, and every module back in the mode it had after it.
    Nothing changes when no module is training: model.eval() and .train() walk every module (~1.4 ms
    each on smol with an adapter, which was ~6% of a gate decision's two forward passes)."""
    modules = list(model.modules())
    modes = [module.training for module in modules]
    if not any(modes):
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        model.train(modes[0])   # through the model's own train(): transformers keeps its kernels' mode there
        for module, mode in zip(modules, modes):
            module.training = mode


def eval_batches(model, tokenizer, items, indices=None):
    """For each length-sorted batch of `items` ((input_ids, labels) pairs), in eval mode without
    gradients: (indices in the batch, input_ids, logits, targets, rows, positions) at answer positions."""
    import torch

    indices = range(len(items)) if indices is None else indices
    with evaluating(model), torch.no_grad(), autocast(model):
        for group in sorted_batches(indices, lambda i: len(items[i][0])):
            input_ids, labels, mask = collate([items[i] for i in group], padding_id(tokenizer), model_device(model))
            yield (group, input_ids, *answer_logits(model, input_ids, labels, mask, positions=True))


def known(logits, targets, rows, count: int):
    """Per row: True when the argmax at every answer position is the next answer token."""
    import torch

    wrong = (logits.argmax(-1) != targets).to(torch.int32)
    return torch.zeros(count, dtype=torch.int32, device=wrong.device).index_add_(0, rows, wrong) == 0


def answer_loss(model, tokenizer, examples) -> float:
    """Mean cross-entropy over all answer tokens (prompt tokens excluded), eval mode."""
    return items_loss(model, tokenizer, [example_ids(tokenizer, e) for e in examples])


def items_loss(model, tokenizer, items) -> float:
    """Mean cross-entropy over the labelled tokens of `items` ((input_ids, labels) pairs), eval mode."""
    import torch.nn.functional as F

    total, count = 0.0, 0
    for _, _, logits, targets, _, _ in eval_batches(model, tokenizer, items):
        total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
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
