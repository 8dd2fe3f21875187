"""Every PEFT call lives here (and in saving.py / shelf.py / switch.py / loading.py): create, load,
activate, scale and unload adapters around the one base model (saving.py writes them to disk).

The base model is wrapped in a PeftModel the first time an adapter is created or loaded; from
then on `session.model` is that wrapper and adapters come and go inside it without touching or
copying the base weights. Switching is switch.Switch's job (flags, plus an exact lazy merge for
decoding); files are checked by provenance.py before anything is loaded, and read into the model
by loading.py (PEFT's own load, or a fast path with the same result). Per-session state (LRU
order, live scales, the switch) lives in `session.extensions["adapters"]`. Knows nothing about
terminals or training loops.
"""
import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lorachat import fingerprint, loading, provenance
from lorachat.errors import LorachatError, did_you_mean
from lorachat.names import check_name

BASE = "base"


@contextlib.contextmanager
def _quiet():
    """PEFT 0.21 warns for adapter names that are substrings of "lora_" ("a", "r", "lora"...),
    whose save/load round trip is exact (tests/test_adapters.py loads one named "a"), and when a
    deleted adapter was active (lorachat re-activates its own choice right after): noise to a user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter name .* should not be contained in the prefix")
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing. is deprecated")
        # an adapter on a tied lm_head or embedding: PEFT trains and saves it untied (its own layer's
        # delta), which is what lorachat wants; and targets mixing Conv1D and Linear layers, whose
        # fan_in_fan_out PEFT sets per layer
        warnings.filterwarnings("ignore", message="Model has .tie_word_embeddings=True. and a tied layer")
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to")
        yield


@dataclass
class Shelf:
    """What this session knows about adapters beyond PEFT's own state."""
    lru: list = field(default_factory=list)      # loaded names, least recently used first
    scales: dict = field(default_factory=dict)   # name -> live strength (1.0 as trained)
    unsaved: dict = field(default_factory=dict)  # name -> lorachat.json fields of an adapter the disk refused
    switch: object = None                        # switch.Switch for the current PeftModel


def shelf(session) -> Shelf:
    return session.extensions.setdefault("adapters", Shelf())


def adapters_dir(session) -> Path:
    return session.home / "adapters"


def adapter_path(session, name: str) -> Path:
    return adapters_dir(session) / check_name(name, "adapter")


def base_fingerprint(session) -> str:
    """The base checkpoint's identity (fingerprint.py), from the weights it holds itself if it must."""
    return fingerprint.base_fingerprint(session, lambda: _unmerged(session))


def _unmerged(session):
    current = switch(session)
    return current.unmerged() if current is not None else contextlib.nullcontext()


def check_loadable_name(name: str) -> str:
    """A name PEFT can hold in memory: PEFT keys adapters inside module paths, where '.' separates
    parts, and as keys of torch ModuleDicts, whose own attributes ('items', 'keys', 'train' ...)
    cannot be keys."""
    import torch

    check_name(name, "adapter")
    if "." in name:
        raise LorachatError(f"adapter name '{name}' cannot contain '.' (PEFT keys adapters by module path; use '-' or '_')")
    if hasattr(torch.nn.ModuleDict(), name):
        raise LorachatError(f"adapter name '{name}' is taken by PyTorch (a ModuleDict attribute); choose another, e.g. '{name}-1'")
    return name


def peft_model(session):
    """The PeftModel around the base, or None while no adapter was ever created or loaded."""
    from peft import PeftModel

    return session.model if isinstance(session.model, PeftModel) else None


def loaded_names(session) -> list[str]:
    model = peft_model(session)
    return list(model.peft_config) if model is not None else []


def saved_names(session) -> list[str]:
    """Adapter directories on disk; hidden ones (interrupted writes, deletions) are ignored."""
    try:
        entries = list(adapters_dir(session).iterdir())
    except OSError:
        return []
    return sorted(p.name for p in entries if p.is_dir() and not p.name.startswith("."))


def known_names(session) -> list[str]:
    return sorted(set(saved_names(session)) | set(loaded_names(session)))


def switch(session):
    """The Switch of the current PeftModel (created on first need), or None while unwrapped."""
    from lorachat.switch import Switch

    model, state = peft_model(session), shelf(session)
    if model is None:
        return None
    if state.switch is None or state.switch.model is not model:
        state.switch = Switch(model)
        state.switch.set_active(session.active_adapter)
    return state.switch


def add_new(session, name: str, lora_config):
    """Create a fresh, trainable adapter `name` (wrapping the base on first use); returns the PeftModel.

    The new adapter is what the layers apply (and the only trainable one) until `activate`;
    `session.active_adapter` is left as it was."""
    from peft import get_peft_model

    base_fingerprint(session)  # before wrapping: names of the plain base
    model, current = peft_model(session), switch(session)
    if current is not None:
        current.set_active(None)  # base weights back in place before the structure changes
    with _quiet():
        if model is None:
            session.model = get_peft_model(session.model, lora_config, adapter_name=name)
        else:
            model.add_adapter(name, lora_config)
            model.set_adapter(name)  # PEFT: active and trainable, the others frozen
    current = switch(session)
    current.refresh()
    current.set_active(name)
    _touch(session, name)
    return session.model


