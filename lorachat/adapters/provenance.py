"""Reads an adapter directory without loading it, and decides whether it fits the loaded base.

`identity` tells which adapter a folder holds, so that one a session holds under a name is never
taken for another that a second session (or a move) put in adapters/ under that name since.
Everything here is checked before the model is touched, so a refusal leaves the model as it was:
adapter_config.json (present, JSON, LoRA), the weights file (safetensors header readable; a pickle
`.bin` only with --allow-pickle, because unpickling runs code), lorachat.json's base fingerprint
against the loaded model's (models/fingerprint.py; --force overrides only this), and every weight's module
and shape against the loaded model. Knows nothing about PEFT objects or the REPL.
"""
import json
from pathlib import Path

from lorachat.core.errors import LorachatError
from lorachat.models.fingerprint import base_details, differences

META_FILE = "lorachat.json"
CONFIG_FILE = "adapter_config.json"
SAFETENSORS = "adapter_model.safetensors"
PICKLE = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."


def read_meta(path: Path) -> dict | None:
    try:
        data = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def identity(path: Path) -> str | None:
    """Which adapter folder `path` holds: the id its lorachat.json records (a new one at every save,
    so a copy keeps it and another session's save has its own), else, for a folder lorachat did not
    write, its weights file's device, inode, size and modification time; None with no weights."""
    meta = read_meta(path)
    if meta is not None and isinstance(meta.get("id"), str):
        return meta["id"]
    for file in (SAFETENSORS, PICKLE):
        try:
            info = (path / file).stat()
        except OSError:
            continue
        return f"{file}:{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"
    return None


def read_config(name: str, path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise LorachatError(f"adapter '{name}' has no {CONFIG_FILE}: {path} is not a PEFT adapter directory")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LorachatError(f"adapter '{name}': {CONFIG_FILE} is unreadable or not JSON ({brief(exc)})") from None
    if not isinstance(config, dict):
        raise LorachatError(f"adapter '{name}': {CONFIG_FILE} is not a JSON object")
    kind = config.get("peft_type")
    if kind is None:   # PEFT reads the adapter's kind from it
        raise LorachatError(f"adapter '{name}': {CONFIG_FILE} has no peft_type (a LoRA adapter's says \"peft_type\": \"LORA\")")
    if kind != "LORA":
        raise LorachatError(f"adapter '{name}' is a {kind} adapter; lorachat uses LoRA adapters")
    number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)  # noqa: E731
    for field, check, what in (("r", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a whole number from 1"),
                               ("lora_alpha", lambda v: v is None or number(v), "a number")):
        if field in config and not check(config[field]):   # PEFT would fail on it with a bare TypeError
            raise LorachatError(f"adapter '{name}': {CONFIG_FILE} has {field}={json.dumps(config[field])[:40]}, not {what}")
    return config


def weight_shapes(name: str, path: Path, allow_pickle: bool) -> dict[str, tuple]:
    """{tensor name: shape} from the weights file, reading only the safetensors header."""
    if (path / SAFETENSORS).is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path / SAFETENSORS), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise LorachatError(f"adapter '{name}': {SAFETENSORS} is corrupt or truncated ({brief(exc)})") from None
    if (path / PICKLE).is_file():
        if not allow_pickle:
            raise LorachatError(f"adapter '{name}' is saved as a pickle ({PICKLE}), and unpickling runs code "
                                f"from the file: re-save it as safetensors, or pass --allow-pickle if you trust it")
        return _pickle_shapes(name, path / PICKLE)
    raise LorachatError(f"adapter '{name}' has no {SAFETENSORS} in {path}")


def _pickle_shapes(name: str, file: Path) -> dict[str, tuple]:
    import pickle

    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=False)  # the user passed --allow-pickle
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError) as exc:
        raise LorachatError(f"adapter '{name}': {PICKLE} is corrupt ({brief(exc)})") from None
    if not isinstance(state, dict):
        raise LorachatError(f"adapter '{name}': {PICKLE} does not hold a state dict")
    return {key: tuple(value.shape) for key, value in state.items() if hasattr(value, "shape")}


