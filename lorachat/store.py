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


def check_writable(folder: Path, what: str) -> None:
    """Raise now, not after minutes of work, when `what` could not be written into `folder`: a hidden
    folder with a file in it is made there and removed (as write_atomically will do)."""
    if folder.exists() and not folder.is_dir():
        raise LorachatError(f"cannot save {what}: {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".probe.tmp-{os.getpid()}-", dir=folder))
        try:
            (probe / "probe").write_bytes(b"")
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as exc:
        raise LorachatError(f"cannot save {what} in {folder}: {exc.strerror or exc}") from None


def write_atomically(target: Path, fill, what: str, sweep: bool = True) -> Path:
    """`fill(work_dir)` writes the content (returning the directory that holds it, `work_dir` or
    one inside it); that directory is fsynced and renamed to `target`. `sweep`: remove dead writers'
    hidden leftovers beside it (in lorachat's own folders only)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if sweep:
            sweep_leftovers(target.parent)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    except OSError as exc:
        raise LorachatError(f"could not save {what}: {exc.strerror or exc}") from None
    try:
        written = fill(work)
        as_created(written)
        fsync_dir(written)
        os.rename(written, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise LorachatError(f"could not save {what}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def hide(path: Path, what: str) -> Path:
    """Rename `path` to a hidden name (the first step of a delete, which either happens or changes
    nothing); remove the returned path with `shutil.rmtree` to finish."""
    doomed = path.with_name(f".{path.name}.deleted-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, doomed)
    except OSError as exc:
        raise LorachatError(f"could not delete {what}: {exc.strerror or exc}") from None
    return doomed


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


def umask() -> int:
    """The process's umask, read without changing it where /proc tells it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_created(root: Path) -> None:
    """Give a tree this process just wrote the modes a plain mkdir and open give under the umask:
    tempfile.mkdtemp makes its folder 0700 and safetensors writes 0600 files, which a server running
    under another account (vLLM, a shared team folder) could not read."""
    mask = umask()
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


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
        if path.exists():
            shutil.copymode(path, temporary)  # as rewriting the file in place would keep it
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
