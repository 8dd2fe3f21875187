"""Adapters on disk: saving (PEFT's save_pretrained plus lorachat.json, written atomically), the
check that adapters/ can be written before training, adapters kept in memory when the disk refuses
them, and deleting and renaming saved adapters (the disk first, so a refusal changes nothing). The
in-memory side (the PeftModel, switching, the session's LiveState) is live.py's.

Another session in the same workspace (or a folder moved in) can put an adapter under a name this
session holds in memory. The two are never taken for each other: a folder is acted on under a
loaded adapter's name only while it is the folder that adapter came from (provenance.identity),
and a save that finds its name taken saves under the next free one (NAME-2 ...), leaving the
other adapter as it is.
"""
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

from lorachat import __version__
from lorachat.adapters import live, provenance
from lorachat.adapters.paths import (
    BASE,
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


def save(session, name: str, meta: dict, state=None, target: Path | None = None, as_name: str | None = None) -> Path:
    """Write adapter `name` as PEFT's save_pretrained does, plus lorachat.json, atomically:
    into a hidden temporary directory, then renamed into place (adapters/NAME, adapters/AS_NAME, or
    `target`). `state`: the full state dict gathered from an FSDP-sharded model (None: the model's
    own weights)."""
    model = live.peft_model(session)
    inside = target is None
    saved_as = as_name or name
    target = adapter_path(session, saved_as) if inside else Path(target).expanduser()
    if target.exists():
        raise LorachatError(f"an adapter named '{saved_as}' already exists at {target}" if inside else f"{target} already exists")
    record = dict(meta, name=saved_as, base_model=session.loaded.name, base_fingerprint=live.base_fingerprint(session),
                  base=fingerprint.base_details(session.loaded), id=uuid.uuid4().hex,
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

    path = durable.write_atomically(target, fill, f"adapter '{saved_as}'", sweep=inside)
    if inside and saved_as == name:
        live.state(session).unsaved.pop(name, None)
        live.state(session).origins[name] = record["id"], record
    return path


def save_new(session, name: str, meta: dict, state=None) -> str:
    """Save loaded adapter `name` into adapters/ (as `save`); when adapters/NAME holds another
    adapter by then (another session wrote it, or it was moved in, while this one trained), under
    the first free NAME-2, NAME-3 ..., and the session then holds it under that name. The other
    adapter is left as it is. Returns the name it was saved under."""
    chosen = name if not held_elsewhere(session, name) else free_name(session, name)
    for _ in range(3):   # a name taken between choosing it and writing there: choose again
        if adapter_path(session, chosen).exists():
            chosen = free_name(session, name)
        try:
            save(session, name, meta, state, as_name=chosen)
            break
        except LorachatError:
            if not adapter_path(session, chosen).exists():   # the disk refused: not a clash
                raise
    else:
        raise LorachatError(f"could not save adapter '{name}': other sessions keep taking its names")
    if chosen != name and not session.headless:   # `lorachat train` ends here: nothing more to hold
        _hold_as(session, name, chosen)
    return chosen


def _hold_as(session, old: str, new: str) -> None:
    """Loaded adapter `old`, now saved as adapters/NEW, is held under that name (loaded from there:
    the same weights, bit for bit), as active and scaled as it was."""
    kept, was_active = live.state(session), session.active_adapter == old
    if old in kept.scales:
        kept.scales[new] = kept.scales.pop(old)
    live.load(session, new, keep={old})
    live.remove(session, old)
    kept.unsaved.pop(old, None)
    if was_active:
        live.activate(session, new)


def free_name(session, stem: str) -> str:
    """`stem`, else STEM-2, STEM-3 ... : the first name neither saved nor loaded (nor one PEFT
    cannot hold)."""
    stem = stem.replace(".", "-")
    taken = {n.lower() for n in live.known_names(session)} | {BASE}
    for number in range(1, 10_000):
        candidate = stem if number == 1 else f"{stem}-{number}"
        if candidate.lower() not in taken and not adapter_path(session, candidate).exists():
            try:
                return check_loadable_name(candidate)
            except LorachatError:
                continue   # a name PEFT cannot hold ('items'): the next one
    raise LorachatError(f"no free adapter name after '{stem}': give one")


def held_elsewhere(session, name: str) -> bool:
    """Whether adapters/NAME holds another adapter than the one loaded here as `name` (another
    session saved its own there, or a folder was moved in): the folder is not this adapter's."""
    if name not in live.loaded_names(session):
        return False
    path = adapter_path(session, name)
    origin = live.state(session).origins.get(name)
    return path.is_dir() and (origin is None or provenance.identity(path) != origin[0])


def gone(session, name: str) -> bool:
    """Whether loaded adapter `name` came from adapters/NAME (trained, saved or loaded there) and
    that folder is gone (another session's :delete or :rename, or a move): it is now only here."""
    return (name in live.loaded_names(session) and name in live.state(session).origins
            and not adapter_path(session, name).exists())


def clash(session, name: str) -> str:
    """The line saying adapters/NAME is not the loaded `name`, and how to keep both."""
    return (f"adapters/{name} holds another adapter than the '{name}' this session has loaded (another session "
            f"wrote it, or it was moved in): :save {name} keeps this session's as '{free_name(session, name)}'")


def check_own(session, name: str) -> None:
    """Refuse to act on `name` while adapters/NAME holds another adapter than the loaded one."""
    if held_elsewhere(session, name):
        raise LorachatError(f"{clash(session, name)}; nothing was changed")


def held_meta(session, name: str) -> dict | None:
    """lorachat.json's fields of loaded adapter `name` as it was saved or loaded (its folder may
    hold another adapter now), or of one the disk refused; None when not known."""
    kept = live.state(session)
    if name in kept.unsaved:
        return kept.unsaved[name]
    origin = kept.origins.get(name)
    return None if origin is None else dict(origin[1] or {})


def record(session, name: str, fields: dict) -> bool:
    """Add `fields` to saved adapter `name`'s lorachat.json (atomically), and to what the session
    holds of it; False, and nothing written, when it is not saved here as the loaded one (unsaved,
    no lorachat.json, or the folder holds another session's adapter now)."""
    path = adapter_path(session, name)
    meta = provenance.read_meta(path)
    if meta is None or held_elsewhere(session, name):
        return False
    meta.update(fields)
    durable.replace_file(path / provenance.META_FILE, durable.json_bytes(meta), failed=f"could not update {path}")
    origin = live.state(session).origins.get(name)
    if origin is not None:
        live.state(session).origins[name] = origin[0], meta
    return True


def delete(session, name: str) -> None:
    """Unload adapter `name` and remove its directory (hidden first: a crash leaves nothing half-deleted
    in view). The disk goes first: when it refuses, memory is left exactly as it was."""
    path = adapter_path(session, name)
    if not path.is_dir() and name not in live.loaded_names(session):
        raise LorachatError(f"no adapter named '{name}'{did_you_mean(name, live.known_names(session))}")
    check_own(session, name)
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
    check_own(session, old)
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
