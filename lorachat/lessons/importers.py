"""Other people's instruction data -> Examples, read through the `datasets` library.

A source is a local .json/.jsonl/.csv/.parquet file or a hub dataset id; formats.py maps its rows.
Knows nothing about the workspace or sessions: the caller passes the instruction for rows that carry
none and writes the result with lorachat.datasets.
"""
import contextlib
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lorachat.core.errors import LorachatError
from lorachat.core.prompts import Example
from lorachat.lessons.formats import FORMATS, MAPPERS, Skip, detect_format

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


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


@contextlib.contextmanager
def _opened(source: str, options: ImportOptions):
    """Yield the source's rows (a `datasets` Dataset); the library's cache never lands in the workspace."""
    import datasets

    datasets.disable_progress_bars()
    try:   # a slice, by datasets' own parser, before any file is read or the hub asked (a name is the source's to know)
        if not options.split.strip() or set("[]()%:") & set(options.split):
            datasets.ReadInstruction.from_spec(options.split)
    except ValueError:
        raise LorachatError(f"split={options.split[:40]!r} is not a split: give a name (train, test) or a slice "
                            "(train[:100], train[10%:])") from None
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own error logs would repeat ours
    try:
        path = _expand(source)
        if _exists(path) or _looks_like_path(source):
            with tempfile.TemporaryDirectory(prefix="lorachat-import-") as cache:
                def read():   # inside _load: a file that cannot be read is one line
                    builder = _builder(path)
                    return datasets.load_dataset(builder, data_files=str(path), split=options.split, cache_dir=cache,
                                                 **({"converters": _as_text(path)} if builder == "csv" else {}))
                yield _load(source, read, path)
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
    if builder == "parquet" and _parquet_rows(path) == 0:   # datasets says "BatchSize must be greater than 0"
        raise LorachatError(f"no examples in {path}")
    return builder


def _as_text(path: Path) -> dict:
    """pandas' converters keeping every CSV column as the text written: an answer "4" or "3.140"
    is an answer, not the number pandas would read (which the import skipped as not text)."""
    import csv

    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        header = next(csv.reader(handle), [])
    return {i: str for i in range(len(header))}


def _parquet_rows(path: Path) -> int | None:
    """The rows a Parquet file's footer counts; None when it is not one (the reader then says why)."""
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_metadata(path).num_rows
    except (pyarrow.ArrowException, OSError):
        return None


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
        try:   # Python's reader takes an escaped lone surrogate ("\\ud800"), which pyarrow refuses
            json.dumps(json.loads(line.strip() or b"null"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return f"line {number} holds an escaped lone surrogate (such as \\ud800), which is no character"
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
