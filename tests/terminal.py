"""Reading a pseudo-terminal in tests that drive the interactive REPL."""
import os
import select
import time


_unread: dict[int, bytes] = {}  # bytes read past a marker, handed to the next read of that fd


def read_until(fd, marker: bytes, timeout: float) -> bytes:
    """Bytes from `fd` up to and including `marker` (what came after it is kept for the next read, so
    a prompt printed in the same chunk as the output before it is not lost); AssertionError (with
    the tail) on timeout."""
    seen, deadline = _unread.pop(fd, b""), time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"did not see {marker!r}; got {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    end = seen.find(marker) + len(marker) if marker in seen else len(seen)
    if seen[end:]:
        _unread[fd] = seen[end:]
    return seen[:end]


def read_some(fd, timeout: float) -> bytes:
    """Whatever is there: bytes left over from the last read, else the next bytes to arrive."""
    if _unread.get(fd):
        return _unread.pop(fd)
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"nothing on the terminal for {timeout} s"
    return os.read(fd, 4096)


def spawn_repl(home, stdout=None, **env):
    """`lorachat --model tiny` on a pseudo-terminal, as a person would run it, at its first prompt.
    `stdout` (e.g. subprocess.PIPE) replaces the terminal as standard output; `env` adds variables.

    Returns (process, fd of the terminal's other end); the caller kills the process and closes fd."""
    import pty
    import subprocess
    import sys

    main, child = pty.openpty()
    _unread.pop(main, None)  # left by an earlier terminal that had this fd number
    env = dict(os.environ, TERM="xterm", COLUMNS="200", LINES="50", PROMPT_TOOLKIT_NO_CPR="1", **env)
    proc = subprocess.Popen([sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home)],
                            stdin=child, stdout=child if stdout is None else stdout, stderr=child, env=env,
                            start_new_session=True)
    os.close(child)
    try:
        read_until(main, b"default>", 120)
    except BaseException:
        proc.kill()
        os.close(main)
        raise
    return proc, main
