"""camtool's methods against pytorch-grad-cam 1.5.7 and torchcam 0.5.0 on the same network,
input and layer (torchvision resnet18, random weights).

Where a peer computes the paper's formula, the maps agree to 1e-4 after the peer's own
normalisation; where a peer departs from the paper (read in its installed source), the test
shows the difference and that camtool follows the paper:

- torchcam's GradCAMpp loses the paper's alpha: ``alpha[idx][mask].div_(...)`` divides a
  boolean-indexed copy, so its weights are ``sum g^2 ReLU(g)``;
- pytorch-grad-cam applies a ReLU to every map (HiResCAM, Eigen-CAM too), and leaves Eigen-CAM's
  sign to the SVD;
- Score-CAM: pytorch-grad-cam weights by a softmax *over channels* of the logits, torchcam by a
  softmax over channels of the logit increase, after normalising before upsampling; the paper
  weights each channel by the class's softmax probability on its masked input.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import camtool
from camtool.image import Preprocessing
from camtool.methods import bind

cv2 = pytest.importorskip("cv2")
pgc = pytest.importorskip(
    "pytorch_grad_cam",
    reason="pytorch-grad-cam is not installed (scripts/setup.sh test installs it)",
)
torchcam_methods = pytest.importorskip(
    "torchcam.methods", reason="torchcam is not installed (scripts/setup.sh test installs it)"
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

SIZE = 64
CLASS = 3


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, camtool.LoadedModel, torch.Tensor]:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():  # gradients of a trained network's size: the peers' epsilons (1e-6
        net.fc.weight *= 1000  # in pytorch-grad-cam's Grad-CAM++ denominator) stay negligible
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=SIZE))
    return net, model, torch.randn(1, 3, SIZE, SIZE)


def minmax(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    return x / (1e-7 + x.max())


def as_pytorch_grad_cam(maps: torch.Tensor, relu: bool = True) -> np.ndarray:
    """pytorch-grad-cam's pipeline on a camtool map: ReLU, min-max, cv2 resize, min-max."""
    cam = maps[0, 0].numpy()
    cam = np.maximum(cam, 0) if relu else cam
    return minmax(cv2.resize(np.float32(minmax(cam)), (SIZE, SIZE)))


def peer(cls: type, net: nn.Module, layer: nn.Module, batch: torch.Tensor) -> np.ndarray:
    with cls(model=net, target_layers=[layer]) as cam:
        return cam(input_tensor=batch, targets=[ClassifierOutputTarget(CLASS)])[0]


def torchcam_map(
    cls: type, net: nn.Module, batch: torch.Tensor, layer: str = "layer4"
) -> torch.Tensor:
    with cls(net, target_layer=layer, input_shape=(3, SIZE, SIZE)) as extractor:
        scores = net(batch)
        return extractor(class_idx=CLASS, scores=scores)[0][0]


def ours(
    name: str, model: camtool.LoadedModel, batch: torch.Tensor, layer: str = "layer4"
) -> torch.Tensor:
    return bind(name, model, layer=layer)(batch, classes=[CLASS]).maps


@pytest.mark.parametrize(
    ("name", "cls"),
    [("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus"), ("xgradcam", "XGradCAM"),
     ("layercam", "LayerCAM")],
)  # fmt: skip
def test_pytorch_grad_cam_agrees(setup: tuple, name: str, cls: str) -> None:
    net, model, batch = setup
    theirs = peer(getattr(pgc, cls), net, net.layer4, batch)
    np.testing.assert_allclose(as_pytorch_grad_cam(ours(name, model, batch)), theirs, atol=1e-4)


def test_pytorch_grad_cam_hirescam_adds_a_relu(setup: tuple) -> None:
    net, model, batch = setup
    maps = ours("hirescam", model, batch)  # signed, as the paper defines it (by-hand test)
    theirs = peer(pgc.HiResCAM, net, net.layer4, batch)
    np.testing.assert_allclose(as_pytorch_grad_cam(maps), theirs, atol=1e-4)  # ReLU(ours)


