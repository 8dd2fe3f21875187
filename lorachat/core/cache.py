"""The app's cache folder: built-in models, converted models, the input history, hub datasets.

LORACHAT_CACHE, default ~/.cache/lorachat. Knows nothing about what is kept there.
"""
import os
from pathlib import Path


def cache_dir() -> Path:
    """LORACHAT_CACHE, default ~/.cache/lorachat."""
    return Path(os.environ.get("LORACHAT_CACHE") or Path.home() / ".cache" / "lorachat")
