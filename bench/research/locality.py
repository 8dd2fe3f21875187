"""Locality research: what each way of training keeps of the base (the bench `locality` suite,
bench/suites/locality.py, measures :train's defaults against plain with it).

    python -m bench.research.locality [--shape tiny|opt-125m] [--methods a,b] [--steps N] [--json PATH]
    python -m bench --only locality          plain :train against the recommended method

A *method* (Method) is trainer.py's loop plus at most one change per family the issue names:
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
import sys
import time

from bench.research.gate import gated
from bench.research.protect import Method, teach
from lorachat.core.prompts import DEFAULT_INSTRUCTION
from lorachat.scoring import batches, locality
from lorachat.training import lora, planning, recipe, trainer

# --- one method, measured -------------------------------------------------------------------------

def measure(base, tokenizer, examples, method: Method, probes, anchor_questions, until="recall", steps=None,
            probe_texts=(), seed=None) -> dict:
    """Train a fresh adapter on a copy of `base` with `method`; recall, kept and agree on the probes."""

    model = copy.deepcopy(base)
    fixed = dict(until=until, **({"steps": steps} if steps else {}), **({"seed": seed} if seed is not None else {}))
    # the research's "plain" is :train before the protection became its default: q,k,v, no anchors
    config = dataclasses.replace(recipe.DEFAULTS, **fixed, **(PLAIN if method.name != "defaults" else {}), **method.config)
    config = recipe.resolved(model, config)
    model = lora.wrapped(model, config)
    began, cpu = time.perf_counter(), time.process_time()
    wanted = method.anchors or method.keep_base or method.null or config.anchors
    anchors = locality.reference(model, tokenizer, anchor_questions[:method.pool if method.anchors else config.anchor_pool]) \
        if wanted else None
    reference_s = time.perf_counter() - began
    if not (method.anchors or method.null or method.keep_base or method.name == "loop"):  # trainer.py's own loop
        result = trainer.run(model, tokenizer, planning.plan(model, tokenizer, examples, config),
                             anchors=anchors if config.anchors else None)
        out = dict(steps=result.steps, seconds=round(result.seconds, 2), loss=round(result.loss, 4),
                   recall=result.recall, total=result.total, anchor_kept=None)
    else:
        out = teach(model, tokenizer, examples, config, method, anchors, on_step=_progress(method.name))
    cpu = time.process_time() - cpu  # CPU seconds of this process: less at the mercy of the neighbours than wall time
    scored = locality.score(model, tokenizer, probes)
    out["answer_loss"] = round(batches.answer_loss(model, tokenizer, examples), 4)  # the examples alone, eval mode
    out = dict(method=method.name, **out, reference_s=round(reference_s, 2), cpu_s=round(cpu, 1), kept=round(scored.kept, 4),
               agree=round(scored.agreement, 4), probes=scored.questions)
    if method.gate:
        out.update(gated(model, tokenizer, probes, probe_texts, [e.input for e in examples],
                         [q for _, q in anchor_questions], GATES))
    return out


GATES = (0.7, 0.8, 0.9, 0.95)
PLAIN = dict(targets="q_proj,k_proj,v_proj", anchors=0)


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
    Method("ce2", anchors=2),
    Method("ce4-e2", anchors=4, every=2),
    Method("ce4-w.3", anchors=4, weight=0.3),
    Method("kl4-w10", anchors=4, loss="kl", weight=10.0),
    Method("kl16-p256-keep", anchors=16, loss="kl", pool=256, keep_base=0.9),
    Method("ce16-p256-keep", anchors=16, pool=256, keep_base=0.9),
    Method("ce4-w.3-e2", anchors=4, weight=0.3, every=2),
    Method("ce4-p256", anchors=4, pool=256),
    Method("ce4-w.3-p256", anchors=4, weight=0.3, pool=256),
    Method("fc1-ce4", anchors=4, config=dict(targets="fc1")),
    Method("fc1-ce4-w.3", anchors=4, weight=0.3, config=dict(targets="fc1")),
    Method("fc1-ce2-w.3", anchors=2, weight=0.3, config=dict(targets="fc1")),
    Method("fc1-ce4-w.3-e2", anchors=4, weight=0.3, every=2, config=dict(targets="fc1")),
    Method("kl4", anchors=4, loss="kl"),
    Method("kl4-all", anchors=4, loss="kl", span="all"),
    Method("null99", null=0.99),
    Method("null999", null=0.999),
    Method("null99-ce4", null=0.99, anchors=4),
    Method("gate", gate=True),  # plain training; the gate decides per question at ask time
    Method("fc2", config=dict(targets="fc2")),
    Method("fc1", config=dict(targets="fc1")),
    Method("v", config=dict(targets="v_proj")),
    Method("r4", config=dict(r=4)),
    Method("defaults"),   # :train's own defaults through trainer.run (fc1-ce4-w.3-e2, since phase 2)
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.research.locality", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="tiny", choices=["tiny", "opt-125m"])
    p.add_argument("--methods", help="comma list (default all): " + ",".join(m.name for m in METHODS))
    p.add_argument("--steps", type=int, help="run exactly this many steps (until=steps)")
    p.add_argument("--probes", type=int, default=None, help="score on the first N probes only")
    p.add_argument("--json", help="append one JSON line per method here")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seeds", default="0", help="comma list of train seeds, each method run once per seed")
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
    if unknown := sorted(set(chosen) - {m.name for m in METHODS}):
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)} (have: {', '.join(m.name for m in METHODS)})")
    for seed, method in [(int(s), m) for s in args.seeds.split(",") for m in METHODS if m.name in chosen]:
        row = dict(measure(base, tokenizer, shapes_examples(), method, probes, anchor_questions,
                           until="steps" if args.steps else "recall", steps=args.steps,
                           probe_texts=[q for _, q in probe_questions], seed=seed), shape=args.shape, seed=seed)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return 0


def shapes_examples():
    from bench.kit import pairs

    return pairs.examples()


def load(shape_name: str, device: str = "cpu"):
    """lorachat's tiny model (not bench.kit.shapes' smoke "tiny"), or a bench shape; fp32."""
    from bench.kit import shapes

    if shape_name == "tiny":
        from lorachat.models.loader import load_model

        loaded = load_model("tiny", device)
        return loaded.model, loaded.tokenizer
    return shapes.build(shape_name, device), shapes.tokenizer()


if __name__ == "__main__":
    sys.exit(main())
