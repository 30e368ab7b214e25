"""An export's output folder: its manifest (``manifest.jsonl``, a :mod:`camtool.journal` of
images; :func:`read_manifest` for the gallery), its summary, the clean-up after a killed run and
the output stems a resumed run keeps.

An output file is "listed" when the last ``image`` line of its input names it. A file named by a
``writing`` line but not listed was left by a run that was killed between the rename and the
``image`` line; a ``.camtool-*.part`` file by one killed before the rename.
:func:`remove_unfinished` removes both kinds, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from camtool.inputs import InputItem, safe_stem
from camtool.io.files import TEMP_PREFIX, TEMP_SUFFIX
from camtool.journal import LOCK, JournalContents, load_journal
from camtool.naming import NameRegistry

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"

_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


def read_manifest(path: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Return ``({input: last record}, run headers)`` from a manifest (see :func:`camtool.journal.load_journal`)."""
    contents = load_journal(path)
    return contents.records, contents.runs


def remove_unfinished(out: Path, contents: JournalContents | None) -> int:
    """Remove what killed runs left in ``out``: ``.camtool-*.part`` temporary files anywhere
    under it (except inside a subfolder that is another export's output folder, which holds its
    lock file), and files that a ``writing`` line announced but no image line lists. Return how
    many files were removed. Nothing else is touched (and nothing outside ``out``)."""
    removed = 0
    root = os.path.realpath(out)
    if contents is not None:
        for name in sorted(contents.announced - contents.listed):
            parent = os.path.realpath(os.path.dirname(name))
            if parent != root and not parent.startswith(root + os.sep):
                continue
            with contextlib.suppress(FileNotFoundError):
                if not os.path.isdir(name):
                    os.unlink(name)
                    removed += 1
    for folder, subfolders, names in os.walk(out):
        if LOCK in names and os.path.realpath(folder) != root:
            subfolders[:] = []  # another export's output folder: its own run cleans it
            continue
        for name in names:
            if _TEMP_NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


# --------------------------------------------------------------------------------------------
# Resuming


def restore_stems(items: list[InputItem], previous: dict[str, dict[str, Any]]) -> list[InputItem]:
    """On resume, give each input the output stem it had (names depend on the whole input set,
    which may have grown), and keep new inputs off the stems already taken."""
    if not previous:
        return items
    stems = {
        path: safe_stem(str(r["output_stem"]))
        for path, r in previous.items()
        if r.get("output_stem")
    }
    taken = NameRegistry(str(stem) for stem in stems.values())
    restored = []
    for item in items:
        stem = stems.get(item.resolved)
        restored.append(InputItem(item.path, stem or PurePosixPath(taken.claim(str(item.stem)))))
    return restored
