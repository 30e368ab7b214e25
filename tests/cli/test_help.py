"""``--help`` of every command, read as a user reads it: every option shows its default (or that it
is required, or that it is a flag), nothing vanishes as rich markup, the command list is one line
per command. The cases come from the real Typer app, so a new option without a default fails."""

from __future__ import annotations

import functools
import re

import pytest
import typer.core
import typer.main
from typer.testing import CliRunner

from camtool.cli import app

GROUP = typer.main.get_command(app)
assert isinstance(GROUP, typer.core.TyperGroup)
COMMANDS = {name: cmd for name, cmd in GROUP.commands.items() if not cmd.hidden}
WIDTHS = [80, 200]
ROW = re.compile(r"^│ (?:\* )?\s{0,5}(-{1,2}[\w-]+|[a-z_]+(?:\.\.\.)?)(?:\s|,|$)")


@functools.cache
def show_help(*args: str, width: int) -> str:
    """The help text ``camtool ARGS --help`` prints at ``width`` columns."""
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.stdout


def help_rows(text: str) -> dict[str, str]:
    """The rows of the Arguments and Options panels: a parameter's name -> its whole cell text
    (the lines of its row joined, the box drawn around it removed)."""
    rows: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("│"):
            current = None
            continue
        found = ROW.match(line)
        if found:
            current = rows.setdefault(found[1].removesuffix("..."), [])
        if current is not None:
            current.append(line.strip("│ "))
    return {name: " ".join(" ".join(lines).split()) for name, lines in rows.items()}


def param_name(param: typer.core.TyperOption | typer.core.TyperArgument) -> str:
    """The name a parameter's row starts with: its first long option, or an argument's name."""
    if isinstance(param, typer.core.TyperOption):
        return next((o for o in param.opts if o.startswith("--")), param.opts[0])
    return str(param.name)


CASES = [
    pytest.param(command, param, id=f"{command}-{param_name(param)}")
    for command, cmd in COMMANDS.items()
    for param in cmd.params
]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(("command", "param"), CASES)
def test_every_option_shows_its_default(
    command: str, param: typer.core.TyperOption | typer.core.TyperArgument, width: int
) -> None:
    row = help_rows(show_help(command, width=width))[param_name(param)]
    off_flag = isinstance(param, typer.core.TyperOption) and param.is_flag and not param.default
    if param.required:
        assert "[required]" in row
    elif not off_flag:  # a flag's default is off: leaving it out
        shown = re.findall(r"\[default: ([^\]]+)\]", row)
        assert len(shown) == 1 and shown[0].strip("() "), row
        if param.default is not None:
            assert shown[0] == str(param.default), row
    # no hand-written default beside the real one, no hole where markup vanished
    assert row.count("default") <= 1 and "(default" not in row, row
    assert not re.search(r"\s[.,;:](\s|$)|\(\s*\)|\[\s*\]", row), row
    assert "list[" not in row, row


@pytest.mark.parametrize("width", WIDTHS)
def test_the_command_list_is_one_whole_sentence_per_command(width: int) -> None:
    text = show_help(width=width)
    panel = text[text.index("Commands") :].splitlines()[1:-1]
    rows = [line.strip("│ ") for line in panel if line.startswith("│")]
    assert [row.split()[0] for row in rows] == list(COMMANDS)  # one line each
    for row in rows:
        summary = row.split(maxsplit=1)[1]
        assert summary[0].isupper() and summary.endswith(".") and summary.count(". ") == 0, row
    assert rows[0] == "explain  Classify images and write a CAM overlay per image and class."


def test_a_command_help_keeps_no_line_break_of_its_docstring() -> None:
    lines = [line.rstrip() for line in show_help("eval", width=80).splitlines()]
    at = next(i for i, line in enumerate(lines) if line.startswith(" Exit code"))
    assert lines[at : at + 2] == [
        " Exit code 0 when every image was evaluated, 3 when some failed (each is",
        " listed), 130 when interrupted (finish with --resume).",
    ]


def test_eval_help_shows_the_defaults_that_used_to_vanish() -> None:
    rows = help_rows(show_help("eval", width=200))
    assert rows["--size"].endswith("Square network input every image is squeezed to. "
                                   "[default: (the model's input size)]")  # fmt: skip
    assert (
        rows["--steps"]
        == "--steps <int range> [x>=1] Deletion/insertion steps. [default: (224, the paper's)]"
    )
    assert rows["--method"].endswith("[default: (cam)]")
    assert rows["--metric"].endswith("[default: (all that apply)]")
    assert rows["--model"].startswith("--model -m <str> Model: ")
    assert rows["--model"].endswith("[default: (efficientnet_lite0)]")
    assert rows["images"].startswith("* images... <str> Image files")
