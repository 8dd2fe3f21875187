"""One optimizer step of the training loop (trainer.py), and the order its batches come in.

The step runs its grad_accum micro-batches through the model (accelerate's accumulation, autocast
and backward via ranks.Ranks), with the loss on answer tokens divided by the answer tokens
of the whole step on every rank, anchor rows riding in the first pass, clipping, and the free
recall hint each pass's argmax gives. Knows nothing about stopping, checks or sessions.
"""
import random

from lorachat.core.prompts import IGNORE
from lorachat.scoring.batches import (
    answer_logits,
    collate,
    known,
    model_device,
    padding_id,
)

KNOWN, UNKNOWN = 1.0, 2.0   # an example's hint from its latest training pass (the max across ranks is the
                            # pessimistic one where accelerate's even batches repeat an example)


class Shuffled:
    """Example indices in a new seeded order each epoch, the same on every rank (accelerate's
    prepared loader then gives each rank its share of each global batch)."""

    def __init__(self, count: int, seed: int):
        self.count, self.order = count, random.Random(seed)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        indices = list(range(self.count))
        self.order.shuffle(indices)
        return iter(indices)


def optimizer_steps(loader, grad_accum: int):
    """One pass over the loader, as optimizer steps: lists of grad_accum batches of indices."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == grad_accum:
            yield group
            group = []
    if group:
        yield group


def answer_tokens(group) -> int:
    return sum(sum(1 for t in labs[1:] if t != IGNORE) for batch in group for _, (_, labs) in batch)


def one_step(model, tokenizer, group, optimizer, ranks, clip: float, step_tokens: float, extra=(),
          extra_tokens: float = 0.0, extra_weight: float = 0.0, extra_base=None):
    """One optimizer step over `group` (grad_accum batches of (index, (input_ids, labels)));
    (answer-token loss summed on this rank, its non-pad tokens, {index: KNOWN or UNKNOWN} from
    this pass's argmax). The loss is divided by `step_tokens`, the answer tokens of the whole step
    on every rank (times the ranks, which DDP averages over), so N ranks at batch b train exactly
    as one at N*b. `extra` rows (anchors with the base's answers) ride in the first pass; their
    loss, over `extra_tokens` of the whole step, is added with `extra_weight`: cross-entropy on the
    base's answer tokens, or, given `extra_base` (the base's log-probabilities at those positions),
    KL(base || adapted) summed over them."""
    import torch.nn.functional as F

    device = model_device(model)
    loss_sum, tokens, hints = 0.0, 0, {}
    for number, batch in enumerate(group):
        riders = list(extra) if number == 0 else []
        input_ids, labels, mask = collate([item for _, item in batch] + riders, padding_id(tokenizer), device)
        with ranks.accumulating(last=number == len(group) - 1):
            with ranks.autocast():
                shifted, targets, rows = answer_logits(model, input_ids, labels, mask)
            mine = rows < len(batch)
            summed = F.cross_entropy(shifted[mine], targets[mine], reduction="sum")
            objective = summed * (ranks.world / step_tokens)
            if riders:
                if extra_base is None:
                    rehearsed = F.cross_entropy(shifted[~mine], targets[~mine], reduction="sum")
                else:
                    rehearsed = F.kl_div(F.log_softmax(shifted[~mine], -1), extra_base, log_target=True, reduction="sum")
                objective = objective + extra_weight * rehearsed * (ranks.world / extra_tokens)
            ranks.backward(objective)
        loss_sum += summed.item()
        tokens += int(mask.sum())
        ok = known(shifted[mine].detach(), targets[mine], rows[mine], len(batch)).tolist()
        hints.update((index, KNOWN if good else UNKNOWN) for (index, _), good in zip(batch, ok))
    if clip:
        ranks.clip([p for g in optimizer.param_groups for p in g["params"]], clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, tokens, hints
