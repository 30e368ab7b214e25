"""ROAD, Remove And Debias (Rong et al., 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods"): remove a fraction of the pixels, most relevant first (MoRF) or least
relevant first (LeRF), by *noisy linear imputation*, and record the class's probability.

Noisy linear imputation, as the paper's reference code (``road/imputations.py``) defines it: each
removed pixel ``i`` takes the weighted average of its in-image 8-neighbours ``j``, with weight 1/6
for the four edge neighbours and 1/12 for the four corner ones, renormalised over the neighbours
that lie inside the image::

    (sum_j w_j) x_i - sum_{j removed} w_j x_j = sum_{j kept} w_j I_j       (one equation per
                                                                            removed pixel)

solved jointly for all removed pixels of an image (a sparse symmetric positive definite system,
the same for the three channels), then ``noise * N(0, 1)`` (noise = 0.01, drawn per pixel and
channel) is added to every imputed value. Everything happens in pixel space (RGB in [0, 1]) before
the model's normalisation, as the reference applies its normalisation after imputing.

camtool solves the system in torch, batched over images and channels, by conjugate gradients with
a Jacobi preconditioner from a coarse-to-fine initial guess, to a relative residual of ``tol``
(the reference builds a SciPy sparse matrix and factorises it per image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from camtool.errors import InvalidArgumentError
from camtool.metrics.checks import check_fractions, check_positive_int, descending_ranks
from camtool.metrics.maps import PixelForward
from camtool.metrics.perturbation import _check_score, _curve_inputs, class_scores

#: The removal fractions of the paper's curves: 10%, 20%, ..., 90% of the pixels.
ROAD_PERCENTAGES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: Standard deviation of the noise added to imputed pixels (the reference's ``noise=0.01``).
ROAD_NOISE = 0.01

#: The neighbour weights of the imputation (reference: 1/6 edge, 1/12 corner neighbours).
NEIGHBOUR_WEIGHTS = torch.tensor(
    [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64
)


@dataclass(frozen=True)
class RoadResult:
    """ROAD per image.

    Attributes:
        percentages: ``Tensor[P]`` float32, the fractions of pixels removed.
        morf, lerf: ``Tensor[N,P]`` float32, the class's score with that fraction of the most
            (least) relevant pixels removed.
        morf_correct, lerf_correct: ``Tensor[N,P]`` bool, whether the class is still the top-1
            prediction (the paper's curves are accuracies: the mean of these).
        protocol: every setting, JSON-ready.
    """

    percentages: Tensor
    morf: Tensor
    lerf: Tensor
    morf_correct: Tensor
    lerf_correct: Tensor
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def morf_mean(self) -> Tensor:
        """``Tensor[N]``: each image's MoRF score averaged over the percentages (lower is better)."""
        return self.morf.mean(dim=1)

    @property
    def lerf_mean(self) -> Tensor:
        """``Tensor[N]``: each image's LeRF score averaged over the percentages (higher is better)."""
        return self.lerf.mean(dim=1)

    @property
    def combined(self) -> Tensor:
        """``Tensor[N]``: ``(lerf_mean - morf_mean) / 2`` (higher is better)."""
        return (self.lerf_mean - self.morf_mean) / 2


def _stencil(x: Tensor) -> Tensor:
    """``sum_j w_j x_j`` over the in-image 8-neighbours of every pixel of ``Tensor[B,1,H,W]``."""
    kernel = NEIGHBOUR_WEIGHTS.to(x.device, x.dtype)[None, None]
    return F.conv2d(x, kernel, padding=1)


def _coarse_fill(values: Tensor, known: Tensor) -> Tensor:
    """A smooth first guess for the unknown pixels: known values averaged over ever coarser
    grids (2x2 at a time) until every cell has one, then brought back up."""
    if known.all() or min(values.shape[-2:]) < 2:
        fill = (values * known).sum(dim=(-2, -1), keepdim=True) / known.sum(
            dim=(-2, -1), keepdim=True
        ).clamp(min=1)
        return torch.where(known, values, fill.expand_as(values))
    weight = F.avg_pool2d(known.to(values.dtype), 2, ceil_mode=True)
    total = F.avg_pool2d(values * known, 2, ceil_mode=True)
    coarse_known = weight > 0
    coarse = torch.where(coarse_known, total / weight.clamp(min=1e-12), torch.zeros_like(total))
    coarse = _coarse_fill(coarse, coarse_known)
    up = F.interpolate(coarse, size=values.shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(known, values, up)


def impute(
    images: Tensor,
    removed: Tensor,
    *,
    noise: float = ROAD_NOISE,
    generator: torch.Generator | None = None,
    tol: float = 1e-5,
    max_iterations: int = 2000,
) -> Tensor:
    """Noisy linear imputation (see the module docstring) of the ``removed`` pixels.

    Args:
        images: ``Tensor[N,C,H,W]`` float, pixel values.
        removed: ``Tensor[N,H,W]`` bool, True where a pixel is removed.
        noise: standard deviation of the Gaussian noise added to each imputed value (0: none).
        generator: the random source of the noise (for repeatable results).
        tol: the solve stops when every system's residual is below ``tol`` times its right-hand
            side (in the 2-norm); max_iterations: an upper bound on conjugate-gradient steps.

    Returns:
        ``Tensor[N,C,H,W]``: kept pixels unchanged, removed ones imputed.
    """
    n, c, h, w = images.shape
    x_known = images.float().reshape(n * c, 1, h, w)
    missing = removed[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w)
    if not missing.any():
        return images.clone()
    known = ~missing
    m = missing.to(x_known.dtype)
    weight_sum = _stencil(torch.ones((1, 1, h, w), dtype=x_known.dtype, device=x_known.device))

    def operator(v: Tensor) -> Tensor:  # SPD on the removed pixels: (S - W) restricted to them
        return m * (weight_sum * v - _stencil(m * v))

    rhs = m * _stencil(x_known * (1 - m))
    x = m * _coarse_fill(x_known, known)
    r = rhs - operator(x)
    inverse_diag = m / weight_sum
    z = inverse_diag * r
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2, 3))
    limit = (tol * rhs.flatten(1).norm(dim=1)).clamp(min=1e-12)
    for _ in range(max_iterations):
        active = r.flatten(1).norm(dim=1) > limit
        if not active.any():
            break
        ap = operator(p)
        denom = (p * ap).sum(dim=(1, 2, 3))
        alpha = torch.where(active & (denom > 0), rz / denom.clamp(min=1e-30), torch.zeros_like(rz))
        x = x + alpha[:, None, None, None] * p
        r = r - alpha[:, None, None, None] * ap
        z = inverse_diag * r
        rz_new = (r * z).sum(dim=(1, 2, 3))
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=1e-30), torch.zeros_like(rz))
        p = z + beta[:, None, None, None] * p
        rz = rz_new
    if noise:
        x = x + noise * m * torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
    out = torch.where(missing, x, x_known)
    return out.view(n, c, h, w).to(images.dtype)


