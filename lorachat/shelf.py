"""What is done with several adapters at once: merge (PEFT add_weighted_adapter), export as a
standalone model, answer one prompt with base and adapters side by side, evaluate, list; delete and
rename saved adapters.

Builds on adapters.py (loading, switching) and saving.py; knows nothing about terminals — commands
format what these functions return.
"""
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lorachat import adapters, prompts, provenance, saving, store
from lorachat.adapters import BASE
from lorachat.errors import LorachatError, did_you_mean
from lorachat.names import check_name

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
    adapters.check_loadable_name(name)
    if len(set(sources)) != len(sources):
        raise LorachatError("each source adapter may be named once")
    if name in adapters.known_names(session):
        raise LorachatError(f"an adapter named '{name}' already exists")
    if len(sources) > session.settings.max_loaded:
        raise LorachatError(f"can merge at most max_loaded={session.settings.max_loaded} adapters at once")
    weights = parse_weights(options.weights, len(sources))
    check_method(options)
    notes = load_all(session, sources)
    model = adapters.peft_model(session)
    configs = {s: model.peft_config[s] for s in sources}
    for source in sources:  # PEFT merges a variant's A and B but not its magnitude: not their sum
        if any(source in getattr(layer, "lora_variant", {}) for layer in adapters.switch(session).layers):
            raise LorachatError(f"adapter '{source}' is not plain LoRA (DoRA or another variant): :merge sums plain "
                                "LoRA deltas only")
    ranks = {s: max([c.r, *(c.rank_pattern or {}).values()]) for s, c in configs.items()}
    if options.method in EQUAL_RANKS and len(set(ranks.values())) > 1:
        shown = ", ".join(f"{s}: r={r}" for s, r in ranks.items())
        raise LorachatError(f"method={options.method} needs adapters of equal rank ({shown}); use method=cat or svd")
    if len({type(c.target_modules) for c in configs.values()}) > 1:
        raise LorachatError("these adapters name their target modules differently (a list and a pattern); PEFT cannot merge them")
    with adapters.switch(session).unmerged(), torch.random.fork_rng():
        torch.manual_seed(session.settings.seed)  # dare_* drop at random: the same merge every time
        try:
            model.add_weighted_adapter(sources, weights, name, combination_type=options.method, density=options.density)
        except (ValueError, TypeError, RuntimeError) as exc:
            adapters.remove(session, name)
            raise LorachatError(f"PEFT could not merge: {provenance.brief(exc)}") from None
    adapters.switch(session).refresh()
    scales = {s: adapters.shelf(session).scales[s] for s in sources if adapters.shelf(session).scales.get(s, 1.0) != 1.0}
    meta = dict(merged_from=sources, method=options.method, weights=weights, density=options.density,
                ranks=ranks, **({"scales": scales} if scales else {}), **_asking_of(session, sources))
    try:
        path = saving.save(session, name, meta)
    except LorachatError:
        adapters.remove(session, name)
        raise
    adapters.activate(session, name)
    adapters.make_room(session, keep={name}, extra=0)
    return notes, path


def _asking_of(session, sources) -> dict:
    """What asking a merge needs, from its sources' lorachat.json: their instruction when they
    share one (None otherwise), and the longest answer any of them was taught (what `lorachat
    serve` tells clients)."""
    metas = [provenance.read_meta(adapters.adapter_path(session, s)) or {} for s in sources]
    instructions = {m.get("instruction") for m in metas}
    longest = [m["max_answer_tokens"] for m in metas if isinstance(m.get("max_answer_tokens"), int)]
    return dict(instruction=instructions.pop() if len(instructions) == 1 else None,
                max_answer_tokens=max(longest, default=None))


def load_all(session, names) -> list[str]:
    """Load every named adapter not yet in memory, keeping all of them loaded together."""
    notes = []
    for n in names:
        if n != BASE and n not in adapters.loaded_names(session):
            notes += adapters.load(session, n, keep=set(names))
    return notes


