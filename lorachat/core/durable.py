"""Durable writes: the one way lorachat puts on disk what must survive a crash or a full disk.

- Line files (datasets): reads that refuse what is not a regular file, appends that are on disk
  before they return and never leave half a line, and a folder lock between sessions.
- Replacing a file: a hidden temporary file beside it, fsynced, renamed over it (keeping its mode).
- Folders (adapters, built models, exports): written under a hidden name that carries the writer's
  pid, then renamed into place, so a folder only ever shows complete entries; deletions are renamed
  hidden first; hidden leftovers of a process that died are swept on the next write.

Knows nothing about what the bytes mean: datasets, adapters and models are their owners' business.
"""
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from lorachat.core.errors import LorachatError
from lorachat.core.modes import as_created

# hidden leftovers of an interrupted write or delete: `.NAME.tmp-PID` (a file), `.NAME.tmp-PID-RANDOM`
# (a folder), `.NAME.deleted-PID-NS`
_LEFTOVER = re.compile(r"^\..+\.(?:tmp|deleted)-(\d+)(?:-|$)")


# --- line files ----------------------------------------------------------------------------------

def read_bytes(path: Path) -> bytes:
    try:
        check_regular(path)
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise LorachatError(f"cannot read {path}: {exc.strerror}") from None


