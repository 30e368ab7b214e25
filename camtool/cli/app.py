"""The ``camtool`` Typer app, its root options (``--version``) and ``main``, the console script.

The commands live one group per module (explain, export, evaluate, models, fit) and register on
:data:`app` when :mod:`camtool.cli` imports them. torch is imported inside the commands, so that
``camtool --help`` stays fast.
"""

from __future__ import annotations

import os
import warnings
from typing import Annotated

import typer

from camtool._version import __version__
from camtool.cli.console import console, show_warning, silence_native_stderr
from camtool.cli.usage import CamtoolGroup

app = typer.Typer(
    cls=CamtoolGroup,
    name="camtool",
    help="Exact Class Activation Maps: see where a CNN with a global-average-pooling head looks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def print_version(value: bool) -> None:
    """Print ``camtool <version>`` and stop, when ``--version`` is given."""
    if value:
        console.print(f"camtool {__version__}")
        raise typer.Exit()


@app.callback()
def read_root_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=print_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Exact Class Activation Maps: see where a CNN with a global-average-pooling head looks."""


def main() -> None:
    """Entry point of the ``camtool`` console script.

    Usage errors (an option out of range, a missing argument) become one ``Error:`` line and
    exit code 2, like every other error, instead of a framed help box (:class:`CamtoolGroup`).
    Native libraries' messages and library warnings are kept off stderr
    (:func:`silence_native_stderr`, :func:`show_warning`).
    """
    silence_native_stderr()
    if not os.environ.get("CAMTOOL_DEBUG"):
        warnings.showwarning = show_warning
    app()
