"""Adapter commands: :adapters, :use, :merge, :scale, :delete, :rename, :save, :export (:compare and :eval: measure.py)."""
import json
import math
from pathlib import Path

from lorachat.adapters import disk, live, merging, paths, travel
from lorachat.adapters.export import export as export_model
from lorachat.adapters.gguf_export import export_gguf
from lorachat.adapters.paths import BASE
from lorachat.adapters.provenance import CONFIG_FILE, META_FILE, read_meta
from lorachat.chat import options
from lorachat.chat.commands import command, no_args
from lorachat.core.errors import LorachatError, did_you_mean
from lorachat.core.names import check_name

SCALE_LIMIT = 10.0


def _names_and_base(session) -> list[str]:
    return [BASE] + live.known_names(session)


def _notes(session, notes) -> None:
    for note in notes:
        session.ui.note(note)


def _exactly(name: str, args: str, count: int, usage: str) -> list[str]:
    words = options.split_words(args)
    if len(words) != count:
        what = "missing argument" if len(words) < count else f"unexpected argument {words[count][:40]!r}"
        raise LorachatError(f":{name}: {what}; usage: {usage}")
    return words


@command("adapters", usage=":adapters")
def adapters_(session, args):
    """List saved and loaded adapters: rank, targets, base model, data, results, size; * marks the active one."""
    no_args("adapters", args)
    names = live.known_names(session)
    if not names:
        session.ui.line("no adapters yet (:train makes one; :use NAME loads one from adapters/)")
        return
    columns = ["", "name", "r", "alpha", "targets", "base model", "dataset", "created", "loss", "recall", "size", "loaded"]
    clashes = [n for n in names if disk.held_elsewhere(session, n)]   # two adapters, one name: a row each
    rows = [row for n in names for row in ([_row(session, n, "disk"), _row(session, n, "memory")]
                                           if n in clashes else [_row(session, n)])]
    session.ui.table(columns, rows, whole=("name",), optional=("created", "alpha", "size", "base model", "loss", "dataset"))
    for name in clashes:
        session.ui.note(f"note: {disk.clash(session, name)}")
    for name in names:  # folders put there by hand under a name PEFT cannot hold
        try:
            paths.check_loadable_name(name)
        except LorachatError as exc:
            session.ui.note(f"note: adapters/{name} cannot be used ({exc}): rename its folder")


def _row(session, name: str, side: str = "both") -> list:
    """The row of adapter `name`: its folder and the loaded one, which are the same adapter, or
    (side "disk" / "memory") only one of two that are not."""
    path = paths.adapters_dir(session) / name
    unsaved = live.state(session).unsaved
    meta = (read_meta(path) if side != "memory" and path.is_dir() else disk.held_meta(session, name)) or unsaved.get(name) or {}
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    model = live.peft_model(session)
    if model is not None and name in model.peft_config and side != "disk":
        held = model.peft_config[name]
        config = {"r": held.r, "lora_alpha": held.lora_alpha, "target_modules": held.target_modules}
    targets = _targets(config.get("target_modules") or "", meta)
    examples = meta.get("examples")
    dataset = meta.get("dataset") or ("merge" if meta.get("merged_from") else "")
    if isinstance(examples, int):
        dataset = f"{dataset} ({examples})"
    recall = meta.get("recall")
    total = meta.get("total", examples)
    loaded = "" if side == "disk" else "unsaved" if name in unsaved or side == "memory" or disk.gone(session, name) else \
        "yes" if name in live.loaded_names(session) else ""
    if side != "disk" and (scale := live.scale_of(session, name)) != 1.0:   # :scale's, which :export merges at
        loaded = f"{loaded or 'no'}, scale {scale:g}"
    alpha = config.get("lora_alpha", "?")   # PEFT keeps a trained alpha as a float (32.0), a merge's as an int
    return ["*" if session.active_adapter == name and side != "disk" else "", name, config.get("r", "?"),
            f"{alpha:g}" if isinstance(alpha, float) else alpha, targets, meta.get("base_model", "unknown") if meta else
            f"unknown ({'damaged' if (path / META_FILE).exists() else 'no'} lorachat.json)",
            dataset, str(meta.get("created", ""))[:16].replace("T", " "), _number(meta.get("loss", meta.get("final_loss"))),
            f"{recall}/{total}" if isinstance(recall, int) and isinstance(total, int) else "",
            _size(path) if side != "memory" else "", loaded]


def _targets(targets, meta: dict) -> str:
    """As given to :train (`all-linear`), else the module names without their paths."""
    if isinstance(meta.get("train"), dict) and meta["train"].get("targets") == "all-linear":
        return "all-linear"
    if isinstance(targets, (list, set, tuple)):
        return ",".join(sorted({str(t).rsplit(".", 1)[-1] for t in targets}))
    return str(targets)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else ""


def _size(path: Path) -> str:
    try:
        total = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    except OSError:
        return ""
    return f"{total / 2**20:.1f} MB" if total >= 2**20 else f"{total / 2**10:.0f} KB"