def check_regular(path: Path) -> None:
    """A folder, device or pipe in place of a dataset is refused (reading one could block or never end)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise LorachatError(f"{path} is not a regular file; move it out of the way")


@contextlib.contextmanager
def locked_folder(folder: Path):
    """Create the folder if needed and hold an exclusive lock on it, so two sessions writing the
    same workspace never lose each other's lines between a read and a rewrite."""
    try:
        make_folder(folder)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise LorachatError(f"cannot write to {folder}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing releases the lock


def append_bytes(path: Path, data: bytes) -> tuple[tuple[int, int], int]:
    """Append `data` durably; ((device, inode) of the file, offset where `data` starts)."""
    try:
        created = not path.exists()
        if created and path.is_symlink():
            raise LorachatError(f"{path} is a symbolic link to a missing file; remove it or create that file")
        if not created:
            check_regular(path)
        # a new file is never created through a planted (dangling) symlink
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | (os.O_NOFOLLOW if created else 0), 0o666)  # as open() does, under the umask
    except OSError as exc:
        raise LorachatError(f"cannot write {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        size, offset = info.st_size, info.st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a last line without its newline
            data, offset = b"\n" + data, size + 1
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException as exc:  # a full disk, or Ctrl-C between two writes: not acknowledged, so not kept
            with contextlib.suppress(OSError):   # never leave half an example behind
                os.ftruncate(fd, size)
            if isinstance(exc, OSError):
                raise LorachatError(f"cannot write {path}: {exc.strerror}; nothing was added") from None
            raise
    finally:
        os.close(fd)
    if created:
        fsync_folder(path.parent)
    return (info.st_dev, info.st_ino), offset


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- replacing one file --------------------------------------------------------------------------

def replace_file(path: Path, data: bytes, failed: str | None = None) -> None:
    """Write `data` to a hidden temporary file beside `path`, fsync it, rename it over `path` (whose
    mode it keeps), fsync the folder. `failed`: how the one-line error starts when the disk refuses
    (default 'cannot rewrite PATH'); the file is then unchanged. A symbolic link stays one: the file
    it points at is rewritten, as an append writes there (a dataset you linked from elsewhere)."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    for stale in path.parent.glob(f".{path.name}.tmp-*"):   # a dead writer's; a live one's is left alone
        _sweep(stale)
    temp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, temp)  # as when rewritten in place
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise LorachatError(f"{failed or f'cannot rewrite {path}'}: {exc.strerror or exc}; the file is unchanged") from None
    fsync_folder(path.parent)


def json_bytes(data: dict) -> bytes:
    """lorachat's JSON files as written: indented, keys sorted, a final newline."""
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def write_json(path: Path, data: dict) -> None:
    """A JSON file inside a folder that write_atomically renames into place (durable with it)."""
    with open(path, "wb") as f:
        f.write(json_bytes(data))
        f.flush()
        os.fsync(f.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a new or renamed entry durable; some filesystems refuse fsync on folders, which is no loss."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)



def make_folder(folder: Path) -> None:
    """mkdir -p, saying which file is in the way where mkdir would say only "File exists"."""
    blocking = next((a for a in (folder, *folder.parents) if a.exists() or a.is_symlink()), None)
    if blocking is not None and not blocking.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{blocking} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)


def write_files(files: list, what: str) -> None:
    """New files, whole or not at all: each `(target, fill)` has `fill(temp)` write a hidden file
    beside its target; when every one is written and fsynced, each is linked to its target (which
    must not exist: a link never replaces) and, should a later one fail, the earlier are removed."""
    placed, temps = [], []
    try:
        for target, fill in files:
            make_folder(target.parent)
            for stale in target.parent.glob(f".{target.name}.tmp-*"):    # a killed writer's
                _sweep(stale)
            temp = target.parent / f".{target.name}.tmp-{os.getpid()}"
            temps.append(temp)
            fill(temp)
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
        for (target, _), temp in zip(files, temps):
            os.link(temp, target)   # FileExistsError where something appeared there meanwhile
            placed.append(target)
        fsync_folder(files[0][0].parent)
    except OSError as exc:
        for target in placed:
            with contextlib.suppress(OSError):
                target.unlink()
        # numpy's tofile reports a short write ("N requested and M written") without an errno
        raise LorachatError(f"could not save {what}: {exc.strerror or f'{exc} (is the disk full?)'}") from None
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()

# --- folders -------------------------------------------------------------------------------------

def check_writable(folder: Path, what: str) -> None:
    """Raise now, not after minutes of work, when `what` could not be written into `folder`: a hidden
    folder with a file in it is made there and removed (as write_atomically will do)."""
    if folder.exists() and not folder.is_dir():
        raise LorachatError(f"cannot save {what}: {folder} is not a folder")
    try:
        make_folder(folder)
        probe = Path(tempfile.mkdtemp(prefix=f".probe.tmp-{os.getpid()}-", dir=folder))
        try:
            (probe / "probe").write_bytes(b"")
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as exc:
        raise LorachatError(f"cannot save {what} in {folder}: {exc.strerror or exc}") from None


def write_atomically(target: Path, fill, what: str, sweep: bool = True, raced: bool = False,
                     replace: bool = False) -> Path:
    """`fill(work_dir)` writes the content (returning the directory that holds it, `work_dir` or
    one inside it); that directory gets the modes a plain mkdir would give, is fsynced and renamed
    to `target`. `sweep`: remove dead writers' hidden leftovers beside it (in lorachat's own folders
    only). `raced`: another process may write the same target at the same time (a shared cache);
    when it finished first, its copy is kept and this one dropped. `replace`: a folder already at
    `target` (a damaged one) is hidden and removed once the new one is complete, not before."""
    try:
        make_folder(target.parent)
        if sweep:
            sweep_leftovers(target.parent)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    except OSError as exc:
        raise LorachatError(f"could not save {what}: {exc.strerror or exc}") from None
    try:
        written = fill(work)
        as_created(written)
        fsync_folder(written)
        try:
            os.rename(written, target)
        except OSError:
            if replace and target.is_dir():
                doomed = hide(target, what)
                os.rename(written, target)
                shutil.rmtree(doomed, ignore_errors=True)
            elif not (raced and target.is_dir()):
                raise
        fsync_folder(target.parent)
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
        fsync_folder(target.parent)
    except OSError as exc:
        raise LorachatError(f"could not rename {what}: {exc.strerror or exc}") from None


def sweep_leftovers(folder: Path) -> None:
    """Remove hidden leftovers whose writer is gone (another live session's write is left alone)."""
    try:
        entries = [p for p in folder.iterdir() if _LEFTOVER.match(p.name)]
    except OSError:
        return
    for entry in entries:
        _sweep(entry)


def _sweep(entry: Path) -> None:
    match = _LEFTOVER.match(entry.name)
    if match is None:
        return
    pid = int(match.group(1))
    if pid != os.getpid() and not _alive(pid):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

