"""Reading a pseudo-terminal in tests that drive the interactive REPL."""
import os
import select
import time


def read_until(fd, marker: bytes, timeout: float) -> bytes:
    """Bytes read from `fd` until `marker` shows up; AssertionError (with the tail) on timeout."""
    seen, deadline = b"", time.monotonic() + timeout
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
    return seen
