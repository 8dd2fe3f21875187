"""Other people's instruction data -> Examples, read through the `datasets` library.

A source is a local .json/.jsonl/.csv/.parquet file or a hub dataset id. Each format maps a row to
one or more Examples or skips the whole row with a reason (never half a row). Knows nothing about
the workspace or sessions: the caller passes the instruction for rows that carry none and writes
the result with lorachat.datasets.
"""
import contextlib
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lorachat.core.errors import LorachatError
from lorachat.core.prompts import Example

FORMATS = ("auto", "alpaca", "prompt-completion", "messages", "sharegpt", "text", "piqa")
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
USER_ROLES = {"user", "human"}
ASSISTANT_ROLES = {"assistant", "gpt", "chatgpt", "bard", "bing", "model"}
SYSTEM_ROLES = {"system", "developer"}


@dataclass
class ImportOptions:
    """The `key=value` options of :import."""
    format: str = field(default="auto", metadata={"help": "how rows map to examples (auto: from the fields)", "choices": FORMATS})
    limit: int = field(default=0, metadata={"help": "import at most this many examples (0: all)", "min": 0, "max": 10**9})
    split: str = field(default="train", metadata={"help": "which split of the source to read (train[:100] works too)"})


@dataclass
class Imported:
    examples: list[Example]
    format: str
    columns: list[str]
    skipped: Counter = field(default_factory=Counter)   # reason -> rows

    def describe_skipped(self) -> str:
        total = sum(self.skipped.values())
        if not total:
            return "skipped 0"
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return f"skipped {total} ({reasons})"


class Skip(Exception):
    """A row that cannot be mapped; its message says why ('without an output')."""


def import_examples(source: str, options: ImportOptions, instruction: str) -> Imported:
    """Read `source` and map its rows in `options.format`; rows that carry no instruction get `instruction`."""
    with _opened(source, options) as rows:
        # a streamed hub dataset may not know its columns before the first row
        columns = list(rows.column_names or next(iter(rows), {}).keys())
        fmt = detect_format(columns) if options.format == "auto" else options.format
        result = Imported([], fmt, columns)
        mapper = MAPPERS[fmt]
        for row in _decoded(rows, source):
            try:
                mapped = mapper(row, instruction)
            except Skip as why:
                result.skipped[str(why)] += 1
                continue
            result.examples.extend(mapped)
            if options.limit and len(result.examples) >= options.limit:
                del result.examples[options.limit:]
                break
    return result


def _decoded(rows, source: str):
    """The rows, where pyarrow's reading of text that is not UTF-8 (stored as read) is one line."""
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1].hex()
        raise LorachatError(f"cannot import {source}: it holds text that is not UTF-8 (byte 0x{bad})") from None


def detect_format(columns: list[str]) -> str:
    """The format a set of field names says, checked from the most specific to the most general."""
    have = set(columns)
    checks = [("sharegpt", {"conversations"}), ("messages", {"messages"}), ("piqa", {"goal", "sol1", "sol2", "label"}),
              ("prompt-completion", {"prompt", "completion"}), ("alpaca", {"instruction", "output"}),
              ("alpaca", {"input", "output"}), ("text", {"text"})]
    for fmt, needed in checks:
        if needed <= have:
            return fmt
    shown = ", ".join(columns[:12]) or "none"
    raise LorachatError(f"cannot tell the format from the fields ({shown}); give format=alpaca|prompt-completion|messages|sharegpt|text|piqa")


@contextlib.contextmanager
def _opened(source: str, options: ImportOptions):
    """Yield the source's rows (a `datasets` Dataset); the library's cache never lands in the workspace."""
    import datasets

    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own error logs would repeat ours
    try:
        path = _expand(source)
        if _exists(path) or _looks_like_path(source):
            with tempfile.TemporaryDirectory(prefix="lorachat-import-") as cache:
                yield _load(source, lambda: datasets.load_dataset(
                    _builder(path), data_files=str(path), split=options.split, cache_dir=cache), path)
        else:
            yield _open_hub(source, options)
    finally:
        datasets.logging.set_verbosity(verbosity)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the system
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LorachatError(f"cannot import {str(path)[:60]!r}: not a usable file name ({why[:80]})") from None


def _expand(source: str) -> Path:
    try:
        return Path(source).expanduser()
    except RuntimeError:  # ~user that does not exist
        raise LorachatError(f"cannot import {source[:60]!r}: no such home directory") from None


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in BUILDERS or source.count("/") > 1


def _builder(path: Path) -> str:
    if not _exists(path):
        raise LorachatError(f"cannot import {path}: no such file")
    if path.is_dir():
        raise LorachatError(f"cannot import {path}: it is a folder; give a .json, .jsonl, .csv or .parquet file")
    if not path.is_file():  # a device or pipe could be read forever
        raise LorachatError(f"cannot import {path}: not a regular file")
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise LorachatError(f"cannot import {path}: unknown file type '{path.suffix}' (use .json, .jsonl, .csv or .parquet)")
    if path.stat().st_size == 0:
        raise LorachatError(f"cannot import {path}: the file is empty")
    if builder == "json":
        _check_first_row(path)
    return builder


def _check_first_row(path: Path) -> None:
    """datasets' JSON reader (pyarrow) kills the process, a segfault with no message, when the first
    row is null: the first row (of a JSON array, or the first line of JSON lines) must be an object.
    Only the file's first MiB is read; a first row that does not parse there is left to the reader."""
    import json

    with open(path, "rb") as handle:
        raw = handle.read(1 << 20).decode("utf-8", errors="replace")
    head = raw.lstrip("\ufeff \t\r\n")
    if head.startswith("["):
        where, text = "its first row", head[1:].lstrip()
    else:   # JSON lines: counted from 1, blank lines before it included, as :import numbers a bad line
        where, text = f"line {raw[:len(raw) - len(head)].count(chr(10)) + 1}", head
    if not text or text.startswith(("]", "{")):
        return
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return
    shown = json.dumps(value)[:40]
    raise LorachatError(f"cannot import {path}: {where} is {shown}, not a JSON object "
                        "(each row an object such as {\"input\": ..., \"output\": ...})")


def _open_hub(source: str, options: ImportOptions):
    import datasets
    from lorachat.core.cache import cache_dir
    from lorachat.core.hub import hub_reachable

    if not HUB_ID.fullmatch(source):
        raise LorachatError(f"cannot import {source!r}: not a file here, nor a hub dataset id (owner/name)")
    if not hub_reachable():
        raise LorachatError(f"cannot import {source}: the hub is unreachable (no network or HF_HUB_OFFLINE); "
                            "import a local .json, .jsonl, .csv or .parquet file instead")
    # with a limit, stream: only the rows needed are downloaded
    return _load(source, lambda: datasets.load_dataset(
        source, split=options.split, cache_dir=str(cache_dir() / "datasets"), streaming=bool(options.limit)))


def _load(source: str, load, path: Path | None = None):
    import pyarrow

    import datasets

    try:
        return load()
    except (datasets.exceptions.DatasetsError, pyarrow.ArrowException, ValueError, OSError) as exc:
        # `datasets` builds no split from a source without rows ('[]', a CSV header alone) and says
        # 'Instruction "train" corresponds to no data!', naming its own split instruction
        if isinstance(exc, ValueError) and "corresponds to no data" in str(exc):
            raise LorachatError(f"no examples in {source}") from None
        reason = _reason(exc)
        if path is not None and "JSON parse error" in reason:
            reason = _bad_json_line(path) or reason
        raise LorachatError(f"cannot import {source}: {reason}") from None


def _bad_json_line(path: Path) -> str | None:
    """'line 5 is not valid JSON (...)' for the first bad line of a JSON-lines file, numbered from 1
    as :examples numbers them (pyarrow counts a block's rows from 0); None for a JSON array."""
    import json

    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line.strip() or b"null")
        except ValueError as exc:
            return None if line.lstrip().startswith(b"[") else f"line {number} is not valid JSON ({str(exc)[:80]})"
    return None


def _reason(exc: BaseException) -> str:
    """The parser's message, not the library's generic wrapper around it."""
    import datasets

    while isinstance(exc, datasets.exceptions.DatasetsError) and (exc.__cause__ or exc.__context__):
        exc = exc.__cause__ or exc.__context__
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:200]


def _text(row: dict, key: str, what: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise Skip(f"without {what}" if value is None else f"whose {key} is not text")
    if required and not value.strip():
        raise Skip(f"with an empty {key}")
    return value


def map_alpaca(row: dict, instruction: str) -> list[Example]:
    """instruction/input/output as they are; a row with no instruction field gets the session's;
    LLaMA-Factory's `history` ([question, answer] pairs before it) is kept."""
    output = _text(row, "output", "an output")
    given = _text(row, "instruction", "an instruction", required=False)
    question = _text(row, "input", "an input", required=False)
    if not given.strip() and not question.strip():
        raise Skip("without an instruction or input")
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(t, (list, tuple)) and len(t) == 2 and
                                                 all(isinstance(p, str) for p in t) for t in history):
        raise Skip("with a history that is not [question, answer] pairs")
    return [Example(given if row.get("instruction") is not None else instruction, question, output,
                    history=tuple((q, a) for q, a in history))]


def map_prompt_completion(row: dict, instruction: str) -> list[Example]:
    return [Example(instruction, _text(row, "prompt", "a prompt"), _text(row, "completion", "a completion"))]


def map_text(row: dict, instruction: str) -> list[Example]:
    return [Example(text=_text(row, "text", "a text"))]


def map_piqa(row: dict, instruction: str) -> list[Example]:
    """goal -> input; the labelled solution (sol1 for 0, sol2 for 1) -> output, as the notebook did."""
    label = row.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise Skip("with a label other than 0 or 1")
    return [Example(instruction, _text(row, "goal", "a goal"), _text(row, f"sol{label + 1}", f"sol{label + 1}"))]


def map_messages(row: dict, instruction: str) -> list[Example]:
    """OpenAI-style `messages`: each assistant turn becomes an example, asked after the turns before it."""
    turns = row.get("messages")
    if not isinstance(turns, list):
        raise Skip("without a messages list")
    return _conversation([_turn(t, "role", "content") for t in turns], instruction)


def map_sharegpt(row: dict, instruction: str) -> list[Example]:
    """ShareGPT `conversations` with from/value (human/gpt/system), mapped like messages."""
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise Skip("without a conversations list")
    return _conversation([_turn(t, "from", "value") for t in turns], instruction)


def _turn(turn, role_key: str, text_key: str) -> tuple[str, str]:
    if not isinstance(turn, dict) or not isinstance(turn.get(role_key), str):
        raise Skip(f"with a turn that has no {role_key}")
    role = turn[role_key].lower()
    role = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else "system" if role in SYSTEM_ROLES else role
    if role not in ("user", "assistant", "system"):
        raise Skip(f"with a '{turn[role_key][:20]}' turn")
    text = turn.get(text_key)
    if not isinstance(text, str):
        raise Skip("with a turn that is not plain text")
    if not text.strip():
        raise Skip("with an empty turn")
    return role, text


def _conversation(turns: list[tuple[str, str]], instruction: str) -> list[Example]:
    """One example per assistant turn, its question the user turn before it, asked after the
    conversation's earlier (question, answer) pairs: every assistant turn is trained given the turns
    before it (LLaMA-Factory's default), and recalled the same way. System turns are the instruction."""
    system = [text for role, text in turns if role == "system"]
    instruction = "\n".join(system) if system else instruction
    spoken = [(role, text) for role, text in turns if role != "system"]
    examples, history = [], []
    for index, (role, text) in enumerate(spoken):
        if role != "assistant":
            continue
        if index == 0 or spoken[index - 1][0] != "user" or index >= 2 and spoken[index - 2][0] != "assistant":
            raise Skip("with turns that do not alternate user and assistant")
        examples.append(Example(instruction, spoken[index - 1][1], text, history=tuple(history)))
        history.append((spoken[index - 1][1], text))
    if not examples:
        raise Skip("without an assistant turn")
    return examples


MAPPERS = {"alpaca": map_alpaca, "prompt-completion": map_prompt_completion, "messages": map_messages,
           "sharegpt": map_sharegpt, "text": map_text, "piqa": map_piqa}
