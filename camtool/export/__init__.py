"""Batch export: many images -> overlay files and a manifest; streaming, parallel, resumable.

One module per job: :mod:`~camtool.export.inputs` (files, folders, globs, lists -> image files
and output stems), :mod:`~camtool.export.stages` (decode, preprocess, explain, render, encode,
write), :mod:`~camtool.export.manifest` (the manifest's schema, writing, reading, the output
folder's lock and the clean-up after a killed run), :mod:`~camtool.export.runner` (the local
runner: :func:`export` and :func:`explain_iter`) and :mod:`~camtool.export.ray_engine` (the same
stages in a pool of Ray actors: ``export(..., engine="ray")``).

``camtool.export`` is both this namespace and the function: ``camtool.export(inputs, out)``
calls :func:`camtool.export.runner.export`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from camtool.export.manifest import MANIFEST, SUMMARY, read_manifest
from camtool.export.runner import ExportInterrupted, ExportReport, explain_iter, export
from camtool.export.stages import ExportOptions
from camtool.inputs import ExportFailure, InputItem, collect_inputs

__all__ = [
    "MANIFEST",
    "SUMMARY",
    "ExportFailure",
    "ExportInterrupted",
    "ExportOptions",
    "ExportReport",
    "InputItem",
    "collect_inputs",
    "explain_iter",
    "export",
    "read_manifest",
]


class _CallableNamespace(types.ModuleType):
    """This package, callable as :func:`export` (``camtool.export(...)`` must work whether
    Python has bound the name to the function or, after an import of a submodule, to the
    package)."""

    def __call__(self, *args: Any, **kwargs: Any) -> ExportReport:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableNamespace
