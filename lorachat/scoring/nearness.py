"""How near two questions are, by the model's own reading of them: what the ask-time gate
(adapters/gate.py) routes by.

A question's vector is the model's last hidden state, mean-pooled over the question's own tokens
(no template, no instruction), less a background mean (the built-in anchor questions'), normalised:
LM hidden states are anisotropic (raw cosines of unrelated questions are ~0.9), and taking the
mean off spreads them (on SmolLM2-135M, paraphrases of a question land at 0.5 and above, most
unrelated questions below; bench/RESULTS.md). Model-level: the caller decides which adapter, if
any, is on (the gate reads with the base). Knows nothing about sessions or adapters.
"""
from lorachat.scoring.batches import model_device, padding_id, takes_logits_to_keep

BACKGROUND = 64       # anchor questions whose mean vector is taken off


def embed(model, tokenizer, questions: list[str]):
    """One row per question: the last hidden state mean-pooled over its own tokens (float32), from
    one right-padded batch, no gradient, eval mode."""
    import torch

    rows = [tokenizer(q)["input_ids"] or [padding_id(tokenizer)] for q in questions]
    width = max(len(r) for r in rows)
    device = model_device(model)
    ids = torch.tensor([r + [padding_id(tokenizer)] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    # the vocabulary projection at one position only, where the model takes that knob: its logits
    # are not read (on smol a fifth of the pass)
    keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **keep).hidden_states[-1].float()
    finally:
        model.train(was_training)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def background_questions() -> list[str]:
    """The first BACKGROUND built-in anchor questions."""
    from lorachat.scoring import locality

    return locality.builtin(locality.ANCHORS)[:BACKGROUND]


def background(model, tokenizer):
    """The mean vector of the background questions."""
    return embed(model, tokenizer, background_questions()).mean(0)


def vectors(model, tokenizer, questions: list[str], mean):
    """Unit vectors of `questions` with `mean` (background's) taken off: their dot products are the
    cosines the gate compares with gate_at."""
    import torch.nn.functional as F

    return F.normalize(embed(model, tokenizer, questions) - mean, dim=1)
