"""Recording and managing examples: :dataset, :datasets, :add, :good, :fix, :examples, :drop, :undo
(:import is in importing.py).

Every recorded example is on disk (fsync'd) before its acknowledgement is printed. The examples
recorded in this session are remembered in `session.extensions["recorded"]` as jsonl.Mark (file,
offset and bytes of the lines written, an :import's too) so :undo removes exactly those lines, never equal ones.
A recorded question whose answer the active adapter was taught becomes one of that answer's
phrasings for the gate (adapters/steering.py: it routes at once, no training). Knows nothing about training.
"""
import os
import re

from lorachat.adapters import steering
from lorachat.chat import options
from lorachat.chat.commands import command, no_args
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name
from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example, asked, example_ids, shared_instruction
from lorachat.lessons import jsonl

ARROW = "=>"
SEPARATOR = re.compile(r"(?:^|\s)=>(?:\s|$)")   # :add's: the first '=>' between white space
SHOWN = 10      # :examples with no argument shows the last this many
CLIP = 200      # characters of a field shown per example in plain lines


def _names(session) -> list[str]:
    """Dataset names for Tab completion (never raises: a completer must not break the prompt)."""
    try:
        names = jsonl.dataset_names(session.home)
    except LorachatError:
        names = []
    return sorted(set(names) | {session.dataset})


def note_bad_lines(session, current: jsonl.DatasetFile, always: bool = False) -> None:
    """The dataset's invalid lines, in one warning: once until they change (a command that reads a
    dataset twice, `lorachat train`'s :dataset then :train), or `always` (:examples shows them)."""
    said = (str(current.path), tuple(current.bad_lines))
    if not current.bad_lines or not always and session.extensions.get("bad lines said") == said:
        return
    session.extensions["bad lines said"] = said
    session.ui.note(f"warning: {current.path}: {len(current.bad_lines)} invalid line(s) skipped "
                    f"({current.describe_problems()}); fix or delete them in an editor")


@command("dataset", usage=":dataset [NAME]", complete=_names)
def dataset(session, args):
    """Show the current dataset (path and count), or switch to NAME (created with its first example)."""
    words = options.split_words(args)
    if len(words) > 1:
        raise LorachatError(f":dataset takes one name (got {len(words)} words)")
    if words:
        name = check_name(words[0], "dataset")
        current = jsonl.load_dataset(session.home, name)
        session.dataset = name
    else:
        current = jsonl.load_dataset(session.home, session.dataset)
    new = "" if os.path.lexists(current.path) else " (new: the file is written with the first example)"
    session.ui.line(f"dataset {current.name}: {how_many(len(current.examples))} in {current.path}{new}")
    note_bad_lines(session, current)
    if words:
        take_instruction(session, current)


def take_instruction(session, current: jsonl.DatasetFile) -> None:
    """A dataset whose questions are all asked under one instruction puts it in force, so that
    what is asked is what was taught (docs/prompt.md)."""
    shared = shared_instruction(current.examples)
    if shared is not None and shared != session.instruction:
        session.instruction = shared
        session.ui.line(f"instruction set: {shared} (every example in {current.name} is asked under it)")
    elif shared is None and session.instruction != DEFAULT_INSTRUCTION:   # kept from before: say so
        session.ui.line(f"instruction still: {session.instruction} (:instruction default sets {DEFAULT_INSTRUCTION!r})")


@command("datasets")
def datasets_(session, args):
    """List the workspace's datasets with their example counts (* marks the current one)."""
    no_args("datasets", args)
    names = sorted(set(jsonl.dataset_names(session.home)) | {session.dataset})
    rows = []
    for name in names:
        try:
            current = jsonl.load_dataset(session.home, name)
        except LorachatError as exc:  # one unreadable file does not hide the others
            why = str(exc).replace(str(jsonl.dataset_path(session.home, name)), "the file")
            rows.append(["*" if name == session.dataset else "", name, "?", why])
            continue
        bad = f"{len(current.bad_lines)} invalid lines" if current.bad_lines else ""
        rows.append(["*" if name == session.dataset else "", name, len(current.examples), bad])
    session.ui.table(["", "dataset", "examples", "problems"], rows)


@command("add", usage=":add QUESTION => ANSWER")
def add(session, args):
    """Record an example: `:add QUESTION => ANSWER`, or `:add` alone to be asked for both (multi-line with \"\"\").

    The separator is the first '=>' with white space on both sides, so
    `:add What is 2=>3? => Nothing.` stores the question 'What is 2=>3?' (for a question that
    itself holds ' => ', type :add alone). The example is stored with the current :instruction,
    in the current :dataset, and is on disk before `added` is printed with the question and the
    start of the answer as stored.
    """
    if args:
        split = SEPARATOR.search(args)
        if not split:
            spaced = f"with a space on each side of '{ARROW}'" if ARROW in args else f"no '{ARROW}' found"
            raise LorachatError(f"write :add QUESTION {ARROW} ANSWER ({spaced})")
        question, answer = args[:split.start()], args[split.end():]
    else:
        question, answer = _ask_both(session)
    question, answer = question.strip(), answer.strip()
    if not question or not answer:
        raise LorachatError(f"nothing added: the {'question' if not question else 'answer'} is empty")
    _record(session, question, answer)


def _ask_both(session) -> tuple[str, str]:
    if session.read_text is None:
        raise LorachatError(f":add alone asks on a terminal; in a script write :add QUESTION {ARROW} ANSWER")
    try:
        return session.read_text("question> "), session.read_text("answer> ")
    except EOFError:
        raise LorachatError("nothing added (input ended)") from None


@command("good")
def good(session, args):
    """Record the last question with the model's last answer, as it was (once: a duplicate is not added)."""
    no_args("good", args)
    question = _last_question(session)
    answer = (session.last_answer or "").strip()
    if not answer:
        raise LorachatError("the last answer was empty; record a corrected one with :fix ANSWER")
    if not session.last_answer_complete:
        raise LorachatError("the last answer was stopped before it ended; record the answer you want with :fix ANSWER")
    examples = jsonl.load_dataset(session.home, session.dataset).examples
    if Example(session.instruction, question, answer) in examples:  # asked again after :train: kept already
        number = examples.index(Example(session.instruction, question, answer)) + 1
        session.ui.line(f"already in {session.dataset} as example {number}: nothing added")
        return
    _record(session, question, answer)
    if session.last_answer_cut:   # trained on, it would teach the answer to stop where the limit cut it
        session.ui.note(f"the answer was cut at max_new_tokens={session.last_answer_cut} before it ended, and is recorded "
                        f"so: :undo, then :set max_new_tokens=N and ask again for the whole answer, or :fix ANSWER")


@command("fix", usage=":fix ANSWER")
def fix(session, args):
    """Record the last question with ANSWER, the answer it should have had (also in the conversation).

    The example is the question alone with ANSWER; in a conversation, the last turn now carries
    ANSWER too, so what is asked next follows the corrected answer, not the one it replaces."""
    if not args.strip():
        raise LorachatError("write :fix ANSWER: the answer the last question should have had")
    question = _last_question(session)
    _record(session, question, args.strip())
    if session.turns and session.turns[-1][0] == question:
        session.turns[-1] = (question, args.strip())


def _last_question(session) -> str:
    if not session.last_question and session.cleared:
        raise LorachatError("the last answer went with the conversation :clear ended: ask the question again "
                            "first, or use :add QUESTION => ANSWER")
    if not session.last_question:
        raise LorachatError("no question asked yet in this session: ask one first, or use :add QUESTION => ANSWER")
    return session.last_question


def _record(session, question: str, answer: str) -> None:
    example = Example(session.instruction, question, answer)
    count, mark = jsonl.append_marked(session.home, session.dataset, [example])
    session.extensions.setdefault("recorded", []).append(mark)
    session.ui.line(f"added to {session.dataset} ({how_many(count)}): {_clip(question, 60)} {ARROW} {_clip(answer, 60)}")
    _warn_if_too_long(session, example, count)
    name = session.active_adapter
    if name is not None and steering.add_phrasing(session, name, example):
        session.extensions.setdefault("phrasings", []).append((mark, name, example))   # :undo takes it back
        session.ui.note(f"'{name}' was taught this answer: it now answers this question too (the gate routes it; "
                        "no training needed)")


def _warn_if_too_long(session, example: Example, number: int) -> None:
    """Kept as typed (nothing the user recorded is lost), but training could not use it as is."""
    tokens, limit = len(example_ids(session.tokenizer, example)[0]), session.context_length()
    if tokens > limit:
        session.ui.note(f"warning: this example is {tokens} tokens with its prompt, more than the model's {limit} "
                        f"positions: it is kept, but :train leaves it out; shorten it, or :drop {number}")


