"""Export's inputs: files, folders (recursive), globs and ``@list.txt`` files -> image files and
the output stems that mirror their relative paths (unique, safe, never outside the output folder).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from camtool.errors import (
    ImageReadError,
)
from camtool.io.files import read_text_file
from camtool.io.images import image_suffixes
from camtool.naming import NameRegistry, component


@dataclass(frozen=True)
class InputItem:
    """One image to export: the file, and the stem of its outputs under the output folder."""

    path: Path
    stem: PurePosixPath  # relative, never absolute, never with '..'

    @property
    def resolved(self) -> str:
        """The input's resolved path: what identifies it, however it was spelled."""
        return os.path.realpath(self.path)


@dataclass(frozen=True)
class ExportFailure:
    """An input that could not be explained, and why."""

    input: str
    error: str


def lies_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, however either is spelled (relative
    parts and symlinks resolved; neither needs to exist). The one rule that keeps an output
    folder and its inputs apart: an export never reads an input inside its output folder, and
    ``camtool fit`` never writes a model folder that is, holds or lies inside its data. To test
    many paths against one folder, resolve it once: :class:`RealFolder`."""
    return RealFolder(folder).holds(path)


class RealFolder:
    """A folder resolved once (relative parts and symlinks; it need not exist), to ask of many
    paths whether they are it or lie inside it: ``RealFolder(f).holds(p)`` is
    ``lies_within(p, f)``, without resolving ``f`` again for every ``p``."""

    __slots__ = ("_prefix", "real")

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.real: str = os.path.realpath(folder)
        self._prefix = self.real.rstrip(os.sep) + os.sep

    def holds(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` (resolved here) is this folder or lies inside it."""
        return self.holds_real(os.path.realpath(path))

    def holds_real(self, real: str) -> bool:
        """:meth:`holds` for a path already resolved (``os.path.realpath``): no file system
        call."""
        return real == self.real or real.startswith(self._prefix)

    def __repr__(self) -> str:
        return f"RealFolder({self.real!r})"


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _walk_images(root: Path) -> Iterator[Path | ExportFailure]:
    """Image files under ``root``, sorted, following symlinked folders but never around a loop."""
    top = os.path.realpath(root)
    stack = [(root, top)]  # each folder with its real path, resolved once
    seen = {top}
    while stack:
        folder, here = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            yield ExportFailure(str(folder), f"cannot list folder: {exc.strerror or exc}")
            continue
        subfolders = []
        for entry in reversed(entries):
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real == here or here.startswith(real + os.sep):
                    yield ExportFailure(
                        entry.path, f"directory loop through symlinks (back to {real})"
                    )
                elif real not in seen:  # a second link to a folder already walked adds nothing
                    seen.add(real)
                    subfolders.append((Path(entry.path), real))
            elif Path(entry.name).suffix.lower() in image_suffixes():
                yield Path(entry.path)
        stack.extend(reversed(subfolders))


def _relative_stem(path: Path, root: Path) -> PurePosixPath:
    rel = os.path.relpath(path, root)
    parts = [p for p in PurePosixPath(rel.replace(os.sep, "/")).parts if p not in ("..", ".", "/")]
    rel_path = PurePosixPath(*parts) if parts else PurePosixPath(path.name)
    return safe_stem(rel_path.with_suffix(""))


def safe_stem(stem: PurePosixPath | str) -> PurePosixPath:
    """A relative output stem whose every part is a safe name (:func:`camtool.naming.component`):
    never absolute, never ``..``, never empty."""
    parts = [component(p) for p in PurePosixPath(stem).parts if p not in ("/", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath("image")


def collect_inputs(
    specs: Sequence[str | os.PathLike[str]],
    exclude: str | os.PathLike[str] | None = None,
    excluded: list[Path] | None = None,
) -> tuple[list[InputItem], list[ExportFailure]]:
    """Expand inputs into image files and the output stems that mirror their relative paths.

    Args:
        specs: files; folders (searched recursively for image suffixes); globs (``**`` allowed);
            ``@list.txt`` files with one path per line (relative to the list's folder).

    Returns:
        ``(items, failures)``: failures are specs that name nothing, unreadable folders and
        symlink loops. Output stems are relative to the folder, the glob's fixed prefix, or the
        common folder of a list's entries, so no output can escape the output folder. Files
        under ``exclude`` (the output folder) are left out and appended to ``excluded``; second
        mentions of a file (by resolved path) are left out.
    """
    items: list[InputItem] = []
    failures: list[ExportFailure] = []
    names = NameRegistry()
    seen: set[str] = set()
    skip = RealFolder(exclude) if exclude is not None else None
    left_out: list[Path] = [] if excluded is None else excluded

    def add(path: Path, root: Path) -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if skip is not None and skip.holds_real(real):
            left_out.append(path)
            return
        # a.jpg and a.png, or the same name from two inputs: one rule, shared with `explain`
        stem = names.claim(str(_relative_stem(path, root)))
        items.append(InputItem(path, PurePosixPath(stem)))

    for spec in specs:
        text = os.fspath(spec)
        if text.startswith("@"):
            listed = _read_list(Path(text[1:]), failures)
            if listed:
                root = Path(os.path.commonpath([str(p.parent) for p in listed]))
                for path in listed:
                    add(path, root)
        elif _has_magic(text):
            fixed = Path(re.split(r"[*?\[]", text, maxsplit=1)[0] or ".")
            root = (
                fixed if fixed.is_dir() and text.startswith(str(fixed) + os.sep) else fixed.parent
            )
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                failures.append(ExportFailure(text, "the pattern matches no file"))
            for path in matches:
                add(path, root)
        elif Path(text).is_dir():
            before = len(items), len(left_out)
            for found in _walk_images(Path(text)):
                if isinstance(found, ExportFailure):
                    failures.append(found)
                else:
                    add(found, Path(text))
            if (len(items), len(left_out)) == before:
                failures.append(ExportFailure(text, "no image files in this folder"))
        else:
            add(Path(text), Path(text).parent)  # a missing file fails later, when it is read
    return items, failures


def _read_list(path: Path, failures: list[ExportFailure]) -> list[Path]:
    try:
        lines = read_text_file(path, ImageReadError, "list file", "utf-8-sig").splitlines()
    except ImageReadError as exc:
        failures.append(ExportFailure(f"@{path}", f"cannot read list: {exc.problem}"))
        return []
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [Path(os.path.abspath(path.parent / entry)) for entry in entries]