# --- export ------------------------------------------------------------------------------------

def export(session, name: str, directory: Path) -> tuple[list[str], Path]:
    """Write the base with adapter `name` merged in as a standalone model (safetensors +
    tokenizer). The live model is not changed: merged tensors are new ones."""
    check_name(name, "adapter")
    target = Path(directory).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LorachatError(f"{target} already exists and is not an empty directory")
    notes = load_all(session, [name])
    scale = adapters.shelf(session).scales.get(name, 1.0)
    if scale != 1.0:
        notes.append(f"'{name}' is merged in at its live scale {scale:g}, not as trained (:scale {name} 1 first for that)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise LorachatError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None
    try:
        with adapters.switch(session).unmerged():
            state = merged_state_dict(session, name)
            session.loaded.model.save_pretrained(str(work), state_dict=state, safe_serialization=True)
        session.tokenizer.save_pretrained(str(work))
        store.as_created(work)
        if target.exists():
            target.rmdir()
        os.rename(work, target)
    except OSError as exc:
        raise LorachatError(f"could not export to {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return notes, target


def merged_state_dict(session, name: str) -> dict:
    """The base's own tensor names and tensors, with `name`'s delta added where it has one."""
    from peft.tuners.lora import LoraLayer

    base = session.loaded.model
    state, overrides = {}, {}
    for key, tensor in base.state_dict().items():
        if f".modules_to_save.{name}." in key:
            overrides[key.replace(f".modules_to_save.{name}.", ".")] = tensor
        elif ".lora_" not in key and ".modules_to_save." not in key:
            state[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    state.update(overrides)
    for qualified, layer in base.named_modules():
        if isinstance(layer, LoraLayer) and name in layer.lora_A:
            if name in getattr(layer, "lora_variant", {}):
                raise LorachatError(f"adapter '{name}' is not plain LoRA (DoRA or another variant): export merges plain LoRA only")
            weight = layer.get_base_layer().weight
            state[f"{qualified}.weight"] = (weight.float() + layer.get_delta_weight(name).float()).to(weight.dtype)
    return state


# --- compare and eval --------------------------------------------------------------------------

def compare(session, names: list[str], question: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Greedy answers to `question` from each of `names` ('base' for none), in one mixed-adapter
    batch where PEFT supports it, else one adapter at a time through the switch. Returns (notes,
    [(name, answer)])."""
    import torch

    extra = [n for n in names if n != BASE]
    for n in extra:
        check_name(n, "adapter")
    if len(extra) > session.settings.max_loaded:
        raise LorachatError(f"can compare at most max_loaded={session.settings.max_loaded} adapters at once")
    notes = load_all(session, names)
    ids = prompts.prompt_ids(session.tokenizer, session.instruction, question)
    settings = session.settings
    generation = dict(max_new_tokens=settings.max_new_tokens, do_sample=False, repetition_penalty=settings.repetition_penalty,
                      pad_token_id=session.tokenizer.pad_token_id, eos_token_id=session.tokenizer.eos_token_id)
    model = adapters.peft_model(session)
    batch = torch.tensor([ids] * len(names), device=session.loaded.model.device)
    with torch.inference_mode():
        if model is None:  # no adapter was ever loaded: only the base can answer
            rows = session.model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **generation)
        else:
            labels = [MIXED_BASE if n == BASE else n for n in names]
            try:
                with adapters.switch(session).unmerged(enabled=True):
                    rows = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), adapter_names=labels,
                                          **generation)
            except (ValueError, TypeError, KeyError):
                # PEFT refuses the mixed batch in a layer's _check_forward_args: a layer that sees
                # (batch x seq) rows, not the batch (OPT's fc1/fc2), DoRA, a layer type without
                # mixed batches; a modules_to_save copy that not every adapter has is a KeyError.
                # The first forward fails, so this costs one prompt's pass.
                rows = _one_at_a_time(session, names, batch[:1], generation)
    return notes, [(n, decode_answer(session.tokenizer, row[len(ids):].tolist())) for n, row in zip(names, rows)]


def _one_at_a_time(session, names: list[str], batch, generation) -> list:
    """Each of `names` answers alone, as `:use NAME` then asking would; the active adapter is restored."""
    import torch

    previous, rows = session.active_adapter, []
    try:
        for n in names:
            adapters.activate(session, None if n == BASE else n)
            rows += session.model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **generation)
    finally:
        adapters.activate(session, previous if previous in adapters.loaded_names(session) else None)
    return rows


def decode_answer(tokenizer, ids: list[int]) -> str:
    """What streaming shows for these generated ids: up to EOS, specials dropped, cleaned."""
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[:ids.index(eos)]
    return prompts.clean_answer(tokenizer.decode(ids, skip_special_tokens=True))


def evaluate(session, names: list[str], encoded, on_batch=None, probes=(), options=None) -> tuple[list[str], list[tuple]]:
    """(name, mean answer-token loss, recall k as asked, locality.Locality or None) for each of
    `names` on `encoded` (batches.encode's result); the locality is measured on `probes`,
    (instruction, question) pairs, against the base's greedy answers (computed once per session).
    The active adapter is restored afterwards."""
    from lorachat import locality
    from lorachat.recall import Recall

    options = options or locality.DEFAULTS
    notes = load_all(session, names)
    checker = Recall(session.tokenizer, encoded.examples, encoded.items, session.asking())
    ref = locality.session_reference(session, list(probes), options) if probes else None
    previous, rows = session.active_adapter, []
    try:
        for n in names:
            adapters.activate(session, None if n == BASE else n)
            kept = locality.score(session.model, session.tokenizer, ref, options) if ref else None
            rows.append((n, *checker.evaluate(session.model, on_batch), kept))
    finally:
        adapters.activate(session, previous if previous in adapters.loaded_names(session) else None)
    return notes, rows


def delete(session, name: str) -> None:
    """Unload adapter `name` and remove its directory (hidden first: a crash leaves nothing half-deleted
    in view). The disk goes first: when it refuses, memory is left exactly as it was."""
    path = adapters.adapter_path(session, name)
    if not path.is_dir() and name not in adapters.loaded_names(session):
        raise LorachatError(f"no adapter named '{name}'{did_you_mean(name, adapters.known_names(session))}")
    doomed = store.hide(path, f"adapter '{name}'") if path.is_dir() else None
    adapters.remove(session, name)
    adapters.shelf(session).scales.pop(name, None)
    adapters.shelf(session).unsaved.pop(name, None)
    if doomed is not None:
        shutil.rmtree(doomed, ignore_errors=True)


def rename(session, old: str, new: str) -> None:
    """Rename a saved adapter on disk (and in memory: it is reloaded under the new name). The disk
    goes first, undone when its second step fails, so a refusal leaves the session as it was."""
    source, target = adapters.adapter_path(session, old), adapters.adapter_path(session, adapters.check_loadable_name(new))
    if not source.is_dir():
        raise LorachatError(f"no saved adapter named '{old}'{did_you_mean(old, adapters.saved_names(session))}")
    if target.exists() or new in adapters.loaded_names(session):
        raise LorachatError(f"an adapter named '{new}' already exists")
    store.move(source, target, f"adapter '{old}'")
    meta = provenance.read_meta(target)
    try:
        if meta is not None:
            store.write_json_atomic(target / provenance.META_FILE, dict(meta, name=new))
    except LorachatError:
        store.move(target, source, f"adapter '{new}' back to '{old}'")
        raise
    was_loaded, was_active = old in adapters.loaded_names(session), session.active_adapter == old
    adapters.remove(session, old)
    if old in adapters.shelf(session).scales:
        adapters.shelf(session).scales[new] = adapters.shelf(session).scales.pop(old)
    if was_loaded:
        adapters.load(session, new)
    if was_active:
        adapters.activate(session, new)
