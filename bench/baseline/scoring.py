"""One yardstick for both sides: answer-token loss and recall on the seed's own rendering of the pairs.

The seed trains `Instruction: ...\\nInput: ...\\nAnswer: {output}` with no EOS, so its loss and recall
are taken on exactly those answer tokens: the mean cross-entropy of the answer tokens after the
training prompt (EOS not counted, since the seed never learns one), and "recalled" = the greedy
continuation of the training prompt starts with the answer (an answer that runs on still counts).
lorachat's prompt for a tokenizer without a chat template (the benchmark's) is the same text, so
lorachat is scored on the same tokens. Knows nothing about how either side trains.
"""
from bench.baseline.notebook import prompt, seed_tokenizer, text


def answer_rows(tokenizer, examples) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per pair: the seed's text, labels only on the answer's tokens."""
    from lorachat.core.prompts import IGNORE

    out = []
    for example in examples:
        head = tokenizer(prompt(example))["input_ids"]
        full = tokenizer(text(example))["input_ids"]
        if full[:len(head)] != head:
            raise RuntimeError(f"the prompt's tokens are not a prefix of the training text: {prompt(example)!r}")
        out.append((full, [IGNORE] * len(head) + full[len(head):]))
    return out


def answer_loss(model, tokenizer, examples) -> float:
    """Mean cross-entropy over every answer token of every pair (eval mode, no gradients)."""
    from lorachat.scoring.batches import items_loss

    return items_loss(model, tokenizer, answer_rows(tokenizer, examples))


def recall(model, tokenizer, examples) -> int:
    """How many pairs' training prompts greedy decoding continues with the answer (one batched,
    left-padded generate call, eval mode). A row stops as soon as its text has the answer or has
    left it, so an untrained model costs a few tokens, not the longest answer."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    tokenizer = seed_tokenizer(tokenizer)
    tokenizer.padding_side = "left"
    answers = [e.output.strip() for e in examples]
    longest = max(len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in answers)
    device = next(model.parameters()).device
    batch = tokenizer([prompt(e) for e in examples], return_tensors="pt", padding=True).to(device)
    width = batch["input_ids"].shape[1]

    def said(ids) -> list[str]:
        return [t.lstrip() for t in tokenizer.batch_decode(ids[:, width:], skip_special_tokens=True)]

    class Settled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = [t.startswith(a) or not a.startswith(t) for t, a in zip(said(input_ids), answers)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=longest + 1, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([Settled()]))
    finally:
        model.train(was_training)
    return sum(t.startswith(a) for t, a in zip(said(out), answers))
