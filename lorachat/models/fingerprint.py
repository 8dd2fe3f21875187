"""The identity of the base checkpoint an adapter was made for, whatever dtype it was loaded in.

`base_fingerprint` hashes what the weight files hold, read before any cast: every tensor's name,
stored dtype and shape, and its first values as stored (a row of each matrix), from the
safetensors files (or, for a checkpoint saved only with torch, its files read with
`weights_only=True`, which runs no code). So float32, float16 and bfloat16 loads of one checkpoint
agree, and an adapter moves between machines whose `--dtype auto` differs. A model whose weight
files cannot be found (built in memory) falls back to `loaded_fingerprint`, the one lorachat used
before: a hash of the config and of a few loaded tensors rounded to bfloat16, which can differ
between dtypes (double rounding). Adapters saved with that one keep loading: it is computed, lazily,
when a stored fingerprint does not match. `base_details` is what a mismatch message compares.

Knows nothing about PEFT, adapters, sessions or caching (adapters/live.py computes each once per
session); where the files are is the loader's answer (`LoadedModel.folder`).
"""
import contextlib
import hashlib
import json
from pathlib import Path

ROW = 4096          # bytes of each tensor hashed, from its start (a matrix's first row, or part of it)
CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "ffn_dim", "vocab_size", "max_position_embeddings")
INDEXES = (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def base_fingerprint(loaded, unmerged=contextlib.nullcontext) -> str:
    """'sha256:...' of the checkpoint's files (else of the loaded weights) of `loaded`, a
    models.loader.LoadedModel. `unmerged`: a context in which the model holds its own weights (for
    the fallback)."""
    files = weight_files(getattr(loaded, "folder", None))
    return files_fingerprint(files) if files else loaded_fingerprint(loaded.model, unmerged)


def weight_files(folder) -> list[Path] | None:
    """The checkpoint's weight files in `folder` (safetensors preferred, as transformers loads them);
    None when there is no folder or a file is missing (a partly downloaded snapshot)."""
    if not folder or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    for index, single in INDEXES:
        if (folder / index).is_file():
            try:
                names = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values()
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None
            files = [folder / n for n in sorted(set(names))]
            return files if all(f.is_file() for f in files) else None
        if (folder / single).is_file():
            return [folder / single]
    return None


def files_fingerprint(files: list[Path]) -> str:
    """sha256 over each tensor's name, stored dtype, shape and first ROW bytes, in name order."""
    entries = []
    for file in files:
        entries += _safetensors_entries(file) if file.suffix == ".safetensors" else _torch_entries(file)
    digest = hashlib.sha256(b"lorachat weight files v2\n")
    for name, dtype, shape, head in sorted(entries):
        digest.update(f"{name}\0{dtype}\0{list(shape)}\0".encode() + head)
    return "sha256:" + digest.hexdigest()[:32]


def _safetensors_entries(file: Path) -> list[tuple]:
    from safetensors import safe_open

    entries = []
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():
            part = f.get_slice(key)
            shape = tuple(part.get_shape())
            entries.append((key, part.get_dtype(), shape, _bytes(part[_head(shape)] if shape else f.get_tensor(key))))
    return entries


def _torch_entries(file: Path) -> list[tuple]:
    import torch

    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # an old, non-zip file cannot be memory-mapped
        state = torch.load(file, map_location="cpu", weights_only=True)
    return [(key, str(t.dtype).replace("torch.", ""), tuple(t.shape), _bytes(t[_head(t.shape)] if t.dim() else t))
            for key, t in state.items() if isinstance(t, torch.Tensor)]


def _head(shape) -> tuple:
    """The index of a tensor's first values: the start of its first row (never a whole large block)."""
    return (slice(0, 1),) * (len(shape) - 1) + (slice(0, ROW),)


def _bytes(tensor) -> bytes:
    import torch

    flat = tensor.reshape(-1).contiguous().view(torch.uint8)
    return flat[:ROW].numpy().tobytes()


def loaded_fingerprint(base, unmerged=contextlib.nullcontext) -> str:
    """The fingerprint of lorachat before weight files were read: config hash + a few loaded tensors
    of the model `base` rounded to bfloat16. Kept for adapters saved with it, and for models that
    have no files."""
    import torch

    config = base.config.to_dict()
    for volatile in ("_name_or_path", "torch_dtype", "dtype", "transformers_version", "_attn_implementation_autoset"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    with unmerged():
        params = [(n, p) for n, p in base.named_parameters() if "lora_" not in n and p.device.type != "meta"]
        for name, param in params[:2] + params[-2:]:
            flat = param.detach().reshape(-1)[:4096].to("cpu", torch.bfloat16).view(torch.int16)
            digest.update(name.replace("base_layer.", "").encode())
            digest.update(flat.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def base_details(loaded) -> dict:
    """What lorachat.json keeps beside the fingerprint of `loaded` (a LoadedModel), so a mismatch
    can say what differs."""
    config = loaded.model.config.to_dict()
    files = weight_files(getattr(loaded, "folder", None))
    return {"path": str(loaded.path), "fingerprint_of": "weight files" if files else "loaded weights",
            "config": {key: config[key] for key in CONFIG_KEYS if key in config}}


def differences(theirs: dict, ours: dict) -> list[str]:
    """'hidden_size 512 there, 256 here' for each config field (and the path) that differs."""
    found = []
    their_config, our_config = theirs.get("config") or {}, ours.get("config") or {}
    for key in CONFIG_KEYS:
        if key in their_config and their_config.get(key) != our_config.get(key):
            found.append(f"{key} {their_config[key]} there, {our_config.get(key, 'unset')} here")
    if theirs.get("path") and theirs["path"] != ours.get("path"):
        found.append(f"loaded from {theirs['path']} there, {ours.get('path')} here")
    return found
