"""The CAM head: where, in a network, the feature map and the classifier of CAM are, and how to run it.

A :class:`CamHead` tells camtool how to get, from one forward pass, the feature map ``F``
(``Tensor[N,C,h,w]``) that global average pooling averages and the logits (``Tensor[N,K]``), and
which weights turn ``F`` into class maps. The CAM head machinery is split by job:

- :mod:`camtool.methods.tree`: module-tree helpers (names, poolings, classifiers);
- :mod:`camtool.methods.folding`: head algebra, the affine pieces after the pooling folded into
  one ``W_eff [K,C]``, ``b_eff [K]``;
- this module: the head record and running the network through it;
- :mod:`camtool.methods.identity`: the identity check ``mean(CAM) + bias == logits``;
- :mod:`camtool.methods.discovery`: the candidate-discovery strategies, tried in order until one
  passes the identity on a probe batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from torch import Tensor, nn

from camtool.errors import UnsupportedModelError
from camtool.hooks import capture_input, capture_output
from camtool.methods.folding import HeadAffine, fold_head, is_passive
from camtool.models.network import logits_of

#: How a head obtains features and logits (see :class:`CamHead`).
HeadKind = Literal[
    "explicit", "forward_features", "pool_input", "class_maps", "traced", "sequential", "tokens"
]


def probe_text(
    feature_shape: Sequence[int] | None, probe_size: int | None, residual: float | None
) -> str:
    """``", features 2048x7x7 at 224 px, probe residual 2.0e-06"`` (the parts that are known)."""
    text = ""
    if feature_shape is not None:
        text += f", features {'x'.join(map(str, feature_shape))} at {probe_size} px"
    if residual is not None:
        text += f", probe residual {residual:.1e}"
    return text


@dataclass(frozen=True, eq=False)
class CamHead:
    """Where the CAM comes from in a network (see the module docstring for the kinds).

    Attributes:
        kind: how features and logits are obtained.
        feature_name: the module (or traced operation) whose tensor is the feature map.
        classifier_name: the linear classifier's module name ("" for class maps).
        classifier: the ``nn.Linear`` or 1x1 ``nn.Conv2d`` classifier, None for class maps.
        capture: the module hooked (its input for pooling modules, its output for ``explicit``).
        runner: for ``traced``/``sequential``: a module that returns the features (and logits).
        feature_shape: ``(C, h, w)`` of the feature map on the probe batch.
        probe_residual: the identity residual on the probe batch (absolute, over all classes).
        fold: the modules between the pooling and the classifier, in the order they run; the
            affine ones fold into the classifier (see :func:`fold_head`).
        prefix_tokens: for ``tokens`` heads, how many class/register tokens precede the patches.
        patch_size: for ``tokens`` heads, the (height, width) of one patch in input pixels.
    """

    kind: HeadKind
    feature_name: str
    classifier_name: str
    classifier: nn.Module | None
    capture: nn.Module | None = None
    runner: nn.Module | None = None
    feature_shape: tuple[int, int, int] | None = None
    probe_residual: float | None = None
    probe_size: int | None = None
    fold: tuple[tuple[str, nn.Module], ...] = ()
    prefix_tokens: int = 0
    patch_size: tuple[int, int] = (1, 1)

    def affine(self) -> HeadAffine | None:
        """The classifier with everything between the pooling and it folded in (None for class
        maps), from the current weights: the fold is kept until a parameter or buffer of the
        classifier or the folded modules changes (in place, as an optimiser step does, or
        replaced), then made again.

        Raises:
            UnsupportedModelError: a module between the pooling and the classifier does not fold.
        """
        if self.classifier is None:
            return None
        stamp = self._weights_stamp()
        kept = self.__dict__.get("_affine_kept")
        if kept is not None and kept[0] == stamp:
            return cast(HeadAffine, kept[1])
        affine = fold_head(self.fold, self.classifier, self.classifier_name)
        object.__setattr__(self, "_affine_kept", (stamp, affine))  # a cache on a frozen record
        return affine

    def _weights_stamp(self) -> tuple[tuple[int, int, int, str], ...]:
        """Identity, version counter, storage and device of every tensor the fold reads."""
        modules = [m for _, m in self.fold] + ([self.classifier] if self.classifier else [])
        return tuple(
            (id(t), t._version, t.data_ptr(), str(t.device))
            for module in modules
            for t in (*module.parameters(), *module.buffers())
        )

    @property
    def folded(self) -> tuple[tuple[str, str], ...]:
        """``(module name, type name)`` of each folded module that is not a no-op."""
        return tuple((n, type(m).__name__) for n, m in self.fold if not is_passive(m))

    @property
    def weight(self) -> Tensor | None:
        """``Tensor[K,C]``: the effective classifier weight, folding included (None for class
        maps)."""
        affine = self.affine()
        return None if affine is None else affine.weight

    @property
    def bias(self) -> Tensor | None:
        """``Tensor[K]``: the effective classifier bias (folding included), or None."""
        affine = self.affine()
        return None if affine is None else affine.bias

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        if self.weight is not None:
            return int(self.weight.shape[0])
        assert self.feature_shape is not None
        return self.feature_shape[0]

    def describe(self) -> str:
        """One line, e.g. ``layer4 -> fc (1000x2048), features 2048x7x7 at 224 px, residual 2e-06``."""
        if self.weight is not None:
            k, c = self.weight.shape
            text = f"{self.feature_name} -> {self.classifier_name} ({k}x{c})"
            if self.folded:
                text += f", folded: {', '.join(kind for _, kind in self.folded)}"
        else:
            text = f"{self.feature_name} (class maps)"
        return text + probe_text(self.feature_shape, self.probe_size, self.probe_residual)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the head (``folded`` only when something folded)."""
        return {
            "kind": self.kind,
            "features": self.feature_name,
            "classifier": self.classifier_name,
            "feature_shape": list(self.feature_shape) if self.feature_shape else None,
            "probe_size": self.probe_size,
            "probe_residual": self.probe_residual,
        } | (
            {"folded": [{"module": n, "type": kind} for n, kind in self.folded]}
            if self.folded
            else {}
        )


