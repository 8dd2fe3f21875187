"""`:merge`: several adapters combined into a new one with PEFT's add_weighted_adapter, saved like a
trained one and made active. Builds on live.py (loading, switching) and disk.py (saving); knows
nothing about terminals: chat/commands formats what this returns.
"""
import math
from dataclasses import dataclass, field
from typing import Optional

from lorachat.adapters import disk, live, provenance
from lorachat.adapters.paths import adapter_path, check_loadable_name
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name

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


def merge(session, sources: list[str], name: str, options: MergeOptions) -> tuple[list[str], object]:
    """Combine `sources` into a new adapter `name`, save it like a trained one and activate it.
    Returns (notes, path)."""
    import torch

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
    model = live.peft_model(session)
    configs = {s: model.peft_config[s] for s in sources}
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
    with live.switch(session).unmerged(), torch.random.fork_rng():
        torch.manual_seed(session.settings.seed)  # dare_* drop at random: the same merge every time
        try:
            model.add_weighted_adapter(sources, weights, name, combination_type=options.method, density=options.density)
        except (ValueError, TypeError, RuntimeError) as exc:
            live.remove(session, name)
            raise LorachatError(f"PEFT could not merge: {provenance.brief(exc)}") from None
    live.switch(session).refresh()
    scales = {s: live.state(session).scales[s] for s in sources if live.state(session).scales.get(s, 1.0) != 1.0}
    meta = dict(merged_from=sources, method=options.method, weights=weights, density=options.density,
                ranks=ranks, **({"scales": scales} if scales else {}), **_asking_of(session, sources))
    try:
        name = disk.save_new(session, name, meta)
    except LorachatError:
        live.remove(session, name)
        raise
    path = adapter_path(session, name)
    live.activate(session, name)
    live.make_room(session, keep={name}, extra=0)
    return notes, path


def _asking_of(session, sources) -> dict:
    """What asking a merge needs, from its sources' lorachat.json: their instruction when they
    share one (None otherwise), the longest answer any of them was taught (what `lorachat
    serve` tells clients), and the questions they were taught (the gate's)."""
    metas = [provenance.read_meta(adapter_path(session, s)) or {} for s in sources]
    instructions = {m.get("instruction") for m in metas}
    longest = [m["max_answer_tokens"] for m in metas if isinstance(m.get("max_answer_tokens"), int)]
    asked = [m.get("questions") for m in metas]   # the gate's: all the sources were taught, or none (every question)
    questions = sorted({q for qs in asked for q in qs}) if all(isinstance(qs, list) for qs in asked) else None
    return dict(instruction=instructions.pop() if len(instructions) == 1 else None,
                max_answer_tokens=max(longest, default=None), questions=questions)
