"""Binding and explaining under threads and with bad arguments: threads sharing one network take
turns (a refusal caused by a race is never remembered), a misspelled layer is a usage error under
``"auto"`` too, bad counts and non-models are typed errors, and an Explainer's model keeps its
network alive."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import camtool
from camtool.errors import InvalidArgumentError
from camtool.methods import bind
from tests.conftest import ROOT, camtool_cli

CAT = ROOT / "examples" / "chelsea.png"


def small(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def in_threads(work: Callable[[int], torch.Tensor], threads: int = 4, calls: int = 3) -> list:
    """Run ``work(i)`` ``calls`` times in each of ``threads`` threads started together; return
    every result (a tensor, or the exception it raised)."""
    start = threading.Barrier(threads)
    results: list = []

    def run(i: int) -> None:
        start.wait()
        for _ in range(calls):
            try:
                results.append(work(i))
            except Exception as exc:  # collected, asserted below
                results.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return results


@pytest.mark.parametrize("method", ["gradcam", "auto"])
def test_threads_binding_a_new_module_at_once_neither_fail_nor_poison_it(
    image: np.ndarray, method: str
) -> None:
    net = small()

    def work(_: int) -> torch.Tensor:
        return camtool.explain(image, net, method=method, classes=[1]).maps

    results = in_threads(work)
    alone = camtool.explain(image, net, method=method, classes=[1])
    fresh = camtool.explain(image, camtool.load_model(small()), method=method, classes=[1])
    assert alone.method == ("gradcam" if method == "gradcam" else "cam")
    assert torch.allclose(alone.maps, fresh.maps, atol=1e-6)
    assert [type(r).__name__ for r in results] == ["Tensor"] * 12
    assert all(torch.allclose(r, alone.maps, atol=1e-6) for r in results)


def test_threads_sharing_explainers_of_one_network_get_their_own_maps(image: np.ndarray) -> None:
    net = small()
    held = [camtool.Explainer(net, name, classes=[2]) for name in ("gradcam", "layercam", "cam")]
    alone = [ex(image).maps for ex in held]
    results = in_threads(lambda i: (i % 3, held[i % 3](image).maps), threads=6)
    assert len(results) == 18 and all(isinstance(r, tuple) for r in results), results
    assert all(torch.allclose(maps, alone[i], atol=1e-6) for i, maps in results)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == 0


@pytest.mark.parametrize("method", ["auto", "cam", "gradcam"])
@pytest.mark.parametrize("what", ["layer", "classifier"])
def test_a_misspelled_module_name_is_a_usage_error_under_every_method(
    image: np.ndarray, method: str, what: str
) -> None:
    net = small()
    name, close = ("22", "2") if what == "layer" else ("66", "6")
    expected = rf"^{name}: no {what} module of that name in Sequential; did you mean {close}\?$"
    with pytest.raises(InvalidArgumentError, match=expected):
        camtool.Explainer(net, method, **{what: name})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=expected):
        camtool.explain(image, net, method=method, **{what: name})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=expected):
        bind(method, camtool.load_model(net), **{what: name})  # type: ignore[arg-type]


def test_cli_refuses_a_misspelled_layer_under_auto(tmp_path: Path) -> None:
    error = (
        "Error: _block.3: no layer module of that name in EfficientNetLite; "
        "did you mean _blocks.3, _blocks.13, _blocks.9?\n"
    )
    explained = camtool_cli("explain", str(CAT), "--layer", "_block.3")
    assert (explained.returncode, explained.stdout, explained.stderr) == (2, "", error)
    out = tmp_path / "out"
    exported = camtool_cli("export", str(CAT), "--layer", "_block.3", "-o", str(out))
    assert (exported.returncode, exported.stdout, exported.stderr) == (2, "", error)
    assert not out.exists()  # the folder the refused run made is gone again
    kept = tmp_path / "kept"
    kept.mkdir()
    exported = camtool_cli("export", str(CAT), "--layer", "_block.3", "-o", str(kept))
    assert exported.returncode == 2 and kept.is_dir() and list(kept.iterdir()) == []


@pytest.mark.parametrize("option", ["maps", "top_k"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_counts_must_be_positive_integers(image: np.ndarray, option: str, value: object) -> None:
    net = small()
    held = camtool.Explainer(net, "gradcam")
    message = rf"^{option}: expected a positive integer, got {value!r}$"
    with pytest.raises(InvalidArgumentError, match=message):
        held(image, **{option: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=message):
        camtool.explain(image, net, method="gradcam", **{option: value})  # type: ignore[arg-type]
    assert len(held(image, maps=2, top_k=3).predictions) == 3


def test_a_method_or_model_that_is_none_of_them_is_a_typed_error() -> None:
    net = small()
    with pytest.raises(InvalidArgumentError, match=r"^method: got None; give a method name \("):
        camtool.Explainer(net, None)  # type: ignore[arg-type]
    model_error = r"^model: got 5 of type int; give a model name, a card or weights file, "
    with pytest.raises(InvalidArgumentError, match=model_error):
        camtool.Explainer(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=model_error.replace("5", "3")):
        bind("gradcam", 3)  # type: ignore[arg-type]


def test_an_explainers_model_keeps_its_network_alive(image: np.ndarray) -> None:
    net = small()
    alive = weakref.ref(net)
    loaded = camtool.Explainer(net, "gradcam").model  # the Explainer is dropped at once
    del net
    gc.collect()
    assert alive() is loaded.module
    again = camtool.explain(image, loaded, method="gradcam", classes=[1])
    fresh = camtool.explain(image, camtool.load_model(small()), method="gradcam", classes=[1])
    assert torch.allclose(again.maps, fresh.maps, atol=1e-6)
    del loaded, again
    gc.collect()
    assert alive() is None


def test_the_progress_example_runs_as_written(image: np.ndarray) -> None:
    from camtool import progress

    assert progress.__doc__ is not None
    example = progress.__doc__.split("::\n\n", 1)[1].split("\n\nThe first call")[0]
    code = "\n".join(line[4:] for line in example.splitlines())
    assert code.startswith("from camtool.progress import reporting\n")
    shown: list[str] = []
    call = 'camtool.explain("cat.jpg", method="scorecam")'
    assert call in code
    scope = {"print": shown.append, "camtool": camtool, "image": image, "net": small()}
    exec(code.replace(call, 'camtool.explain(image, net, method="scorecam")'), scope)
    total = shown[-1].split(": ")[1].split()[0].split("/")
    assert len(shown) > 1 and total[0] == total[1], shown
    with pytest.raises(InvalidArgumentError, match=r"^callback: got 42; give a function"):
        progress.reporting(42).__enter__()  # type: ignore[arg-type]
