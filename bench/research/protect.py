"""The locality prototype: trainer.py's loop with the candidate protections, for bench/research/locality.py.

What phase 2 takes into lorachat/training/trainer.py (see bench/RESULTS.md "Locality"): anchor rows ride in
the same forward pass as the examples; their loss (cross-entropy on the base's own greedy answers,
or KL against the base's distribution) is added with a weight; `until=recall` may also wait for the
anchors' kept share (keep_base). The base's answers come from lorachat.locality, computed before
the first step with the new adapter still zero (B = 0: exactly the base; no second model).
Also here, measured and not chosen: the null-space projection of lora_A (AlphaEdit's idea).
Knows nothing about probes, timing or the bench's figures.
"""
import random
import time
from dataclasses import dataclass, field

from lorachat.core.prompts import IGNORE
from lorachat.scoring import batches, locality
from lorachat.scoring.recall import Asking, Recall
from lorachat.training import recipe, trainer


@dataclass(frozen=True)
class Method:
    name: str
    config: dict = field(default_factory=dict)   # TrainConfig overrides (r, targets, lr ...)
    anchors: int = 0           # anchor rows added to each step's batch (0: plain training)
    every: int = 1             # ... on every k-th step
    weight: float = 1.0        # anchor loss weight (the examples' loss has weight 1)
    loss: str = "ce"           # ce: the base's greedy answer tokens; kl: the base's distribution
    span: str = "answer"       # kl positions: answer (the base answer's) or all (prompt too)
    pool: int = 64             # anchors with base answers (the first `pool` of anchors.txt)
    topk: int = 64             # kl: base log-probs kept per position (the rest as one bin)
    keep_base: float | None = None  # until=recall also needs this kept share on the pool's anchors
    null: float | None = None  # null-space (AlphaEdit-style): keep lora_A off the input directions
                               # carrying this share of the anchors' energy, per layer
    gate: bool = False         # also measure the runtime gate at GATES thresholds (ask-time routing)


# --- the prototype loop -------------------------------------------------------------------------

def teach(model, tokenizer, examples, config, method: Method, anchors=None, on_step=None) -> dict:
    """Train `model`'s fresh adapter on `examples` with `method`; `anchors`: a locality.Reference
    of the base's answers (its own prompts), required when method.anchors > 0."""
    import torch

    config = recipe.resolved(model, config)
    params = trainer.trainable(model)
    encoded = batches.encode(tokenizer, examples, recipe.max_tokens(model, config))
    examples, encoded = encoded.examples, encoded.items   # too-long examples are left out, as :train does
    checker = Recall(tokenizer, examples, encoded, Asking())
    rows = _anchor_rows(anchors, method) if method.anchors else []
    start = time.perf_counter()
    base = _base_topk(model, tokenizer, rows, method.topk) if method.loss == "kl" and rows else None
    spaces = null_spaces(model, tokenizer, _pool(anchors, method), method.null) if method.null else {}
    project(spaces)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order, draw = random.Random(config.seed), random.Random(config.seed + 1)
    state = dict(step=0, loss=float("nan"), known=None, kept=None, seen={}, cycle=[], spaces=spaces)
    total = recipe.planned_steps(len(encoded), config)
    torch.manual_seed(config.seed)
    model.train()
    while state["step"] < total and not _done(state, examples, method, config):
        indices = list(range(len(encoded)))
        order.shuffle(indices)
        for batch in batches.chunks([(i, encoded[i]) for i in indices], config.batch):
            extra = _draw(state, draw, len(rows), method) if method.anchors and state["step"] % method.every == 0 else []
            _step(model, tokenizer, batch, [(j, rows[j]) for j in extra], base, optimizer, state, config, method)
            _check(model, checker, examples, anchors, state, config, method, total)
            if on_step:
                on_step(state)
            if state["step"] >= total or _done(state, examples, method, config):
                break
    model.eval()
    return dict(steps=state["step"], seconds=round(time.perf_counter() - start, 2), loss=round(state["loss"], 4),
                recall=checker.count(model)[1], total=len(examples),
                anchor_kept=None if anchors is None else round(locality.score(model, tokenizer, _pool(anchors, method)).kept, 4))


def _step(model, tokenizer, batch, extra, base, optimizer, state, config, method):
    """One optimizer step: examples and anchor rows in ONE forward; example loss as trainer.py's
    (summed over answer tokens / answer tokens), anchor loss mean per anchor token, times weight."""
    import torch
    import torch.nn.functional as F

    items = [item for _, item in batch] + [item for _, (item, _) in extra]
    input_ids, labels, mask = batches.collate(items, batches.padding_id(tokenizer), batches.model_device(model))
    logits, targets, where = batches.answer_logits(model, input_ids, labels, mask)
    mine = where < len(batch)
    loss = F.cross_entropy(logits[mine], targets[mine], reduction="sum") / max(int(mine.sum()), 1)
    if extra:
        loss = loss + method.weight * _anchor_loss(logits[~mine], targets[~mine], [j for j, _ in extra], base, method)
    loss.backward()
    if config.clip:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    project(state["spaces"])
    known = batches.known(logits[mine].detach(), targets[mine], where[mine], len(batch)).tolist()
    for (index, _), ok in zip(batch, known):
        state["seen"][index] = ok
    state["step"] += 1
    state["loss"] = loss.item()


