"""Names of datasets and adapters: `[A-Za-z0-9._-]+`, no leading dot, never a path."""
import re

from lorachat.core.errors import LorachatError

NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_LENGTH = 100


def check_name(name: str, kind: str) -> str:
    """`name` itself when it is a valid workspace name; otherwise one clear LorachatError."""
    shown = repr(name[:40]) + ("..." if len(name) > 40 else "")
    if not name:
        raise LorachatError(f"the {kind} name is empty")
    if len(name) > MAX_LENGTH:
        raise LorachatError(f"{kind} name {shown} is too long (at most {MAX_LENGTH} characters)")
    if not NAME.fullmatch(name) or name.startswith("."):
        allowed = "'_' and '-'" if kind == "adapter" else "'.', '_' and '-', not starting with '.'"  # adapters.check_loadable_name
        raise LorachatError(f"invalid {kind} name {shown}: use letters, digits, {allowed}")
    if name.lower() == "base" and kind == "adapter":
        raise LorachatError("'base' means the model with no adapter; choose another adapter name")
    return name
