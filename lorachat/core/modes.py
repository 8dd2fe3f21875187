"""The modes of what lorachat creates: a tree written under a hidden temporary name gets, once it is
complete, the modes a plain mkdir and open would have given it under the process's umask
(core/durable.py calls it before renaming the tree into place). Knows nothing about what is in it.
"""
import os
from pathlib import Path


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
