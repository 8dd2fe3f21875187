"""Locality research and the bench `locality` suite: what each way of training keeps of the base.

    python -m bench.locality [--shape tiny|opt-125m] [--methods a,b] [--steps N] [--json PATH]
    python -m bench --only locality          plain :train against the recommended method

A *method* (Method) is train.py's loop plus at most one change per family the issue names:
- rehearsal: anchor questions (lorachat/data/anchors.txt, never the probes) ride in the same forward
  pass as the examples, with cross-entropy on the base's own greedy answers (computed once, before
  the first step, with the new adapter still zero: exactly the base; no second model);
- KL: the same rows, KL(base || adapted) at those answer positions (or at every position,
  span=all), against the base's top-k log-probabilities cached in that same first pass;
- narrower targets and other r (TrainConfig keys);
- a stop rule: `until=recall` also waits until the anchors' kept share reaches keep_base.
Every method is scored on the probes (lorachat/data/probes.txt): kept (exact) and agree, with
lorachat.locality, and on recall as greedy decoding returns it. Knows nothing about the other figures.
"""
import argparse
import copy
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field

from lorachat import batches, locality, shape, train
from lorachat.prompts import DEFAULT_INSTRUCTION, IGNORE


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

    config = train.resolved(model, config)
    params = train.trainable(model)
    encoded = batches.encode(tokenizer, examples, train.max_tokens(model, config))
    rows = _anchor_rows(anchors, method) if method.anchors else []
    start = time.perf_counter()
    base = _base_topk(model, tokenizer, rows, method.topk) if method.loss == "kl" and rows else None
    spaces = null_spaces(model, tokenizer, _pool(anchors, method), method.null) if method.null else {}
    project(spaces)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order, draw = random.Random(config.seed), random.Random(config.seed + 1)
    state = dict(step=0, loss=float("nan"), known=None, kept=None, seen={}, cycle=[], spaces=spaces)
    total = train.planned_steps(len(encoded), config)
    torch.manual_seed(config.seed)
    model.train()
    while state["step"] < total and not _done(state, examples, method, config):
        indices = list(range(len(encoded)))
        order.shuffle(indices)
        for batch in batches.chunks([(i, encoded[i]) for i in indices], config.batch):
            extra = _draw(state, draw, len(rows), method) if method.anchors and state["step"] % method.every == 0 else []
            _step(model, tokenizer, batch, [(j, rows[j]) for j in extra], base, optimizer, state, config, method)
            _check(model, tokenizer, examples, anchors, state, config, method, total)
            if on_step:
                on_step(state)
            if state["step"] >= total or _done(state, examples, method, config):
                break
    model.eval()
    return dict(steps=state["step"], seconds=round(time.perf_counter() - start, 2), loss=round(state["loss"], 4),
                recall=batches.recall(model, tokenizer, examples), total=len(examples),
                anchor_kept=None if anchors is None else round(locality.score(model, tokenizer, _pool(anchors, method)).kept, 4))


