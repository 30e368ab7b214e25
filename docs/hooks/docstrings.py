"""MkDocs hook for the API reference: every object it shows has a docstring; Sphinx roles read.

mkdocstrings leaves an undocumented object out of the page without a word. This hook walks the
``::: identifier`` blocks of the pages under ``reference/`` with griffe (the loader mkdocstrings
uses) and logs a warning for each object without a docstring: the object itself and the public
members the page renders (a module's ``__all__``, or its public functions and classes; a class's
own public methods and properties, and ``__call__``; none where the block says ``members:
false``). Attributes are not checked: griffe reads no ``#:`` comments. ``mkdocs build --strict``
turns each warning into a failure, so a public function that loses its docstring fails the build.

camtool's docstrings name other objects with Sphinx roles (``:func:`explain```), which Markdown
leaves as text; the rendered pages keep the name in code type and drop the role.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import griffe

log = logging.getLogger("mkdocs.plugins.camtool.docstrings")
BLOCK = re.compile(r"^::: *([\w.]+)[ \t]*\n((?:[ \t]+.*(?:\n|$))*)", re.MULTILINE)
ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(<code>)~?")
NO_MEMBERS = re.compile(r"^\s*members:\s*(false|\[\])\s*$", re.MULTILINE)
ROOT = Path(__file__).resolve().parents[2]
_packages: dict[str, griffe.Object] = {}


def _package(name: str) -> griffe.Object:
    if name not in _packages:
        _packages[name] = griffe.load(
            name, search_paths=[str(ROOT)], resolve_aliases=True, resolve_external=False
        )
    return _packages[name]


def _target(obj: Any) -> Any:
    while obj.is_alias:
        obj = obj.final_target
    return obj


def _shown(name: str) -> bool:
    return not name.startswith("_") or name == "__call__"


def _members(obj: Any) -> list[tuple[str, Any]]:
    """The members mkdocstrings renders under ``obj`` that need a docstring of their own."""
    if obj.is_module:
        names = (
            [n if isinstance(n, str) else n.name for n in obj.exports]
            if obj.exports
            else [name for name, m in obj.members.items() if _shown(name) and not m.is_alias]
        )
        found = [(name, obj.members[name]) for name in names if name in obj.members]
        return [(n, m) for n, m in found if not _target(m).is_module]
    if obj.is_class:
        return [
            (name, m)
            for name, m in obj.members.items()
            if _shown(name)
            and not m.is_alias
            and (m.is_function or m.is_class or "property" in m.labels)
        ]
    return []


def _needs_docstring(obj: Any) -> bool:
    return bool(obj.is_module or obj.is_class or obj.is_function or "property" in obj.labels)


def missing_docstrings(identifier: str, members: bool = True) -> list[str]:
    """Dotted paths, under ``identifier``, of the objects that have no docstring."""
    top, _, rest = identifier.partition(".")
    try:
        obj = _package(top)[rest] if rest else _package(top)
        obj = _target(obj)
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return []  # mkdocstrings reports an identifier it cannot find
    missing = [] if obj.docstring or not _needs_docstring(obj) else [identifier]
    for name, member in _members(obj) if members else []:
        try:
            member = _target(member)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        path = f"{identifier}.{name}"
        if not member.docstring and _needs_docstring(member):
            missing.append(path)
        if obj.is_module and member.is_class:
            missing += [
                f"{path}.{n}" for n, m in _members(member) if not _target(m).docstring
            ]  # _members of a class holds functions, classes and properties only
    return missing


def on_pre_build(**_: Any) -> None:
    _packages.clear()  # `mkdocs serve` rebuilds after an edit: read the source again


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri.startswith("reference/"):
        for identifier, options in BLOCK.findall(markdown):
            for path in missing_docstrings(identifier, not NO_MEMBERS.search(options)):
                log.warning("%s: %s has no docstring", page.file.src_uri, path)
    return markdown


def on_page_content(html: str, page: Any, **_: Any) -> str:
    if page.file.src_uri.startswith("reference/"):
        html = ROLE.sub(r"\1", html)
    return html
