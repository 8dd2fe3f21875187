"""The ask-time gate, measured on a bare PEFT model (lorachat's is adapters/gate.py, on by default
from 50M parameters): the adapter answers only questions whose vector (scoring/nearness.py) is near
a taught question's; the base answers the rest, exactly as the base.

Does not carry over to plain PEFT, :export or vLLM, which always apply the adapter. Knows nothing
about training or the bench's figures.
"""
from lorachat.scoring import locality, nearness


def gated(model, tokenizer, probes, probe_texts, taught_texts, background, thresholds) -> dict:
    """kept on the probes when the adapter answers only questions whose similarity to a taught one
    is at least the threshold (the base answers the rest, exactly as the base). Similarity: cosine
    of the embeddings less the mean embedding of `background` questions (the anchors), which
    undoes the anisotropy of LM hidden states (raw cosines are all ~0.9)."""
    import torch

    with model.disable_adapter():
        mean = nearness.embed(model, tokenizer, background).mean(0)
        probe_vectors, taught_vectors = (nearness.vectors(model, tokenizer, texts, mean) for texts in (probe_texts, taught_texts))
    sims = (probe_vectors @ taught_vectors.T).max(1).values
    flags = torch.tensor(locality.exact_each(model, tokenizer, probes))
    out = dict(gate_sim_q50=round(float(sims.median()), 4), gate_sim_q90=round(float(sims.quantile(0.9)), 4),
               gate_sim_max=round(float(sims.max()), 4))
    for t in thresholds:
        routed = sims >= t
        out[f"gate{t:g}_routed"] = round(float(routed.float().mean()), 4)
        out[f"gate{t:g}_kept"] = round(float(torch.where(routed, flags, torch.ones_like(flags)).float().mean()), 4)
    return out
