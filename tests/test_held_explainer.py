"""The held explainer (camtool.Explainer) and the per-module cache behind camtool.explain's loop:
bound once per module, rebound when its weights or structure change, never keeping a dropped
network alive; the layer given as a module object (pytorch-grad-cam's habit)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

import camtool
from camtool.binding import bind_method, fingerprint, with_layer_names
from camtool.methods.cam import CAM
from camtool.methods.integrated import INTEGRATED_HEAD
from tests.conftest import ROOT

CAT = ROOT / "examples" / "chelsea.png"


def resnet(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=classes).eval()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return resnet()


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    return camtool.load_image(CAT)


def bound_twice(module: nn.Module, change: object = None) -> tuple[object, object]:
    first = bind_method(module, "gradcam").explainer
    if callable(change):
        change()
    return first, bind_method(module, "gradcam").explainer


# --------------------------------------------------------------------------------------------
# The per-module cache


def test_a_plain_module_is_loaded_and_bound_once(net: nn.Module, cat: torch.Tensor) -> None:
    one = bind_method(net, "gradcam")
    ex = camtool.explain(cat, net, method="gradcam")
    two = bind_method(net, "gradcam")
    assert two.explainer is one.explainer and two.model is one.model
    assert two.anchor is net and two.model.module is net
    # explaining changes nothing the fingerprint sees (no version bump, no move)
    before = fingerprint(net)
    again = camtool.explain(cat, net, method="gradcam")
    assert fingerprint(net) == before
    assert torch.equal(ex.maps, again.maps) and ex.made_from == again.made_from
    with torch.inference_mode():
        logits = net(one.model.preprocessing.prepare(cat)[0][None])[0]
    assert ex.predictions[0].index == int(logits.argmax())


def test_load_state_dict_rebinds_and_the_maps_follow_the_new_weights(cat: torch.Tensor) -> None:
    module = resnet()
    first = camtool.explain(cat, module, method="cam")
    other = resnet()
    with torch.no_grad():
        other.fc.weight.mul_(-3.0)
    old, new = bound_twice(module, lambda: module.load_state_dict(other.state_dict()))
    assert old is not new
    after = camtool.explain(cat, module, method="cam")
    fresh = camtool.explain(cat, camtool.load_model(module), method="cam")
    assert torch.equal(after.maps, fresh.maps)
    assert not torch.allclose(after.maps, first.maps)
    assert after.predictions[0].index == fresh.predictions[0].index


def test_an_optimizer_step_rebinds() -> None:
    module = resnet()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)

    def step() -> None:
        module.train()
        module(torch.randn(2, 3, 64, 64)).sum().backward()
        optimizer.step()
        module.eval()

    old, new = bound_twice(module, step)
    assert old is not new


def test_a_replaced_layer_rebinds_and_counts_its_classes_again() -> None:
    module = resnet()
    assert len(bind_method(module, "gradcam").model.labels) == 10

    def replace_head() -> None:
        module.fc = nn.Linear(512, 3)

    old, new = bound_twice(module, replace_head)
    assert old is not new
    assert len(bind_method(module, "gradcam").model.labels) == 3


def test_dtype_and_memory_moves_rebind() -> None:
    module = resnet()
    before = fingerprint(module)
    module.double()
    assert fingerprint(module) != before
    old, new = bound_twice(module.float(), lambda: module.double().float())  # new tensors
    assert old is not new
    last, moved = bound_twice(module, lambda: module.to(memory_format=torch.channels_last))
    assert last is new and moved is not new


def test_the_cache_never_keeps_a_dropped_module_alive(cat: torch.Tensor) -> None:
    module = resnet()
    camtool.explain(cat, module, method="gradcam", layer=module.layer4)
    camtool.explain(cat, module)  # auto: cam binds
    with camtool.Explainer(module, method="gradcam") as cam:
        cam(cat)
    held = camtool.Explainer(module, method="gradcam")
    ref = weakref.ref(module)
    del module
    gc.collect()
    assert ref() is not None  # the Explainer holds it
    del held, cam
    gc.collect()
    assert ref() is None


def test_a_loaded_model_is_not_kept_alive_by_its_explainers() -> None:
    loaded = camtool.load_model(resnet(), channels_last=False)
    camtool.methods.bind("gradcam", loaded)
    ref = weakref.ref(loaded.module)
    del loaded
    gc.collect()
    assert ref() is None


# --------------------------------------------------------------------------------------------
# The held explainer


def test_the_held_explainer_gives_what_explain_gives(net: nn.Module, cat: torch.Tensor) -> None:
    with camtool.Explainer(net, method="gradcam") as cam:
        assert cam.method == "gradcam" and cam.model.module is net
        assert cam.describe() == bind_method(net, "gradcam").explainer.describe()
        ex = cam(cat)
        pair = cam([cat, CAT], classes=[3])
        assert repr(cam).startswith("Explainer(ResNet, gradcam: Grad-CAM of the class logit at ")
    plain = camtool.explain(cat, net, method="gradcam")
    assert torch.equal(ex.maps, plain.maps) and ex.to_dict() == plain.to_dict()
    assert [e.explained[0].index for e in pair] == [3, 3]
    third = camtool.explain(cat, net, method="gradcam", classes=3)
    for one in pair:  # a batch of two against one image: equal up to float rounding
        torch.testing.assert_close(one.maps, third.maps, atol=1e-6, rtol=1e-4)


def test_a_closed_explainer_says_so(net: nn.Module, cat: torch.Tensor) -> None:
    with camtool.Explainer(net, method="gradcam") as cam:
        pass
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        cam(cat)
    assert str(caught.value) == (
        "Explainer: closed (its with block has ended); make a new Explainer"
    )
    assert repr(cam) == "Explainer(closed)"
    with pytest.raises(camtool.InvalidArgumentError, match="closed"):
        cam.__enter__()


def test_explain_takes_a_held_explainer(net: nn.Module, cat: torch.Tensor) -> None:
    cam = camtool.Explainer(net, method="gradcam", classes=5)
    ex = camtool.explain(cat, cam, method="cam")  # the explainer fixes method and classes
    assert ex.method == "gradcam" and ex.explained[0].index == 5


# --------------------------------------------------------------------------------------------
# "auto" remembers why the exact methods refused a model


class Counting:
    """A registered method, counting its bind calls (the real method underneath)."""

    def __init__(self, method: camtool.methods.Method) -> None:
        self.method, self.name, self.summary, self.binds = method, method.name, method.summary, 0

    def bind(self, model: camtool.LoadedModel, **options: object) -> object:
        self.binds += 1
        return self.method.bind(model, **options)  # type: ignore[arg-type]


def test_auto_does_not_retry_the_exact_methods(cat: torch.Tensor) -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64).eval()
    counters = [Counting(CAM), Counting(INTEGRATED_HEAD)]
    try:
        for counter in counters:
            camtool.methods.register(counter)  # type: ignore[arg-type]
        first = camtool.explain(cat, vit)
        second = camtool.explain(cat, vit)
        assert [c.binds for c in counters] == [1, 1]
        loaded = bind_method(vit, "gradcam").model
        for _ in range(2):
            with pytest.raises(camtool.UnsupportedModelError) as caught:
                camtool.methods.bind("cam", loaded)
        assert [c.binds for c in counters] == [1, 1]
    finally:
        for method in (CAM, INTEGRATED_HEAD):
            camtool.methods.register(method)
    assert first.method == second.method == "gradcam"
    assert first.made_from == second.made_from
    assert "auto: no exact decomposition applies: cam: " in second.made_from
    assert str(caught.value) in second.made_from


# --------------------------------------------------------------------------------------------
# Their idioms: the layer as a module object, bind with a plain module or a name


def test_the_layer_may_be_a_module_object(net: nn.Module, cat: torch.Tensor) -> None:
    by_name = camtool.explain(cat, net, method="gradcam", layer="layer4.1")
    by_module = camtool.explain(cat, net, method="gradcam", layer=net.layer4[-1])
    in_a_list = camtool.Explainer(net, method="gradcam", layer=[net.layer4[-1]])(cat)
    assert torch.equal(by_name.maps, by_module.maps) and torch.equal(by_name.maps, in_a_list.maps)
    assert "at layer4.1, 512x7x7 at 224 px" in by_module.made_from
    explainer = camtool.methods.bind("gradcam", net, layer=net.layer3)
    assert explainer.as_dict()["layer"] == "layer3"


def test_a_layer_from_another_network_is_refused(net: nn.Module, cat: torch.Tensor) -> None:
    stranger = resnet()
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        camtool.explain(cat, net, method="gradcam", layer=stranger.layer4)
    assert str(caught.value) == (
        "layer: the Sequential module given is not inside the model (ResNet); "
        "give a module of the network being explained"
    )
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        camtool.explain(cat, net, method="gradcam", layer=[net.layer3, net.layer4])
    assert str(caught.value) == "layer: got 2 modules; camtool's methods read one layer: give one"
    with pytest.raises(camtool.InvalidArgumentError, match="layer: got the model itself"):
        camtool.methods.bind("gradcam", net, layer=net)
    with pytest.raises(camtool.InvalidArgumentError, match="classifier: got a int; "):
        camtool.methods.bind("cam", net, classifier=3)  # type: ignore[arg-type]


def test_bind_takes_a_plain_module_and_a_model_name(
    lite0: camtool.LoadedModel, cat: torch.Tensor
) -> None:
    explainer = camtool.methods.bind("gradcam", resnet())  # the explainer keeps it alive
    gc.collect()
    batch = torch.randn(1, 3, 64, 64)
    assert explainer(batch).maps.shape == (1, 1, 2, 2)
    named = camtool.methods.bind("cam", "efficientnet_lite0")
    assert named.describe() == camtool.methods.bind("cam", lite0).describe()


def test_export_records_the_layer_module_by_name(net: nn.Module, tmp_path: Path) -> None:
    assert with_layer_names(net, {"layer": net.layer4, "dtype": None}) == {
        "layer": "layer4",
        "dtype": None,
    }
    assert with_layer_names("resnet18", {"layer": "layer4"}) == {"layer": "layer4"}
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        with_layer_names("resnet18", {"layer": net.layer4})
    assert str(caught.value) == (
        "layer: a module object names a layer of a network you hold; with the model named "
        "'resnet18', name the layer (layer='layer4') or pass camtool.load_model(...)"
    )
    report = camtool.export([CAT], tmp_path / "out", net, method="gradcam", layer=net.layer4)
    assert report.exported == 1
    manifest = (tmp_path / "out" / "manifest.jsonl").read_text()
    assert '"layer": "layer4"' in manifest
