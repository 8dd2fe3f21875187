"""Every PEFT call lives here: create, save, load, activate adapters around the one base model.

The base model is wrapped in a PeftModel the first time an adapter is created or loaded; from
then on `session.model` is that wrapper and adapters come and go inside it without touching or
copying the base weights. Knows nothing about terminals or training loops.
"""
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from lorachat import __version__
from lorachat.errors import LorachatError
from lorachat.names import check_name

META_FILE = "lorachat.json"
BASE = "base"


def adapters_dir(session) -> Path:
    return session.home / "adapters"


def adapter_path(session, name: str) -> Path:
    return adapters_dir(session) / check_name(name, "adapter")


def peft_model(session):
    """The PeftModel around the base, or None while no adapter was ever created or loaded."""
    from peft import PeftModel

    return session.model if isinstance(session.model, PeftModel) else None


def loaded_names(session) -> list[str]:
    model = peft_model(session)
    return list(model.peft_config) if model is not None else []


def base_fingerprint(session) -> str:
    """Cheap, stable identity of the base weights: config hash + checksums of a few tensors.

    Tensors are hashed after rounding to bfloat16, so the same checkpoint loaded in float32, float16
    or bfloat16 has the same fingerprint. Computed once per session."""
    cached = session.extensions.get("fingerprint")
    if cached:
        return cached
    import torch

    base = session.loaded.model
    config = base.config.to_dict()
    for volatile in ("_name_or_path", "torch_dtype", "dtype", "transformers_version", "_attn_implementation_autoset"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    params = [(n, p) for n, p in base.named_parameters() if "lora_" not in n and p.device.type != "meta"]
    for name, param in params[:2] + params[-2:]:
        flat = param.detach().reshape(-1)[:4096].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(name.replace("base_layer.", "").encode())
        digest.update(flat.numpy().tobytes())
    session.extensions["fingerprint"] = "sha256:" + digest.hexdigest()[:32]
    return session.extensions["fingerprint"]


def add_new(session, name: str, lora_config):
    """Create a fresh, trainable adapter `name` (wrapping the base on first use); returns the PeftModel."""
    from peft import get_peft_model

    base_fingerprint(session)  # before wrapping: names of the plain base
    model = peft_model(session)
    if model is None:
        session.model = get_peft_model(session.model, lora_config, adapter_name=name)
    else:
        model.add_adapter(name, lora_config)
    return session.model


def remove(session, name: str) -> None:
    """Unload adapter `name` from memory (its files stay)."""
    model = peft_model(session)
    if model is None or name not in model.peft_config:
        return
    if session.active_adapter == name:
        activate(session, None)
    if len(model.peft_config) == 1:  # PEFT cannot delete its last adapter: unwrap instead
        session.model = model.unload()
        session.model.eval()
    else:
        model.delete_adapter(name)


def activate(session, name: str | None) -> None:
    """Make `name` answer (None: the base alone). No weights are copied or reloaded."""
    model = peft_model(session)
    if name is None:
        if model is not None:
            model.base_model.disable_adapter_layers()
        session.active_adapter = None
        return
    if model is None or name not in model.peft_config:
        raise LorachatError(f"adapter '{name}' is not loaded")
    model.base_model.enable_adapter_layers()
    model.set_adapter(name)
    model.eval()
    session.active_adapter = name


def save(session, name: str, meta: dict) -> Path:
    """Write adapter `name` as PEFT's save_pretrained does, plus lorachat.json, atomically:
    into a hidden temporary directory, then renamed into place."""
    model = peft_model(session)
    target = adapter_path(session, name)
    if target.exists():
        raise LorachatError(f"an adapter named '{name}' already exists at {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        model.save_pretrained(str(work), selected_adapters=[name], safe_serialization=True)
        written = work / name if (work / name).is_dir() else work  # PEFT nests non-"default" names
        record = dict(meta, name=name, base_model=session.loaded.name, base_fingerprint=base_fingerprint(session),
                      created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), lorachat_version=__version__)
        _write_json(written / META_FILE, record)
        _fsync_dir(written)
        os.rename(written, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise LorachatError(f"could not save adapter '{name}': {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
