"""Examples on disk: `datasets/NAME.jsonl` in the workspace, one JSON object per line.

A line is `{"instruction", "input", "output"}` (the Alpaca convention) or `{"text"}` (trained on
as is). Appends are durable before they return and rewrites go through a hidden temporary file
renamed over the old one (core/durable.py does both); a file with invalid lines is never rewritten.
Knows nothing about sessions, models or other formats (importers.py maps those to Examples).
"""
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lorachat.core import durable
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name
from lorachat.core.prompts import Example

FOLDER = "datasets"
SUFFIX = ".jsonl"


@dataclass
class DatasetFile:
    name: str
    path: Path
    examples: list[Example] = field(default_factory=list)   # the good lines, in file order
    bad_lines: list[int] = field(default_factory=list)      # 1-based numbers of invalid lines
    problems: dict[int, str] = field(default_factory=dict)  # bad line number -> why
    lines: list[int] = field(default_factory=list)          # file line number of each example

    def describe_problems(self) -> str:
        """'line 3 is not valid JSON; line 7: ...' for the first few bad lines."""
        shown = [f"line {n} {self.problems[n]}" for n in self.bad_lines[:3]]
        more = len(self.bad_lines) - len(shown)
        return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


@dataclass
class Mark:
    """Where the lines one append of this process wrote lie (an :add's one line, an :import's
    many): their file (device and inode), the byte offset and the bytes. `:undo` removes those very
    lines, never equal ones written by someone else; rewrites made here move the mark along (or
    mark it gone, when one of its lines went)."""
    name: str
    file: tuple[int, int]
    offset: int
    data: bytes
    gone: bool = False


class LineGone(LorachatError):
    """The marked line is no longer where it was written: dropped, edited, or the file rewritten elsewhere."""


def dataset_path(home: Path, name: str) -> Path:
    return Path(home) / FOLDER / f"{check_name(name, 'dataset')}{SUFFIX}"


def parse_line(text: str) -> Example:
    """One line -> Example, or ValueError saying what is wrong with it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg})") from None
    except RecursionError:  # a hostile line of 100,000 '['
        raise ValueError("is not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ValueError("is not a JSON object")
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"]:
            raise ValueError('has a "text" that is not a non-empty string')
        return Example(text=obj["text"])
    if not isinstance(obj.get("output"), str):
        raise ValueError('has no "output" string (nor a "text")')
    if not obj["output"].strip():   # :add and :import refuse an empty answer: trained, it teaches an answer to stop at once
        raise ValueError('has an empty "output"')
    for key in ("instruction", "input"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ValueError(f'has an "{key}" that is not a string')
    return Example(obj.get("instruction") or "", obj.get("input") or "", obj["output"], history=_history(obj.get("history")))


def _history(value) -> tuple:
    """LLaMA-Factory's alpaca `history`: the earlier [question, answer] turns, oldest first."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(turn, list) and len(turn) == 2 and
                                               all(isinstance(part, str) for part in turn) for turn in value):
        raise ValueError('has a "history" that is not a list of [question, answer] pairs of strings')
    return tuple((question, answer) for question, answer in value)


def format_line(example: Example) -> bytes:
    """The JSON line for an example, newline included; readable UTF-8, one physical line."""
    if example.text is not None:
        obj = {"text": example.text}
    elif not example.output.strip():   # parse_line would not read it back
        raise LorachatError("the example's answer is empty")
    else:
        obj = {"instruction": example.instruction, "input": example.input, "output": example.output}
        if example.history:
            obj["history"] = [list(turn) for turn in example.history]
    text = json.dumps(obj, ensure_ascii=False)
    # characters other tools' line splitters (str.splitlines) break on
    for char in ("\u2028", "\u2029", "\x85"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise LorachatError("the example contains characters that are not valid Unicode text") from None


# path -> (the file's state, its good examples): what an append adds to, instead of reading the file again
_counted: dict[str, tuple[tuple, int]] = {}


def load_dataset(home: Path, name: str) -> DatasetFile:
    """Read NAME's examples; a missing file is an empty dataset, invalid lines are listed, not fatal."""
    path = dataset_path(home, name)
    data = durable.read_bytes(path)
    result = _parse(name, path, data)
    state = _state(path)
    if state is not None and state[2] == len(data):   # nothing was written between the read and now
        _counted[str(path)] = (state, len(result.examples))
    return result


def _state(path: Path) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _parse(name: str, path: Path, data: bytes) -> DatasetFile:
    result = DatasetFile(name, path)
    for number, raw in enumerate(_split_lines(data), start=1):
        if number == 1:   # a byte-order mark (Notepad's "UTF-8"); alone, the line is blank
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            result.examples.append(parse_line(text))
            result.lines.append(number)
        except UnicodeDecodeError:
            result.bad_lines.append(number)
            result.problems[number] = "is not UTF-8 text"
        except ValueError as exc:
            result.bad_lines.append(number)
            result.problems[number] = str(exc)
    return result


def dataset_names(home: Path) -> list[str]:
    """Names of the datasets in the workspace (valid names only; hidden leftovers ignored)."""
    folder = Path(home) / FOLDER
    try:
        files = sorted(folder.glob(f"*{SUFFIX}"))
    except OSError as exc:
        raise LorachatError(f"cannot list {folder}: {exc.strerror}") from None
    names = []
    for path in files:
        name = path.name[:-len(SUFFIX)]
        with contextlib.suppress(LorachatError):
            names.append(check_name(name, "dataset"))
    return names


def list_datasets(home: Path) -> list[tuple[str, int]]:
    """(name, number of good examples) for each dataset in the workspace."""
    return [(name, len(load_dataset(home, name).examples)) for name in dataset_names(home)]


def append_example(home: Path, name: str, example: Example) -> int:
    """Append one example durably (on disk before this returns); the dataset's new count."""
    return append_examples(home, name, [example])


def append_marked(home: Path, name: str, examples: list[Example]) -> tuple[int, Mark]:
    """append_examples, and the Mark of the lines it wrote (for :undo)."""
    data = b"".join(format_line(example) for example in examples)
    count, (file, offset) = _append(home, name, data, len(examples))
    return count, Mark(name, file, offset, data)


def append_examples(home: Path, name: str, examples: list[Example]) -> int:
    """Append all of `examples` in one write, or none of them (the file is cut back on failure)."""
    return _append(home, name, b"".join(format_line(example) for example in examples), len(examples))[0]


def _append(home: Path, name: str, data: bytes, added: int) -> tuple[int, tuple]:
    """Append `data` (`added` examples) under the folder lock; (the dataset's new count, where).
    The count is the last one read plus `added` when the file is as it was read then (the usual
    `:add` after `:add`), else the file is read first. A file with lines but no example among them
    (a file of another kind, reached through a link) is never written to."""
    path = dataset_path(home, name)
    with durable.locked_folder(path.parent):
        before = _state(path) or (None, None, 0, None)
        known = _counted.get(str(path))
        if not before[2]:
            count = 0
        elif known is not None and known[0] == before and known[1]:
            count = known[1]
        else:   # changed since it was read (or never read), or read with no example in it
            current = _parse(name, path, durable.read_bytes(path))
            count = len(current.examples)
            if not count and current.bad_lines:   # a file of another kind, reached through a link the user made
                raise LorachatError(f"nothing written to {path}: it holds no example, only lines that are not one "
                                    f"({current.describe_problems()}); fix it in an editor, or choose another dataset")
        where = durable.append_bytes(path, data)
        count += added
        _counted[str(path)] = (_state(path), count)
        return count, where


def remove_example(home: Path, name: str, number: int, marks=()) -> tuple[Example, int]:
    """Remove example `number` (1-based, as `:examples` numbers them); (removed, count left).
    `marks` of this file are moved along with the lines they point at."""
    def choose(current: DatasetFile, data: bytes, file: tuple) -> list[int]:
        if not 1 <= number <= len(current.examples):
            have = f"1 to {len(current.examples)}" if current.examples else "none: it is empty"
            raise LorachatError(f"no example {number} in {name} (examples are numbered {have})")
        return [number - 1]
    removed, left = _rewrite_without(home, name, choose, marks)
    return removed[0], left


def remove_marked(home: Path, mark: Mark, marks=()) -> tuple[list[Example], int]:
    """Remove the very lines `mark` points at, only while all are still there (else LineGone)."""
    single = mark.data.count(b"\n") == 1
    what = "that example is" if single else "one of the examples of that :import is"
    gone = LineGone(f"{what} no longer in {mark.name} (was it dropped or edited?)")
    if mark.gone or not durable.read_bytes(dataset_path(home, mark.name)).strip():
        raise gone

    def choose(current: DatasetFile, data: bytes, file: tuple) -> list[int]:
        if file != mark.file:
            raise LineGone(f"{mark.name} was rewritten since {'that example was recorded' if single else 'that :import'} (by "
                           "another session or an editor), so :undo cannot tell it from an equal line: use :examples and :drop N")
        at = mark.offset
        first = data.count(b"\n", 0, at) + 1
        numbers = range(first, first + mark.data.count(b"\n"))
        if data[at:at + len(mark.data)] != mark.data or at and data[at - 1:at] != b"\n" or \
                not set(numbers) <= set(current.lines):
            raise gone
        return [current.lines.index(number) for number in numbers]
    return _rewrite_without(home, mark.name, choose, marks)


def _rewrite_without(home, name, choose, marks=()) -> tuple[list[Example], int]:
    path = dataset_path(home, name)
    if not durable.read_bytes(path).strip():   # checked before the lock, which would create datasets/
        raise LorachatError(f"dataset {name} is empty: nothing to remove")
    with durable.locked_folder(path.parent):
        data, old_file = durable.read_bytes(path), _identity(path)
        current = _parse(name, path, data)
        if current.bad_lines:
            raise LorachatError(f"{path} has invalid lines ({current.describe_problems()}); it is never "
                                "rewritten while they are there: fix or delete those lines in an editor, then try again")
        indices = choose(current, data, old_file)
        drop = {current.lines[index] for index in indices}
        kept, moved, start, size = [], {}, 0, 0
        for number, raw in enumerate(_split_lines(data), start=1):
            if number not in drop and raw.strip():
                moved[start] = size
                kept.append(raw + b"\n")
                size += len(raw) + 1
            start += len(raw) + 1
        durable.replace_file(path, b"".join(kept))
        _move_marks(marks, name, old_file, _identity(path), moved)
    return [current.examples[index] for index in indices], len(current.examples) - len(indices)


def _move_marks(marks, name: str, old_file: tuple, new_file: tuple, moved: dict) -> None:
    """Marks on the rewritten file follow their lines (old offset -> new offset); a mark one of whose
    lines was dropped is gone (an :import's block is taken back whole or not at all)."""
    for mark in marks:
        if mark.name == name and mark.file == old_file and not mark.gone:
            starts, at = [], mark.offset   # where each of its lines began
            for line in mark.data.split(b"\n")[:-1]:
                starts.append(at)
                at += len(line) + 1
            if all(start in moved and moved[start] - moved[mark.offset] == start - mark.offset for start in starts):
                mark.file, mark.offset = new_file, moved[mark.offset]
            else:
                mark.gone = True


def _identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines
