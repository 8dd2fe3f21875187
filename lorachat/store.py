"""Adapter directories on disk: atomic writes, hidden deletes and renames, leftover sweeping.

A directory is written under a hidden name (leading dot, carrying the writer's pid) and renamed
into place, so `adapters/` only ever shows complete adapters; deletions are renamed hidden first.
Hidden leftovers of a process that died are removed on the next write. Knows nothing about PEFT,
models or sessions.
"""
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from lorachat.errors import LorachatError

_LEFTOVER = re.compile(r"^\..+\.(?:tmp|deleted)-(\d+)-")


def write_atomically(target: Path, fill, what: str) -> Path:
    """`fill(work_dir)` writes the content (returning the directory that holds it, `work_dir` or
    one inside it); that directory is fsynced and renamed to `target`."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(target.parent)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    except OSError as exc:
        raise LorachatError(f"could not save {what}: {exc.strerror or exc}") from None
    try:
        written = fill(work)
        fsync_dir(written)
        os.rename(written, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise LorachatError(f"could not save {what}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def hide_and_remove(path: Path, what: str) -> None:
    doomed = path.with_name(f".{path.name}.deleted-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, doomed)
    except OSError as exc:
        raise LorachatError(f"could not delete {what}: {exc.strerror or exc}") from None
    shutil.rmtree(doomed, ignore_errors=True)


def move(source: Path, target: Path, what: str) -> None:
    try:
        os.rename(source, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise LorachatError(f"could not rename {what}: {exc.strerror or exc}") from None


def sweep_leftovers(folder: Path) -> None:
    """Remove hidden leftovers whose writer is gone (another live session's write is left alone)."""
    try:
        entries = [p for p in folder.iterdir() if _LEFTOVER.match(p.name)]
    except OSError:
        return
    for entry in entries:
        pid = int(_LEFTOVER.match(entry.name).group(1))
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, data: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_json(temporary, data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise LorachatError(f"could not update {path}: {exc.strerror or exc}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a hidden temporary file beside `path`, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise LorachatError(f"could not write {path}: {exc.strerror or exc}") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
