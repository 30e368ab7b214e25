"""How the ``camtool`` command reads its arguments: the Click group behind the Typer app.

- Flags are shown as flags: ``--box``, not ``--box <bool>`` (typer's rich help labels every
  option with its type, a flag's included); a repeatable option shows the type of one value
  (``--model <str>``, not ``<list[str]>``).
- Help text is shown as written: square brackets are not read as rich markup (a hand-written
  ``[default: x]`` would vanish), and a docstring's line breaks inside a paragraph are not kept.
- A word like ``true`` right after a flag (``--box true``) is a usage error that says the flag
  takes no value, instead of being read as an input file.
- Usage errors (a bad option value, a missing argument, an unknown option) are one line,
  ``Error: <option>: <problem>``, with exit code 2, like every other camtool error.
- :func:`check_with` turns a library rule (``camtool.settings.parse_device``, say) into an
  option callback, so a bad value is refused while parsing and the error names the option.

No torch here: ``camtool --help`` must stay fast.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer
import typer.core

try:
    from typer._click import exceptions as click_errors  # typer releases that vendor Click
except ImportError:  # pragma: no cover - older typer, on Click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

from rich.markup import escape

from camtool.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CamtoolError
from camtool.naming import visible

#: Words a user may write after a flag, meaning to give it a value.
BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})

Callback = Callable[[typer.Context, typer.CallbackParam, Any], Any]


def check_with(rule: Callable[[Any], Any]) -> Callback:
    """An option callback that passes the value through ``rule`` (a library function that returns
    the canonical value or raises a :class:`CamtoolError`) and turns its error into a usage
    error naming the option and the value: ``Error: --device gpu: not a device: ...``."""

    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        """``rule(value)``, its error turned into a usage error naming the option."""
        if value is None or ctx.resilient_parsing:
            return value
        try:
            return rule(value)
        except CamtoolError as exc:
            shown = shlex.quote(str(value))
            hint = f"{format_option_name(param)} {shown}"
            raise typer.BadParameter(exc.problem, param_hint=hint) from None

    return callback


def format_option_name(param: Any) -> str:
    """An option's longest name (``--box-threshold``), or an argument's name (``images``)."""
    opts = [o for o in getattr(param, "opts", ()) if o.startswith("-")]
    return max(opts, key=len) if opts else str(param.name)


def _find_flags(params: Sequence[Any]) -> dict[str, Any]:
    """The names of a command's flag options (``--box``, ``-q``) and the options themselves."""
    return {
        name: param
        for param in params
        if getattr(param, "is_flag", False)
        for name in (*param.opts, *param.secondary_opts)
    }


def _hide_flag_metavars(params: Sequence[Any]) -> None:
    """Show flags as flags in the help: ``--box``, not ``--box <bool>``."""
    for param in _find_flags(params).values():
        if param.metavar is None:
            param.metavar = ""  # no "<bool>" beside a flag in the help


def _show_one_value_type(params: Sequence[Any]) -> None:
    """Show a repeatable option with the type of one value: ``<str>``, not ``<list[str]>``."""
    for param in params:
        repeated = getattr(param, "multiple", False) or param.nargs == -1
        if not repeated or param.metavar is not None or not hasattr(param, "bare_type"):
            continue
        one = "<" + re.sub(r"^list\[(.*)\]$", r"\1", param.bare_type()).lower() + ">"
        if param.param_type_name == "argument":  # an argument's metavar would replace its name
            param.display_type_rich = lambda ctx, shown=one: shown
        else:
            param.metavar = one


def _as_written(text: str | None) -> str | None:
    """Help text shown as written: rich markup escaped, each paragraph's line breaks joined
    (a paragraph that starts with Click's ``\\b`` keeps them)."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    joined = [p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs]
    return escape("\n\n".join(joined))


def prepare_help(command: Any, ctx: Any) -> None:
    """Make ``command``'s help show what was written (once per command object): flags without a
    value, repeatable options with one value's type, no text read as rich markup."""
    params = command.get_params(ctx)
    _hide_flag_metavars(params)
    _show_one_value_type(params)
    if getattr(command, "_help_as_written", False):
        return
    command.help = _as_written(command.help)
    command.short_help = _as_written(command.short_help)
    for param in params:
        if getattr(param, "help", None):
            param.help = _as_written(param.help)
    command._help_as_written = True


