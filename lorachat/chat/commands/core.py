"""Session commands: :help, :quit, :info, :set, :instruction."""
import resource

from lorachat import __version__
from lorachat.chat import options
from lorachat.chat.commands import COMMANDS, QuitSession, command, find, no_args
from lorachat.core.errors import LorachatError
from lorachat.core.prompts import DEFAULT_INSTRUCTION
from lorachat.models import converted

USAGE_WIDTH = 24   # plain :help: usages up to this wide share their line with the summary


@command("help", usage=":help [COMMAND]", complete=lambda s: sorted(COMMANDS))
def help_(session, args):
    """Show all commands, or one command's full help.

    :help          one line per command
    :help train    usage, description and (where a command has them) its keys and defaults
    """
    if not args:
        seen = []
        for entry in COMMANDS.values():
            if entry not in seen:
                seen.append(entry)
        if session.ui.interactive:
            session.ui.table(["command", "what it does"], [[e.usage, e.summary] for e in seen])
        else:  # plain text has no width to wrap in: a long usage takes a line of its own
            for e in seen:
                if len(e.usage) > USAGE_WIDTH:
                    session.ui.line(e.usage)
                session.ui.line(f"{e.usage if len(e.usage) <= USAGE_WIDTH else '':<{USAGE_WIDTH}}  {e.summary}")
        session.ui.line("A line not starting with ':' is a question. \"\"\" on a line of its own starts and ends a multi-line input.")
        return
    words = [word for word in (w.lstrip(":") for w in args.split()) if word]
    if len(words) != 1:
        raise LorachatError(f":help takes one command name, like :help train (got {args[:40]!r})")
    entry = find(words[0])
    session.ui.line(entry.usage)
    doc = (entry.fn.__doc__ or "").strip().splitlines()
    for text in doc:
        session.ui.line(text[4:] if text.startswith("    ") else text)
    if entry.details:
        entry.details(session)


@command("quit", usage=":quit, :exit", aliases=("exit",))
def quit_(session, args):
    """Leave the session (Ctrl-D too)."""
    no_args("quit", args)
    raise QuitSession()


@command("info")
def info(session, args):
    """Show the model, device, dtype, parameters, memory, active adapter, dataset and workspace."""
    no_args("info", args)
    from lorachat.adapters import gate, live

    loaded = session.loaded
    base = extra = 0
    for name, p in loaded.model.named_parameters():  # loaded adapters live inside the base's modules
        if ".lora_" in name or ".modules_to_save." in name:
            extra += p.numel()
        else:
            base += p.numel()
    count = len(live.loaded_names(session))
    params = f"{base:,}" + (f" + {extra:,} in {count} loaded adapter{'s' if count != 1 else ''}" if count else "")
    made_from = [["source", converted.describe(loaded.source)]] if loaded.source else []
    rows = [["model", loaded.name], ["path", loaded.path], *made_from, ["device", loaded.device],
            ["dtype", _dtype(loaded)], ["parameters", params],
            ["memory", _memory(loaded.device)], ["adapter", session.active_adapter or "base (none)"],
            ["gate", gate.describe(session, session.active_adapter)],
            ["dataset", session.dataset], ["instruction", session.instruction],
            ["workspace", str(session.home.resolve())], ["lorachat", __version__]]
    session.ui.table(["", ""], rows)


def _dtype(loaded) -> str:
    name = str(loaded.dtype).replace("torch.", "")
    return f"{name} ({loaded.why})" if loaded.why else name


def _memory(device: str) -> str:
    rss = _rss_mb()
    text = f"{rss:,.0f} MB resident"
    if device == "cuda":
        import torch

        text += f", {torch.cuda.memory_allocated() / 2**20:,.0f} MB on GPU"
    return text


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _show_settings(session):
    session.ui.table(["key", "value", "meaning"], [list(r) for r in options.describe(session.settings)])


@command("set", usage=":set [key=value ...]", details=_show_settings)
def set_(session, args):
    """Show or change generation settings (greedy by default: do_sample=off)."""
    words = options.split_words(args)
    positional, pairs = options.split_kv(words)
    if positional:
        raise LorachatError(f":set takes key=value words (got {positional[0][:40]!r})")
    if not pairs:
        _show_settings(session)
        return
    session.settings = options.apply_kv(session.settings, pairs)
    if "max_loaded" in pairs:
        from lorachat.adapters import live

        live.make_room(session, keep={session.active_adapter}, extra=0)
    session.ui.line("set " + ", ".join(f"{k}={options.describe_value(getattr(session.settings, k))}" for k in pairs))


@command("instruction", usage=":instruction [TEXT|default]")
def instruction(session, args):
    """Show or set the instruction line that goes with every question (and every recorded example).

    :instruction You are a patient birdwatching guide.
    :instruction default        lorachat's own, 'Answer the question.'
    """
    if not args:
        session.ui.line(f"instruction: {session.instruction}")
        return
    text = args.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":   # quoted as a whole: the quotes are not part of it
        text = text[1:-1].strip()
    if not text:
        raise LorachatError(f"an instruction cannot be empty: :instruction default sets lorachat's own ({DEFAULT_INSTRUCTION!r})")
    session.instruction = DEFAULT_INSTRUCTION if text == "default" else text
    session.ui.line(f"instruction set: {session.instruction}")
