"""Adapter commands: :adapters, :use, :merge, :compare, :eval, :scale, :delete, :rename, :export."""
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lorachat import adapters, locality, options, shelf
from lorachat.adapters import BASE
from lorachat.commands import command, no_args
from lorachat.errors import LorachatError
from lorachat.names import check_name
from lorachat.provenance import CONFIG_FILE, read_meta

SCALE_LIMIT = 10.0


def _names(session) -> list[str]:
    return adapters.known_names(session)


def _names_and_base(session) -> list[str]:
    return [BASE] + adapters.known_names(session)


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
    names = adapters.known_names(session)
    if not names:
        session.ui.line("no adapters yet (:train makes one; :use NAME loads one from adapters/)")
        return
    columns = ["", "name", "r", "alpha", "targets", "base model", "dataset", "created", "loss", "recall", "size", "loaded"]
    session.ui.table(columns, [_row(session, n) for n in names])


def _row(session, name: str) -> list:
    path = adapters.adapters_dir(session) / name
    meta = read_meta(path) or {}
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    model = adapters.peft_model(session)
    if model is not None and name in model.peft_config:
        live = model.peft_config[name]
        config = {"r": live.r, "lora_alpha": live.lora_alpha, "target_modules": live.target_modules}
    targets = config.get("target_modules") or ""
    targets = ",".join(sorted(targets)) if isinstance(targets, (list, set, tuple)) else str(targets)
    examples = meta.get("examples")
    dataset = meta.get("dataset") or ("merge" if meta.get("merged_from") else "")
    if isinstance(examples, int):
        dataset = f"{dataset} ({examples})"
    recall = meta.get("recall")
    total = meta.get("total", examples)
    return ["*" if session.active_adapter == name else "", name, config.get("r", "?"), config.get("lora_alpha", "?"),
            targets, meta.get("base_model", "unknown") if meta else "unknown (no lorachat.json)", dataset,
            str(meta.get("created", ""))[:16].replace("T", " "), _number(meta.get("loss", meta.get("final_loss"))),
            f"{recall}/{total}" if isinstance(recall, int) and isinstance(total, int) else "",
            _size(path), "yes" if name in adapters.loaded_names(session) else ""]


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
    _notes(session, adapters.use(session, name))
    session.ui.line(f"using adapter '{name}'" if session.active_adapter else "using the base model (no adapter)")


def _merge_details(session):
    session.ui.table(["key", "default", "meaning"], [list(r) for r in options.describe(shelf.MERGE_DEFAULTS)])