def _step(model, tokenizer, batch, extra, base, optimizer, state, config, method):
    """One optimizer step: examples and anchor rows in ONE forward; example loss as train.py's
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


def _check(model, tokenizer, examples, anchors, state, config, method, total):
    """Recall as train.py checks it (the training pass's hint, every 10 steps, the last step); the
    anchors' kept share only once recall is complete and a keep_base asks for it."""
    last = state["step"] >= total
    hinted = len(state["seen"]) == len(examples) and all(state["seen"].values())
    if config.until == "recall" and (hinted or last or state["step"] % train.CHECK_EVERY == 0):
        state["known"] = batches.recall(model, tokenizer, examples)
        if state["known"] == len(examples) and method.keep_base is not None:
            state["kept"] = locality.score(model, tokenizer, _pool(anchors, method)).kept
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
    return locality.Reference(anchors.prompts[:method.pool], anchors.answers[:method.pool])


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


# --- the runtime gate (opt-in extra; measured, not trained) ------------------------------------------

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


# --- one method, measured -------------------------------------------------------------------------

def measure(base, tokenizer, examples, method: Method, probes, anchor_questions, until="recall", steps=None,
            probe_texts=()) -> dict:
    """Train a fresh adapter on a copy of `base` with `method`; recall, kept and agree on the probes."""
    from peft import get_peft_model

    model = copy.deepcopy(base)
    config = dataclasses.replace(train.DEFAULTS, until=until, **({"steps": steps} if steps else {}), **method.config)
    config = train.resolved(model, config)
    model = shape.seeded_add(config.seed, lambda: get_peft_model(model, shape.lora_config(model, config)))
    began, cpu = time.perf_counter(), time.process_time()
    wanted = method.anchors or method.keep_base or method.null
    anchors = locality.reference(model, tokenizer, anchor_questions[:method.pool]) if wanted else None
    reference_s = time.perf_counter() - began
    if method.name in ("plain", "gate"):  # the current loop itself, not the prototype
        result = train.run(model, tokenizer, examples, config)
        out = dict(steps=result.steps, seconds=round(result.seconds, 2), loss=round(result.loss, 4),
                   recall=result.recall, total=result.total, anchor_kept=None)
    else:
        out = teach(model, tokenizer, examples, config, method, anchors, on_step=_progress(method.name))
    cpu = time.process_time() - cpu  # CPU seconds of this process: less at the mercy of the neighbours than wall time
    scored = locality.score(model, tokenizer, probes)
    out = dict(method=method.name, **out, reference_s=round(reference_s, 2), cpu_s=round(cpu, 1), kept=round(scored.kept, 4),
               agree=round(scored.agreement, 4), probes=scored.questions)
    if method.gate:
        out.update(gated(model, tokenizer, probes, probe_texts, [e.input for e in examples],
                         [q for _, q in anchor_questions], GATES))
    return out


GATES = (0.7, 0.8, 0.9, 0.95)


def _progress(name):
    def show(state):
        if state["step"] % 50 == 0:
            print(f"  {name}: step {state['step']}, loss {state['loss']:.3f}, recall {state['known']}, kept {state['kept']}",
                  file=sys.stderr, flush=True)
    return show


METHODS = [
    Method("plain"),
    Method("loop"),  # the prototype with nothing added: must match plain's steps
    Method("ce4", anchors=4),
    Method("ce8", anchors=8),
    Method("ce4-keep", anchors=4, keep_base=0.9),
    Method("kl4", anchors=4, loss="kl"),
    Method("kl4-all", anchors=4, loss="kl", span="all"),
    Method("null99", null=0.99),
    Method("null999", null=0.999),
    Method("null99-ce4", null=0.99, anchors=4),
    Method("gate", gate=True),  # plain training; the gate decides per question at ask time
    Method("fc2", config=dict(targets="fc2")),
    Method("fc1", config=dict(targets="fc1")),
    Method("v", config=dict(targets="v_proj")),
    Method("r4", config=dict(r=4, alpha=8.0)),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.locality", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny", choices=["tiny", "opt-125m"])
    p.add_argument("--methods", help="comma list (default all): " + ",".join(m.name for m in METHODS))
    p.add_argument("--steps", type=int, help="run exactly this many steps (until=steps)")
    p.add_argument("--probes", type=int, default=None, help="score on the first N probes only")
    p.add_argument("--json", help="append one JSON line per method here")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base, tokenizer = load(args.shape)
    probe_questions = [(DEFAULT_INSTRUCTION, q) for q in locality.builtin(locality.PROBES)][:args.probes]
    anchor_questions = [(DEFAULT_INSTRUCTION, q) for q in locality.builtin(locality.ANCHORS)]
    began = time.perf_counter()
    probes = locality.reference(base, tokenizer, probe_questions)
    print(f"probes: {len(probe_questions)} base answers in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    chosen = args.methods.split(",") if args.methods else [m.name for m in METHODS]
    for method in [m for m in METHODS if m.name in chosen]:
        row = dict(measure(base, tokenizer, shapes_examples(), method, probes, anchor_questions,
                           until="steps" if args.steps else "recall", steps=args.steps,
                           probe_texts=[q for _, q in probe_questions]), shape=args.shape)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return 0


def shapes_examples():
    from bench import shapes

    return shapes.examples()


def load(shape_name: str):
    from bench import shapes

    if shape_name == "tiny":
        from lorachat.models import load_model

        loaded = load_model("tiny", "cpu")
        return loaded.model, loaded.tokenizer
    return shapes.build(shape_name, "cpu"), shapes.tokenizer()


if __name__ == "__main__":
    sys.exit(main())
