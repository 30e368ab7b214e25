"""The maps the report draws, kept from the measuring pass.

The report shows the worst and best :data:`~camtool.metrics.report.SHOWN` images of each ranked
measure per method (:func:`~camtool.metrics.report.rankings`). Which ones those are is known only
at the end, but an image that ends among them was among the lowest or highest so far when it was
measured and stayed there; so :class:`KeptMaps` keeps, per measure and method, the maps of the
images at both ends so far and lets the others go: at most ``2 * SHOWN`` maps per ranked measure
and method, whatever the number of images, and no map is computed twice (a Score-CAM map costs
a forward pass per channel).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from camtool.metrics.report import RANKED, SHOWN

#: A ranked entry as :func:`~camtool.metrics.report.rankings` orders it: (value, input, path).
Entry = tuple[float, str, str]


class KeptMaps:
    """The maps (``Tensor[S,S]`` float32 at the evaluation's size) of the images that may end at
    either end of a ranking, keyed by ``(method, path)`` (the record's resolved path)."""

    def __init__(self) -> None:
        self.ends: dict[tuple[str, str], tuple[list[Entry], list[Entry]]] = {}
        self.maps: dict[tuple[str, str], Tensor] = {}

    def offer(self, record: dict[str, Any], maps: dict[str, Tensor]) -> None:
        """Take a measured image's ``record`` and its ``maps`` (by method); keep the maps that
        may be drawn, drop those no ranking can show any more."""
        for method, values in record["results"].items():
            entered = False
            for measure in RANKED:
                value = values.get(measure)
                if value is None or method not in maps:
                    continue
                entry = (value, record["input"], record["path"])
                low, high = self.ends.setdefault((measure, method), ([], []))
                low[:] = sorted([*low, entry])[:SHOWN]
                high[:] = sorted([*high, entry])[-SHOWN:]
                entered = entered or entry in low or entry in high
            if entered:
                self.maps[(method, record["path"])] = maps[method]
        wanted = {
            (method, entry[2])
            for (_, method), ends in self.ends.items()
            for end in ends
            for entry in end
        }
        for key in [k for k in self.maps if k not in wanted]:
            del self.maps[key]

    def get(self, method: str, path: str) -> Tensor | None:
        """The kept map of an image (None: not kept, e.g. measured by an earlier run)."""
        return self.maps.get((method, path))
