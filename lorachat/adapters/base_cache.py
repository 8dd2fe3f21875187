"""What is made from the base alone, kept on disk for every later session over the same weight
files: the base's answers (side_by_side.py) and the gate's background vector (gate.py).

One file per checkpoint (its weight files' fingerprint, live.base_fingerprint), dtype, device kind,
torch and transformers versions and what the caller says it holds, under `$LORACHAT_CACHE/FOLDER/`.
A model with no weight files (built in memory) has no such file; a file that cannot be written is
only slower next time. Callers read and check their own files.
"""
import contextlib
import hashlib
import json

from lorachat.adapters import live
from lorachat.core import cache as app_cache
from lorachat.core import durable
from lorachat.core.errors import LorachatError
from lorachat.models import fingerprint


def path(session, folder: str, what: list, suffix: str):
    """Where the thing described by `what` (JSON-able) is kept, or None: nothing on disk says which
    checkpoint a model built in memory is."""
    import torch
    import transformers

    loaded = session.loaded
    if not fingerprint.weight_files(getattr(loaded, "folder", None)):
        return None
    base = live.base_fingerprint(session).removeprefix("sha256:")
    key = json.dumps([str(loaded.dtype), torch.device(loaded.device).type, torch.__version__,
                      transformers.__version__, what])
    return app_cache.cache_dir() / folder / base / (hashlib.sha256(key.encode()).hexdigest()[:32] + suffix)


def write(where, data: bytes) -> None:
    """Keep `data` at `where` (atomically); a cache that cannot be written is only slower next time."""
    with contextlib.suppress(OSError, LorachatError):
        where.parent.mkdir(parents=True, exist_ok=True)
        durable.replace_file(where, data)
