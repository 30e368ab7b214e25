"""camtool.metrics against torchcam 0.5.0 and pytorch-grad-cam 1.5.7 (read in their installed
source), and on the real default model.

Where a peer follows the paper's protocol the values agree; where it departs, the test shows the
difference and that camtool computes the published formula:

- torchcam's ClassificationMetric (Average Drop / Increase) multiplies the map into whatever the
  model takes: with a pixel-space model that is the paper's ``E * I`` and the values agree; with a
  normalised input (its documented use) it masks the normalised tensor, which is another image.
- torchcam's DeletionInsertionMetric agrees with camtool's deletion (black baseline in pixel
  space) and insertion (given camtool's blurred substrate as its baseline); by default it starts
  insertion from its deletion baseline, not from a blurred copy.
- pytorch-grad-cam's DropInConfidence is ``max(0, Y - O)`` of the target's score (the logit by
  default), not the published ``100 * max(0, Y - O) / Y`` of the probability.
- pytorch-grad-cam's ROAD percentile ``p`` removes ``100 - p`` percent (its MoRF(80) removes the
  top 20%), and it imputes the model's normalised input.
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from camtool import metrics
from camtool.errors import NotDecompositionError
from camtool.metrics.road import removal_masks

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TinyNet(nn.Module):
    """conv -> conv -> GAP -> fc, no stride: the CAM is at the input's resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class PixelNet(nn.Module):
    """TinyNet that takes pixels in [0, 1] and normalises them itself."""

    def __init__(self, net: TinyNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - MEAN) / STD)


