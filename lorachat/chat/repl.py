"""The loop: read a line, run a command or ask a question, show the result.

Lines come from an iterable (scripts, stdin, tests) or from prompt_toolkit on a terminal. This is
the one error boundary: LorachatError becomes `error: ...`; anything else is a bug and propagates
with its traceback.
"""
import re
import sys
import traceback
from pathlib import Path

from lorachat.chat.commands import COMMANDS, QuitSession, run_command, split_command
from lorachat.core.errors import LorachatError

BLOCK = '"""'


CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # not echoed raw: ESC would drive the terminal showing the transcript


def logical_lines(lines, skip_comments: bool = True):
    """Join `\"\"\"` blocks into one line; skip blank lines (and `#` lines in scripts)."""
    lines = iter(lines)
    for number, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        if number == 0:
            line = line.removeprefix("\ufeff")  # a byte-order mark however the lines were read
        if line.strip() == BLOCK:
            block = []
            for inner in lines:
                inner = inner.rstrip("\r\n")
                if inner.strip() == BLOCK:
                    break
                block.append(inner)
            else:
                raise LorachatError('a """ block was not closed before the end of input')
            line = "\n".join(block)
        if not line.strip() or skip_comments and line.lstrip().startswith("#"):
            continue
        yield line.strip()


class Repl:
    def __init__(self, session, keep_going: bool = False):
        self.session = session
        self.keep_going = keep_going
        self.failed = 0

    def handle(self, line: str) -> bool:
        """Run one logical line; False when it failed with a user error."""
        ui = self.session.ui
        try:
            if line.startswith(":"):
                run_command(self.session, line)
            else:
                ui.answer(lambda show: self.session.ask(line, show))
            return True
        except LorachatError as exc:
            ui.error(str(exc))
            return False

    def run_lines(self, lines) -> int:
        """Script mode: echo each line, stop at the first failure unless keep_going. Exit code."""
        ui = self.session.ui
        try:
            for line in logical_lines(lines):
                shown = line if len(line) <= 200 else line[:200] + "..."
                shown = shown.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                ui.echo(CONTROLS.sub(lambda m: "^" + chr(ord(m.group()) ^ 0x40), shown))   # ESC as ^[, as terminals show it
                if not self._scripted(line):
                    self.failed += 1
                    if not self.keep_going:
                        return 1
        except QuitSession:
            pass
        except LorachatError as exc:  # an unclosed block
            ui.error(str(exc))
            self.failed += 1
        return 1 if self.failed else 0

    def _scripted(self, line: str) -> bool:
        """One script line; Ctrl-C stops it as it stops :train in a script: the line fails with one
        line and the script goes on with --keep-going."""
        bad = next((c for c in line if "\udc80" <= c <= "\udcff"), None)   # surrogateescape's undecodable bytes
        if bad is not None:
            self.session.ui.error(f"this line is not UTF-8 text (byte 0x{ord(bad) - 0xdc00:02x}); nothing was done with it")
            return False
        try:
            return self.handle(line)
        except KeyboardInterrupt:
            what = f":{split_command(line)[0][:40]}" if line.startswith(":") else "the answer"
            self.session.ui.error(f"{what} stopped by Ctrl-C")
            return False

    def run_terminal(self, history: Path) -> int:
        """Interactive (standard input is a terminal): prompt_toolkit with history, completion,
        \"\"\" blocks and Ctrl-C/Ctrl-D. Each line is echoed through the UI, which shows it only
        where the terminal does not already (`lorachat | tee log`: the log reads as a transcript)."""
        prompt = _prompter(history, self.session)
        self.session.read_text = lambda label: self._read_block(prompt, label)
        _note_history_problem(prompt, self.session.ui)
        while True:
            try:
                line = self._read_block(prompt, f"{self.session.prompt_label()}> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return 0
            finally:
                _note_history_problem(prompt, self.session.ui)
            if not line.strip():
                continue
            self.session.ui.echo(line.strip())
            try:
                self.respond(line.strip())
            except QuitSession:
                return 0

    def respond(self, line: str) -> None:
        """One typed line on a terminal: Ctrl-C stops it; a bug shows its traceback, and the session
        (model, adapters, scales, settings) goes on instead of ending with it."""
        try:
            self.handle(line)
        except KeyboardInterrupt:
            self.session.ui.note("(stopped)")
        except (QuitSession, SystemExit):
            raise
        except Exception:
            traceback.print_exc()
            self.session.ui.error("that was a bug in lorachat (traceback above); the session goes on")

    @staticmethod
    def _read_block(prompt, label: str) -> str:
        line = prompt.prompt(label)
        if line.strip() != BLOCK:
            return line
        block = []
        while (inner := prompt.prompt("... ")).strip() != BLOCK:
            block.append(inner)
        return "\n".join(block)


def _prompter(history: Path, session):
    """Something with `.prompt(label) -> line`: prompt_toolkit drawing on whichever of stdout and
    stderr is a terminal (stdout may be a pipe: `lorachat | tee log`), else plain lines from stdin."""
    if not (sys.stdout.isatty() or sys.stderr.isatty()):
        return PlainPrompt()
    from prompt_toolkit import PromptSession
    from prompt_toolkit.output import create_output

    return PromptSession(history=_history(history), completer=make_completer(session),
                         output=create_output(always_prefer_tty=True))


def _history(path: Path):
    """The input history in `path`; in memory only (said once) when that file cannot be written,
    now or later: a read-only cache folder is no reason for a traceback at every line."""
    from prompt_toolkit.history import FileHistory

    class KeptHistory(FileHistory):
        problem, told = None, False

        def load_history_strings(self):
            try:
                yield from super().load_history_strings()
            except OSError as exc:
                self.problem = self.problem or exc

        def store_string(self, string: str) -> None:
            if self.problem is None:
                try:
                    super().store_string(string)
                except OSError as exc:
                    self.problem = exc

    kept = KeptHistory(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as exc:
        kept.problem = exc
    return kept


def _note_history_problem(prompt, ui) -> None:
    history = getattr(prompt, "history", None)
    if getattr(history, "problem", None) is not None and not history.told:
        history.told = True
        why = history.problem.strerror or history.problem
        ui.note(f"note: input history is kept in memory only for this session: cannot write {history.filename} ({why})")


class PlainPrompt:
    """A terminal on stdin but on neither output: the label goes to stderr, no line editing."""

    def prompt(self, label: str) -> str:
        sys.stderr.write(label)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")


def make_completer(session):
    """Command names after ':', then whatever the command offers for its arguments."""
    from prompt_toolkit.completion import Completer, Completion

    class CommandCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if not text.startswith(":"):
                return
            if " " not in text:
                for name in sorted(COMMANDS):
                    if name.startswith(text[1:]):
                        yield Completion(name, start_position=-(len(text) - 1))
                return
            name, _, rest = text[1:].partition(" ")
            entry = COMMANDS.get(name)
            if entry is None or entry.complete is None:
                return
            word = rest.rsplit(" ", 1)[-1]
            for choice in entry.complete(session):
                if choice.startswith(word):
                    yield Completion(choice, start_position=-len(word))

    return CommandCompleter()
