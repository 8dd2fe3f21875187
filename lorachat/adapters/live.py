"""The adapters living in the session's model: create, load, activate, scale and unload them around
the one base model. With training/ (the fresh adapter's LoraConfig, the loop) and this package's
switching.py, fast_load.py and export/merging code, this is where lorachat calls PEFT.

The base model is wrapped in a PeftModel the first time an adapter is created or loaded; from
then on `session.model` is that wrapper and adapters come and go inside it without touching or
copying the base weights. Switching is switching.Switch's job (flags, plus an exact lazy merge for
decoding); files are checked by provenance.py before anything is loaded, and read into the model
by fast_load.py (PEFT's own load, or a fast path with the same result). Per-session state (LRU
order, live scales, the switch, the base's fingerprint) lives in `state(session)`, a LiveState
kept in `session.extensions["adapters"]`. Knows nothing about terminals or training loops;
writing adapters to disk is disk.py's.
"""
import contextlib
import warnings
from dataclasses import dataclass, field

from lorachat.adapters import fast_load, provenance
from lorachat.adapters.paths import BASE, adapter_path, check_loadable_name, saved_names
from lorachat.core.errors import LorachatError, did_you_mean
from lorachat.core.names import check_name
from lorachat.models import fingerprint


@contextlib.contextmanager
def _quiet():
    """PEFT 0.21 warns for adapter names that are substrings of "lora_" ("a", "r", "lora"...),
    whose save/load round trip is exact (tests/adapters/ load one named "a"), and when a
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
class LiveState:
    """What this session knows about adapters beyond PEFT's own state."""
    lru: list = field(default_factory=list)      # loaded names, least recently used first
    scales: dict = field(default_factory=dict)   # name -> live strength (1.0 as trained)
    unsaved: dict = field(default_factory=dict)  # name -> lorachat.json fields of an adapter the disk refused
    origins: dict = field(default_factory=dict)  # name -> (provenance.identity, lorachat.json) of the folder it came from
    switch: object = None                        # switching.Switch for the current PeftModel
    fingerprint: str | None = None               # the base's, computed once (models/fingerprint.py)
    legacy_fingerprint: str | None = None        # the one older lorachats stored, computed only when asked


def state(session) -> LiveState:
    return session.extensions.setdefault("adapters", LiveState())


def base_fingerprint(session) -> str:
    """The base checkpoint's identity (models/fingerprint.py), from the weights it holds itself if
    it must; computed once per session, before the model is wrapped."""
    kept = state(session)
    if kept.fingerprint is None:
        kept.fingerprint = fingerprint.base_fingerprint(session.loaded, lambda: _unmerged(session))
    return kept.fingerprint


def legacy_fingerprint(session) -> str:
    """The fingerprint older lorachats stored (config and loaded weights), computed once, on demand."""
    kept = state(session)
    if kept.legacy_fingerprint is None:
        kept.legacy_fingerprint = fingerprint.loaded_fingerprint(session.loaded.model, lambda: _unmerged(session))
    return kept.legacy_fingerprint


def _unmerged(session):
    current = switch(session)
    return current.unmerged() if current is not None else contextlib.nullcontext()


def peft_model(session):
    """The PeftModel around the base, or None while no adapter was ever created or loaded."""
    from peft import PeftModel

    return session.model if isinstance(session.model, PeftModel) else None


def loaded_names(session) -> list[str]:
    model = peft_model(session)
    return list(model.peft_config) if model is not None else []


def known_names(session) -> list[str]:
    return sorted(set(saved_names(session)) | set(loaded_names(session)))


def switch(session):
    """The Switch of the current PeftModel (created on first need), or None while unwrapped."""
    from lorachat.adapters.switching import Switch

    model, kept = peft_model(session), state(session)
    if model is None:
        return None
    if kept.switch is None or kept.switch.model is not model:
        kept.switch = Switch(model)
        kept.switch.set_active(session.active_adapter)
    return kept.switch


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
                               legacy=lambda: legacy_fingerprint(session))
    origin = provenance.identity(path), provenance.read_meta(path)   # before loading: a later change shows
    make_room(session, keep={name, session.active_adapter, *keep})
    _load_checked(session, name, path)
    state(session).origins[name] = origin
    _touch(session, name)
    if scale_of(session, name) != 1.0:
        _apply_scale(session, name, scale_of(session, name))
    return notes


def _load_checked(session, name: str, path) -> None:
    from safetensors import SafetensorError

    model, current = peft_model(session), switch(session)
    if current is not None:
        current.set_active(None)
    try:
        with _quiet():
            if model is None:
                session.model = fast_load.wrap(session.model, name, path)  # a failed wrap undoes itself
            else:
                fast_load.load_adapter(model, name, path)
        current = switch(session)
        current.refresh()
        current.eval_adapter(name)  # not model.eval(): that walks every loaded adapter's modules
        current.set_active(session.active_adapter)
    except (ValueError, RuntimeError, OSError, KeyError, TypeError, SafetensorError) as exc:
        _undo_load(session, name, model)
        why = f"missing {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else provenance.brief(exc)   # str(KeyError): the key alone
        raise LorachatError(f"cannot load adapter '{name}': {why}") from None
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
    order = [n for n in state(session).lru if n in loaded]
    order = [n for n in loaded if n not in order] + order
    saved = set(saved_names(session))
    for victim in [n for n in order if n not in keep and n in saved]:
        if len(loaded_names(session)) + extra <= session.settings.max_loaded:
            break
        remove(session, victim)


def _touch(session, name: str) -> None:
    lru = state(session).lru
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
        state(session).switch = None
        session.model = model.unload()
        session.model.eval()
    else:
        with _quiet():
            model.delete_adapter(name)
        current.refresh()
        current.set_active(session.active_adapter)
    if name in state(session).lru:
        state(session).lru.remove(name)
    state(session).origins.pop(name, None)


def set_scale(session, name: str, factor: float) -> None:
    """Live strength of adapter `name` (0 off, 1 as trained), kept for the session."""
    if name not in loaded_names(session):
        load(session, name)
    _apply_scale(session, name, factor)
    state(session).scales[name] = factor


def scale_of(session, name: str) -> float:
    """Adapter `name`'s live strength: what `:scale` set this session, else 1.0 (as trained)."""
    return state(session).scales.get(name, 1.0)


def _apply_scale(session, name: str, factor: float) -> None:
    from peft.tuners.lora import LoraLayer

    for module in peft_model(session).modules():
        if isinstance(module, LoraLayer):
            module.set_scale(name, factor)
    switch(session).invalidate()


def load_all(session, names) -> list[str]:
    """Load every named adapter not yet in memory (BASE is none), keeping all of them loaded together."""
    notes = []
    for n in names:
        if n != BASE and n not in loaded_names(session):
            notes += load(session, n, keep=set(names))
    return notes
