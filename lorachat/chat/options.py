"""`key=value` words -> a validated dataclass. Knows nothing about what the keys mean.

Defaults live once, in a dataclass beside their user; each field may carry
`metadata={"help": ..., "min": ..., "max": ..., "choices": (...)}` and this module turns
user words into `dataclasses.replace(defaults, **parsed)` or one clear LorachatError.
"""
import dataclasses
import shlex
import types
import typing
from pathlib import Path

from lorachat.core.errors import LorachatError, did_you_mean

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def split_words(text: str) -> list[str]:
    """Shell-like split ('a "b c"' -> ['a', 'b c']), with a clear error for unbalanced quotes."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise LorachatError(f"cannot read arguments: {exc}") from None


def path_word(word: str, command: str) -> Path:
    """A path typed for `command`: not empty, no NUL byte (the system refuses it with a ValueError)."""
    if not word.strip() or "\x00" in word:
        raise LorachatError(f"{command}: {word[:40]!r} is not a usable path")
    return Path(word)


def split_kv(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate positional words from key=value words (the key being a plain identifier)."""
    positional, pairs = [], {}
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key.isidentifier():
            if key in pairs:
                raise LorachatError(f"'{key}' is given twice")
            pairs[key] = value
        else:
            positional.append(word)
    return positional, pairs


def _convert(field: dataclasses.Field, hint, raw: str):
    name = field.name
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: 'none' clears it
        if raw.lower() in ("none", ""):
            return None
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    try:
        if hint is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if hint is int:
            if len(raw) > 40:   # int() refuses over 4300 digits with its own ValueError; no setting needs 40
                raise ValueError
            return int(raw)
        if hint is float:
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            return value
    except ValueError:
        kind = {bool: "on or off", int: "a whole number", float: "a number"}[hint]
        raise LorachatError(f"{name}={raw[:40]!r}: expected {kind}") from None
    return raw


def _check_range(field: dataclasses.Field, value) -> None:
    meta = field.metadata
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise LorachatError(f"{field.name}={value}: choose one of {', '.join(meta['choices'])}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low or high is not None and value > high:
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        if low is None:
            bounds = f"at most {high}"
        raise LorachatError(f"{field.name}={value}: must be {bounds}")
    if meta.get("positive") and value <= 0:
        raise LorachatError(f"{field.name}={value}: must be greater than 0")


def apply_kv(defaults, pairs: dict[str, str]):
    """A copy of the dataclass `defaults` with `pairs` (raw strings) converted and checked."""
    fields = {f.name: f for f in dataclasses.fields(defaults)}
    hints = typing.get_type_hints(type(defaults))
    changes = {}
    for key, raw in pairs.items():
        if key not in fields:
            raise LorachatError(f"unknown key '{key}'{did_you_mean(key, fields)} (keys: {', '.join(fields)})")
        value = _convert(fields[key], hints[key], raw)
        _check_range(fields[key], value)
        changes[key] = value
    return dataclasses.replace(defaults, **changes)


def describe(obj) -> list[tuple[str, str, str]]:
    """(key, current value, help) for each field: what :set and :help show."""
    return [(f.name, describe_value(getattr(obj, f.name)), f.metadata.get("help", ""))
            for f in dataclasses.fields(obj)]


def describe_value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