@command("merge", usage=":merge A B [C ...] as NAME [method=cat] [weights=w1,w2,...] [density=D]", details=_merge_details, complete=_names)
def merge(session, args):
    """Merge adapters into a new one with PEFT's add_weighted_adapter; it is saved and becomes active.

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
    opts = options.apply_kv(shelf.MERGE_DEFAULTS, pairs)
    notes, path = shelf.merge(session, sources, rest[0], opts)
    _notes(session, notes)
    session.ui.line(f"merged {' + '.join(sources)} ({opts.method}) into '{rest[0]}', saved to {path}; now active")


_SEPARATOR = re.compile(r"(?:^|\s)--(?:\s|$)")


@command("compare", usage=":compare [NAME ...] [-- QUESTION]", complete=_names_and_base)
def compare(session, args):
    """Answer one question with the base and each adapter, greedy, side by side.

    :compare                       the last question; base and every loaded adapter
    :compare films music -- Who directed Alien?
    """
    split = _SEPARATOR.search(args)
    head, question = (args[:split.start()], args[split.end():].strip()) if split else (args, None)
    if split and not question:
        raise LorachatError(":compare: nothing after '--'; give the question to ask")
    question = question or session.last_question
    if not question:
        raise LorachatError(":compare: no question yet; ask one first or give it after '--'")
    names = [BASE if w.lower() == BASE else w for w in options.split_words(head)]
    if not names:
        names = [BASE] + adapters.loaded_names(session)
    elif BASE not in names:
        names = [BASE] + names
    if len(set(names)) != len(names):
        raise LorachatError(":compare: each adapter may be named once")
    notes, answers = shelf.compare(session, names, question)
    _notes(session, notes)
    if session.ui.interactive:
        session.ui.table(["adapter", "answer"], [[n, a] for n, a in answers], title=question)
        return
    for name, answer in answers:
        session.ui.line(f"[{name}]")
        session.ui.line(answer)


@dataclass
class EvalOptions:
    """`:eval` keys."""
    dataset: Optional[str] = field(default=None, metadata={"help": "dataset to evaluate on (default: the current one)"})
    probes: Optional[str] = field(default=None, metadata={"help": "a dataset whose questions are added to the built-in probes"})
    builtin: Optional[int] = field(default=None, metadata={"help": "how many of the built-in probe questions (none: all; 0: only probes=NAME's)", "min": 0, "max": 100_000})
    probe_tokens: int = field(default=locality.DEFAULTS.max_new_tokens, metadata={"help": "tokens of each base answer compared", "min": 1, "max": 512})


def _eval_details(session):
    session.ui.table(["key", "default", "meaning"], [list(r) for r in options.describe(EvalOptions())])


@command("eval", usage=":eval [NAME ...] [dataset=NAME] [probes=NAME] [builtin=N] [probe_tokens=16]",
         details=_eval_details, complete=_names_and_base)
def eval_(session, args):
    """For the base and each adapter: mean answer-token loss and exact recall k/n on a dataset, and
    how much of the base's behaviour it keeps on probe questions it was not taught.

    :eval                      base and every loaded adapter, on the current dataset
    :eval films dataset=films probes=kitchen
    kept: share of probes answered exactly as the base answers them (greedy, first probe_tokens tokens);
    agree: share of the base's answer tokens the adapter predicts (teacher-forced, EasyEdit's metric).
    """
    positional, pairs = options.split_kv(options.split_words(args))
    opts = options.apply_kv(EvalOptions(), pairs)
    dataset = check_name(opts.dataset or session.dataset, "dataset")
    names = [BASE if w.lower() == BASE else w for w in positional] or adapters.loaded_names(session)
    names = [BASE] + [n for n in names if n != BASE]
    if len(set(names)) != len(names):
        raise LorachatError(":eval: each adapter may be named once")
    data = _dataset(session, dataset)
    if not data.examples:
        raise LorachatError(f"dataset '{dataset}' has no examples to evaluate on")
    extra = locality.questions_of(_dataset(session, check_name(opts.probes, "dataset")).examples) if opts.probes else []
    if opts.probes and not extra:
        raise LorachatError(f"dataset '{opts.probes}' has no questions to probe with")
    builtin = locality.builtin(locality.PROBES)[:opts.builtin]
    probes = locality.probe_questions(session, extra, builtin)
    settings = dataclasses.replace(locality.DEFAULTS, max_new_tokens=opts.probe_tokens)
    notes, rows = shelf.evaluate(session, names, data.examples, probes, settings)
    _notes(session, notes)
    total = len(data.examples)
    table = [[n, f"{loss:.4f}", f"{k}/{total}", _share(kept and kept.kept), _share(kept and kept.agreement)]
             for n, loss, k, kept in rows]
    shown = f"{len(builtin)} built-in" + (f" + {len(extra)} from '{opts.probes}'" if extra else "")
    session.ui.table(["adapter", "loss", "recall", "kept", "agree"], table,
                     title=f"dataset '{dataset}' ({total} examples); probes: {shown}, {opts.probe_tokens} tokens")


def _dataset(session, name):
    from lorachat.datasets import load_dataset

    data = load_dataset(session.home, name)
    if data.bad_lines:
        session.ui.note(f"dataset '{name}': skipping {len(data.bad_lines)} invalid line(s): {data.describe_problems()}")
    return data


def _share(value) -> str:
    return "" if value is None or value == "" else f"{100 * value:.1f}%"


@command("scale", usage=":scale NAME [FACTOR]", complete=_names)
def scale(session, args):
    """Show or set the live strength of an adapter: 0 off, 1 as trained (kept for this session).

    :scale films 0.5
    """
    words = options.split_words(args)
    if not 1 <= len(words) <= 2:
        raise LorachatError(":scale: usage: :scale NAME [FACTOR]")
    name = check_name(words[0], "adapter")
    if len(words) == 1:
        session.ui.line(f"{name}: scale {adapters.shelf(session).scales.get(name, 1.0):g}")
        return
    try:
        factor = float(words[1])
    except ValueError:
        raise LorachatError(f":scale: factor {words[1][:40]!r} is not a number") from None
    if not math.isfinite(factor) or abs(factor) > SCALE_LIMIT:
        raise LorachatError(f":scale: factor must be between -{SCALE_LIMIT:g} and {SCALE_LIMIT:g}")
    adapters.set_scale(session, name, factor)
    session.ui.line(f"{name}: scale {factor:g}")


@command("delete", usage=":delete NAME [yes]", complete=_names)
def delete(session, args):
    """Delete an adapter from memory and disk (asks first; in scripts confirm with 'yes').

    :delete old-films yes
    """
    words = options.split_words(args)
    if not 1 <= len(words) <= 2 or len(words) == 2 and words[1].lower() != "yes":
        raise LorachatError(":delete: usage: :delete NAME [yes]")
    name = check_name(words[0], "adapter")
    if name not in adapters.known_names(session):
        raise LorachatError(f"no adapter named '{name}'")
    if len(words) == 1:
        if session.read_text is None:
            raise LorachatError(f":delete in a script needs confirming: :delete {name} yes")
        if session.read_text(f"delete adapter '{name}' and its files? [y/N] ").strip().lower() not in ("y", "yes"):
            session.ui.line("not deleted")
            return
    shelf.delete(session, name)
    session.ui.line(f"deleted adapter '{name}'")


@command("rename", usage=":rename OLD NEW", complete=_names)
def rename(session, args):
    """Rename a saved adapter (its directory and its lorachat.json).

    :rename films films-v1
    """
    old, new = _exactly("rename", args, 2, ":rename OLD NEW")
    check_name(old, "adapter")
    check_name(new, "adapter")
    shelf.rename(session, old, new)
    session.ui.line(f"renamed '{old}' to '{new}'")


@command("export", usage=":export NAME DIR", complete=_names)
def export(session, args):
    """Write a standalone model (base with the adapter merged, safetensors + tokenizer) to DIR.

    :export films ./films-model      then AutoModelForCausalLM.from_pretrained("./films-model")
    The live model is unchanged.
    """
    name, directory = _exactly("export", args, 2, ":export NAME DIR")
    notes, path = shelf.export(session, check_name(name, "adapter"), Path(directory))
    _notes(session, notes)
    session.ui.line(f"exported '{name}' merged into the base to {path}")
