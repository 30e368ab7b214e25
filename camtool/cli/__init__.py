"""The ``camtool`` command: a thin Typer layer over the public API.

Each command parses its options, calls one library function, prints with rich, and turns
:class:`camtool.errors.CamtoolError` into ``Error: <subject>: <problem>`` on stderr and an exit
code (0 ok, 1 error, 2 usage, 3 some inputs failed). torch is imported inside the commands so
that ``camtool --help`` stays fast.

:mod:`camtool.cli.app` holds the Typer app and ``main``; importing this package registers the
commands of each group on it, in the order ``camtool --help`` lists them.
"""

from camtool.cli.app import app, main

# isort: off
from camtool.cli import explain, export, evaluate, models, fit  # noqa: F401  # registers commands
# isort: on

__all__ = ["app", "main"]
