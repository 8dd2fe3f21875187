"""The ask-time gate, measured on a bare PEFT model: lorachat's own decisions (lorachat/routing,
what adapters/gate.py runs in a session), and round 3's cosine gate kept as the baseline it replaced
(the mean-pooled last hidden state less the background's mean, cosine to the nearest taught question).

Does not carry over to plain PEFT, :export or vLLM, which always apply the adapter. Knows nothing
about training or the bench's figures.
"""
from lorachat.scoring import locality


def asked_as(model, tokenizer, pairs, questions, at=None) -> list[str | None]:
    """For each of `questions`: the taught question lorachat's gate has the adapter answer in its
    place (`pairs`: the taught (question, answer)s, default instruction), or None (the base answers)."""
    from lorachat.core.prompts import DEFAULT_INSTRUCTION
    from lorachat.routing import reading, router

    keys = router.Keys([router.Key(q, a, DEFAULT_INSTRUCTION) for q, a in pairs])
    with model.disable_adapter():
        back = reading.background(model, tokenizer)
        decided = [router.decide(model, tokenizer, keys, back, q, router.GATE_AT if at is None else at) for q in questions]
    return [d.asks for d in decided]


def cosine(model, tokenizer, texts, taught, background):
    """Round 3's gate: (similarity, index) of each of `texts` to its nearest of `taught`."""
    import torch
    import torch.nn.functional as F

    def pooled(batch):   # one at a time: no padding in the mean
        with torch.no_grad():
            return torch.stack([model(input_ids=torch.tensor([tokenizer(t)["input_ids"]], device=model.device),
                                      output_hidden_states=True).hidden_states[-1][0].float().mean(0) for t in batch])

    with model.disable_adapter():
        mean = pooled(background).mean(0)
        near = F.normalize(pooled(texts) - mean, dim=1) @ F.normalize(pooled(taught) - mean, dim=1).T
    return near.max(1)


def gated(model, tokenizer, probes, probe_texts, taught_texts, background, thresholds) -> dict:
    """kept on the probes when the adapter answers only questions whose cosine (round 3's gate) to a
    taught one is at least the threshold (the base answers the rest, exactly as the base)."""
    import torch

    sims = cosine(model, tokenizer, probe_texts, taught_texts, background).values
    flags = torch.tensor(locality.exact_each(model, tokenizer, probes))
    out = dict(gate_sim_q50=round(float(sims.median()), 4), gate_sim_q90=round(float(sims.quantile(0.9)), 4),
               gate_sim_max=round(float(sims.max()), 4))
    for t in thresholds:
        routed = sims >= t
        out[f"gate{t:g}_routed"] = round(float(routed.float().mean()), 4)
        out[f"gate{t:g}_kept"] = round(float(torch.where(routed, flags, torch.ones_like(flags)).float().mean()), 4)
    return out