def _rephrase(text: str) -> str:
    """Click's message as camtool's problem phrase: one line, first letter in lower case (unless
    the word is an acronym), sentences joined by ``;``, no final dot."""
    text = " ".join(text.split()).rstrip(".")
    text = re.sub(r"^value error, ", "", text, flags=re.IGNORECASE)  # typer's choice errors
    text = re.sub(r"\. (?=[A-Z])", "; ", text)
    text = re.sub(r"; ([A-Z])(?=[a-z])", lambda m: f"; {m[1].lower()}", text)
    return text[:1].lower() + text[1:] if text[1:2].islower() or len(text) == 1 else text


def format_usage_error(exc: click_errors.UsageError) -> str:
    """One line, ``<subject>: <problem>``, for a Click usage error."""
    errors = click_errors
    command = exc.ctx.command_path if exc.ctx is not None else "camtool"
    see = f" (see '{command} --help')"
    if isinstance(exc, errors.MissingParameter):
        subject = (
            exc.param_hint if isinstance(exc.param_hint, str) else format_option_name(exc.param)
        )
        kind = exc.param_type or getattr(exc.param, "param_type_name", "parameter")
        return f"{subject}: missing {kind}{see}"
    if isinstance(exc, errors.BadParameter):
        hint = exc.param_hint
        if hint is None:
            subject = format_option_name(exc.param) if exc.param is not None else command
        else:
            subject = hint if isinstance(hint, str) else " / ".join(hint)
        return f"{subject}: {_rephrase(exc.message)}"
    if isinstance(exc, errors.NoSuchOption):
        close = sorted(exc.possibilities or ())
        guess = f"; did you mean {', '.join(close)}?" if close else ""
        return f"{exc.option_name}: no such option{guess}{see}"
    if isinstance(exc, errors.BadOptionUsage):
        problem = _rephrase(exc.message).removeprefix(f"option '{exc.option_name}' ")
        if problem.startswith("does not take a value"):
            problem = f"is a flag and takes no value (write {exc.option_name} alone)"
        return f"{exc.option_name}: {problem}"
    problem = _rephrase(exc.message)
    unknown = re.match(r"no such command '(.*?)'(.*)", problem)
    if unknown:
        return f"{unknown[1]}: no such command{unknown[2]}{see}"
    return f"{command}: {problem}{see}"


class CamtoolGroup(typer.core.TyperGroup):
    """The ``camtool`` command group: Typer's, with flags shown as flags and usage errors as one
    ``Error:`` line (exit 2) whether it runs as a process or under a test runner."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The group's options, flags shown without a value."""
        params = super().get_params(ctx)
        _hide_flag_metavars(params)
        return params

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The group's help, its own text shown as written (see :func:`prepare_help`)."""
        if not getattr(self, "_help_as_written", False):
            self.help = _as_written(self.help)
            self._help_as_written = True
        super().format_help(ctx, formatter)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command named ``cmd_name`` (or None), its help prepared (:func:`prepare_help`)."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            prepare_help(command, ctx)
        return command

    def find_stray_flag_value(self, args: Sequence[str]) -> str | None:
        """The error line for ``--flag true`` (a flag followed by a word like ``true`` that is
        not an existing file), or None."""
        position = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
        command = self.commands.get(args[position]) if position is not None else None
        if command is None or position is None:
            return None
        flags = _find_flags(command.params)
        rest = list(args[position + 1 :])
        if "--" in rest:
            rest = rest[: rest.index("--")]
        for flag, value in itertools.pairwise(rest):
            if flag in flags and value.lower() in BOOLEAN_WORDS and not os.path.exists(value):
                long = format_option_name(flags[flag])
                return (
                    f"{flag}: is a flag and takes no value ({value!r} is not an input): "
                    f"write {long} to turn it on, leave it out to keep it off"
                )
        return None

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; a usage error is one ``Error:`` line and exit code 2."""
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        stray = self.find_stray_flag_value(argv)
        if stray is not None:
            _print_error(stray)
            sys.exit(EXIT_USAGE)
        errors = click_errors
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except errors.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(EXIT_USAGE)
        except errors.UsageError as exc:
            _print_error(format_usage_error(exc))
            sys.exit(EXIT_USAGE)
        except errors.ClickException as exc:
            _print_error(_rephrase(exc.format_message()))
            sys.exit(EXIT_ERROR)
        except typer.Abort:
            _print_error("aborted")
            sys.exit(EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def _print_error(line: str) -> None:
    """``Error: <line>`` on stderr (whatever ``sys.stderr`` is now: a test runner's too)."""
    print(f"Error: {visible(line, one_line=True)}", file=sys.stderr, flush=True)
