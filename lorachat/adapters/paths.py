"""Where adapters live and what they may be called: `adapters/NAME` in the workspace, the names
PEFT can hold in memory, and BASE, the name of no adapter. Knows nothing about PEFT objects.
"""
from pathlib import Path

from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name

BASE = "base"
FOLDER = "adapters"


def adapters_dir(session) -> Path:
    return session.home / FOLDER


def adapter_path(session, name: str) -> Path:
    return adapters_dir(session) / check_name(name, "adapter")


def saved_names(session) -> list[str]:
    """Adapter directories on disk; hidden ones (interrupted writes, deletions) are ignored."""
    try:
        entries = list(adapters_dir(session).iterdir())
    except OSError:
        return []
    return sorted(p.name for p in entries if p.is_dir() and not p.name.startswith("."))


def check_nothing_in_the_way(session, name: str) -> None:
    """Refuses a new adapter `name` whose folder is taken by a file or a dead link: trained, it could
    not be saved there, and no command knows it as an adapter."""
    path = adapter_path(session, name)
    if path.is_symlink() and not path.exists() or path.exists() and not path.is_dir():
        what = "a link to nothing" if not path.exists() else "a file"
        raise LorachatError(f"{path} is {what}, not an adapter: choose another name, or move it away")


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
