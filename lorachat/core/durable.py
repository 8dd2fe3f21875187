"""Durable line files: reads that refuse what is not a regular file, appends that are on disk
before they return and never leave half a line, replacement through a hidden temporary file
renamed over the old one (keeping its mode), and a folder lock between sessions. Knows nothing
about what the lines mean (datasets.py does).
"""
import contextlib
import fcntl
import os
import shutil
import stat
from pathlib import Path

from lorachat.errors import LorachatError

TEMP_MARK = ".tmp-"   # hidden leftovers of an interrupted rewrite: `.NAME.tmp-PID`


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
        folder.mkdir(parents=True, exist_ok=True)
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


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to a hidden temporary file, fsync it, rename it over `path`, fsync the folder."""
    for stale in path.parent.glob(f".{path.name}{TEMP_MARK}*"):  # we hold the lock: nobody writes these now
        with contextlib.suppress(OSError):
            stale.unlink()
    temp = path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}"
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(path, temp)  # the file keeps its mode, as when rewritten in place
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise LorachatError(f"cannot rewrite {path}: {exc.strerror}; the file is unchanged") from None
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a new or renamed entry durable; some filesystems refuse fsync on folders, which is no loss."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
