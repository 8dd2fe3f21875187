"""Adapters on disk: saving (PEFT's save_pretrained plus lorachat.json, written atomically), the
check that adapters/ can be written before training, adapters kept in memory when the disk refuses
them, and deleting and renaming saved adapters (the disk first, so a refusal changes nothing). The
in-memory side (the PeftModel, switching, the session's LiveState) is live.py's.
"""
import os
import shutil
import time
import warnings
from pathlib import Path

from lorachat import __version__
from lorachat.adapters import live, provenance
from lorachat.adapters.paths import (
    adapter_path,
    adapters_dir,
    check_loadable_name,
    saved_names,
)
from lorachat.core import durable
from lorachat.core.errors import LorachatError, did_you_mean
from lorachat.models import fingerprint


def check_writable(session) -> None:
    """Raise before training when adapters/ cannot be written (an adapter that cannot be saved is lost)."""
    durable.check_writable(adapters_dir(session), "adapters")


def keep_unsaved(session, name: str, meta: dict) -> None:
    """Adapter `name` stays in memory (never unloaded by max_loaded) until `:save` writes it."""
    live.state(session).unsaved[name] = dict(meta, base_model=session.loaded.name)


def save(session, name: str, meta: dict, state=None, target: Path | None = None) -> Path:
    """Write adapter `name` as PEFT's save_pretrained does, plus lorachat.json, atomically:
    into a hidden temporary directory, then renamed into place (adapters/NAME, or `target`).
    `state`: the full state dict gathered from an FSDP-sharded model (None: the model's own weights)."""
    model = live.peft_model(session)
    inside = target is None
    target = adapter_path(session, name) if inside else Path(target).expanduser()
    if target.exists():
        raise LorachatError(f"an adapter named '{name}' already exists at {target}" if inside else f"{target} already exists")
    record = dict(meta, name=name, base_model=session.loaded.name, base_fingerprint=live.base_fingerprint(session),
                  base=fingerprint.base_details(session.loaded),
                  created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), lorachat_version=__version__)

    def fill(work: Path) -> Path:
        with live.switch(session).unmerged(), warnings.catch_warnings():
            # an adapter on a tied lm_head or embedding: PEFT saves the base's embedding with it, and says so
            warnings.filterwarnings("ignore", message="Setting .save_embedding_layers. to .True.")
            model.save_pretrained(str(work), selected_adapters=[name], safe_serialization=True,
                                  **({"state_dict": state} if state is not None else {}))
        written = work / name if (work / name).is_dir() else work  # PEFT nests non-"default" names
        if written != work and (work / "README.md").is_file():  # ...but writes its model card outside
            os.replace(work / "README.md", written / "README.md")
        durable.write_json(written / provenance.META_FILE, record)
        return written

    path = durable.write_atomically(target, fill, f"adapter '{name}'", sweep=inside)
    if inside:
        live.state(session).unsaved.pop(name, None)
    return path


def delete(session, name: str) -> None:
    """Unload adapter `name` and remove its directory (hidden first: a crash leaves nothing half-deleted
    in view). The disk goes first: when it refuses, memory is left exactly as it was."""
    path = adapter_path(session, name)
    if not path.is_dir() and name not in live.loaded_names(session):
        raise LorachatError(f"no adapter named '{name}'{did_you_mean(name, live.known_names(session))}")
    doomed = durable.hide(path, f"adapter '{name}'") if path.is_dir() else None
    live.remove(session, name)
    live.state(session).scales.pop(name, None)
    live.state(session).unsaved.pop(name, None)
    if doomed is not None:
        shutil.rmtree(doomed, ignore_errors=True)


def rename(session, old: str, new: str) -> None:
    """Rename a saved adapter on disk (and in memory: it is reloaded under the new name). The disk
    goes first, undone when its second step fails, so a refusal leaves the session as it was."""
    source, target = adapter_path(session, old), adapter_path(session, check_loadable_name(new))
    if not source.is_dir():
        raise LorachatError(f"no saved adapter named '{old}'{did_you_mean(old, saved_names(session))}")
    if target.exists() or new in live.loaded_names(session):
        raise LorachatError(f"an adapter named '{new}' already exists")
    durable.move(source, target, f"adapter '{old}'")
    meta = provenance.read_meta(target)
    try:
        if meta is not None:
            file = target / provenance.META_FILE
            durable.replace_file(file, durable.json_bytes(dict(meta, name=new)), failed=f"could not update {file}")
    except LorachatError:
        durable.move(target, source, f"adapter '{new}' back to '{old}'")
        raise
    was_loaded, was_active = old in live.loaded_names(session), session.active_adapter == old
    live.remove(session, old)
    if old in live.state(session).scales:
        live.state(session).scales[new] = live.state(session).scales.pop(old)
    if was_loaded:
        live.load(session, new)
    if was_active:
        live.activate(session, new)
