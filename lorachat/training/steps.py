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
    as one at N*b. `extra` rows (anchors with the base's answers) ride with the first batch; their
    loss, over `extra_tokens` of the whole step, is added with `extra_weight`: cross-entropy on the
    base's answer tokens, or, given `extra_base` (the base's log-probabilities at those positions,
    the rows in order), KL(base || adapted) summed over them. On one process a batch whose rows
    differ much in length goes through in several passes (`passes`): the same sums, less padding."""
    device = model_device(model)
    loss_sum, tokens, hints = 0.0, 0, {}
    blocks = _blocks(extra, extra_base)
    work = [(batch, pass_rows) for number, batch in enumerate(group)
            for pass_rows in passes(list(batch), list(enumerate(extra)) if number == 0 else [], ranks.world)]
    for number, (batch, (mine_rows, riders)) in enumerate(work):
        input_ids, labels, mask = collate([item for _, item in mine_rows] + [item for _, item in riders],
                                          padding_id(tokenizer), device)
        with ranks.accumulating(last=number == len(work) - 1):
            with ranks.autocast():
                shifted, targets, rows = answer_logits(model, input_ids, labels, mask)
            mine = rows < len(mine_rows)
            summed, objective = _objective(shifted, targets, mine, riders, blocks, ranks.world, step_tokens,
                                           extra_tokens, extra_weight)
            ranks.backward(objective)
        loss_sum += summed.item()
        tokens += int(mask.sum())
        ok = known(shifted[mine].detach(), targets[mine], rows[mine], len(mine_rows)).tolist()
        hints.update((index, KNOWN if good else UNKNOWN) for (index, _), good in zip(mine_rows, ok))
    if clip:
        ranks.clip([p for g in optimizer.param_groups for p in g["params"]], clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, tokens, hints


def _objective(shifted, targets, mine, riders, blocks, world, step_tokens, extra_tokens, extra_weight):
    """(the examples' summed answer loss, what this pass backpropagates)."""
    import torch
    import torch.nn.functional as F

    summed = F.cross_entropy(shifted[mine], targets[mine], reduction="sum")
    objective = summed * (world / step_tokens)
    if riders:
        if blocks is None:
            rehearsed = F.cross_entropy(shifted[~mine], targets[~mine], reduction="sum")
        else:
            base = torch.cat([blocks[j] for j, _ in riders])
            rehearsed = F.kl_div(F.log_softmax(shifted[~mine], -1), base, log_target=True, reduction="sum")
        objective = objective + extra_weight * rehearsed * (world / extra_tokens)
    return summed, objective


def _blocks(extra, extra_base):
    """The base's log-probabilities cut per rider row (each row's answer positions, in order)."""
    if extra_base is None or not extra:
        return None
    sizes = [sum(1 for t in labs[1:] if t != IGNORE) for _, labs in extra]
    return list(extra_base.split(sizes))


# rows whose padded width would be this much over their own length go through in a pass of their own
SPREAD = 1.3


def passes(batch, riders, world: int = 1) -> list[tuple[list, list]]:
    """The forward passes for one batch ((index, item) rows) and its riders ((j, item) rows):
    [(rows, riders)]. One pass on several processes (every rank must run the same passes); on one,
    rows sorted by length and cut wherever the next row is over SPREAD times the shortest of its
    pass, so that short questions are not padded to a long conversation's width (the sums are the
    same: the loss of a step is divided by its answer tokens, not by its rows)."""
    if world > 1 or len(batch) + len(riders) < 2:
        return [(batch, riders)]
    tagged = sorted([(len(item[0]), 0, row) for row in batch for item in [row[1]]] +
                    [(len(item[0]), 1, row) for row in riders for item in [row[1]]], key=lambda t: (t[0], t[1]))
    out, current, first = [], ([], []), None
    for length, kind, row in tagged:
        if first is not None and length > SPREAD * first:
            out.append(current)
            current, first = ([], []), None
        first = length if first is None else first
        current[kind].append(row)
    return out + [current]