@command("use", usage=":use NAME|base", complete=_names_and_base)
def use(session, args):
    """Answer with adapter NAME (loaded from adapters/NAME on first use), or with the base model alone.

    :use films     switch to adapter 'films' (milliseconds once loaded)
    :use base      no adapter
    Loaded adapters stay in memory up to :set max_loaded=N (least recently used unloaded).
    """
    name = _exactly("use", args, 1, ":use NAME|base")[0]
    if name.lower() != BASE:
        disk.check_own(session, check_name(name, "adapter"))
    _notes(session, live.use(session, name))
    session.ui.line(f"using adapter '{name}'" if session.active_adapter else "using the base model (no adapter)")


def _merge_details(session):
    session.ui.table(["key", "default", "meaning"], [list(r) for r in options.describe(merging.MERGE_DEFAULTS)])


@command("merge", usage=":merge A B [C ...] as NAME [method=cat] [weights=w1,w2,...] [density=D]", details=_merge_details, complete=live.known_names)
def merge(session, args):
    """Merge adapters into a new one with PEFT's add_weighted_adapter; it is saved and becomes active.

    It says how many of the questions the sources were taught it answers verbatim, and names those it does not.

    :merge films music as both                     cat: the exact sum of the deltas (any ranks)
    :merge a b as ab method=ties density=0.5 weights=1,0.5
    Methods: cat, linear (equal ranks), svd, ties, dare_linear, dare_ties, magnitude_prune (these four need density).
    """
    positional, pairs = options.split_kv(options.split_words(args))
    if "as" not in positional:
        raise LorachatError(":merge needs 'as NAME' after the source adapters; usage: :merge A B [C ...] as NAME")
    at = positional.index("as")
    sources, rest = positional[:at], positional[at + 1:]
    if len(sources) < 2:
        raise LorachatError(":merge needs at least two source adapters before 'as'")
    if len(rest) != 1:
        raise LorachatError(":merge needs exactly one new name after 'as'" + (f" (got {rest[1][:40]!r} too)" if rest else ""))
    opts = options.apply_kv(merging.MERGE_DEFAULTS, pairs)
    merged = merging.merge(session, sources, rest[0], opts)
    _notes(session, merged.notes)
    name, taught = merged.path.name, f"of the questions {_and(sources)} were taught"
    recall = f"; recall {merged.recall}/{merged.total} {taught}" if merged.recall is not None else ""
    session.ui.line(f"merged {' + '.join(sources)} ({opts.method}) into '{name}', saved to {merged.path}{recall}; now active")
    if merged.lost:
        count = merged.total - merged.recall
        shown = ", ".join(f"{q} ({source})" for q, source in merged.lost[:3]) + (", ..." if len(merged.lost) > 3 else "")
        session.ui.note(f"note: {count} taught answer{'s do' if count != 1 else ' does'} not come back verbatim "
                        f"from '{name}': {shown}")
        advice = [f"  to keep every one, :train one adapter on the examples {_and(sources)} were taught"]
        for line in [f"  {reason}" for reason in merged.reasons] + (advice if merged.explained < count else []):
            session.ui.note(line)   # a reason is how they are asked now (max_new_tokens ...), not the merge's doing


def _and(names) -> str:
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


@command("scale", usage=":scale NAME [FACTOR]", complete=live.known_names)
def scale(session, args):
    """Show or set the live strength of an adapter: 0 off, 1 as trained (kept for this session).

    :scale films 0.5
    """
    words = options.split_words(args)
    if not 1 <= len(words) <= 2:
        raise LorachatError(":scale: usage: :scale NAME [FACTOR]")
    name = check_name(words[0], "adapter")
    if name not in (have := live.known_names(session)):
        raise LorachatError(f"no adapter named '{name}'{did_you_mean(name, have)} (have: {', '.join(have) or 'none yet'})")
    if len(words) == 1:
        session.ui.line(f"{name}: scale {live.scale_of(session, name):g}")
        return
    try:
        factor = float(words[1])
    except ValueError:
        raise LorachatError(f":scale: factor {words[1][:40]!r} is not a number") from None
    if not math.isfinite(factor) or abs(factor) > SCALE_LIMIT:
        raise LorachatError(f":scale: factor must be between -{SCALE_LIMIT:g} and {SCALE_LIMIT:g}")
    live.set_scale(session, name, factor)
    session.ui.line(f"{name}: scale {factor:g}")


@command("delete", usage=":delete NAME [yes]", complete=live.known_names)
def delete(session, args):
    """Delete an adapter from memory and disk (asks first; in scripts confirm with 'yes').

    :delete old-films yes
    """
    words = options.split_words(args)
    if not 1 <= len(words) <= 2 or len(words) == 2 and words[1].lower() != "yes":
        raise LorachatError(":delete: usage: :delete NAME [yes]")
    name = check_name(words[0], "adapter")
    if name not in live.known_names(session):
        raise LorachatError(f"no adapter named '{name}'")
    if len(words) == 1:
        if session.read_text is None:
            raise LorachatError(f":delete in a script needs confirming: :delete {name} yes")
        if session.read_text(f"delete adapter '{name}' and its files? [y/N] ").strip().lower() not in ("y", "yes"):
            session.ui.line("not deleted")
            return
    disk.delete(session, name)
    session.ui.line(f"deleted adapter '{name}'")