@command("examples", usage=":examples [N|all]")
def examples(session, args):
    """Show the current dataset's last N examples (10 by default, or all), numbered for :drop."""
    words = options.split_words(args)
    if len(words) > 1 or words and words[0] != "all" and not _number(words[0]):
        raise LorachatError(f":examples takes a number (1 or more) or 'all' (got {args[:40]!r})")
    current = jsonl.load_dataset(session.home, session.dataset)
    total = len(current.examples)
    shown = total if words == ["all"] else min(total, int(words[0]) if words else SHOWN)
    first = total - shown
    rows = [[str(first + i + 1), *_fields(e)] for i, e in enumerate(current.examples[first:])]
    session.ui.line(f"dataset {current.name}: {how_many(total)}" + (f", showing the last {shown}" if shown < total else ""))
    if session.ui.interactive:
        session.ui.table(["#", "instruction", "question", "answer"], [[_printable(c) for c in row] for row in rows])
    else:
        for number, instruction, question, answer in rows:
            if instruction == "(text)":
                session.ui.line(f"{number}. (text) {_clip(answer)}")
            else:
                session.ui.line(f"{number}. [{_clip(instruction, 60)}] {_clip(question)} {ARROW} {_clip(answer)}")
    note_bad_lines(session, current, always=True)


def _number(word: str) -> bool:
    """A whole number from 1 written in ASCII digits (int() takes '٣' and refuses '²' and 5000 digits)."""
    return word.isascii() and word.isdigit() and len(word) < 19 and int(word) > 0


def _fields(example: Example) -> list[str]:
    """(instruction, question, answer) as the example is asked (prompts.asked: an Alpaca row with
    an empty input is its instruction asked as the question), or (text) and the text."""
    if example.text is not None:
        return ["(text)", "", example.text]
    instruction, question = asked(example)
    return [instruction, _after(example) + question, example.output]


def _after(example: Example) -> str:
    """'(after 2 turns) ' for an example asked in the middle of a conversation."""
    count = len(example.history)
    return f"(after {count} turn{'' if count == 1 else 's'}) " if count else ""


@command("drop", usage=":drop N")
def drop(session, args):
    """Remove example N (as :examples numbers it) from the current dataset, and say what it was."""
    words = options.split_words(args)
    if len(words) != 1 or not _number(words[0]):
        raise LorachatError(f"write :drop N, with N an example number from :examples (got {args[:40]!r})")
    removed, left = jsonl.remove_example(session.home, session.dataset, int(words[0]),
                                            session.extensions.get("recorded", ()))
    session.ui.line(f"dropped {words[0]} from {session.dataset} ({how_many(left)} left): {_describe(removed)}")


@command("undo")
def undo(session, args):
    """Remove the last example recorded in this session (by :add, :good or :fix), or the examples of its last :import.

    Those very lines go, and only while they are still where they were written. When recording an
    example made its question a phrasing of the active adapter's taught answer, the adapter stops
    routing it too."""
    no_args("undo", args)
    recorded = session.extensions.get("recorded") or []
    if not recorded:
        raise LorachatError("nothing to undo: no example was recorded in this session")
    mark = recorded[-1]
    try:
        removed, left = jsonl.remove_marked(session.home, mark, recorded)
    except jsonl.LineGone as exc:
        recorded.pop()  # it can never come back: the next :undo goes on to the one before
        lines = mark.data.decode("utf-8", "surrogateescape").splitlines()
        which = _describe(jsonl.parse_line(lines[0])) if len(lines) == 1 else f"the {len(lines)} examples :import added"
        raise jsonl.LineGone(f"{exc} [{which}]") from None
    recorded.pop()
    shown = _describe(removed[0]) if len(removed) == 1 else f"the {len(removed)} examples :import added"
    session.ui.line(f"removed from {mark.name} ({how_many(left)} left): {shown}")
    added = session.extensions.get("phrasings") or []
    for name, example in [(n, e) for m, n, e in added if m is mark]:
        sent_back = steering.remove_phrasing(session, name, example)
        if sent_back is not None:
            session.ui.line(f"and '{name}' no longer answers it as a phrasing of its taught answer "
                            + ("(it goes to the base again, as :unroute had sent it)" if sent_back else "(the gate decides it as before)"))
    session.extensions["phrasings"] = [entry for entry in added if entry[0] is not mark]


def _describe(example: Example) -> str:
    if example.text is not None:
        return f"(text) {_clip(example.text)}"
    return f"{_after(example)}{_clip(asked(example)[1])} {ARROW} {_clip(example.output)}"


def _clip(text: str, width: int = CLIP) -> str:
    """One line of at most `width` characters: newlines shown as ⏎."""
    text = text.replace("\r\n", "\n").replace("\n", " ⏎ ")
    return _printable(text if len(text) <= width else text[:width - 3] + "...")


def _printable(text: str) -> str:
    """Control characters from a file (terminal escapes) are shown, not obeyed."""
    return text if text.isprintable() else "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text)


def how_many(n: int) -> str:
    """'3 examples', '1 example'."""
    return f"{n} example" + ("" if n == 1 else "s")
