"""Names that say what they hold: ``Explanation.maps`` (every method's maps, not only CAMs) and
``Explanation.made_from`` (a CAM head or a Grad-CAM layer). The old names, ``cams`` and ``head``,
still work for one release, warning once; the JSON keeps the old ``head`` key beside
``made_from``."""

from __future__ import annotations

import warnings

import pytest
import torch

import camtool
from camtool import explanation
from tests.conftest import CAT


def test_maps_and_made_from_and_their_deprecated_names(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, lite0, method="gradcam")
    assert ex.maps.shape == (1, 7, 11) and ex.maps.dtype == torch.float32  # 451x300: 224x337
    assert ex.made_from.startswith("Grad-CAM of the class logit at ")
    explanation._WARNED.clear()
    with pytest.warns(
        DeprecationWarning, match=r"Explanation\.cams is deprecated .* use Explanation\.maps"
    ):
        assert ex.cams is ex.maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: the second use is silent
        assert ex.cams is ex.maps
    with pytest.warns(DeprecationWarning, match=r"Explanation\.head is deprecated"):
        assert ex.head == ex.made_from
    document = ex.to_dict()
    assert document["made_from"] == document["head"] == ex.made_from
