"""camtool.metrics against values computed by hand or in closed form on constructed cases.

The constructed network is a real ``nn.Module`` whose class-0 logit is ``gain * mean`` of the
pixels in one region R (all channels) and whose class-1 logit is 0, so every perturbation's effect
on the score is known exactly; its ideal map (1 on R) and anti-map (1 off R) give known deletion
curves and areas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from camtool import metrics
from camtool.errors import InvalidArgumentError, NotDecompositionError
from camtool.metrics.checks import descending_ranks
from camtool.metrics.road import removal_masks

SIZE = 8  # 8x8 images: 64 pixels
REGION = (slice(0, 4), slice(0, 4))  # R: the top-left 4x4 block, 16 pixels


class RegionNet(nn.Module):
    """logit_0 = gain * mean over R and channels (minus ``penalty`` * the mean off R); logit_1 = 0."""

    def __init__(self, gain: float = 10.0, penalty: float = 0.0) -> None:
        super().__init__()
        self.gain, self.penalty = gain, penalty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = torch.zeros(x.shape[-2:], dtype=torch.bool)
        inside[REGION] = True
        on = x[..., inside].mean(dim=(1, 2))
        off = x[..., ~inside].mean(dim=(1, 2))
        logit = self.gain * on - self.penalty * off
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def region_map(value: float = 1.0, anti: bool = False) -> torch.Tensor:
    inside = torch.zeros(SIZE, SIZE)
    inside[REGION] = 1.0
    return ((1 - inside) if anti else inside * value)[None]


def ones(n: int = 1) -> torch.Tensor:
    return torch.ones(n, 3, SIZE, SIZE)


CLASS0 = torch.tensor([0])


def trapezoid(values: list[float], width: float) -> float:
    return width * (sum(values) - values[0] / 2 - values[-1] / 2)


def test_deletion_of_the_ideal_map_and_the_anti_map_in_closed_form() -> None:
    net = RegionNet()
    # 4 pixels per step: the ideal map deletes R in 4 steps (logit 10, 7.5, 5, 2.5, 0, then 0)
    ideal = metrics.deletion(net, ones(), region_map(), CLASS0, pixels_per_step=4, score="logit")
    assert ideal.fractions.tolist() == pytest.approx([k / 16 for k in range(17)])
    expected = [10, 7.5, 5, 2.5] + [0.0] * 13
    assert ideal.scores[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert float(ideal.auc[0]) == pytest.approx(1.25, abs=1e-5)  # (10/2 + 7.5 + 5 + 2.5) / 16
    # the anti-map deletes the 48 pixels off R first (12 steps), then R
    anti = metrics.deletion(
        net, ones(), region_map(anti=True), CLASS0, pixels_per_step=4, score="logit"
    )
    assert anti.scores[0].tolist() == pytest.approx([10.0] * 13 + [7.5, 5, 2.5, 0], abs=1e-5)
    assert float(anti.auc[0]) == pytest.approx(8.75, abs=1e-5)  # (5 + 120 + 15) / 16
    # the paper's score: the softmax probability of the class, sigmoid(logit) for two classes
    prob = metrics.deletion(net, ones(), region_map(), CLASS0, pixels_per_step=4)
    sig = [1 / (1 + math.exp(-v)) for v in expected]
    assert prob.scores[0].tolist() == pytest.approx(sig, abs=1e-6)
    assert float(prob.auc[0]) == pytest.approx(trapezoid(sig, 1 / 16), abs=1e-6)
    assert prob.protocol["score"] == "probability" and prob.protocol["pixels_per_step"] == 4
    assert prob.protocol["baseline"].startswith("black")


def test_known_original_logits_skip_a_forward_pass_and_change_nothing() -> None:
    net = RegionNet()
    calls: list[int] = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        return net(x)

    known = net(ones())
    for metric in (metrics.deletion, metrics.insertion):
        plain = metric(counted, ones(), region_map(), CLASS0, pixels_per_step=4)
        seen = sum(calls)
        calls.clear()
        reused = metric(
            counted, ones(), region_map(), CLASS0, pixels_per_step=4, original_logits=known
        )
        assert torch.equal(plain.scores, reused.scores) and sum(calls) == seen - 1
        calls.clear()
    # deletion's last point (all black) is one image for all: 2 images x 16 points + 1
    two = metrics.deletion(
        counted, ones(2), region_map().expand(2, -1, -1), torch.tensor([0, 0]), pixels_per_step=4
    )
    assert sum(calls) == 2 * 16 + 1 and torch.equal(two.scores[0], two.scores[1])
    calls.clear()
    plain_drop = metrics.average_drop(counted, ones(), region_map(), CLASS0)
    assert sum(calls) == 2
    calls.clear()
    reused_drop = metrics.average_drop(counted, ones(), region_map(), CLASS0, original_logits=known)
    assert sum(calls) == 1 and torch.equal(plain_drop.drop, reused_drop.drop)


def test_deletion_default_step_is_the_papers_fraction_and_ties_go_in_raster_order() -> None:
    net = RegionNet()
    result = metrics.deletion(net, ones(), torch.zeros(1, SIZE, SIZE), CLASS0, score="logit")
    assert result.protocol["pixels_per_step"] == 1  # ceil(64 / 224)
    assert result.protocol["steps"] == 64
    # a flat map deletes in raster order: R's pixels are rows 0-3, columns 0-3
    ranks = descending_ranks(torch.zeros(1, 2, 3))
    assert ranks[0].tolist() == [0, 1, 2, 3, 4, 5]
    ranks = descending_ranks(torch.tensor([[[1.0, 2.0, 1.0], [2.0, 0.0, 1.0]]]))
    assert ranks[0].tolist() == [2, 0, 3, 1, 5, 4]
    # 224x224: 224 pixels per step, 224 steps, as the paper
    assert metrics.perturbation._step_counts(224 * 224, None)[1] == 224


def test_insertion_from_the_blurred_copy() -> None:
    net = RegionNet()
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[..., 0:4, 0:4] = 1.0
    blurred = metrics.blur(image)
    result = metrics.insertion(net, image, region_map(), CLASS0, pixels_per_step=4, score="logit")
    # by hand: after k steps the first 4k pixels of R (raster order inside R) are back
    r_pixels = [(y, x) for y in range(4) for x in range(4)]
    expected = []
    for k in range(17):
        back = set(r_pixels[: 4 * k])
        total = sum(
            float(image[0, c, y, x] if (y, x) in back else blurred[0, c, y, x])
            for c in range(3) for (y, x) in r_pixels
        )  # fmt: skip
        expected.append(10 * total / 48)
    assert result.scores[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert float(result.auc[0]) == pytest.approx(trapezoid(expected, 1 / 16), abs=1e-5)
    assert (
        result.protocol["substrate"]["size"] == 11 and result.protocol["substrate"]["sigma"] == 5.0
    )


def test_rise_kernel_is_the_reference_gaussian_filtered_impulse() -> None:
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    reference = gaussian_filter(impulse, 5)
    assert np.abs(metrics.rise_kernel().numpy() - reference).max() < 1e-7
    assert float(metrics.rise_kernel().sum()) == pytest.approx(1.0, abs=1e-6)
    flat = torch.full((1, 3, 20, 20), 0.25)
    assert torch.allclose(metrics.blur(flat), flat, atol=1e-6)  # a constant image stays


def test_average_drop_and_increase_by_hand() -> None:
    net = RegionNet()
    # map 0.5 on R, 1 at one pixel off R, 0 elsewhere: normalised, R keeps half its pixels' value
    half = torch.zeros(1, SIZE, SIZE)
    half[0, 0:4, 0:4] = 0.5
    half[0, 7, 7] = 1.0
    result = metrics.average_drop(net, ones(), half, CLASS0)
    y, o = 1 / (1 + math.exp(-10)), 1 / (1 + math.exp(-5))
    assert float(result.original[0]) == pytest.approx(y, abs=1e-6)
    assert float(result.masked[0]) == pytest.approx(o, abs=1e-6)
    assert float(result.drop[0]) == pytest.approx(100 * (y - o) / y, abs=1e-4)
    assert not bool(result.increase[0])
    # a network penalised by the pixels off R: masking them out raises the score
    penalised = RegionNet(penalty=10.0)
    up = metrics.average_drop(
        penalised, ones(2), torch.cat([region_map(), region_map()]), torch.tensor([0, 0])
    )
    assert up.increase.tolist() == [True, True]
    assert up.drop.tolist() == [0.0, 0.0]
    assert up.increase_in_confidence == 100.0 and up.average_drop == 0.0
    assert float(up.original[0]) == pytest.approx(0.5) and float(up.masked[0]) == pytest.approx(
        1 / (1 + math.exp(-10))
    )
    assert "pixel space" in up.protocol["masking"]


def test_pointing_game_by_hand() -> None:
    maps = torch.zeros(3, 20, 20)
    maps[0, 7, 5] = 1.0  # peak at x=5, y=7
    maps[1, 3, 2] = maps[1, 3, 10] = 1.0  # two peaks: (2, 3) first in raster order
    box = torch.tensor([[10.0, 10.0, 15.0, 15.0]])
    near = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    result = metrics.pointing_game(maps, [box, near, near], tolerance=5)
    assert result.hit.tolist() == [True, True, False]  # the constant third map points nowhere
    assert result.point.tolist()[:2] == [[5, 7], [2, 3]]
    assert result.peaks.tolist() == [1, 2, 400]
    assert metrics.pointing_game(maps[:1], [box], tolerance=4).hit.tolist() == [False]
    assert metrics.pointing_game(maps[:1], [box]).protocol["tolerance_px"] == 15
    far_right = torch.tensor([[12.0, 0.0, 20.0, 4.0]])  # (10, 3) would hit; (2, 3) is the point
    assert metrics.pointing_game(maps[1:2], [far_right], tolerance=0).hit.tolist() == [False]


def test_box_iou_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = metrics.box_iou(a, b)
    assert iou.tolist()[0] == pytest.approx([25 / 175, 1.0, 0.0])
    assert iou.tolist()[1] == [0.0, 0.0, 0.0]
    import torchvision

    assert torch.allclose(iou[:1], torchvision.ops.box_iou(a[:1], b))


def block_map(y1: int, y2: int, x1: int, x2: int, size: int = 20) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[y1:y2, x1:x2] = 1.0
    return m


def test_top1_and_top5_localization_error_by_hand() -> None:
    right = block_map(2, 6, 3, 9)  # box (3, 2, 9, 6)
    wrong = block_map(12, 18, 12, 18)
    gt = torch.tensor([[3.0, 2.0, 9.0, 6.0]])
    maps = torch.stack([
        torch.stack([right, wrong, wrong, wrong, wrong]),  # label first, good box: both right
        torch.stack([wrong, right, wrong, wrong, wrong]),  # label second, good box: top-5 only
        torch.stack([wrong, wrong, wrong, wrong, wrong]),  # label first, bad box: both wrong
        torch.stack([right, right, right, right, right]),  # label absent from the top 5
    ])  # fmt: skip
    classes = torch.tensor([[7, 1, 2, 3, 4], [1, 7, 2, 3, 4], [7, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    labels = torch.tensor([7, 7, 7, 7])
    result = metrics.localization_error(maps, classes, labels, [gt] * 4)
    assert result.top1_correct.tolist() == [True, False, False, False]
    assert result.top5_correct.tolist() == [True, True, False, False]
    assert result.top1_error == 0.75 and result.top5_error == 0.5
    assert result.boxes[0][0] == (3, 2, 9, 6)
    assert float(result.iou[0, 0]) == 1.0
    # IoU 0.5 is the line: a box of half the area inside the ground truth is exactly 0.5
    half = block_map(2, 6, 3, 6)  # box (3, 2, 6, 6): area 12 of 24
    edge = metrics.localization_error(
        half[None, None], torch.tensor([[7]]), torch.tensor([7]), [gt]
    )
    assert float(edge.iou[0, 0]) == 0.5 and edge.top1_correct.tolist() == [True]


def test_max_box_accuracy_v1_v2_by_hand() -> None:
    # image 0: a strong small blob A (value 1, 3x3) and a weaker large blob B (value 0.5, 6x6)
    # that the ground truth marks; image 1: one blob exactly on its box
    m0 = torch.zeros(20, 20)
    m0[0:3, 0:3] = 1.0
    m0[10:16, 10:16] = 0.5
    m1 = block_map(4, 8, 4, 8)
    gt0 = torch.tensor([[10.0, 10.0, 16.0, 16.0]])
    gt1 = torch.tensor([[4.0, 4.0, 8.0, 8.0]])
    maps = torch.stack([m0, m1])
    v2 = metrics.max_box_accuracy(maps, [gt0, gt1])
    # V2: every component's box counts, so B matches for thresholds below 0.5 (mask: > t)
    assert v2.thresholds.shape == (100,)
    below = v2.thresholds < 0.5
    assert v2.correct[0, below].all() and not v2.correct[0, ~below].any()
    assert v2.correct[1].all()
    assert v2.max_box_accuracy.tolist() == [1.0, 1.0, 1.0]
    assert v2.value == 1.0 and float(v2.best_threshold[0]) == 0.0
    # V1: the largest component only; make A the larger one and B is never chosen
    m0b = torch.zeros(20, 20)
    m0b[0:8, 0:8] = 1.0
    m0b[10:16, 10:16] = 0.5
    v1 = metrics.max_box_accuracy(torch.stack([m0b, m1]), [gt0, gt1], version=1)
    assert v1.iou_thresholds.tolist() == [0.5]
    assert not v1.correct[0].any() and v1.correct[1].all()
    assert v1.value == 0.5
    v2b = metrics.max_box_accuracy(torch.stack([m0b, m1]), [gt0, gt1])
    assert v2b.value == 1.0  # B is among all components' boxes
    assert v2b.protocol["iou_thresholds"] == [0.3, 0.5, 0.7]
    assert v2b.protocol["thresholds"][:3] == [0.0, 0.01, 0.02]


def test_road_imputation_of_a_linear_ramp_is_exact() -> None:
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    ramp = torch.stack([0.01 * xs + 0.02 * ys, 0.5 - 0.01 * ys, 0.3 + 0.005 * xs])[None] / 1.0
    removed = torch.zeros(1, 24, 24, dtype=torch.bool)
    removed[0, 3:20, 4:21] = True  # a big interior hole
    removed[0, 1, 1] = True
    out = metrics.impute(ramp, removed, noise=0.0)
    assert (out - ramp).abs().max() < 1e-4
    assert torch.equal(out[..., ~removed[0]], ramp[..., ~removed[0]])


def test_road_noise_statistics() -> None:
    flat = torch.full((1, 3, 64, 64), 0.5)
    removed = torch.zeros(1, 64, 64, dtype=torch.bool)
    removed[0, 8:56, 8:56] = True
    gen = torch.Generator().manual_seed(1)
    out = metrics.impute(flat, removed, noise=0.01, generator=gen)
    residual = (out - flat)[..., removed[0]].flatten()  # 3 * 2304 imputed values
    assert abs(float(residual.mean())) < 3 * 0.01 / math.sqrt(residual.numel())
    assert float(residual.std()) == pytest.approx(0.01, rel=0.05)
    assert torch.equal(out[..., ~removed[0]], flat[..., ~removed[0]])


def test_road_imputation_matches_the_reference_sparse_solve() -> None:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer  # the paper's code, vendored

    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    removed = torch.rand(1, 32, 32) < 0.6
    removed[0, :, :3] = True  # a removed band along the border, too
    ours = metrics.impute(image, removed, noise=0.0)
    reference = NoisyLinearImputer(noise=0.0)(image[0], (~removed[0]).float())
    assert (ours[0] - reference).abs().max() < 1e-3
    direct = metrics.impute(image, removed, noise=0.0, solver="direct")  # exact, as the reference
    assert (direct[0] - reference).abs().max() < 1e-6


def test_road_direct_and_iterative_solvers_give_the_same_imputation() -> None:
    torch.manual_seed(1)
    images = torch.rand(2, 3, 40, 48)
    removed = torch.rand(2, 40, 48) < torch.tensor([0.3, 0.9]).view(2, 1, 1)
    removed[1, -5:, :] = True  # a removed band along the bottom border
    noisy = {
        solver: metrics.impute(
            images, removed, generator=torch.Generator().manual_seed(7), solver=solver
        )
        for solver in ("direct", "cg")
    }
    assert (noisy["direct"] - noisy["cg"]).abs().max() < 1e-3  # same solution, same noise draws
    gone = removed[:, None].expand_as(images)
    assert torch.equal(noisy["direct"][~gone], images[~gone])  # kept pixels untouched
    net = RegionNet()
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[..., 0:4, 0:4] = 1.0
    results = {
        s: metrics.road(net, image, region_map(), CLASS0, solver=s) for s in ("direct", "cg")
    }
    assert torch.allclose(results["direct"].morf, results["cg"].morf, atol=1e-4)
    assert torch.allclose(results["direct"].lerf, results["cg"].lerf, atol=1e-4)
    assert results["direct"].protocol["imputation"]["solver"].startswith("sparse direct")
    assert results["cg"].protocol["imputation"]["tol"] == 1e-5


def test_road_removal_fractions_and_result() -> None:
    ranks = descending_ranks(torch.arange(10.0).view(1, 2, 5))  # 9 is the most relevant
    assert removal_masks(ranks, 0.2, True).view(-1).nonzero().view(-1).tolist() == [8, 9]
    assert removal_masks(ranks, 0.3, False).view(-1).nonzero().view(-1).tolist() == [0, 1, 2]
    net = RegionNet()
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[..., 0:4, 0:4] = 1.0
    first = metrics.road(net, image, region_map(), CLASS0, percentages=(0.25, 0.5))
    again = metrics.road(net, image, region_map(), CLASS0, percentages=(0.25, 0.5))
    assert torch.equal(first.morf, again.morf)  # seeded
    assert first.morf.shape == (1, 2) and first.lerf_correct.dtype == torch.bool
    # removing R (MoRF) loses the evidence; removing the background (LeRF) keeps it
    assert (first.morf < first.lerf).all()
    assert first.protocol["imputation"]["noise_std"] == 0.01
    assert first.protocol["percentages"] == [0.25, 0.5]
    assert metrics.ROAD_PERCENTAGES == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def test_inputs_are_checked_with_precise_errors() -> None:
    net = RegionNet()
    cases = [
        (lambda: metrics.deletion(net, ones()[0], region_map(), CLASS0), "images", "Tensor[N,3,H,W]"),
        (lambda: metrics.deletion(net, ones() * 255, region_map(), CLASS0), "images", "[0, 1]"),
        (lambda: metrics.deletion(net, ones().long(), region_map(), CLASS0), "images", "float"),
        (lambda: metrics.deletion(net, ones(), region_map()[:, :4], CLASS0), "maps", "4x8"),
        (lambda: metrics.deletion(net, ones(), region_map(), torch.tensor([0.0])), "classes", "integer"),
        (lambda: metrics.deletion(net, ones(), region_map(), torch.tensor([0, 1])), "classes", "2 classes for 1"),
        (lambda: metrics.average_drop(net, ones(), region_map(), torch.tensor([5])), "classes", "out of range"),
        (lambda: metrics.pointing_game(region_map(), [torch.zeros(0, 4)]), "boxes[0]", "no ground-truth"),
        (lambda: metrics.pointing_game(region_map(), [torch.tensor([[5.0, 0, 1, 1]])]), "boxes[0]", "x2 < x1"),
        (lambda: metrics.box_iou(torch.zeros(3), torch.zeros(1, 4)), "boxes1", "Tensor[M,4]"),
        (lambda: metrics.road(net, ones(), region_map(), CLASS0, percentages=(0.5, 0.2)), "percentages", "increasing"),
        (lambda: metrics.max_box_accuracy(region_map(), [torch.zeros(1, 4)], version=3), "version", "1 or 2"),
    ]  # fmt: skip
    for call, subject, text in cases:
        with pytest.raises(InvalidArgumentError) as info:
            call()
        assert info.value.subject == subject and text in info.value.problem, (
            subject,
            str(info.value),
        )


def test_completeness_refuses_maps_that_are_no_decomposition() -> None:
    facts = metrics.MapsWithFacts(
        maps=torch.zeros(1, 4, 4), cells=torch.zeros(1, 2, 2), classes=CLASS0,
        logits=torch.tensor([1.0]), bias=None, method="gradcam",
    )  # fmt: skip
    with pytest.raises(NotDecompositionError, match="gradcam: its maps do not decompose"):
        metrics.completeness(facts)
    exact = metrics.MapsWithFacts(
        maps=torch.zeros(1, 4, 4), cells=torch.tensor([[[1.0, 2.0], [3.0, 6.0]]]), classes=CLASS0,
        logits=torch.tensor([4.5]), bias=torch.tensor([1.0]), method="cam",
    )  # fmt: skip
    assert metrics.completeness(exact).residual.tolist() == pytest.approx([0.5])  # |3 + 1 - 4.5|
