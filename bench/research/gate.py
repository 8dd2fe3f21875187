"""The runtime gate, measured (an opt-in extra, not trained): the adapter answers only questions
whose embedding is near a taught question's; the base answers the rest, exactly as the base.

Does not carry over to plain PEFT, :export or vLLM, which always apply the adapter. Knows nothing
about training or the bench's figures.
"""
from lorachat.core.prompts import IGNORE
from lorachat.scoring import batches


def embed(model, tokenizer, questions: list[str]):
    """Unit vectors: the model's last hidden state, mean-pooled over the question's own tokens (no
    template), as it is now (the caller turns adapters off). On a real model paraphrases land close."""
    import torch

    vectors = []
    model.eval()
    with torch.no_grad():
        for question in questions:
            ids = torch.tensor([tokenizer(question)["input_ids"]], device=batches.model_device(model))
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            vectors.append(torch.nn.functional.normalize(hidden.float().mean(0), dim=0))
    return torch.stack(vectors)


def exact_each(model, tokenizer, ref) -> list[bool]:
    """Per reference question, in order: is the base answer the argmax at every position?"""
    import torch

    flags = []
    model.eval()
    with torch.no_grad():
        for p, a in zip(ref.prompts, ref.answers):
            input_ids, labels, mask = batches.collate([(list(p) + list(a), [IGNORE] * len(p) + list(a))],
                                                      batches.padding_id(tokenizer), batches.model_device(model))
            flags.append(bool(batches.known(*batches.answer_logits(model, input_ids, labels, mask), 1)[0]))
    return flags


def gated(model, tokenizer, probes, probe_texts, taught_texts, background, thresholds) -> dict:
    """kept on the probes when the adapter answers only questions whose similarity to a taught one
    is at least the threshold (the base answers the rest, exactly as the base). Similarity: cosine
    of the embeddings less the mean embedding of `background` questions (the anchors), which
    undoes the anisotropy of LM hidden states (raw cosines are all ~0.9)."""
    import torch
    import torch.nn.functional as F

    with model.disable_adapter():
        mean = embed(model, tokenizer, background).mean(0)
        probe_vectors = F.normalize(embed(model, tokenizer, probe_texts) - mean, dim=1)
        taught_vectors = F.normalize(embed(model, tokenizer, taught_texts) - mean, dim=1)
    sims = (probe_vectors @ taught_vectors.T).max(1).values
    flags = torch.tensor(exact_each(model, tokenizer, probes))
    out = dict(gate_sim_q50=round(float(sims.median()), 4), gate_sim_q90=round(float(sims.quantile(0.9)), 4),
               gate_sim_max=round(float(sims.max()), 4))
    for t in thresholds:
        routed = sims >= t
        out[f"gate{t:g}_routed"] = round(float(routed.float().mean()), 4)
        out[f"gate{t:g}_kept"] = round(float(torch.where(routed, flags, torch.ones_like(flags)).float().mean()), 4)
    return out