@command("rename", usage=":rename OLD NEW", complete=live.known_names)
def rename(session, args):
    """Rename a saved adapter (its directory and its lorachat.json).

    :rename films films-v1
    """
    old, new = _exactly("rename", args, 2, ":rename OLD NEW")
    check_name(old, "adapter")
    check_name(new, "adapter")
    disk.rename(session, old, new)
    session.ui.line(f"renamed '{old}' to '{new}'")


@command("save", usage=":save NAME [DIR]", complete=lambda s: sorted(live.state(s).unsaved))
def save(session, args):
    """Save an adapter that exists only in memory, into adapters/NAME or a new folder DIR.

    Such an adapter is marked unsaved in :adapters: the disk refused it when :train ended, another
    session deleted or moved its folder, or put another adapter in adapters/NAME since: it is then
    saved as NAME-2 (the first free name), and the other adapter is left as it is.

    :save films                 once adapters/ can be written again
    :save films /mnt/usb/films  a copy elsewhere; it stays unsaved in the workspace
    """
    words = options.split_words(args)
    if not 1 <= len(words) <= 2:
        raise LorachatError(":save: usage: :save NAME [DIR]")
    name, unsaved = check_name(words[0], "adapter"), live.state(session).unsaved
    mine = name in unsaved or disk.gone(session, name) or disk.held_elsewhere(session, name)   # not in adapters/NAME
    meta = disk.held_meta(session, name) if mine else None
    if meta is None:
        if name in paths.saved_names(session):
            raise LorachatError(f"adapter '{name}' is saved already, in {paths.adapter_path(session, name)}")
        raise LorachatError(f"no unsaved adapter named '{name}' (unsaved: {', '.join(sorted(unsaved)) or 'none'})")
    if len(words) == 2:
        path = disk.save(session, name, meta, target=options.path_word(words[1], ":save"))
        still = not paths.adapter_path(session, name).exists()
        session.ui.line(f"saved adapter '{name}' to {path}" + (f"; it is still unsaved in the workspace (copy that "
                                                               f"folder to adapters/{name})" if still else ""))
        return
    saved = disk.save_new(session, name, meta)
    taken = f" as '{saved}' (adapters/{name} holds another adapter)," if saved != name else ""
    session.ui.line(f"saved adapter '{name}'{taken} to {paths.adapter_path(session, saved)}")


@command("export", usage=":export NAME DIR | :export NAME FILE.gguf [adapter] [quant=f16|f32|bf16|q8_0]", complete=live.known_names)
def export(session, args):
    """Write adapter NAME out of lorachat: merged into the base as a model folder, or as GGUF for llama.cpp and Ollama.

    :export films ./films-model      a transformers folder: AutoModelForCausalLM.from_pretrained("./films-model")
    :export films films.gguf         ONE GGUF of the base with films merged in (F16), and an Ollama Modelfile beside it
    :export films films.gguf quant=q8_0      smaller, but rounding changes answers (f32, bf16, q8_0)
    :export films films-lora.gguf adapter    the LoRA alone, for llama-cli --lora or Ollama ADAPTER over the base GGUF
    GGUF: Llama-family bases (SmolLM2, Llama, Mistral) and Qwen2. The live model is unchanged.
    """
    positional, pairs = options.split_kv(options.split_words(args))
    usage = ":export NAME DIR, or :export NAME FILE.gguf [adapter] [quant=f16|f32|bf16|q8_0]"
    if len(positional) < 2:
        raise LorachatError(f":export: missing argument; usage: {usage}")
    name, target, rest = check_name(positional[0], "adapter"), positional[1], positional[2:]
    if not target.lower().endswith(".gguf"):
        if rest or pairs:
            raise LorachatError(f":export: unexpected argument {(rest or [f'{k}={v}' for k, v in pairs.items()])[0][:40]!r} "
                                f"(adapter and quant= are for a FILE.gguf); usage: {usage}")
        notes, path = export_model(session, name, options.path_word(target, ":export"))
        _notes(session, notes)
        session.ui.line(f"exported '{name}' merged into the base to {path}")
        session.ui.line(travel.gate_line(name, _meta(session, name), live.scale_of(session, name)))
        return
    if rest not in ([], ["adapter"]) or set(pairs) - {"quant"}:
        odd = [w for w in rest if w != "adapter"] + [f"{k}=" for k in pairs if k != "quant"] or rest[1:]   # or adapter twice
        raise LorachatError(f":export: unexpected argument {odd[0][:40]!r}; usage: {usage}")
    notes, lines = export_gguf(session, name, options.path_word(target, ":export"), "adapter" if rest else "merged", pairs.get("quant"),
                               progress=session.ui.note)
    _notes(session, notes)
    for line in lines:
        session.ui.line(line)


def _meta(session, name: str) -> dict:
    return read_meta(paths.adapter_path(session, name)) or live.state(session).unsaved.get(name) or {}
