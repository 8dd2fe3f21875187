"""How output looks: plain text for scripts and tests, rich on a terminal.

Commands talk to `session.ui` (line, error, table, answer, progress) and never to a terminal;
this module knows nothing about models or adapters.
"""
import contextlib
import math
import os
import sys
import time

PROGRESS_EVERY = 5.0   # seconds between plain progress lines, unless LORACHAT_PROGRESS_SECONDS says


class OutputClosed(BaseException):
    """The output was closed under us (`lorachat | tee log`, and tee is gone), or refuses what is
    written (`>/dev/full`, a full disk: `why` says so): nothing more can be shown, so the session
    ends. A BaseException, like KeyboardInterrupt: no handler of user errors or of bugs may take it
    for one of those."""

    def __init__(self, why: str | None = None):
        super().__init__(why)
        self.why = why   # None: the reader went away (a broken pipe), which is no error of ours

    def end(self, what: str) -> int:
        """The command's status once its output is gone: 141 quietly when the reader left (as `yes |
        head` ends), else 1 and one line on stderr saying `what` happens now. Standard output is
        pointed at /dev/null, so no flush fails again at exit."""
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if self.why is None:
            return 141
        print(f"error: cannot write to standard output ({self.why}): {what}", file=sys.stderr)
        return 1


class PlainUI:
    """Plain text, no ANSI, no redraws: what scripts, pipes and tests see."""

    interactive = False

    def __init__(self, out=None, progress_every: float | None = None):
        self.out = out if out is not None else sys.stdout
        self.progress_every, self._bad_every = (progress_every, None) if progress_every is not None else _progress_seconds()

    def line(self, text: str = "") -> None:
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            raise OutputClosed() from None
        except OSError as exc:   # ENOSPC, EIO: what was said is not on the output, so the session cannot go on
            raise OutputClosed(exc.strerror or str(exc)) from None

    def error(self, message: str) -> None:
        self.line(f"error: {message}")

    def note(self, message: str) -> None:
        """A secondary remark (dim on a terminal)."""
        self.line(message)

    def echo(self, line: str) -> None:
        """Repeat an input line so a transcript reads in order."""
        self.line(f"> {line}")

    def table(self, columns: list[str], rows: list[list], title: str | None = None,
              whole: tuple = (), optional: tuple = ()) -> None:
        """`whole`: columns never cut; `optional`: columns a narrow terminal may leave out, first
        named first (plain text has no width, so it shows them all)."""
        header = [[str(c) for c in columns]] if any(columns) else []
        cells = header + [[str(c) for c in row] for row in rows]
        if not cells:
            return
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
        if title:
            self.line(title)
        for row in cells:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())

    def answer(self, ask) -> str:
        """`ask(show)` with `show` writing each piece as it arrives; what it returns. Ends the line."""
        try:
            return ask(self._write)
        finally:  # stopped midway (Ctrl-C): what follows starts on a line of its own
            self._write("\n")

    @contextlib.contextmanager
    def progress(self, description: str, total: int):
        """Yields update(step, **fields); prints one plain line every few seconds."""
        last = [time.monotonic()]
        if self._bad_every:   # said once, where it matters: the session goes on at the default
            self.line(self._bad_every)
            self._bad_every = None

        def update(step: int, **fields) -> None:
            now = time.monotonic()
            if now - last[0] >= self.progress_every:
                last[0] = now
                extra = "  ".join(f"{k} {v}" for k, v in fields.items() if v is not None)
                self.line(f"{description} {step}/{total}  {extra}".rstrip())

        yield update


def _progress_seconds() -> tuple[float, str | None]:
    """(seconds between plain progress lines, the line saying a bad setting was not taken): a log of
    `lorachat train` wants fewer or more lines than a pipe read by a person, so
    LORACHAT_PROGRESS_SECONDS may say, as a number of seconds from 0.1 up (default 5)."""
    raw = os.environ.get("LORACHAT_PROGRESS_SECONDS")
    if not raw:
        return PROGRESS_EVERY, None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (0.1 <= seconds < math.inf):
        return PROGRESS_EVERY, (f"warning: LORACHAT_PROGRESS_SECONDS={raw[:40]!r} is not a number of seconds from 0.1 up: "
                                f"a progress line every {PROGRESS_EVERY:g} s")
    return seconds, None


class QuietUI(PlainUI):
    """Says nothing, errors included: the other ranks of a distributed run, whose main rank speaks
    (every rank meets the same errors, and a line per rank would repeat it)."""

    def __init__(self):
        import io

        super().__init__(io.StringIO())

    def line(self, text: str = "") -> None:
        pass


class RichUI(PlainUI):
    """A terminal: rich tables, live progress bars, streamed answers."""

    interactive = True

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(highlight=False)
        super().__init__(self.console.file)

    def line(self, text: str = "") -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def error(self, message: str) -> None:
        self.console.print(f"[bold red]error:[/] {_escape(message)}", highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{_escape(message)}[/]", highlight=False, soft_wrap=True)

    def echo(self, line: str) -> None:
        pass  # the terminal already shows what was typed

    def table(self, columns, rows, title=None, whole=(), optional=()) -> None:
        from rich.table import Column, Table

        rows = [[str(c) for c in row] for row in rows]
        shown = _fitting(columns, rows, self.console.width, optional)
        hidden = [c for i, c in enumerate(columns) if i not in shown]
        heads = [Column(columns[i], no_wrap=True, min_width=_width(columns, rows, i)) if columns[i] in whole
                 else columns[i] for i in shown]
        table = Table(*heads, title=title, title_justify="left", show_header=any(columns), caption_justify="left",
                      caption=f"(not shown at this width: {', '.join(hidden)})" if hidden else None)
        for row in rows:
            table.add_row(*(_escape(row[i]) for i in shown))
        self.console.print(table)

    def answer(self, ask) -> str:
        try:
            return ask(lambda piece: self.console.print(piece, end="", markup=False, highlight=False, soft_wrap=True))
        finally:
            self.console.print()

    @contextlib.contextmanager
    def progress(self, description: str, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total, extra="")

            def update(step: int, **fields) -> None:
                extra = "  ".join(f"{k} {v}" for k, v in fields.items() if v is not None)
                bar.update(task, completed=step, extra=extra)

            yield update


def _width(columns, rows, index: int) -> int:
    return max([len(columns[index]), *(len(row[index]) for row in rows)])


def _fitting(columns, rows, width: int, optional) -> list[int]:
    """Indices of the columns to show: all of them, less optional ones (in order) while the table
    would be wider than `width` (each column takes its widest cell plus 3 for padding and rule)."""
    shown = list(range(len(columns)))
    for name in optional:
        if 1 + sum(_width(columns, rows, i) + 3 for i in shown) <= width:
            break
        shown = [i for i in shown if columns[i] != name]
    return shown


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