@pytest.fixture(scope="module")
def case() -> tuple[PixelNet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    net = PixelNet(TinyNet()).eval()
    images = torch.rand(3, 3, 16, 16)
    classes = net(images).argmax(1)
    return net, images, classes


def torchcam_maps(extractor, net: nn.Module, images: torch.Tensor, classes: torch.Tensor):  # type: ignore[no-untyped-def]
    scores = net(images)
    return extractor.fuse_cams(extractor(classes.tolist(), scores)).detach()


def test_average_drop_equals_torchcam_on_pixels_and_torchcam_on_normalised_input_is_not_the_paper(
    case: tuple[PixelNet, torch.Tensor, torch.Tensor],
) -> None:
    from torchcam.methods import CAM
    from torchcam.metrics import ClassificationMetric

    net, images, classes = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = CAM(net, "net.features", "net.fc", input_shape=(3, 16, 16))
        maps = torchcam_maps(extractor, net, images, classes)
        peer = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        peer.update(images, classes.tolist())
        extractor.remove_hooks()
    ours = metrics.average_drop(net, images, maps, classes)
    summary = peer.summary()
    assert ours.average_drop == pytest.approx(100 * summary["avg_drop"], abs=1e-4)
    assert ours.increase_in_confidence == pytest.approx(100 * summary["conf_increase"])
    # by hand: O is the class's probability on image * map (map in [0, 1]), in pixel space
    with torch.no_grad():
        y = net(images).softmax(-1).gather(1, classes[:, None])[:, 0]
        o = net(images * maps[:, None]).softmax(-1).gather(1, classes[:, None])[:, 0]
    assert torch.allclose(ours.drop, 100 * (y - o).clamp(min=0) / y, atol=1e-4)

    # torchcam's documented use: the normalised tensor goes in, and the map multiplies it
    inner = net.net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = CAM(inner, "features", "fc", input_shape=(3, 16, 16))
        normalised = (images - MEAN) / STD
        peer = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        peer.update(normalised, classes.tolist())
        extractor.remove_hooks()
    assert abs(100 * peer.summary()["avg_drop"] - ours.average_drop) > 0.5


def test_deletion_and_insertion_equal_torchcam_with_the_papers_substrates(
    case: tuple[PixelNet, torch.Tensor, torch.Tensor],
) -> None:
    from torchcam.methods import CAM
    from torchcam.metrics import DeletionInsertionMetric

    net, images, classes = case
    softmax = partial(torch.softmax, dim=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = CAM(net, "net.features", "net.fc", input_shape=(3, 16, 16))
        maps = torchcam_maps(extractor, net, images, classes)
        black = DeletionInsertionMetric(extractor, softmax, steps=16)
        black.update(images, classes.tolist())
        blurred = DeletionInsertionMetric(extractor, softmax, steps=16, baseline=metrics.blur)
        blurred.update(images, classes.tolist())
        extractor.remove_hooks()
    deleted = metrics.deletion(net, images, maps, classes, pixels_per_step=16)
    inserted = metrics.insertion(net, images, maps, classes, pixels_per_step=16)
    assert float(deleted.auc.mean()) == pytest.approx(black.summary()["deletion_auc"], abs=1e-5)
    assert float(inserted.auc.mean()) == pytest.approx(blurred.summary()["insertion_auc"], abs=1e-5)
    # torchcam's default insertion starts from its (black) deletion baseline, not a blurred copy
    assert abs(black.summary()["insertion_auc"] - float(inserted.auc.mean())) > 1e-3


def test_grad_cams_drop_in_confidence_is_not_the_published_average_drop(
    case: tuple[PixelNet, torch.Tensor, torch.Tensor],
) -> None:
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    net, images, classes = case
    maps = metrics.checks.normalize_maps(torch.rand(3, 16, 16))
    ours = metrics.average_drop(net, images, maps, classes)
    for target, values in (
        (ClassifierOutputTarget, lambda x: net(x)),
        (ClassifierOutputSoftmaxTarget, lambda x: net(x).softmax(-1)),
    ):
        targets = [target(int(c)) for c in classes]
        theirs = DropInConfidence()(images, maps.numpy(), targets, net)
        with torch.no_grad():
            y = values(images).gather(1, classes[:, None])[:, 0]
            o = values(images * maps[:, None]).gather(1, classes[:, None])[:, 0]
        assert np.allclose(theirs, (y - o).clamp(min=0).numpy(), atol=1e-5)  # no / Y, no %
    assert not np.allclose(theirs, ours.drop.numpy(), atol=1e-3)


def test_grad_cams_road_percentile_removes_the_complement() -> None:
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveMostRelevantFirst

    kept: list[torch.Tensor] = []
    remove = RemoveMostRelevantFirst(80, lambda image, mask: kept.append(mask) or image)
    saliency = torch.arange(100.0).view(10, 10) / 100
    remove(torch.zeros(3, 10, 10), saliency)
    removed_by_grad_cam = int((kept[0] == 0).sum())
    ranks = metrics.checks.descending_ranks(saliency[None])
    ours = removal_masks(ranks, 0.8, True)
    assert removed_by_grad_cam == 20 and int(ours.sum()) == 80


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    from camtool.io.images import load_image
    from tests.conftest import CAT

    image = load_image(CAT)[None].float() / 255
    return torch.nn.functional.interpolate(
        image, size=(224, 224), mode="bilinear", antialias=True
    ).clamp(0, 1)


def test_real_model_cam_faithfulness_and_completeness(lite0, cat: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import CAT_CLASSES

    forward = metrics.pixel_forward(lite0, batch_size=8)
    logits = forward(cat)
    predicted = logits.argmax(1)
    assert int(predicted) in CAT_CLASSES
    assert torch.allclose(
        metrics.pixel_forward(lite0, batch_size=1)(torch.cat([cat, cat]))[1], logits[0], atol=1e-4
    )
    facts = metrics.method_maps(lite0, "cam")(cat, predicted)
    assert facts.maps.shape == (1, 224, 224) and facts.cells.shape == (1, 7, 7) and facts.exact
    assert torch.allclose(facts.logits, logits.gather(1, predicted[:, None])[:, 0], atol=1e-3)
    assert facts.network_logits is not None and torch.allclose(
        facts.network_logits, logits, atol=1e-3
    )
    assert float(metrics.completeness(facts).residual.max()) < 1e-4
    step = 224 * 32  # 7 steps keep the test fast
    deleted = metrics.deletion(forward, cat, facts.maps, predicted, pixels_per_step=step)
    inserted = metrics.insertion(
        forward,
        cat,
        facts.maps,
        predicted,
        pixels_per_step=step,
        original_logits=facts.network_logits,
    )
    print("real-model AUCs", float(deleted.auc[0]), float(inserted.auc[0]))
    assert deleted.scores.shape == (1, 8)
    assert float(deleted.auc[0]) < 0.35 < 0.55 < float(inserted.auc[0])
    assert float(deleted.scores[0, 0]) == pytest.approx(float(logits.softmax(1).max()), abs=1e-5)
    grad = metrics.method_maps(lite0, "gradcam")(cat, predicted)
    assert grad.bias is None and grad.maps.shape == (1, 224, 224)
    with pytest.raises(NotDecompositionError):
        metrics.completeness(grad)