# --------------------------------------------------------------------------------------------
# Running a head


def features_and_logits(module: nn.Module, head: CamHead, batch: Tensor) -> tuple[Tensor, Tensor]:
    """Run the network once; return ``(features Tensor[N,C,h,w], logits Tensor[N,K])``.

    The features are exactly the tensor the network's global average pooling averages (or, for
    ``explicit`` heads, the named layer's output). Hooks live only for this call.
    """
    if head.kind == "forward_features":
        features = module.forward_features(batch)  # type: ignore[operator]
        return features, module.forward_head(features)  # type: ignore[operator]
    if head.kind == "tokens":
        tokens = module.forward_features(batch)  # type: ignore[operator]
        grid = tokens_to_grid(tokens, head, (int(batch.shape[-2]), int(batch.shape[-1])))
        return grid, module.forward_head(tokens)  # type: ignore[operator]
    name = type(module).__name__
    if head.kind == "traced":
        assert head.runner is not None
        features, output = head.runner(batch)
        return features, logits_of(output, name)
    if head.kind == "sequential":
        assert head.runner is not None
        return head.runner(batch), logits_of(module(batch), name)
    assert head.capture is not None
    return run_capturing(module, batch, head.capture, head.kind != "explicit", head.feature_name)


def run_capturing(
    module: nn.Module, batch: Tensor, point: nn.Module, inputs: bool, name: str
) -> tuple[Tensor, Tensor]:
    """Run ``module`` on ``batch`` (``Tensor[N,3,H,W]``) once, capturing the input (``inputs``)
    or the output of ``point`` (named ``name``): ``(captured tensor, logits Tensor[N,K])``, in the
    network's dtype (the captured tensor as ``point`` sees it, e.g. ``Tensor[N,C,h,w]``).

    Raises:
        UnsupportedModelError: ``point`` did not run exactly once.
    """
    with (capture_input if inputs else capture_output)(point) as captured:
        logits = logits_of(module(batch), type(module).__name__)
    if captured.tensor is None or captured.calls != 1:
        raise UnsupportedModelError(
            name, f"ran {captured.calls} times in one forward pass, expected once"
        )
    return captured.tensor, logits


def tokens_to_grid(tokens: Tensor, head: CamHead, input_hw: tuple[int, int]) -> Tensor:
    """``Tensor[N,T,D]`` transformer tokens -> ``Tensor[N,D,h,w]``: the patch tokens (class and
    register tokens left out) on their grid of ``input size // patch size`` cells."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 3:
        shape = list(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise UnsupportedModelError(head.feature_name, f"gives {shape}, not [N, tokens, D]")
    h, w = input_hw[0] // head.patch_size[0], input_hw[1] // head.patch_size[1]
    patches = tokens[:, head.prefix_tokens :]
    if patches.shape[1] != h * w:
        raise UnsupportedModelError(
            head.feature_name,
            f"gives {patches.shape[1]} patch tokens, not the {h}x{w} grid of the input",
        )
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