def removal_masks(ranks: Tensor, fraction: float, most_relevant: bool) -> Tensor:
    """``Tensor[N,P]`` bool: the ``int(P * fraction)`` pixels removed, most relevant (lowest rank)
    first for MoRF, least relevant first for LeRF."""
    pixels = int(ranks.shape[1])
    count = int(pixels * fraction)
    return ranks < count if most_relevant else ranks >= pixels - count


def road(
    forward: PixelForward,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    *,
    percentages: tuple[float, ...] = ROAD_PERCENTAGES,
    noise: float = ROAD_NOISE,
    seed: int = 0,
    score: str = "probability",
    batch_size: int = 64,
    tol: float = 1e-5,
) -> RoadResult:
    """ROAD: MoRF and LeRF curves with noisy linear imputation (see the module docstring).

    Args:
        forward: pixels -> logits; images: ``Tensor[N,3,H,W]`` float32 in [0, 1]; maps:
            ``Tensor[N,H,W]`` (only their order matters: ties go in raster order); classes:
            ``Tensor[N]`` int64.
        percentages: the fractions of pixels removed (default 10%, 20%, ..., 90%).
        noise: standard deviation of the imputation noise in pixel units (the paper's 0.01).
        seed: seeds the noise, so a run is repeatable.
        score: ``"probability"`` (the paper's) or ``"logit"``.
        batch_size: images imputed and scored together.
        tol: relative residual at which the imputation's linear solve stops.

    Returns:
        :class:`RoadResult`: ``morf``/``lerf`` ``[N,P]`` scores, ``*_correct`` ``[N,P]``.
    """
    images, maps, classes = _curve_inputs(forward, images, maps, classes)
    fractions = check_fractions(percentages, "percentages")
    check_positive_int(batch_size, "batch_size")
    score_name = _check_score(score)
    if not isinstance(noise, int | float) or noise < 0:
        raise InvalidArgumentError("noise", f"expected a standard deviation >= 0, got {noise!r}")
    n, _, height, width = images.shape
    ranks = descending_ranks(maps).to(images.device)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    jobs = [
        (order, k, i) for order in (True, False) for k in range(len(fractions)) for i in range(n)
    ]
    values = {True: torch.empty((n, len(fractions))), False: torch.empty((n, len(fractions)))}
    correct = {True: torch.empty((n, len(fractions)), dtype=torch.bool),
               False: torch.empty((n, len(fractions)), dtype=torch.bool)}  # fmt: skip
    with torch.inference_mode():
        for begin in range(0, len(jobs), batch_size):
            chunk = jobs[begin : begin + batch_size]
            rows = torch.tensor([i for _, _, i in chunk], device=images.device)
            removed = torch.stack(
                [removal_masks(ranks[i : i + 1], fractions[k], order)[0] for order, k, i in chunk]
            ).view(len(chunk), height, width)
            imputed = impute(
                images[rows].float(), removed, noise=float(noise), generator=generator, tol=tol
            )
            logits = forward(imputed)
            got = class_scores(logits, classes[rows], score_name).cpu()
            top = logits.argmax(dim=1).cpu() == classes[rows].cpu()
            for j, (order, k, i) in enumerate(chunk):
                values[order][i, k] = got[j]
                correct[order][i, k] = top[j]
    protocol = {
        "metric": "road", "paper": "Rong et al. 2022 (ROAD)", "score": score_name,
        "percentages": list(fractions),
        "removal": "int(H*W*p) pixels: MoRF the highest map values, LeRF the lowest; ties in raster order",
        "imputation": {"kind": "noisy linear", "weights": {"edge": 1 / 6, "corner": 1 / 12},
                       "noise_std": float(noise), "seed": seed, "solver": "preconditioned CG",
                       "tol": tol},
        "space": "pixels in [0, 1], before the model's normalisation",
    }  # fmt: skip
    return RoadResult(
        torch.tensor(fractions, dtype=torch.float32), values[True], values[False],
        correct[True], correct[False], protocol,
    )  # fmt: skip
