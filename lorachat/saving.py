"""Adapters to disk: PEFT's save_pretrained plus lorachat.json, written atomically; the check that
adapters/ can be written before training; adapters kept in memory when the disk refuses them.
The in-memory side (the PeftModel, switching, the session's shelf) is adapters.py's.
"""
import os
import time
import warnings
from pathlib import Path

from lorachat import __version__, fingerprint, store
from lorachat.adapters import adapter_path, adapters_dir, base_fingerprint, peft_model, shelf, switch
from lorachat.errors import LorachatError
from lorachat.provenance import META_FILE


def check_writable(session) -> None:
    """Raise before training when adapters/ cannot be written (an adapter that cannot be saved is lost)."""
    store.check_writable(adapters_dir(session), "adapters")


def keep_unsaved(session, name: str, meta: dict) -> None:
    """Adapter `name` stays in memory (never unloaded by max_loaded) until `:save` writes it."""
    shelf(session).unsaved[name] = dict(meta, base_model=session.loaded.name)


def save(session, name: str, meta: dict, state=None, target: Path | None = None) -> Path:
    """Write adapter `name` as PEFT's save_pretrained does, plus lorachat.json, atomically:
    into a hidden temporary directory, then renamed into place (adapters/NAME, or `target`).
    `state`: the full state dict gathered from an FSDP-sharded model (None: the model's own weights)."""
    model = peft_model(session)
    inside = target is None
    target = adapter_path(session, name) if inside else Path(target).expanduser()
    if target.exists():
        raise LorachatError(f"an adapter named '{name}' already exists at {target}" if inside else f"{target} already exists")
    record = dict(meta, name=name, base_model=session.loaded.name, base_fingerprint=base_fingerprint(session),
                  base=fingerprint.base_details(session),
                  created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), lorachat_version=__version__)

    def fill(work: Path) -> Path:
        with switch(session).unmerged(), warnings.catch_warnings():
            # an adapter on a tied lm_head or embedding: PEFT saves the base's embedding with it, and says so
            warnings.filterwarnings("ignore", message="Setting .save_embedding_layers. to .True.")
            model.save_pretrained(str(work), selected_adapters=[name], safe_serialization=True,
                                  **({"state_dict": state} if state is not None else {}))
        written = work / name if (work / name).is_dir() else work  # PEFT nests non-"default" names
        if written != work and (work / "README.md").is_file():  # ...but writes its model card outside
            os.replace(work / "README.md", written / "README.md")
        store.write_json(written / META_FILE, record)
        return written

    path = store.write_atomically(target, fill, f"adapter '{name}'", sweep=inside)
    if inside:
        shelf(session).unsaved.pop(name, None)
    return path
