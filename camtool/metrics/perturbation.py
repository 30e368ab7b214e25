"""Faithfulness by perturbation: deletion and insertion (Petsiuk et al., RISE, 2018), Average Drop
and Increase in Confidence (Chattopadhay et al., Grad-CAM++, 2018), and completeness.

All work on pixel images ``Tensor[N,3,H,W]`` float32 RGB in [0, 1] and one map per image
``Tensor[N,H,W]`` at the image's resolution, with a :data:`~camtool.metrics.maps.PixelForward`
(pixels -> logits). Perturbed copies go through the network as batches: a curve of S steps over
N images is ``(S + 1) * N`` images in forward passes of ``batch_size``, never one call per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from camtool.errors import InvalidArgumentError, NotDecompositionError
from camtool.metrics.checks import (
    check_class_range,
    check_classes,
    check_images,
    check_maps,
    descending_ranks,
    normalize_maps,
)
from camtool.metrics.maps import MapsWithFacts, PixelForward
from camtool.settings import check_positive_int

#: The RISE paper's step: 224 pixels per step at 224x224, i.e. 1/224 of the image per step.
#: camtool keeps that fraction at any size: ``ceil(H * W / 224)`` pixels per step, 224 steps.
RISE_STEPS = 224

#: The RISE insertion substrate: an 11x11 Gaussian kernel with sigma 5.
BLUR_SIZE = 11
BLUR_SIGMA = 5.0

Score = Literal["probability", "logit"]


@dataclass(frozen=True)
class CurveResult:
    """A deletion or insertion curve per image.

    Attributes:
        metric: ``"deletion"`` or ``"insertion"``.
        fractions: ``Tensor[S+1]`` float32, the fraction of pixels removed (deletion) or put back
            (insertion) at each point, from 0 to 1.
        scores: ``Tensor[N,S+1]`` float32, the class's score at each point.
        auc: ``Tensor[N]`` float32, the area under each curve (trapezoid rule over ``fractions``).
        protocol: every setting, JSON-ready.
    """

    metric: str
    fractions: Tensor
    scores: Tensor
    auc: Tensor
    protocol: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AverageDropResult:
    """Average Drop and Increase in Confidence, per image.

    Attributes:
        drop: ``Tensor[N]`` float32, ``100 * max(0, Y - O) / Y`` per image (its mean is the
            paper's Average Drop, in %).
        increase: ``Tensor[N]`` bool, ``O > Y`` (its mean x 100 is the Increase in Confidence, %).
        original: ``Tensor[N]`` float32, ``Y``: the class's score on the image.
        masked: ``Tensor[N]`` float32, ``O``: the class's score on the image times its map.
        protocol: every setting, JSON-ready.
    """

    drop: Tensor
    increase: Tensor
    original: Tensor
    masked: Tensor
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def average_drop(self) -> float:
        """The paper's Average Drop, in %."""
        return float(self.drop.mean())

    @property
    def increase_in_confidence(self) -> float:
        """The paper's Increase in Confidence, in % of the images."""
        return 100.0 * float(self.increase.float().mean())


@dataclass(frozen=True)
class CompletenessResult:
    """``|mean(cells) + bias - logit|`` per image (``residual``, ``Tensor[N]`` float32)."""

    residual: Tensor
    protocol: dict[str, Any] = field(default_factory=dict)


def class_scores(logits: Tensor, classes: Tensor, score: Score) -> Tensor:
    """``Tensor[M]`` float32: the softmax probability (or the logit) of ``classes`` in ``logits``."""
    values = logits.float().softmax(-1) if score == "probability" else logits.float()
    return values.gather(1, classes[:, None].to(values.device)).squeeze(1)


def check_score(score: str) -> Score:
    """``score`` (``"probability"`` or ``"logit"``) as the :data:`Score` it names.

    Raises:
        InvalidArgumentError: any other value.
    """
    if score not in ("probability", "logit"):
        raise InvalidArgumentError(score, "unknown score; choose probability or logit")
    return "probability" if score == "probability" else "logit"


def rise_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> Tensor:
    """``Tensor[size,size]`` float32: the RISE blur kernel, exactly as its reference code makes it
    (a unit impulse in a ``size x size`` window, Gaussian-filtered with ``sigma``, SciPy's default
    ``reflect`` boundary and 4-sigma truncation), so the tails that fall outside the window fold
    back in and the kernel sums to 1. Separable: the outer product of one 1-D kernel."""
    radius = int(4.0 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    gauss = torch.exp(-0.5 * (taps / sigma) ** 2)
    gauss /= gauss.sum()
    centre = size // 2
    line = torch.zeros(size, dtype=torch.float64)
    for i in range(size):
        for t, weight in zip(taps.tolist(), gauss.tolist(), strict=True):
            j = int(i + t) % (2 * size)  # 'reflect': d c b a | a b c d | d c b a
            j = j if j < size else 2 * size - 1 - j
            if j == centre:
                line[i] += weight
    return torch.outer(line, line).float()


def blur(images: Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> Tensor:
    """RISE's insertion substrate: each channel of ``Tensor[N,3,H,W]`` convolved with
    :func:`rise_kernel`; the border is padded by reflection (so edges are not darkened)."""
    kernel = rise_kernel(size, sigma).to(images.device, images.dtype)
    pad = size // 2
    flat = images.reshape(-1, 1, *images.shape[-2:])
    mode = "reflect" if min(images.shape[-2:]) > pad else "replicate"
    padded = F.pad(flat, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(padded, kernel[None, None]).view_as(images)


def _baseline_tensor(baseline: float | tuple[float, float, float], like: Tensor) -> Tensor:
    values = (baseline,) * 3 if isinstance(baseline, int | float) else tuple(baseline)
    if len(values) != 3 or any(not 0 <= float(v) <= 1 for v in values):
        raise InvalidArgumentError("baseline", "expected a pixel value or an RGB triple in [0, 1]")
    return (
        torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1).expand_as(like)
    )


def _step_counts(pixels: int, pixels_per_step: int | None) -> tuple[list[int], int]:
    step = math.ceil(pixels / RISE_STEPS) if pixels_per_step is None else pixels_per_step
    check_positive_int(step, "pixels_per_step")
    counts = [*range(0, pixels, step), pixels]
    return counts, step


def _curve(
    metric: str,
    forward: PixelForward,
    start: Tensor,
    finish: Tensor,
    maps: Tensor,
    classes: Tensor,
    pixels_per_step: int | None,
    score: Score,
    batch_size: int,
    original: tuple[int, Tensor] | None = None,
    uniform_finish: bool = False,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Move pixels from ``start`` to ``finish`` in order of the map, most important first.

    ``original``: ``(point, scores Tensor[N])`` when the scores at one point (the unperturbed
    image: deletion's first, insertion's last) are known already; that point is not recomputed.
    ``uniform_finish``: ``finish`` is the same image for every image (deletion's baseline), so
    the last point (every pixel moved) runs through the network once, not N times.
    """
    n, _, height, width = start.shape
    pixels = height * width
    counts, step = _step_counts(pixels, pixels_per_step)
    ranks = descending_ranks(maps).to(start.device)  # [N, P]
    scores = torch.empty((n, len(counts)), dtype=torch.float32)
    known = -1
    if original is not None:
        known = len(counts) - 1 if original[0] < 0 else original[0]
        scores[:, known] = original[1].float().cpu()
    last = len(counts) - 1
    shared = uniform_finish and known != last
    skip = {known, last} if shared else {known}
    jobs = [(i, k, c) for k, c in enumerate(counts) if k not in skip for i in range(n)]
    flat_start, flat_finish = start.flatten(2), finish.flatten(2)
    with torch.inference_mode():
        if shared:  # every pixel moved: the same image for all
            logits = forward(finish[:1]).expand(n, -1)
            scores[:, last] = class_scores(logits, classes, score).cpu()
        for begin in range(0, len(jobs), batch_size):
            chunk = jobs[begin : begin + batch_size]
            rows = torch.tensor([j[0] for j in chunk], device=start.device)
            limit = torch.tensor([j[2] for j in chunk], device=start.device)
            moved = ranks[rows] < limit[:, None]  # [B, P]
            inputs = torch.where(moved[:, None], flat_finish[rows], flat_start[rows])
            logits = forward(inputs.view(-1, 3, height, width))
            values = class_scores(logits, classes[rows], score).cpu()
            for (i, k, _), v in zip(chunk, values.tolist(), strict=True):
                scores[i, k] = v
    fractions = torch.tensor(counts, dtype=torch.float64).div(pixels).float()
    auc = torch.trapezoid(scores, fractions, dim=1)
    return fractions, scores, auc, step


def curve_inputs(
    forward: PixelForward,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    original_logits: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    images = check_images(images)
    n = int(images.shape[0])
    maps = check_maps(maps, n, (int(images.shape[2]), int(images.shape[3])))
    classes = check_classes(classes, n)
    if original_logits is not None and (
        not isinstance(original_logits, Tensor)
        or original_logits.ndim != 2
        or original_logits.shape[0] != n
    ):
        raise InvalidArgumentError(
            "original_logits",
            f"expected a float Tensor[{n},K] (the network's logits on the images)",
        )
    if not callable(forward):
        raise InvalidArgumentError(
            "forward", "expected a function: pixels Tensor[N,3,H,W] -> logits Tensor[N,K]"
        )
    return images, maps.to(images.device), classes


def _perturbation_inputs(
    forward: PixelForward,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    original_logits: Tensor | None,
    score: str,
    **counts: int,
) -> tuple[Tensor, Tensor, Tensor, Score]:
    """The arguments :func:`deletion`, :func:`insertion` and :func:`average_drop` share, checked
    in this order: those of :func:`curve_inputs`, then each of ``counts`` (``batch_size=...``)
    a positive int, then ``score``. Returns ``(images, maps, classes, score)``.

    Raises:
        InvalidArgumentError: the first argument that is not usable.
    """
    images, maps, classes = curve_inputs(forward, images, maps, classes, original_logits)
    for name, value in counts.items():
        check_positive_int(value, name)
    return images, maps, classes, check_score(score)


def deletion(
    forward: PixelForward,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    pixels_per_step: int | None = None,
    baseline: float | tuple[float, float, float] = 0.0,
    score: str = "probability",
    batch_size: int = 64,
    original_logits: Tensor | None = None,
) -> CurveResult:
    """The RISE deletion metric: replace pixels by ``baseline`` (black) in order of the map, most
    important first, and record the class's score after each step; lower area is better.

    Args:
        forward: pixels -> logits (:func:`~camtool.metrics.pixel_forward`).
        images: ``Tensor[N,3,H,W]`` float32 in [0, 1]; maps: ``Tensor[N,H,W]`` float (raw: only
            their order matters); classes: ``Tensor[N]`` int64, the class each map explains.
        pixels_per_step: pixels changed per step; default ``ceil(H*W/224)``, the paper's 224 at
            224x224 (224 steps). Ties between equal map values go in raster order (row-major:
            the top-left one first).
        baseline: the colour of deleted pixels in pixel space (0: black, the paper's).
        score: ``"probability"`` (the class's softmax probability, the paper's) or ``"logit"``.
        batch_size: images per forward pass (perturbed copies of several steps and images).
        original_logits: ``Tensor[N,K]``, the network's logits on the unperturbed images when
            known already (``MapsWithFacts.network_logits``): that point is not recomputed.

    Returns:
        :class:`CurveResult`: ``fractions`` ``[S+1]``, ``scores`` ``[N,S+1]``, ``auc`` ``[N]``.
    """
    images, maps, classes, score = _perturbation_inputs(
        forward, images, maps, classes, original_logits, score, batch_size=batch_size
    )
    finish = _baseline_tensor(baseline, images)
    known = None if original_logits is None else (0, class_scores(original_logits, classes, score))
    fractions, scores, auc, step = _curve(
        "deletion",
        forward,
        images.float(),
        finish,
        maps,
        classes,
        pixels_per_step,
        score,
        batch_size,
        known,
        uniform_finish=True,
    )
    protocol = {
        "metric": "deletion", "paper": "Petsiuk et al. 2018 (RISE)", "score": score,
        "baseline": "black (0 in pixel space)" if baseline == 0.0 else list(_rgb(baseline)),
        "space": "pixels in [0, 1], before the model's normalisation",
        "pixels_per_step": step, "steps": len(fractions) - 1,
        "order": "descending map value, ties in raster order",
        "auc": "trapezoid over the fraction of pixels deleted, on [0, 1]",
        "image_size": [int(images.shape[2]), int(images.shape[3])],
    }  # fmt: skip
    return CurveResult("deletion", fractions, scores, auc, protocol)


def insertion(
    forward: PixelForward,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    pixels_per_step: int | None = None,
    blur_size: int = BLUR_SIZE,
    blur_sigma: float = BLUR_SIGMA,
    score: str = "probability",
    batch_size: int = 64,
    original_logits: Tensor | None = None,
) -> CurveResult:
    """The RISE insertion metric: start from a blurred copy (:func:`blur`, 11x11, sigma 5) and put
    the original pixels back in order of the map, most important first; higher area is better.

    Arguments and result as :func:`deletion` (``blur_size``, ``blur_sigma``: the substrate's
    kernel).
    """
    images, maps, classes, score = _perturbation_inputs(
        forward, images, maps, classes, original_logits, score,
        batch_size=batch_size, blur_size=blur_size,
    )  # fmt: skip
    substrate = blur(images.float(), blur_size, blur_sigma)
    known = None if original_logits is None else (-1, class_scores(original_logits, classes, score))
    fractions, scores, auc, step = _curve(
        "insertion",
        forward,
        substrate,
        images.float(),
        maps,
        classes,
        pixels_per_step,
        score,
        batch_size,
        known,
    )
    protocol = {
        "metric": "insertion", "paper": "Petsiuk et al. 2018 (RISE)", "score": score,
        "substrate": {"blur": "gaussian", "size": blur_size, "sigma": blur_sigma,
                      "kernel": "RISE's: impulse filtered with reflect boundary, 4-sigma truncation",
                      "padding": "reflect"},
        "space": "pixels in [0, 1], before the model's normalisation",
        "pixels_per_step": step, "steps": len(fractions) - 1,
        "order": "descending map value, ties in raster order",
        "auc": "trapezoid over the fraction of pixels inserted, on [0, 1]",
        "image_size": [int(images.shape[2]), int(images.shape[3])],
    }  # fmt: skip
    return CurveResult("insertion", fractions, scores, auc, protocol)


def _rgb(baseline: float | tuple[float, float, float]) -> tuple[float, ...]:
    return (
        (float(baseline),) * 3 if isinstance(baseline, int | float) else tuple(map(float, baseline))
    )


def average_drop(
    forward: PixelForward,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    score: str = "probability",
    batch_size: int = 64,
    original_logits: Tensor | None = None,
) -> AverageDropResult:
    """Average Drop and Increase in Confidence (Grad-CAM++ paper, section 5.1).

    Each map is min-max normalised to [0, 1] on its own (a constant map becomes 0), the image is
    multiplied by it pixel by pixel in pixel space (``E * I``, before the model's normalisation),
    and ``O`` (the class's score on that) is compared with ``Y`` (on the image):
    ``drop = 100 * max(0, Y - O) / Y`` and ``increase = O > Y`` per image. The paper uses the
    softmax probability (``score="probability"``).
    """
    images, maps, classes, score = _perturbation_inputs(
        forward, images, maps, classes, original_logits, score, batch_size=batch_size
    )
    masked_images = images.float() * normalize_maps(maps)[:, None]
    n = int(images.shape[0])
    inputs = (
        masked_images if original_logits is not None else torch.cat([images.float(), masked_images])
    )
    with torch.inference_mode():
        logits = torch.cat([forward(part) for part in inputs.split(batch_size)])
    if original_logits is not None:
        logits = torch.cat([original_logits.float().to(logits.device), logits])
    check_class_range(classes, int(logits.shape[-1]))
    values = class_scores(logits, torch.cat([classes, classes]), score).cpu()
    original, masked = values[:n], values[n:]
    drop = 100.0 * (original - masked).clamp(min=0) / original
    protocol = {
        "metric": "average_drop", "paper": "Chattopadhay et al. 2018 (Grad-CAM++)", "score": score,
        "map": "min-max normalised to [0, 1] per image (constant map -> 0)",
        "masking": "image x map, element-wise, in pixel space before normalisation",
        "drop": "100 * max(0, Y - O) / Y per image; Average Drop is its mean (%)",
        "increase": "O > Y per image; Increase in Confidence is its mean x 100 (%)",
    }  # fmt: skip
    return AverageDropResult(drop, masked > original, original, masked, protocol)


def completeness(maps: MapsWithFacts) -> CompletenessResult:
    """``|mean(cells) + bias - logit|`` per image, for maps that decompose the logit (CAM and the
    other exact methods: ``maps.bias`` is set). The mean is over the method's own cells (the
    identity holds there; upsampling does not keep the mean exactly).

    Raises:
        NotDecompositionError: the maps come with no bias (Grad-CAM, Score-CAM, ...: they do
            not claim to decompose the score).
    """
    if not isinstance(maps, MapsWithFacts):
        raise InvalidArgumentError(
            "maps", "expected MapsWithFacts (from method_maps), which carry the bias and logit"
        )
    if maps.bias is None:
        raise NotDecompositionError(
            maps.method, "its maps do not decompose the logit, so completeness does not apply"
        )
    residual = (
        maps.cells.double().mean(dim=(-2, -1)) + maps.bias.double() - maps.logits.double()
    ).abs()
    protocol = {
        "metric": "completeness", "method": maps.method,
        "definition": "|mean over the method's cells + bias - class logit| per image",
    }  # fmt: skip
    return CompletenessResult(residual.float(), protocol)
