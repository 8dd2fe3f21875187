"""The command registry: every `:name` is one small function registered here by name.

A command is `fn(session, args: str)`; its docstring is its `:help` (first line: the summary).
Modules in this package register themselves on import; all of them are imported below.
"""
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from lorachat.core.errors import LorachatError, did_you_mean


@dataclass
class Command:
    name: str
    fn: Callable
    usage: str                       # e.g. ":set [key=value ...]"
    details: Callable | None = None  # extra help lines (a defaults table), given the session
    complete: Callable | None = None # argument completions, given the session

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


COMMANDS: dict[str, Command] = {}


class QuitSession(Exception):
    """Raised by :quit; the REPL ends the session normally."""


def command(name: str, usage: str = "", details=None, complete=None, aliases=()):
    def register(fn):
        entry = Command(name, fn, usage or f":{name}", details, complete)
        for key in (name, *aliases):
            if key in COMMANDS:
                raise RuntimeError(f"command :{key} registered twice")
            COMMANDS[key] = entry
        return fn
    return register


def split_command(line: str) -> tuple[str, str]:
    """':name rest of line' -> ('name', 'rest of line')."""
    head, _, rest = line[1:].strip().partition(" ")
    if "\n" in head:
        head, _, more = head.partition("\n")
        rest = more + (" " + rest if rest else "")
    return head, rest.strip()


def find(name: str) -> Command:
    if name in COMMANDS:
        return COMMANDS[name]
    shown = name if len(name) <= 40 and name.isprintable() else repr(name[:40]) + "..."
    close = did_you_mean(":" + name.lower(), [":" + c for c in COMMANDS])   # ':Train': did you mean :train?
    raise LorachatError(f"unknown command ':{shown}'{close} (:help lists them)")


def run_command(session, line: str) -> None:
    name, args = split_command(line)
    if not name:
        raise LorachatError("a command name must follow ':' (:help lists them)")
    find(name).fn(session, args)


def no_args(name: str, args: str) -> None:
    if args:
        raise LorachatError(f":{name} takes no arguments (got {args[:40]!r})")


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
