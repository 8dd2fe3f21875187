"""How the base reads a question's words in its first layers: the gate's shortlist (router.py).

A reading is one vector per token: the hidden state after decoder layer LAYER (the first layers
hold what a word is more than what the sentence asks), less the background's mean and over its
spread in each dimension (transformer states have a few huge dimensions that would otherwise decide
every cosine), normalised; and each token's weight, its inverse document frequency over the
built-in anchor questions (a word every question has says little about which question it is).
`coverage` of a key by a question is the weighted share of the key's tokens the question has a
near token for: rephrasings keep a taught question's rare words (its subject), other questions do
not (bench/RESULTS.md, "Gate 2"). The forward pass stops after LAYER: about a tenth of one.

Model-level: the caller decides which adapter, if any, is on. Knows nothing about sessions,
adapters or answers.
"""
import math
from dataclasses import dataclass

from lorachat.scoring.batches import evaluating, model_device, padding_id

LAYER = 2             # decoder layers read (of smol's 30); 1..4 measured alike on the tune set
BACKGROUND = 64       # built-in anchor questions whose token states set the mean and spread


@dataclass(frozen=True)
class Reading:
    vectors: object   # (tokens, hidden) float32, unit rows
    weights: object   # (tokens,) float32, inverse document frequency


@dataclass(frozen=True)
class Background:
    mean: object      # (hidden,) of the background questions' token states at LAYER
    spread: object    # (hidden,) their standard deviation (floored)
    idf: dict         # token id -> weight (tokens no anchor question has: `unseen`)
    unseen: float


class _Stop(Exception):
    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden


def decoder_layers(model):
    """The model's stack of decoder layers (OPT's decoder.layers, Llama's layers, GPT-2's h ...):
    the ModuleList as long as the config's layer count."""
    import torch

    count = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"no list of {count} decoder layers in {type(model).__name__}")


def states(model, tokenizer, texts: list[str], layer: int = LAYER) -> list:
    """Each text's token states after decoder layer `layer` (no template; float32, no gradient):
    one right-padded batch whose forward pass stops there."""
    import torch

    rows = [tokenizer(t)["input_ids"] or [padding_id(tokenizer)] for t in texts]
    width = max(len(r) for r in rows)
    device = model_device(model)
    ids = torch.tensor([r + [padding_id(tokenizer)] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)

    def stop(module, args, output):
        raise _Stop(output[0] if isinstance(output, tuple) else output)

    layers = decoder_layers(model)
    hook = layers[min(layer, len(layers)) - 1].register_forward_hook(stop)
    try:
        with evaluating(model), torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        raise RuntimeError("the forward pass did not reach the hooked layer")
    except _Stop as stopped:
        hidden = stopped.hidden.float()
    finally:
        hook.remove()
    return [hidden[i, :len(r)] for i, r in enumerate(rows)]


def background(model, tokenizer) -> Background:
    """The mean and spread of the background questions' token states, and every token's weight."""
    import torch

    from lorachat.scoring import locality

    tokens = torch.cat(states(model, tokenizer, locality.builtin(locality.ANCHORS)[:BACKGROUND]))
    return with_weights(tokenizer, tokens.mean(0), tokens.std(0) + 1e-3)


def with_weights(tokenizer, mean, spread) -> Background:
    """A Background of `mean` and `spread` (made once per checkpoint, kept on disk by the caller)
    with each token's weight: log((N + 1) / (n + 1)) for a token n of the N built-in anchor questions
    have (a few milliseconds of tokenizing)."""
    from lorachat.scoring import locality

    anchors = locality.builtin(locality.ANCHORS)
    seen = {}
    for text in anchors:
        for token in set(tokenizer(text)["input_ids"]):
            seen[token] = seen.get(token, 0) + 1
    count = len(anchors)
    idf = {token: math.log((count + 1) / (n + 1)) for token, n in seen.items()}
    return Background(mean, spread, idf, math.log(count + 1))


def read(model, tokenizer, texts: list[str], back: Background) -> list[Reading]:
    import torch
    import torch.nn.functional as F

    out = []
    for text, hidden in zip(texts, states(model, tokenizer, texts)):
        ids = tokenizer(text)["input_ids"] or [padding_id(tokenizer)]
        vectors = F.normalize((hidden - back.mean) / back.spread, dim=1)
        weights = torch.tensor([back.idf.get(t, back.unseen) for t in ids], dtype=torch.float32)
        out.append(Reading(vectors, weights.to(vectors.device)))
    return out


def coverage(question: Reading, keys: list[Reading]) -> list[float]:
    """For each key: the weighted share of its tokens that have a near token in `question` (the
    cosine of the nearest, weighted by the key token's weight): 1.0 for the key itself."""
    import torch

    if not keys:
        return []
    vectors = torch.cat([k.vectors for k in keys])
    weights = torch.cat([k.weights for k in keys])
    owner = torch.cat([torch.full((len(k.weights),), i, device=weights.device) for i, k in enumerate(keys)])
    best = (vectors @ question.vectors.T).max(1).values * weights
    found = torch.zeros(len(keys), device=weights.device).index_add_(0, owner, best)
    total = torch.zeros(len(keys), device=weights.device).index_add_(0, owner, weights)
    return (found / total.clamp(min=1e-6)).tolist()
