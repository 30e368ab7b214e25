"""Where weights come from: URLs (``file://`` read in place), torch's hub cache and camtool's own
folder per URL, downloads checked against the hash before the file lands, a card's weights file
and whether it is installed, sha256 of a file.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from camtool.errors import ModelLoadError
from camtool.io.files import open_regular_file
from camtool.models.cards import ModelCard
from camtool.naming import fit

# --------------------------------------------------------------------------------------------
# Weights


_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")


def local_url_path(url: str) -> Path | None:
    """The file a ``file://`` URL names (read in place, never copied), or None for other URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(urllib.request.url2pathname(parsed.path))


def _url_file_name(url: str) -> str:
    """The last part of a URL's path, decoded, as one safe file name."""
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    return fit(name or "weights")


def torch_hub_path(url: str) -> Path:
    """Where torch's hub keeps a downloaded checkpoint: ``$TORCH_HOME/hub/checkpoints/<name>``.

    Shared by every URL of that name, so camtool uses a file there only when its name carries
    the hash prefix torch.hub checks (``resnet18-f37072fd.pth``, as torchvision's URLs do) and
    the file matches it.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / _url_file_name(url)


def hub_cache_path(url: str, sha256: str | None = None) -> Path:
    """Where camtool keeps a checkpoint it downloads: one folder per URL (and expected sha256),
    ``$TORCH_HOME/hub/checkpoints/camtool/<key>/<name>``, so two URLs that end in the same file
    name never share a file."""
    key = hashlib.sha256(f"{url}\n{(sha256 or '').lower()}".encode()).hexdigest()[:16]
    return Path(torch.hub.get_dir()) / "checkpoints" / "camtool" / key / _url_file_name(url)


def weights_match(path: Path, url: str, sha256: str | None = None) -> bool:
    """True when ``path`` has the sha256 expected for ``url`` (the whole one given, or the hex
    prefix in the URL's file name); True when neither is known."""
    prefix = _HASH_PREFIX.search(_url_file_name(url))
    if not sha256 and prefix is None:
        return True
    actual = file_sha256(path)
    if sha256:
        return actual == sha256.lower()
    return prefix is None or actual.startswith(prefix[1])


def cached_weights(url: str, sha256: str | None = None) -> Path | None:
    """The local file of ``url`` if there is one (not hashed here: see :func:`download_weights`)."""
    local = local_url_path(url)
    if local is not None:
        return local if local.is_file() else None
    return next((path for path in _cache_candidates(url, sha256) if path.is_file()), None)


def _cache_candidates(url: str, sha256: str | None) -> list[Path]:
    """camtool's own cache file for ``url``, then torch's when its name carries a hash prefix."""
    shared = torch_hub_path(url)
    return [hub_cache_path(url, sha256)] + ([shared] if _HASH_PREFIX.search(shared.name) else [])


def download_weights(url: str, sha256: str | None = None) -> Path:
    """Return a local, verified file holding ``url``'s checkpoint, downloading it when needed.

    ``file://`` URLs are read in place. Other URLs are looked up in camtool's cache (a folder per
    URL, :func:`hub_cache_path`) and, for names with a hash prefix, in torch's own
    (:func:`torch_hub_path`), and downloaded into camtool's cache otherwise. Every use checks the
    file in camtool's cache against ``sha256`` (whole) or the hash prefix in its name (a file that
    fails is downloaded again), and a file in torch's cache against ``sha256`` when given; a
    download that fails its check is deleted.
    """
    from camtool.errors import WeightsHashError

    local = local_url_path(url)
    if local is not None:
        if not local.is_file():
            raise ModelLoadError(url, f"no such weights file: {local}")
        if not weights_match(local, url, sha256):
            raise WeightsHashError(
                local,
                "sha256 differs from the expected one: the file is damaged or not the expected one",
            )
        return local
    own, *shared = _cache_candidates(url, sha256)
    if own.is_file() and weights_match(own, url, sha256):
        return own
    # torch's own cache: its files were checked against their name's hash prefix when torch (or
    # torchvision) downloaded them, and torch uses them unchecked since; a card's sha256 is checked.
    for candidate in shared:
        if candidate.is_file() and (not sha256 or weights_match(candidate, url, sha256)):
            return candidate
    target = hub_cache_path(url, sha256)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            target.parent, f"cannot create the cache folder: {exc.strerror or exc}"
        ) from None
    partial = target.with_name(f".{target.name[:200]}.part")
    try:
        torch.hub.download_url_to_file(url, str(partial), hash_prefix=None, progress=False)
        if not weights_match(partial, url, sha256):
            raise WeightsHashError(
                url,
                f"downloaded file has sha256 {file_sha256(partial)[:16]}..., not the expected one",
            )
        os.replace(partial, target)
    except OSError as exc:
        raise ModelLoadError(
            url,
            f"cannot download ({getattr(exc, 'reason', None) or exc}); put the file at {target}",
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def weights_path(card: ModelCard) -> Path | None:
    """Return the local path of a card's weights file, or None if it is not installed."""
    source = card.weights
    if source is None:
        return None
    if source.url and not source.file:
        return cached_weights(source.url, source.sha256)
    if source.file is None:
        return None
    if source.package:
        spec = importlib.util.find_spec(source.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / source.file
    else:
        path = Path(source.file).expanduser()
        if not path.is_absolute() and card.path is not None:
            path = card.path.parent / path
    return path if path.is_file() else None


def weights_status(card: ModelCard) -> str:
    """Return ``"installed"`` or a one-line hint telling how to get a card's weights."""
    if card.weights is None:
        return "no weights (random init)"
    if weights_path(card) is not None:
        return "installed"
    if card.weights.distribution:
        return f"missing: pip install '{card.weights.distribution}'"
    if card.weights.url:
        return "downloaded on first use"
    return f"missing: {card.weights.file}"


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open_regular_file(path, ModelLoadError, "weights file") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