def check_base(session, name: str, meta: dict | None, config: dict, fingerprint: str, legacy=None,
               damaged: bool = False) -> list[str]:
    """Notes to show; raises when lorachat.json names another base (unless --force). `legacy()`: the
    fingerprint older lorachats recorded, asked for only when the stored one does not match;
    `damaged`: a lorachat.json is there but unreadable."""
    if meta is None or not meta.get("base_fingerprint"):
        made_for = config.get("base_model_name_or_path") or "an unknown base model"
        has = "a damaged" if damaged or meta is not None else "no"   # one without base_fingerprint is no record either
        return [f"adapter '{name}' has {has} {META_FILE}: its provenance is unknown (its config names {made_for!r})"]
    stored = meta["base_fingerprint"]
    if stored == fingerprint or legacy is not None and stored == legacy():
        return []
    why = mismatch(session, name, meta, fingerprint)
    if not session.force:
        raise LorachatError(f"{why}; --force loads it anyway")
    return [f"{why}: loading it anyway (--force)"]


def mismatch(session, name: str, meta: dict, fingerprint: str) -> str:
    """One line saying what differs between the base an adapter was made for and the loaded one."""
    theirs, here = f"'{meta.get('base_model', '?')}' ({meta['base_fingerprint']})", session.loaded.name
    if not isinstance(meta.get("base"), dict):  # saved by a lorachat whose fingerprint changed with the dtype
        dtype = str(session.loaded.dtype).replace("torch.", "")
        return (f"adapter '{name}' was made for base model {theirs} by lorachat {meta.get('lorachat_version', '?')}, "
                f"whose fingerprint also depends on the dtype, and the loaded '{here}' in {dtype} ({fingerprint}) "
                "does not match it; load the base in the --dtype it was trained in")
    found = differences(meta["base"], base_details(session.loaded))
    what = "; ".join(found[:3]) if found else "the same configuration, other weights"
    return f"adapter '{name}' was made for base model {theirs}, not the loaded '{here}' ({fingerprint}): {what}"


def check_modules(session, name: str, shapes: dict[str, tuple], meta: dict | None, config: dict) -> None:
    """Every LoRA weight must name a module of the loaded model, with matching sizes."""
    base = session.loaded.model
    made_for = (meta or {}).get("base_model") or config.get("base_model_name_or_path") or "another model"
    missing, mismatched = [], []
    for key, shape in shapes.items():
        module_name, _, part = key.removeprefix(PEFT_PREFIX).partition(".lora_")
        if not part:
            continue
        try:
            module = base.get_submodule(module_name)
        except AttributeError:
            missing.append(module_name)
            continue
        layer = getattr(module, "base_layer", module)
        expected = _expected(layer, part, shape)
        if expected is not None and expected != shape:
            mismatched.append(f"{module_name} needs {part.split('.')[0]} of shape {expected}, the file has {shape}")
    here = session.loaded.name
    if missing:
        unique = sorted(set(missing))
        raise LorachatError(f"adapter '{name}' (made for '{made_for}') targets {len(unique)} module(s) the loaded "
                            f"model '{here}' lacks, e.g. {unique[0]}")
    if mismatched:
        raise LorachatError(f"adapter '{name}' (made for '{made_for}') does not fit the loaded model '{here}': {mismatched[0]}")
    if not any(".lora_" in key for key in shapes):
        raise LorachatError(f"adapter '{name}' holds no LoRA weights")


def _expected(layer, part: str, shape: tuple):
    """The shape a plain Linear layer needs for lora_A / lora_B; None where not checked."""
    import torch

    if not isinstance(layer, torch.nn.Linear) or len(shape) != 2:
        return None
    if part.startswith("A."):
        return (shape[0], layer.in_features)
    if part.startswith("B."):
        return (layer.out_features, shape[1])
    return None


def inspect(session, name: str, path: Path, fingerprint: str, legacy=None) -> list[str]:
    """All checks, in the order a user would want to hear about them; returns notes to show."""
    config = read_config(name, path)
    shapes = weight_shapes(name, path, session.allow_pickle)
    meta = read_meta(path)
    notes = check_base(session, name, meta, config, fingerprint, legacy, damaged=(path / META_FILE).exists())
    check_modules(session, name, shapes, meta, config)
    return notes


def brief(exc: Exception) -> str:
    """A library's exception as part of one line: whitespace collapsed, at most 240 characters."""
    text = " ".join(str(exc).split())
    return (text[:237] + "...") if len(text) > 240 else text or type(exc).__name__
