"""What the ``camtool`` command prints, and how errors become one line and an exit code.

Every command runs inside :func:`errors_to_exit_codes`: a :class:`camtool.errors.CamtoolError`
becomes ``Error: <subject>: <problem>`` on stderr and its exit code (0 ok, 1 error, 2 usage, 3 some
inputs failed, 130 interrupted), never a traceback. Strings that come from data (labels, file
names, error messages) are printed with their control characters made visible. No torch here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from camtool.errors import EXIT_ERROR, CamtoolError
from camtool.naming import visible


class TerminalConsole(Console):
    """A rich console that shows every string it prints with its control characters made visible
    (:func:`camtool.naming.visible`): labels, card names and descriptions, file names and error
    messages come from data, and an escape sequence among them must not set the window's title,
    clear the screen or colour the rest of the output. camtool's own styles (rich markup and
    styles) are not strings of the output and still apply."""

    def render_str(self, text: str, **options: Any) -> Text:
        """rich's :meth:`Console.render_str` of ``text`` made visible (every printed string,
        table cell and measured width goes through here)."""
        return super().render_str(visible(text), **options)


console = TerminalConsole()
err_console = TerminalConsole(stderr=True, highlight=False, soft_wrap=True)


def print_error(error: object) -> None:
    """Print ``Error: <message>`` as one line on stderr (a newline in the message, from a file
    name or an argument, is shown as ``\\x0a``: no data can forge a line of its own)."""
    err_console.print(f"Error: {visible(str(error), one_line=True)}", markup=False)


@contextmanager
def errors_to_exit_codes() -> Iterator[None]:
    """Turn camtool's errors into one line on stderr and their exit code; never a traceback."""
    try:
        yield
    except CamtoolError as exc:
        print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print_error("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:  # `camtool ... | head`: the reader left; nothing more to say
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as exc:
        if exc.filename is not None:
            raise
        print_error(f"<stdout>: cannot write the output: {exc.strerror or exc}")
        raise typer.Exit(EXIT_ERROR) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("CAMTOOL_DEBUG"):
            raise
        print_error(
            f"internal error: {type(exc).__name__}: {exc} (set CAMTOOL_DEBUG=1 for a traceback)"
        )
        raise typer.Exit(EXIT_ERROR) from None


def say(text: str, whole: bool = False) -> None:
    """Print plain text (no markup); ``whole``: never break the line (paths, names): a terminal
    narrower than the line wraps it, but rich inserts no line break into it."""
    console.print(text, markup=False, highlight=False, soft_wrap=whole)


def silence_native_stderr() -> None:
    """Keep what native libraries print off the terminal; camtool's own lines stay.

    libpng, libjpeg and ffmpeg write their complaints ("libpng error: ...", "Corrupt JPEG data:
    ...", "moov atom not found") straight to file descriptor 2, from whichever thread decodes.
    camtool reports those files in its own words, so descriptor 2 is pointed at the null device
    once, for the whole process (no window in which a thread could slip through, nothing to
    restore while decode threads run), and Python's ``sys.stderr`` (camtool's ``Error:`` lines,
    rich, tracebacks with CAMTOOL_DEBUG) moves to a duplicate of the original stderr. Does
    nothing with ``CAMTOOL_DEBUG`` set, or where descriptor 2 cannot be duplicated.
    """
    if os.environ.get("CAMTOOL_DEBUG"):
        return
    stream = sys.stderr
    try:
        stream.flush()
        original = os.dup(2)
    except (OSError, AttributeError, ValueError):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        os.close(original)
        return
    sys.stderr = open(  # noqa: SIM115  # lives as long as the process
        original,
        "w",
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "backslashreplace",
        buffering=1,
    )


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Show a Python warning as one ``Warning:`` line when camtool raised it; drop warnings that
    libraries (torch, torchvision, timm) raise about their own internals, which a user of the
    command can do nothing about."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        err_console.print(f"Warning: {' '.join(str(message).split())}", markup=False)
