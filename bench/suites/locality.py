"""locality_*: what :train keeps of the base on questions it was not taught, against plain LoRA
(the measurement itself and the methods are bench/research/locality.py's).
"""
from bench.research.locality import (
    METHODS,
    PLAIN,
    Method,
    load,
    measure,
    shapes_examples,
)
from lorachat.core.prompts import DEFAULT_INSTRUCTION
from lorachat.scoring import locality
from lorachat.training import recipe

DEFAULTS = METHODS[-1]
GATE = 0.8  # the gate's threshold reported by the suite (on tiny no probe is routed above 0.9)


def figures(steps: int, probe_count: int | None, device: str = "cpu", log=lambda text: None) -> dict:
    """locality_*: on lorachat's tiny model (the ten pairs, until=recall) `trainer.run` with :train's
    defaults (fc1, anchor rehearsal) against plain (q,k,v, no anchors: :train before), scored on
    the built-in probes; the runtime gate at GATE; then the OPT-125m shape at until=steps, `steps` steps."""
    out = {}
    for shape_name, until in (("tiny", "recall"), ("opt-125m", "steps")):
        base, tokenizer = load(shape_name, device)
        questions = [(DEFAULT_INSTRUCTION, q) for q in locality.builtin(locality.PROBES)][:probe_count]
        anchor_questions = [(DEFAULT_INSTRUCTION, q) for q in locality.builtin(locality.ANCHORS)]
        probes = locality.reference(base, tokenizer, questions)
        prefix = "locality_" if shape_name == "tiny" else "locality_125m_"
        for method in (Method("plain", gate=shape_name == "tiny"), DEFAULTS):
            log(f"locality: {shape_name} {method.name}")
            row = measure(base, tokenizer, shapes_examples(), method, probes, anchor_questions, until=until,
                          steps=None if until == "recall" else steps, probe_texts=[q for _, q in questions])
            key = prefix + ("plain_" if method.name == "plain" else "")
            out.update({key + "steps": row["steps"], key + "s": round(row["seconds"] + row["reference_s"], 2),
                        key + "cpu_s": row["cpu_s"], key + "recall": f"{row['recall']}/{row['total']}",
                        key + "answer_loss": row["answer_loss"], key + "kept": row["kept"], key + "agree": row["agree"]})
            if method.gate:
                out.update(locality_gate=GATE, locality_gate_kept=row[f"gate{GATE:g}_kept"],
                           locality_gate_routed=row[f"gate{GATE:g}_routed"])
        out[prefix + "time_ratio"] = round(out[prefix + "s"] / out[prefix + "plain_s"], 2)
        out[prefix + "cpu_ratio"] = round(out[prefix + "cpu_s"] / out[prefix + "plain_cpu_s"], 2)
        out[prefix + "probes"] = len(questions)
    # :train's defaults and plain: the keys that differ
    out["locality_method"] = {key: getattr(recipe.DEFAULTS, key) for key in ("targets", "anchors", "anchor_every",
                                                                           "anchor_weight", "anchor_pool", "keep_base")}
    out["locality_plain"] = PLAIN
    return out
