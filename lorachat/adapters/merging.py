"""`:merge`: several adapters combined into a new one with PEFT's add_weighted_adapter, saved like a
trained one and made active. Builds on live.py (loading, switching) and disk.py (saving); knows
nothing about terminals: chat/commands formats what this returns.
"""
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Optional

from lorachat.adapters import disk, live, provenance
from lorachat.adapters.paths import adapter_path, check_loadable_name
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name
from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example, asked

METHODS = ("cat", "linear", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune")
NEEDS_DENSITY = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
EQUAL_RANKS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
MIXED_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass
class MergeOptions:
    """`:merge` keys."""
    method: str = field(default="cat", metadata={"help": "PEFT combination: cat is the exact sum of the deltas (any ranks)", "choices": METHODS})
    weights: str = field(default="", metadata={"help": "comma list, one per source (default 1.0 each)"})
    density: Optional[float] = field(default=None, metadata={"help": "fraction kept (ties, dare_*, magnitude_prune)", "positive": True, "max": 1})


MERGE_DEFAULTS = MergeOptions()


def parse_weights(text: str, count: int) -> list[float]:
    if not text:
        return [1.0] * count
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise LorachatError(f"weights={text!r}: expected numbers separated by commas") from None
    if len(weights) != count:
        raise LorachatError(f"weights={text!r}: give one weight per source adapter ({count})")
    if not all(math.isfinite(w) and abs(w) <= 1000 for w in weights):
        raise LorachatError(f"weights={text!r}: each weight must be a finite number between -1000 and 1000")
    return weights


def check_method(options: MergeOptions) -> None:
    """What a method needs that the arguments alone can tell."""
    if options.method in NEEDS_DENSITY and options.density is None:
        raise LorachatError(f"method={options.method} keeps only a fraction of each delta: give density=D (0 < D <= 1)")
    if options.method not in NEEDS_DENSITY and options.density is not None:
        raise LorachatError(f"density is used only by {', '.join(NEEDS_DENSITY)}, not by method={options.method}")


@dataclass
class Merged:
    """What `merge` made: where it is saved, and how much of what its sources were taught it keeps."""
    notes: list[str]
    path: object
    recall: int | None = None     # taught questions answered verbatim as asked now (None: no source has a record)
    total: int = 0                # taught questions checked: each source's own, from its dataset
    lost: list = field(default_factory=list)   # (question, source) of those not answered
    reasons: list = field(default_factory=list)   # why some of them cannot come back as asked now (recall.reasons)
    explained: int = 0            # how many of `lost` those reasons cover


def merge(session, sources: list[str], name: str, options: MergeOptions) -> Merged:
    """Combine `sources` into a new adapter `name`, save it like a trained one (under a free name
    when another session took `name` meanwhile) and activate it."""
    notes, weights, ranks = _prepare(session, sources, name, options)
    _combine(session, sources, name, weights, options)
    previous = session.active_adapter
    live.activate(session, name)
    found = _recall(session, _taught(session, sources))
    scales = {s: live.scale_of(session, s) for s in sources if live.scale_of(session, s) != 1.0}
    notes = notes + [f"'{s}' is merged in at its live scale {scale:g}, not as trained (:scale {s} 1 first for that)"
                     for s, scale in scales.items()]   # as :export says it
    meta = dict(merged_from=sources, method=options.method, weights=weights, density=options.density,
                ranks=ranks, **({"scales": scales} if scales else {}), **_asking_of(session, sources),
                **({"recall": found.recall, "total": found.total} if found.recall is not None else {}))
    try:
        name = disk.save_new(session, name, meta)
    except LorachatError:
        live.remove(session, name)
        live.activate(session, previous if previous in live.loaded_names(session) else None)
        raise
    live.make_room(session, keep={name}, extra=0)
    return dataclasses.replace(found, notes=notes, path=adapter_path(session, name))


def _prepare(session, sources, name, options) -> tuple[list[str], list[float], dict]:
    """Every check a merge can fail, then the sources loaded: (notes, weights, {source: rank})."""
    for source in sources:
        check_name(source, "adapter")
        disk.check_own(session, source)   # its folder's record (the gate's questions) must be this adapter's
    check_loadable_name(name)
    if len(set(sources)) != len(sources):
        raise LorachatError("each source adapter may be named once")
    if name in live.known_names(session):
        raise LorachatError(f"an adapter named '{name}' already exists")
    if len(sources) > session.settings.max_loaded:
        raise LorachatError(f"can merge at most max_loaded={session.settings.max_loaded} adapters at once")
    weights = parse_weights(options.weights, len(sources))
    check_method(options)
    notes = live.load_all(session, sources)
    configs = {s: live.peft_model(session).peft_config[s] for s in sources}
    for source in sources:  # PEFT merges a variant's A and B but not its magnitude: not their sum
        if any(source in getattr(layer, "lora_variant", {}) for layer in live.switch(session).layers):
            raise LorachatError(f"adapter '{source}' is not plain LoRA (DoRA or another variant): :merge sums plain "
                                "LoRA deltas only")
    ranks = {s: max([c.r, *(c.rank_pattern or {}).values()]) for s, c in configs.items()}
    if options.method in EQUAL_RANKS and len(set(ranks.values())) > 1:
        shown = ", ".join(f"{s}: r={r}" for s, r in ranks.items())
        raise LorachatError(f"method={options.method} needs adapters of equal rank ({shown}); use method=cat or svd")
    if len({type(c.target_modules) for c in configs.values()}) > 1:
        raise LorachatError("these adapters name their target modules differently (a list and a pattern); PEFT cannot merge them")
    return notes, weights, ranks


def _combine(session, sources, name, weights, options) -> None:
    """PEFT's add_weighted_adapter: the new adapter `name`, loaded beside its sources."""
    import dataclasses

    import torch
    from peft.tuners.tuners_utils import cast_adapter_dtype

    model = live.peft_model(session)
    tuner, inject = model.base_model, model.base_model.inject_adapter

    def as_summed(module, adapter_name, *args, **kwargs):
        # add_weighted_adapter folds each source's scaling into the new A and B and sets lora_alpha = r, but
        # keeps the first source's use_rslora: scaling alpha/sqrt(r) would make the sum sqrt(r) times too strong
        tuner.peft_config[adapter_name] = dataclasses.replace(tuner.peft_config[adapter_name], use_rslora=False)
        inject(module, adapter_name, *args, **kwargs)
        # it also makes the new adapter in the base's dtype (PEFT 0.21 casts to float32 only in
        # add_adapter/load_adapter): under bf16 the sum of float32 sources would be rounded to bf16 as written
        cast_adapter_dtype(tuner.model, adapter_name)

    with live.switch(session).unmerged(), torch.random.fork_rng():
        torch.manual_seed(session.settings.seed)  # dare_* drop at random: the same merge every time
        tuner.inject_adapter = as_summed
        try:
            model.add_weighted_adapter(sources, weights, name, combination_type=options.method, density=options.density)
        except (ValueError, TypeError, RuntimeError) as exc:
            live.remove(session, name)
            raise LorachatError(f"PEFT could not merge: {provenance.brief(exc)}") from None
        finally:
            del tuner.inject_adapter   # the class's own again
    live.switch(session).refresh()
    live.switch(session).eval_adapter(name)  # PEFT makes its dropout in training mode; answers need it off


def _taught(session, sources) -> dict:
    """{question: (example, source)}: each question a source's lorachat.json says it was taught, with
    its answer as lorachat.json keeps it (the gate's keys), or, recorded before them, as the source's
    dataset holds it now (a question no longer there is left out)."""
    from lorachat.lessons.jsonl import load_dataset

    found = {}
    for source in sources:
        meta = provenance.read_meta(adapter_path(session, source)) or {}
        if isinstance(meta.get("keys"), list):   # the lessons as taught, kept with the adapter (the gate's keys)
            for key in meta["keys"]:
                if isinstance(key, dict) and not key.get("added") and key.get("question") not in found:
                    example = Example(instruction=str(key.get("instruction", "")), input=str(key.get("question", "")),
                                      output=str(key.get("answer", "")))
                    found[key.get("question")] = example, source
            continue
        questions, dataset = meta.get("questions"), meta.get("dataset")
        if not isinstance(questions, list) or not isinstance(dataset, str):
            continue
        try:
            examples = load_dataset(session.home, check_name(dataset, "dataset")).examples
        except LorachatError:
            continue
        held = {asked(e)[1]: e for e in examples if e.text is None}
        for question in questions:
            if question in held and question not in found:
                found[question] = held[question], source
    return found


def _recall(session, found: dict) -> Merged:
    """How many of the taught questions the active adapter answers verbatim as asked now
    (scoring/recall.py: one forward pass each, no generation), and which not."""
    from lorachat.scoring.batches import encode
    from lorachat.scoring.recall import Recall

    if not found:
        return Merged([], None)
    encoded = encode(session.tokenizer, [e for e, _ in found.values()], session.context_length())
    source = {id(e): s for e, s in found.values()}
    recall = Recall(session.tokenizer, encoded.examples, encoded.items, session.asking())
    _, flags = recall.evaluate_each(session.model)
    missed = [i for i, ok in sorted(flags.items()) if not ok]
    lost = [(asked(encoded.examples[i])[1], source[id(encoded.examples[i])]) for i in missed]
    return Merged([], None, sum(flags.values()), len(found), lost, recall.reasons(missed),
                  sum(1 for i in missed if recall.why.get(i)))


def _asking_of(session, sources) -> dict:
    """What asking a merge needs, from its sources' lorachat.json: their instruction when they
    share one (None otherwise; a source without a record, made with plain PEFT, is asked and
    served under the default one), the longest answer any of them was taught (what `lorachat
    serve` tells clients), the questions they were taught (the gate's) and those sent back to the
    base (:unroute's not keys)."""
    metas = [provenance.read_meta(adapter_path(session, s)) or {} for s in sources]
    instructions = {m.get("instruction", DEFAULT_INSTRUCTION) for m in metas}
    longest = [m["max_answer_tokens"] for m in metas if isinstance(m.get("max_answer_tokens"), int)]
    records = [m.get("questions") for m in metas]   # the gate's: all the sources were taught, or none (every question)
    questions = sorted({q for qs in records for q in qs}) if all(isinstance(qs, list) for qs in records) else None
    recorded = [m.get("keys") for m in metas]   # with their answers: only when every source has them
    keys = list({json.dumps(k, sort_keys=True): k for ks in recorded for k in ks}.values()) \
        if questions is not None and all(isinstance(ks, list) for ks in recorded) else None
    nots = list({json.dumps(k, sort_keys=True): k for m in metas for k in (m.get("not_keys") or [])
                 if isinstance(k, dict)}.values()) if keys is not None else []   # :unroute's, each source's
    return dict(instruction=instructions.pop() if len(instructions) == 1 else None,
                max_answer_tokens=max(longest, default=None), questions=questions, keys=keys,
                **({"not_keys": nots} if nots else {}))
