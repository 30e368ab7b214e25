"""The user documentation: how to install, the model card reference, and nothing but users' matters."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from camtool.models.cards import WeightsSource, read_card
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text("utf-8")
DOCS = {path.name: path.read_text("utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}


def indented_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_readme_says_what_camtool_is_then_gives_the_two_commands_then_pip() -> None:
    lines = README.splitlines()
    assert lines[0] == "# camtool"
    first = README.split("\n\n")[1]
    assert first.startswith("camtool shows where an image classifier looks")
    assert first.count(". ") == 0 and first.endswith(".")  # one sentence
    commands = indented_commands(README)
    assert commands[0] == (
        "bash scripts/setup.sh && .venv/bin/camtool explain examples/chelsea.png --box --out out"
    )
    assert commands[1] == "bash scripts/setup.sh test && .venv/bin/python -m pytest"
    # CI runs exactly that command (as one whole line), and then builds the docs site strictly
    ci = (ROOT / ".ci" / "run").read_text("utf-8").strip().splitlines()
    assert commands[1] in ci
    docs_build = [line for line in ci if "mkdocs build" in line]
    assert docs_build and ci.index(commands[1]) < ci.index(docs_build[0])
    assert "--strict" in docs_build[0]
    pip = [c.split("#")[0].strip() for c in commands[2:6]]
    assert pip[0] == "pip install ."
    assert pip[1] == "pip install '.[lite12]'"
    assert pip[2].startswith("pip install 'camtool[lite12] @ git+")
    assert pip[3].startswith("pip wheel --no-deps -w dist . && pip install 'dist/camtool-")
    assert "docs/coming-from.md" in README and "docs/cards.md" in README


@pytest.mark.parametrize("where", ["README.md", *DOCS, "camtool"])
def test_no_install_command_names_camtool_on_the_package_index(where: str) -> None:
    """camtool is not on the index: `pip install 'camtool[...]'` would fail (or find another
    project), so every command installs a path, a wheel or a git URL."""
    if where == "camtool":
        texts = [p.read_text("utf-8") for p in (ROOT / "camtool").rglob("*.py")]
    else:
        texts = [README if where == "README.md" else DOCS[where]]
    for text in texts:
        # only `camtool[...] @ git+URL` may name it
        found = re.search(r"pip install '?camtool[^\s']*'?(?! @ git\+)[\s`'\"]", text)
        assert found is None, (where, found[0] if found else "")


@pytest.mark.parametrize("name", ["README.md", *DOCS])
def test_docs_speak_to_users_only(name: str) -> None:
    text = README if name == "README.md" else DOCS[name]
    for pattern in (
        r"\bissues?\b",
        r"\bsessions?\b",
        r"\bhelper [A-Z]\b",
        r"(?<![\w&])#\d+\b",
        r"\btask\b",
    ):
        assert not re.search(pattern, text, re.IGNORECASE), (name, pattern)


def test_the_card_reference_documents_every_field_and_its_examples_read(tmp_path: Path) -> None:
    text = DOCS["cards.md"]
    documented = set(re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE))
    accepted = {"name", "description", "architecture", "labels", "random_weights"}
    accepted |= {"input_size", "interpolation", "crop_pct", "mean", "std"}
    accepted |= {f.name for f in fields(WeightsSource)}
    assert documented == accepted
    examples = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert len(examples) == 2
    for i, example in enumerate(examples):
        path = tmp_path / f"example{i}.toml"
        path.write_text(example)
        card = read_card(path)
        assert card.weights is not None and card.weights.file
    assert read_card(tmp_path / "example0.toml").architecture == "resnet18"