def activate(session, name: str | None) -> None:
    """Make loaded adapter `name` answer (None: the base alone). No weights are copied or reloaded."""
    if name is None:
        if switch(session) is not None:
            switch(session).set_active(None)
        session.active_adapter = None
        return
    if name not in loaded_names(session):
        raise LorachatError(f"adapter '{name}' is not loaded")
    switch(session).set_active(name)
    session.active_adapter = name
    _touch(session, name)


def use(session, name: str) -> list[str]:
    """`:use NAME|base`: load from disk on first use, then activate. Returns notes to show."""
    if name.lower() == BASE:
        activate(session, None)
        return []
    check_name(name, "adapter")
    notes = [] if name in loaded_names(session) else load(session, name)
    activate(session, name)
    make_room(session, keep={name}, extra=0)  # the one active before may now be one too many
    return notes


def load(session, name: str, keep=()) -> list[str]:
    """Load saved adapter `name` into memory (inactive); checks first, so a refusal changes nothing.
    Least recently used adapters are unloaded to stay under max_loaded, except those in `keep`."""
    path = adapter_path(session, name)
    if not path.is_dir():
        raise LorachatError(f"no adapter named '{name}'{did_you_mean(name, saved_names(session))}"
                            f" (have: {', '.join(saved_names(session)) or 'none yet'})")
    check_loadable_name(name)
    notes = provenance.inspect(session, name, path, base_fingerprint(session),
                               legacy=lambda: fingerprint.loaded_fingerprint(session, lambda: _unmerged(session)))
    make_room(session, keep={name, session.active_adapter, *keep})
    _load_checked(session, name, path)
    _touch(session, name)
    if shelf(session).scales.get(name, 1.0) != 1.0:
        _apply_scale(session, name, shelf(session).scales[name])
    return notes


def _load_checked(session, name: str, path: Path) -> None:
    from safetensors import SafetensorError

    model, current = peft_model(session), switch(session)
    if current is not None:
        current.set_active(None)
    try:
        with _quiet():
            if model is None:
                session.model = loading.wrap(session.model, name, path)  # a failed wrap undoes itself
            else:
                loading.load_adapter(model, name, path)
        current = switch(session)
        current.refresh()
        current.eval_adapter(name)  # not model.eval(): that walks every loaded adapter's modules
        current.set_active(session.active_adapter)
    except (ValueError, RuntimeError, OSError, KeyError, TypeError, SafetensorError) as exc:
        _undo_load(session, name, model)
        raise LorachatError(f"cannot load adapter '{name}': {provenance.brief(exc)}") from None
    except BaseException:
        _undo_load(session, name, model)
        raise


def _undo_load(session, name, model) -> None:
    """A load into `model` that failed half-way: put it back exactly as it was (a wrap that
    succeeded before the failure is unwrapped again)."""
    if model is None:
        if peft_model(session) is not None:
            remove(session, name)
        return
    if name in model.peft_config:
        with _quiet():
            model.delete_adapter(name)
    switch(session).refresh()
    switch(session).set_active(session.active_adapter)


def make_room(session, keep=(), extra: int = 1) -> None:
    """Unload least recently used adapters until `extra` more fit under settings.max_loaded.
    Adapters that exist only in memory (not saved) are never unloaded this way."""
    loaded = loaded_names(session)
    order = [n for n in shelf(session).lru if n in loaded]
    order = [n for n in loaded if n not in order] + order
    saved = set(saved_names(session))
    for victim in [n for n in order if n not in keep and n in saved]:
        if len(loaded_names(session)) + extra <= session.settings.max_loaded:
            break
        remove(session, victim)


def _touch(session, name: str) -> None:
    lru = shelf(session).lru
    if name in lru:
        lru.remove(name)
    lru.append(name)


def remove(session, name: str) -> None:
    """Unload adapter `name` from memory (its files stay)."""
    model = peft_model(session)
    if model is None or name not in model.peft_config:
        return
    if session.active_adapter == name:
        activate(session, None)
    current = switch(session)
    current.set_active(None)
    if len(model.peft_config) == 1:  # PEFT cannot delete its last adapter: unwrap instead
        current.detach()
        shelf(session).switch = None
        session.model = model.unload()
        session.model.eval()
    else:
        with _quiet():
            model.delete_adapter(name)
        current.refresh()
        current.set_active(session.active_adapter)
    if name in shelf(session).lru:
        shelf(session).lru.remove(name)


def set_scale(session, name: str, factor: float) -> None:
    """Live strength of adapter `name` (0 off, 1 as trained), kept for the session."""
    if name not in loaded_names(session):
        load(session, name)
    _apply_scale(session, name, factor)
    shelf(session).scales[name] = factor


def _apply_scale(session, name: str, factor: float) -> None:
    from peft.tuners.lora import LoraLayer

    for module in peft_model(session).modules():
        if isinstance(module, LoraLayer):
            module.set_scale(name, factor)
    switch(session).invalidate()
