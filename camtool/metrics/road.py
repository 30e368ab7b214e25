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

camtool solves the system directly when SciPy is installed (the ``eval`` extra): the sparse matrix
is built vectorised once per image and factorised once (SuperLU, minimum-degree ordering of the
symmetric pattern), and the factorisation solves the three channels together. Without SciPy it
solves in torch, batched over images and channels, by conjugate gradients with an
aggregation-multigrid preconditioner, to a relative residual of ``tol``. Both give the same
imputation (to the solver's tolerance) and draw the same noise.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from camtool.errors import InvalidArgumentError
from camtool.metrics.checks import check_fractions, descending_ranks
from camtool.metrics.maps import PixelForward
from camtool.metrics.perturbation import check_score, class_scores, curve_inputs
from camtool.settings import check_positive_int

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


#: The 3x3 stencil's offsets ``(dy, dx)`` in the order of a coefficient tensor's channel axis.
OFFSETS: tuple[tuple[int, int], ...] = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _apply(coef: Tensor, v: Tensor) -> Tensor:
    """A 3x3 stencil with coefficients per pixel: ``out[y,x] = sum_d coef[d,y,x] * v[y+dy,x+dx]``
    (zero outside the grid); ``coef`` ``Tensor[N,9,h,w]``, ``v`` ``Tensor[N,C,h,w]``."""
    h, w = v.shape[-2:]
    padded = F.pad(v, (1, 1, 1, 1))
    out = coef[:, 4:5] * v
    for k, (dy, dx) in enumerate(OFFSETS):
        if k != 4:
            out = out + coef[:, k : k + 1] * padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def _restrict(v: Tensor) -> Tensor:
    """Sum over 2x2 blocks (a last odd row or column forms blocks of its own)."""
    h, w = v.shape[-2:]
    return F.avg_pool2d(F.pad(v, (0, w % 2, 0, h % 2)), 2) * 4


def _prolong(v: Tensor, mask: Tensor) -> Tensor:
    """Each coarse value copied to the removed pixels of its 2x2 block."""
    h, w = mask.shape[-2:]
    return mask * v.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w]


