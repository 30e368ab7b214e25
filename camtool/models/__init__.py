"""Models: a name, a card, a checkpoint or a module -> a :class:`LoadedModel` (the network, its
preprocessing and its labels).

- :mod:`camtool.models.loading`: :func:`load_model`, :class:`LoadedModel`;
- :mod:`camtool.models.building`: architectures, checkpoints, TorchScript, transformers folders;
- :mod:`camtool.models.cards`: model cards and label sets;
- :mod:`camtool.models.weights`, :mod:`camtool.models.downloads`: weights files, caches, URLs;
- :mod:`camtool.models.hub`: timm's and Hugging Face's local caches and folders;
- :mod:`camtool.models.network`: running a network (devices, dtypes, the probe, class scores);
- :mod:`camtool.models.efficientnet_lite`: the built-in EfficientNet-Lite, with its fused CPU
  path (:mod:`camtool.models.efficientnet_fused`).

The names below are importable from here, imported on first use.
"""

from __future__ import annotations

from camtool.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_MODEL": "camtool.models.loading",
    "LoadedModel": "camtool.models.loading",
    "load_model": "camtool.models.loading",
    "fixed_input_size": "camtool.models.loading",
    "labels_carried_by": "camtool.models.loading",
    "preprocessing_carried_by": "camtool.models.loading",
    "architecture_name": "camtool.models.building",
    "build_architecture": "camtool.models.building",
    "DTYPES": "camtool.models.network",
    "check_finite_weights": "camtool.models.network",
    "count_classes": "camtool.models.network",
    "describe_output": "camtool.models.network",
    "logits_of": "camtool.models.network",
    "network_failures": "camtool.models.network",
    "probe_image": "camtool.models.network",
    "resolve_device": "camtool.models.network",
    "resolve_dtype": "camtool.models.network",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = sorted(_EXPORTS)