def _anchor_loss(logits, targets, picked, base, method):
    import torch
    import torch.nn.functional as F

    if method.loss == "ce":
        return F.cross_entropy(logits, targets)
    index, logp, rest = (torch.cat([base[k][j] for j in picked]) for k in range(3))
    q = F.log_softmax(logits, -1)
    q_top = q.gather(1, index)
    q_rest = torch.log1p(-q_top.exp().sum(1).clamp(max=1 - 1e-6))
    p_rest = rest.exp()
    kl = (logp.exp() * (logp - q_top)).sum(1) + p_rest * (rest - q_rest)
    return kl.mean()


def _check(model, checker, examples, anchors, state, config, method, total):
    """Recall as trainer.py checks it (the training pass's hint, every 10 steps, the last step); once
    recall is complete and a keep_base asks for it, recall and the anchors' kept share every 10 steps."""
    last, tenth = state["step"] >= total, state["step"] % trainer.CHECK_EVERY == 0
    hinted = len(state["seen"]) == len(examples) and all(state["seen"].values())
    waiting = state["known"] == len(examples) and method.keep_base is not None
    if config.until != "recall" or waiting and not (last or tenth) or not (hinted or last or tenth):
        return
    state["known"] = checker.count(model)[1]
    if state["known"] == len(examples) and method.keep_base is not None:
        state["kept"] = locality.score(model, checker.tokenizer, _pool(anchors, method)).kept
    model.train()


def _done(state, examples, method, config) -> bool:
    if config.until != "recall" or state["known"] != len(examples):
        return False
    return method.keep_base is None or (state["kept"] or 0) >= method.keep_base


def _draw(state, draw, count, method):
    """The next `method.anchors` anchors of a shuffled cycle over the pool."""
    picked = []
    while len(picked) < method.anchors:
        if not state["cycle"]:
            state["cycle"] = list(range(count))
            draw.shuffle(state["cycle"])
        picked.append(state["cycle"].pop())
    return picked


def _pool(anchors, method):
    return anchors.part(range(min(method.pool, len(anchors.prompts))))


def _anchor_rows(anchors, method):
    """(input_ids, labels) per anchor: prompt + base answer; labels on the answer (and on the
    prompt for span=all, where only the kl loss reads them)."""
    rows = []
    for p, a in zip(anchors.prompts[:method.pool], anchors.answers[:method.pool]):
        ids = list(p) + list(a)
        labels = ids if method.span == "all" else [IGNORE] * len(p) + list(a)
        rows.append(((ids, labels), None))
    return rows


def _base_topk(model, tokenizer, rows, k):
    """Per anchor row: (top-k ids, their log-probs, log of the rest's mass) at its loss positions,
    from the model as it is now (a fresh adapter: B = 0, exactly the base)."""
    import torch

    out = ([], [], [])
    model.eval()
    with torch.no_grad():
        for (ids, labels), _ in rows:
            input_ids, labs, mask = batches.collate([(ids, labels)], batches.padding_id(tokenizer), batches.model_device(model))
            logits, _, _ = batches.answer_logits(model, input_ids, labs, mask)
            logp = torch.log_softmax(logits, -1)
            top, index = logp.topk(min(k, logp.shape[-1]), -1)
            out[0].append(index)
            out[1].append(top)
            out[2].append(torch.log1p(-top.exp().sum(1).clamp(max=1 - 1e-6)))
    model.train()
    return out


def null_spaces(model, tokenizer, ref, energy: float) -> dict:
    """Per LoRA layer: (its lora_A weight, U), U the input directions that carry `energy` of the
    anchors' input energy there (prompt + base answer, every position). A @ (I - U U^T) then makes
    the adapter's delta vanish on inputs in that span: AlphaEdit's null-space idea, applied to A."""
    import torch
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    grams, current = {}, {}

    def hook(layer):
        def collect(module, args):
            x = args[0][current["mask"]].double()
            grams[layer] = grams.get(layer, 0) + x.T @ x
        return collect

    handles = [layer.register_forward_pre_hook(hook(layer)) for layer in layers]
    items = [(list(p) + list(a), list(p) + list(a)) for p, a in zip(ref.prompts, ref.answers)]
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches.chunks(items, 16):
                input_ids, _, mask = batches.collate(batch, batches.padding_id(tokenizer), batches.model_device(model))
                current["mask"] = mask.bool()
                model(input_ids=input_ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
        model.train()
    spaces = {}
    for layer, gram in grams.items():
        values, vectors = torch.linalg.eigh(gram)
        values, vectors = values.flip(0), vectors.flip(1)
        keep = int((values.cumsum(0) / values.sum() < energy).sum()) + 1
        name = layer.active_adapters[0]
        spaces[layer] = (layer.lora_A[name].weight, vectors[:, :keep].float())
    return spaces


def project(spaces) -> None:
    """lora_A <- lora_A (I - U U^T) for every layer (after init and after each optimizer step)."""
    import torch

    with torch.no_grad():
        for weight, u in spaces.values():
            weight.sub_((weight @ u) @ u.T)