def _fine_operator(mask: Tensor) -> Tensor:
    """``Tensor[N,9,H,W]``: the imputation system's stencil on the removed pixels (``mask``
    ``Tensor[N,1,H,W]`` float, 1 where removed): ``(sum of in-image weights) x_i - sum_{j
    removed} w_j x_j``; symmetric positive definite on the removed pixels."""
    weights = NEIGHBOUR_WEIGHTS.to(mask.device, mask.dtype).flatten()
    ones = torch.ones_like(mask[:1])
    padded_ones, padded_mask = F.pad(ones, (1, 1, 1, 1)), F.pad(mask, (1, 1, 1, 1))
    h, w = mask.shape[-2:]
    total = torch.zeros_like(ones)
    coef = []
    for k, (dy, dx) in enumerate(OFFSETS):
        window = (..., slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
        total = total + weights[k] * padded_ones[window]
        coef.append(-weights[k] * mask * padded_mask[window])
    coef[4] = total * mask
    return torch.cat(coef, dim=1)


def _coarse_operator(coef: Tensor, mask: Tensor, coarse_mask: Tensor) -> Tensor:
    """The Galerkin operator ``R A P`` on the 2x2-aggregated grid (``P``: piecewise constant on
    the removed pixels, ``R = P^T``), a 3x3 stencil again, read off with 9 probe vectors."""
    n, _, hc, wc = coarse_mask.shape
    ys = torch.arange(hc, device=coef.device).view(hc, 1).expand(hc, wc)
    xs = torch.arange(wc, device=coef.device).view(1, wc).expand(hc, wc)
    out = torch.zeros((n, 9, hc, wc), dtype=coef.dtype, device=coef.device)
    for a in range(3):
        for b in range(3):
            probe = ((ys % 3 == a) & (xs % 3 == b)).to(coef.dtype) * coarse_mask
            response = _restrict(_apply(coef, _prolong(probe, mask)))
            k = (((a - ys + 1) % 3) * 3 + ((b - xs + 1) % 3)).expand(n, 1, hc, wc)
            out.scatter_add_(1, k, response)
    return out * coarse_mask


class _Multigrid:
    """An aggregation multigrid V-cycle (damped Jacobi smoothing) for the imputation system,
    used as the conjugate-gradient preconditioner: a symmetric positive definite operator."""

    def __init__(self, mask: Tensor, smallest: int = 6) -> None:
        self.levels: list[tuple[Tensor, Tensor, Tensor]] = []
        coef = _fine_operator(mask)
        while True:
            diag = coef[:, 4:5]
            inverse = torch.where(diag > 0, 1 / diag.clamp(min=1e-30), torch.zeros_like(diag))
            self.levels.append((coef, mask, inverse))
            if min(mask.shape[-2:]) <= smallest:
                break
            coarse_mask = (_restrict(mask) > 0).to(mask.dtype)
            coef = _coarse_operator(coef, mask, coarse_mask)
            mask = coarse_mask

    def __call__(self, r: Tensor, level: int = 0, omega: float = 0.8) -> Tensor:
        coef, mask, inverse = self.levels[level]
        x = omega * inverse * r
        if level == len(self.levels) - 1:
            for _ in range(8):
                x = x + omega * inverse * (r - _apply(coef, x))
            return x
        coarse = self(_restrict(r - _apply(coef, x)), level + 1, omega)
        x = x + _prolong(coarse, mask)
        return x + omega * inverse * (r - _apply(coef, x))


#: The names recorded in a result's protocol for each solver.
SOLVER_NAMES = {
    "direct": "sparse direct (SciPy SuperLU, one factorisation per image for its 3 channels)",
    "cg": "multigrid-preconditioned conjugate gradients (torch)",
}


def direct_solver_available() -> bool:
    """True when SciPy is importable (camtool's ``eval`` extra, or ``pip install scipy``): the direct solver runs."""
    return importlib.util.find_spec("scipy") is not None


def _solver(solver: str) -> str:
    if solver not in ("auto", "direct", "cg"):
        raise InvalidArgumentError(solver, "unknown solver; choose auto, direct or cg")
    if solver == "auto":
        return "direct" if direct_solver_available() else "cg"
    if solver == "direct" and not direct_solver_available():
        raise InvalidArgumentError(
            "solver", "the direct solver needs SciPy: pip install scipy (camtool's eval extra)"
        )
    return solver


def _solve_direct(values: Tensor, removed: Tensor) -> Tensor:
    """``Tensor[N,C,H,W]`` float64: the imputation system solved exactly, one image at a time:
    the sparse matrix over the removed pixels built vectorised, factorised
    once, and applied to the C channels' right-hand sides together. Kept pixels are 0."""
    import numpy as np
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    n, c, h, w = values.shape
    weights = NEIGHBOUR_WEIGHTS.numpy()
    pixels = values.detach().to("cpu", torch.float64).reshape(n, c, h * w).numpy()
    masks = removed.detach().cpu().reshape(n, h * w).numpy()
    out = np.zeros((n, c, h * w))
    for i in range(n):
        flat = masks[i]
        ids = np.flatnonzero(flat)
        if ids.size == 0:
            continue
        unknown = np.full(h * w, -1, dtype=np.int64)
        unknown[ids] = np.arange(ids.size)
        ys, xs = np.divmod(ids, w)
        diag = np.zeros(ids.size)
        rows, cols, entries = [], [], []
        rhs = np.zeros((ids.size, c))
        for dy, dx in OFFSETS:
            weight = float(weights[dy + 1, dx + 1])
            if weight == 0:
                continue
            y2, x2 = ys + dy, xs + dx
            inside = (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
            diag[inside] += weight
            neighbour = np.where(inside, y2 * w + x2, 0)
            coupled = inside & flat[neighbour]
            rows.append(np.flatnonzero(coupled))
            cols.append(unknown[neighbour[coupled]])
            entries.append(np.full(rows[-1].size, -weight))
            kept = inside & ~flat[neighbour]
            rhs[kept] += weight * pixels[i][:, neighbour[kept]].T
        matrix = csc_matrix(
            (
                np.concatenate([diag, *entries]),
                (
                    np.concatenate([np.arange(ids.size), *rows]),
                    np.concatenate([np.arange(ids.size), *cols]),
                ),
            ),
            shape=(ids.size, ids.size),
        )
        factors = splu(matrix, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
        out[i][:, ids] = factors.solve(rhs).T
    return torch.from_numpy(out.reshape(n, c, h, w))


def impute(
    images: Tensor,
    removed: Tensor,
    *,
    noise: float = ROAD_NOISE,
    generator: torch.Generator | None = None,
    tol: float = 1e-5,
    max_iterations: int = 500,
    solver: str = "auto",
) -> Tensor:
    """Noisy linear imputation (see the module docstring) of the ``removed`` pixels.

    Args:
        images: ``Tensor[N,C,H,W]`` float, pixel values.
        removed: ``Tensor[N,H,W]`` bool, True where a pixel is removed.
        noise: standard deviation of the Gaussian noise added to each imputed value (0: none).
        generator: the random source of the noise (for repeatable results).
        tol: the solve stops when every system's residual is below ``tol`` times its right-hand
            side (in the 2-norm); max_iterations: an upper bound on conjugate-gradient steps
            (multigrid-preconditioned: some 10-30 at 224x224); both for the ``"cg"`` solver.
        solver: ``"direct"`` (SciPy's sparse LU, exact; needs SciPy), ``"cg"`` (torch, iterative),
            ``"auto"`` (direct when SciPy is installed). The noise is drawn the same way for both.

    Returns:
        ``Tensor[N,C,H,W]``: kept pixels unchanged, removed ones imputed.

    Raises:
        InvalidArgumentError: an unknown solver, or ``"direct"`` without SciPy.
    """
    method = _solver(solver)
    values = images.float()
    missing = removed[:, None].expand_as(values)
    if not removed.any():
        return images.clone()
    if method == "direct":
        x = _solve_direct(values, removed).to(values.device, values.dtype)
        return _noisy(x, values, missing, noise, generator).to(images.dtype)
    mask = removed[:, None].to(values.dtype)  # [N,1,H,W]: the system is the same per channel
    coef = _fine_operator(mask)
    kept = values * (1 - mask)
    # right-hand side: the weighted sum of the kept in-image neighbours of every removed pixel
    kernel = NEIGHBOUR_WEIGHTS.to(values.device, values.dtype)[None, None]
    flat = kept.reshape(-1, 1, *kept.shape[-2:])
    rhs = mask * F.conv2d(flat, kernel, padding=1).view_as(kept)
    precondition = _Multigrid(mask)
    x = torch.zeros_like(values)
    r = rhs.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(dim=(2, 3))
    limit = (tol * rhs.flatten(2).norm(dim=2)).clamp(min=1e-12)
    for _ in range(max_iterations):
        active = r.flatten(2).norm(dim=2) > limit
        if not active.any():
            break
        ap = _apply(coef, p)
        denom = (p * ap).sum(dim=(2, 3))
        alpha = torch.where(active & (denom > 0), rz / denom.clamp(min=1e-30), torch.zeros_like(rz))
        x = x + alpha[..., None, None] * p
        r = r - alpha[..., None, None] * ap
        z = precondition(r)
        rz_new = (r * z).sum(dim=(2, 3))
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=1e-30), torch.zeros_like(rz))
        p = z + beta[..., None, None] * p
        rz = rz_new
    return _noisy(x, values, missing, noise, generator).to(images.dtype)


def _noisy(
    x: Tensor, values: Tensor, missing: Tensor, noise: float, generator: torch.Generator | None
) -> Tensor:
    """The solution ``x`` plus ``noise * N(0, 1)`` (one draw per pixel and channel, in the same
    order for every solver) on the ``missing`` pixels, ``values`` elsewhere."""
    if noise:
        x = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(missing, x, values)


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
    solver: str = "auto",
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
        tol: relative residual at which the iterative (``"cg"``) solve stops.
        solver: the imputation's linear solver, as for :func:`impute` (``"auto"``: SciPy's
            sparse direct solve when installed, else torch conjugate gradients).

    Returns:
        :class:`RoadResult`: ``morf``/``lerf`` ``[N,P]`` scores, ``*_correct`` ``[N,P]``.
    """
    images, maps, classes = curve_inputs(forward, images, maps, classes)
    fractions = check_fractions(percentages, "percentages")
    check_positive_int(batch_size, "batch_size")
    score_name = check_score(score)
    if not isinstance(noise, int | float) or noise < 0:
        raise InvalidArgumentError("noise", f"expected a standard deviation >= 0, got {noise!r}")
    method = _solver(solver)
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
                images[rows].float(),
                removed,
                noise=float(noise),
                generator=generator,
                tol=tol,
                solver=method,
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
                       "noise_std": float(noise), "seed": seed, "solver": SOLVER_NAMES[method],
                       **({"tol": tol} if method == "cg" else {})},
        "space": "pixels in [0, 1], before the model's normalisation",
    }  # fmt: skip
    return RoadResult(
        torch.tensor(fractions, dtype=torch.float32), values[True], values[False],
        correct[True], correct[False], protocol,
    )  # fmt: skip