def test_pytorch_grad_cam_eigencam_up_to_sign_and_relu(setup: tuple) -> None:
    net, model, batch = setup
    maps = ours("eigencam", model, batch, layer="layer3")
    theirs = peer(pgc.EigenCAM, net, net.layer3, batch)
    candidates = [as_pytorch_grad_cam(maps), as_pytorch_grad_cam(-maps)]
    assert min(float(np.abs(c - theirs).max()) for c in candidates) < 1e-4
    # camtool's sign: the map correlates positively with the channel-mean activation.
    with camtool.hooks.capture_output(net.layer3) as seen, torch.no_grad():
        net(batch)
    mean = seen.tensor.mean(1)[0].flatten()
    assert float(torch.dot(maps[0, 0].flatten(), mean - mean.mean())) > 0


@pytest.mark.parametrize(
    ("name", "cls"), [("gradcam", "GradCAM"), ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")]
)
def test_torchcam_agrees(setup: tuple, name: str, cls: str) -> None:
    net, model, batch = setup
    theirs = torchcam_map(getattr(torchcam_methods, cls), net, batch)
    mine = torch.from_numpy(minmax(ours(name, model, batch)[0, 0].numpy()))
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)


def layer4_and_gradient(net: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A and dlogit/dA at layer4, computed here with a plain hook and autograd."""
    with camtool.hooks.capture_output(net.layer4) as seen, torch.enable_grad():
        x = batch.clone().requires_grad_(True)
        logit = net(x)[0, CLASS]
        (grad,) = torch.autograd.grad(logit, seen.tensor)
    return seen.tensor.detach(), grad


def test_torchcam_gradcampp_omits_the_alpha(setup: tuple) -> None:
    net, model, batch = setup
    theirs = torchcam_map(torchcam_methods.GradCAMpp, net, batch)
    a, g = layer4_and_gradient(net, batch)
    without_alpha = ((g**2) * g.relu()).sum((-2, -1))  # what its code computes
    expected = torch.einsum("nc,nchw->nhw", without_alpha, a).relu()[0]
    torch.testing.assert_close(
        theirs, torch.from_numpy(minmax(expected.numpy())), atol=1e-4, rtol=0
    )
    mine = torch.from_numpy(minmax(ours("gradcam++", model, batch)[0, 0].numpy()))
    assert float((mine - theirs).abs().max()) > 1e-2  # camtool keeps the alpha (by-hand test)


def paper_scorecam(net: nn.Module, batch: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Score-CAM's Algorithm 1, one channel at a time."""
    with camtool.hooks.capture_output(layer) as seen, torch.no_grad():
        net(batch)
    a = seen.tensor[0]
    total = torch.zeros(a.shape[1:])
    size = batch.shape[-2:]
    with torch.no_grad():
        for channel in a:
            up = torch.nn.functional.interpolate(channel[None, None], size, mode="bilinear")
            span = up.max() - up.min()
            mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
            weight = net(batch * mask).softmax(-1)[0, CLASS]
            total += weight * channel
    return total.relu()


def test_scorecam_follows_the_paper_not_the_peers() -> None:
    # layer2 of a 32 px input (128 channels, 4x4): one forward pass per channel stays quick.
    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=32))
    batch = torch.randn(1, 3, 32, 32)
    mine = bind("scorecam", model, layer="layer2")(batch, classes=[CLASS]).maps[0, 0]
    torch.testing.assert_close(mine, paper_scorecam(net, batch, net.layer2), rtol=1e-4, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pgc.ScoreCAM(model=net, target_layers=[net.layer2]) as cam:
            grad_cam = cam(input_tensor=batch, targets=[ClassifierOutputTarget(CLASS)])[0]
        with torchcam_methods.ScoreCAM(net, "layer2", input_shape=(3, 32, 32)) as extractor:
            net(batch)
            torch_cam = extractor(class_idx=CLASS)[0][0]
    resized = minmax(cv2.resize(np.float32(minmax(mine.numpy())), (32, 32)))
    assert np.abs(resized - grad_cam).max() > 1e-3  # softmax over channels, not classes
    assert float((torch.from_numpy(minmax(mine.numpy())) - torch_cam).abs().max()) > 1e-3
