"""Models from the Hugging Face world, read from local files only (camtool never downloads here).

- ``hf:FOLDER``: an image classifier saved with transformers' ``save_pretrained`` (``config.json``
  and ``model.safetensors``; ``preprocessor_config.json`` gives its preprocessing when present).
  Weights are read with safetensors, never unpickled, and no code from the folder runs.
- ``timm:NAME``: timm's pretrained weights, taken from the Hugging Face hub cache
  (``$HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``) where timm or ``hf download`` put
  them, without touching the network.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from torch import nn

from camtool.errors import InvalidArgumentError, ModelLoadError, UnknownModelError
from camtool.image import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

HF_PREFIX = "hf:"

# --------------------------------------------------------------------------------------------
# transformers folders


def load_transformers_folder(folder: str | Path) -> nn.Module:
    """Build the image classifier saved in ``folder`` (``save_pretrained`` output) from local
    files only: ``config.json`` and ``model.safetensors``; no remote code, nothing unpickled.

    Raises:
        ModelLoadError: no such folder, no config or safetensors weights, transformers missing,
            or a configuration transformers cannot build as an image classifier.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(path, "no such folder (hf:FOLDER names a save_pretrained folder)")
    if not (path / "config.json").is_file():
        raise ModelLoadError(path, "no config.json: not a transformers save_pretrained folder")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            path,
            "no model.safetensors: camtool reads transformers weights from safetensors only "
            "(save with model.save_pretrained(FOLDER), which writes them by default)",
        )
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(path, "needs transformers: pip install transformers") from None
    try:
        module = transformers.AutoModelForImageClassification.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except Exception as exc:  # transformers raises many types for configs it cannot build
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            path,
            f"transformers cannot build an image classifier from it ({type(exc).__name__}: {first})",
        ) from None
    assert isinstance(module, nn.Module)
    return module


def transformers_preprocessing(folder: str | Path) -> tuple[Preprocessing, str] | None:
    """The preprocessing in a folder's ``preprocessor_config.json`` (size, crop, mean, std,
    resampling), and a phrase naming it; None when the folder has none.

    Raises:
        ModelLoadError: naming the file: it cannot be read, or a value is out of bounds (a
            ``crop_pct`` of 0.05, a mean above 1), with the field and its bounds.
    """
    path = Path(folder).expanduser() / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        config: dict[str, Any] = json.loads(path.read_text("utf-8"))
        size = _edge(config.get("size"), 224)
        crop = _edge(config.get("crop_size"), size) if config.get("do_center_crop") else None
        if crop is not None:
            input_size, crop_pct = crop, min(1.0, crop / size)
        else:
            input_size, crop_pct = size, float(config.get("crop_pct") or 1.0)
        mean = [float(v) for v in config.get("image_mean", IMAGENET_MEAN)]
        std = [float(v) for v in config.get("image_std", IMAGENET_STD)]
        if len(mean) == 1:
            mean *= 3
        if len(std) == 1:
            std *= 3
        prep = Preprocessing(
            input_size=input_size,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            interpolation="bicubic" if config.get("resample") == 3 else "bilinear",
            crop_pct=crop_pct,
        )
    except InvalidArgumentError as exc:  # a value out of bounds: the file's fault, not a usage
        raise ModelLoadError(path, exc.problem) from None
    except (ValueError, TypeError, IndexError, AttributeError, OSError) as exc:
        raise ModelLoadError(path, f"cannot read this preprocessor config ({exc})") from None
    return (
        prep,
        f"the folder's preprocessor_config.json ({config.get('image_processor_type', 'transformers')})",
    )


def _edge(size: Any, default: int) -> int:
    """One edge length from a transformers ``size`` (an int, or ``shortest_edge`` or
    ``height``/``width`` in a dict)."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        for key in ("shortest_edge", "height", "width"):
            if isinstance(size.get(key), int):
                return int(size[key])
    return default


# --------------------------------------------------------------------------------------------
# timm names and timm's pretrained weights in the Hugging Face cache


def check_timm_name(name: str) -> None:
    """Refuse a name timm does not know, suggesting real timm names (close spellings, then names
    that contain it).

    Raises:
        UnknownModelError: naming up to five suggestions.
    """
    import timm

    if timm.is_model(name):
        return
    known = timm.list_models()
    base = name.partition(".")[0].lower()
    close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
    close += [k for k in known if base and base in k and k not in close][: 5 - len(close)]
    hint = (
        f"; did you mean {', '.join('timm:' + c for c in close)}?"
        if close
        else "; list timm's names with timm.list_models('*PATTERN*')"
    )
    raise UnknownModelError(f"timm:{name}", f"unknown timm model{hint}")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def timm_weights_in_cache(name: str) -> tuple[Path | None, str, str]:
    """``(file or None, repo id, file name)`` of timm's pretrained weights for ``name`` in the
    Hugging Face cache; looks only at local files."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(name)
    repo = getattr(config, "hf_hub_id", None) if config is not None else None
    if not repo:
        return None, "", ""
    filename = getattr(config, "hf_hub_filename", None) or "model.safetensors"
    for candidate in dict.fromkeys((filename, "model.safetensors", "pytorch_model.bin")):
        found = try_to_load_from_cache(repo, candidate)
        if isinstance(found, str):
            return Path(found), repo, candidate
    return None, repo, filename


def timm_pretrained(name: str, required: bool = True) -> tuple[nn.Module, str] | None:
    """timm model ``name`` with its pretrained weights from the local Hugging Face cache, and
    the weights file; None when they are not cached and not ``required``.

    Raises:
        UnknownModelError: timm does not know the name.
        ModelLoadError: the weights are not in the cache (the message names the cache folder and
            how to fill it), or timm cannot read them.
    """
    import timm

    check_timm_name(name)
    path, repo, filename = timm_weights_in_cache(name)
    if path is None:
        if not required:
            return None
        where = f"{repo} {filename}" if repo else "any"
        raise ModelLoadError(
            f"timm:{name}",
            f"no pretrained weights ({where}) in the Hugging Face cache {hf_hub_cache()}; camtool "
            f"does not download them: fetch them once with `hf download {repo or 'REPO'} "
            f"{filename or 'model.safetensors'}` (or timm.create_model('{name}', pretrained=True) "
            "online), set HF_HOME to where they are, or pass a weights file (--weights FILE)",
        )
    try:
        module = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "source": "file"}
        )
    except Exception as exc:  # timm raises many types for files it cannot read
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            path, f"timm cannot load these weights into {name} ({type(exc).__name__}: {first})"
        ) from None
    return module, str(path)
