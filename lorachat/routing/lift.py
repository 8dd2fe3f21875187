"""How much a question makes a taught answer likelier, as the base reads it: the gate's check
(router.py).

The lift of an answer by a question is log P(answer | the question asked) - log P(answer | NULL
asked), summed over the answer's tokens (EOS included), both under the same instruction and the
prompt rule asking uses. A rephrasing of the taught question lifts the taught answer about as much
as the taught question does (its subject, its relation: the answer copies them); a look-alike
does not ("Who is the mayor of Berlin?" makes "The mayor of Zorbville is ..." less likely, not
more). The share `lift(question) / lift(taught question)` is what `:set gate_at` compares with
(bench/RESULTS.md, "Gate 2").

Model-level: the caller decides which adapter, if any, is on. Knows nothing about sessions,
adapters or files.
"""
from lorachat.core.prompts import answer_ids, prompt_ids
from lorachat.scoring.batches import answer_logits, autocast, collate, evaluating, model_device, padding_id, sorted_batches

NULL = "Tell me something."   # a question that asks nothing in particular
FLOOR = 1.0                   # nats: a taught question that lifts its answer less is counted as lifting it this much


def logprobs(model, tokenizer, rows: list[tuple[str, str, str]]) -> list[float]:
    """Σ log P(answer tokens | prompt) for each (instruction, question, answer), eval mode, no
    gradient, in length-sorted batches."""
    import torch

    items = []
    for instruction, question, answer in rows:
        prompt = prompt_ids(tokenizer, instruction, question)
        target = answer_ids(tokenizer, instruction, question, answer, prompt)
        items.append((prompt + target, [-100] * len(prompt) + target))
    out = [0.0] * len(items)
    with evaluating(model), torch.no_grad(), autocast(model):
        for group in sorted_batches(range(len(items)), lambda i: len(items[i][0]), max_rows=16):
            input_ids, labels, mask = collate([items[i] for i in group], padding_id(tokenizer), model_device(model))
            logits, targets, where = answer_logits(model, input_ids, labels, mask)
            picked = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
            sums = torch.zeros(len(group), device=picked.device).index_add_(0, where, picked)
            for row, index in enumerate(group):
                out[index] = float(sums[row])
    return out


def share(asked: float, taught: float, null: float) -> float:
    """How much of the taught question's lift of its answer `asked` gives it (1.0: as much; log
    probabilities of the answer after the question asked, the taught question, NULL)."""
    return (asked - null) / max(taught - null, FLOOR)
