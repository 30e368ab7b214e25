"""``python -m camtool.cli``: the ``camtool`` command, run by the interpreter."""

from camtool.cli import main

main()
