"""Measuring adapters side by side: :compare (one question, every answer) and :eval (a dataset's
loss and recall as asked, and what each adapter keeps of the base's answers to probe questions).
The maths is adapters/side_by_side.py's and scoring/'s; this module parses and shows."""
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

from lorachat.adapters import gate, live, side_by_side, travel
from lorachat.adapters.paths import BASE, adapter_path
from lorachat.adapters.provenance import read_meta
from lorachat.chat import options
from lorachat.chat.commands import command
from lorachat.chat.commands.adapters import _names_and_base, _notes
from lorachat.chat.commands.examples import note_bad_lines
from lorachat.core.errors import LorachatError, did_you_mean
from lorachat.core.names import check_name
from lorachat.scoring import locality

_SEPARATOR = re.compile(r"(?:^|\s)--(?:\s|$)")


@command("compare", usage=":compare [NAME ...] [-- QUESTION]", complete=_names_and_base)
def compare(session, args):
    """Answer one question with the base and each adapter, greedy, side by side.

    :compare                       the last question; base and every loaded adapter
    :compare films music -- Who directed Alien?
    The question is asked alone, without the conversation, so every adapter answers the same prompt.
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
        names = [BASE] + live.loaded_names(session)
    elif BASE not in names:
        names = [BASE] + names
    if len(set(names)) != len(names):
        raise LorachatError(":compare: each adapter may be named once")
    notes, answers = side_by_side.compare(session, names, question)
    _notes(session, notes + _alone(session))
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
    limit: int = field(default=0, metadata={"help": "only the first N examples, for a quick look (0: all)", "min": 0, "max": 10**9})
    probes: Optional[str] = field(default=None, metadata={"help": "a dataset whose questions are added to the built-in probes"})
    builtin: Optional[int] = field(default=None, metadata={"help": "how many of the built-in probe questions (none: all; 0: only probes=NAME's)", "min": 0, "max": 100_000})
    probe_tokens: int = field(default=locality.DEFAULTS.max_new_tokens, metadata={"help": "tokens of each base answer compared", "min": 1, "max": 512})
    gate: Optional[str] = field(default=None, metadata={"help": "off: every adapter answers every question, as :export and vLLM serve it (also measures answer length and records these ungated figures in lorachat.json); none: as :set gate", "choices": ("on", "off")})


def _eval_details(session):
    session.ui.table(["key", "default", "meaning"], [list(r) for r in options.describe(EvalOptions())])


@command("eval", usage=":eval [NAME ...] [dataset=NAME] [limit=N] [probes=NAME] [builtin=N] [probe_tokens=16] [gate=off]",
         details=_eval_details, complete=_names_and_base)
def eval_(session, args):
    """Measure the base and each adapter: loss and recall on a dataset, and what it keeps of the base.

    loss: mean answer-token loss; recall: k/n questions answered verbatim as asked now; kept and agree
    (below): on probe questions it was not taught.

    :eval                      base and every loaded adapter, on the current dataset
    :eval films dataset=films probes=kitchen limit=100
    kept: share of probes answered exactly as the base answers them (greedy, first probe_tokens tokens);
    agree: share of the base's answer tokens the adapter predicts (teacher-forced, EasyEdit's metric).
    Every question is asked alone, without the conversation (a taught example with turns of its own
    is asked after them).
    :eval NAME gate=off        what NAME does outside lorachat (:export, vLLM, llama.cpp): every
    question its own, answer length against the base's too; recorded in its lorachat.json
    """
    positional, pairs = options.split_kv(options.split_words(args))
    opts = options.apply_kv(EvalOptions(), pairs)
    setting = session.settings.gate
    session.settings.gate = opts.gate or setting
    try:
        _evaluate(session, positional, opts)
    finally:
        session.settings.gate = setting


def _evaluate(session, positional, opts):
    dataset = check_name(opts.dataset or session.dataset, "dataset")
    names = [BASE if w.lower() == BASE else w for w in positional] or live.loaded_names(session)
    names = [BASE] + [n for n in names if n != BASE]
    if len(set(names)) != len(names):
        raise LorachatError(":eval: each adapter may be named once")
    have = live.known_names(session)
    for name in names[1:]:   # before the base answers the probes, which takes a while
        if name not in have:
            raise LorachatError(f"no adapter named '{name}'{did_you_mean(name, have)} (have: {', '.join(have) or 'none yet'})")
    encoded = _eval_examples(session, dataset, opts.limit)
    extra = locality.questions_of(_dataset(session, check_name(opts.probes, "dataset")).examples) if opts.probes else []
    if opts.probes and not extra:
        raise LorachatError(f"dataset '{opts.probes}' has no questions to probe with")
    builtin = locality.builtin(locality.PROBES)[:opts.builtin]
    probes = side_by_side.probe_questions(session, extra, builtin)
    settings = dataclasses.replace(locality.DEFAULTS, max_new_tokens=opts.probe_tokens)
    if probes:  # the base's answers first, on a bar of their own (cached: the evaluation below reuses them)
        with session.ui.progress(f"answering {len(probes)} probe questions with the base", len(probes)) as update:
            side_by_side.session_reference(session, probes, settings, on_batch=update)
    total = len(encoded.items)
    with session.ui.progress(f"evaluating on {dataset}", total * len(names)) as update:
        done = [0]

        def on_batch(rows):
            done[0] += rows
            update(done[0])

        notes, rows = side_by_side.evaluate(session, names, encoded, on_batch, probes, settings)
    _notes(session, notes + _alone(session))
    questions = sum(1 for e in encoded.examples if e.text is None)
    whole = _ungated(session, rows) if opts.gate == "off" else {}
    table = [[n, f"{loss:.4f}", f"{k}/{questions}", _share(kept and kept.kept), _share(kept and kept.agreement)]
             + ([f"{whole[n]['length']:.2f}×", _share(whole[n]["unchanged"])] if n in whole else ["1.00×", _share(1.0)]
                if whole else []) for n, loss, k, kept in rows]
    shown = f"{total} example{'' if total == 1 else 's'}" + (f", {encoded.skipped} longer than the model's {encoded.limit} positions left out" if encoded.skipped else "")
    probed = f"{len(builtin)} built-in" + (f" + {len(extra)} from '{opts.probes}'" if extra else "")
    session.ui.table(["adapter", "loss", "recall", "kept", "agree"] + (["length", "whole"] if whole else []), table,
                     title=f"dataset '{dataset}' ({shown}); probes: {probed}, {opts.probe_tokens} tokens"
                           + (", every question the adapter's (gate=off)" if opts.gate == "off" else ""))
    if whole:
        session.ui.note(f"length: median answer length to the first {locality.LENGTH_PROBES} built-in probes over the "
                        f"base's (at most {locality.LENGTH_TOKENS} tokens); whole: those answers unchanged to the last "
                        "token; recorded as each adapter's ungated figures")
    for name in names:
        said = gate.lessons(session, name) if name != BASE else None
        if said:
            session.ui.note(f"{name}: {said}")


def _ungated(session, rows) -> dict:
    """{adapter: its side_by_side.whole_answers}, each measured active with no gate, and its ungated
    figures recorded in its lorachat.json (what :export, `lorachat serve` and a GGUF export say they ship)."""
    from lorachat.adapters import disk

    previous, whole = session.active_adapter, {}
    try:
        for name, _, _, kept in rows:
            if name == BASE:
                continue
            live.activate(session, name)
            whole[name] = side_by_side.whole_answers(session)
            if kept is not None:
                disk.record(session, name, travel.recorded(read_meta(adapter_path(session, name)), side_by_side.ungated_record(
                    kept, whole[name], live.scale_of(session, name))))
    finally:
        live.activate(session, previous if previous in live.loaded_names(session) else None)
    return whole


def _eval_examples(session, dataset: str, limit: int):
    from lorachat.scoring.batches import encode

    data = _dataset(session, dataset)
    examples = data.examples[:limit] if limit else data.examples
    encoded = encode(session.tokenizer, examples, session.context_length())
    if not encoded.items:
        raise LorachatError(f"dataset '{dataset}' has no examples to evaluate on" +
                            (f" ({encoded.skipped} longer than the model's {encoded.limit} positions)" if encoded.skipped else ""))
    return encoded


def _dataset(session, name):
    from lorachat.lessons.jsonl import load_dataset

    data = load_dataset(session.home, name)
    note_bad_lines(session, data)
    return data


def _alone(session) -> list[str]:
    """Said while a conversation is going on: measurements ask each question alone."""
    count = len(session.turns) if session.conversation() else 0
    return [f"(asked alone, without the conversation's {count} turn{'' if count == 1 else 's'})"] if count else []


def _share(value) -> str:
    return "" if value is None or value == "" else f"{100 * value:.1f}%"
