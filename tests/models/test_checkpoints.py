"""Your own weights, safely: state dicts, safetensors, torchvision names, TorchScript, downloads."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import os
import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.methods.cam import compute
from camtool.models.cards import find_card
from camtool.models.downloads import hub_cache_path
from camtool.models.weights import verified_weights_file
from tests.conftest import CAT, cam_head, camtool_cli

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    """A resnet18 'fine-tuned' to 3 classes (random weights), saved as a state dict + label file."""
    folder = tmp_path_factory.mktemp("fine_tuned")
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(net.state_dict(), folder / "my.pth")
    (folder / "my.txt").write_text("cat\ndog\nteapot\n")
    return folder / "my.pth", folder / "my.txt", net


def test_explain_with_a_fine_tuned_checkpoint_and_labels(
    tmp_path: Path, fine_tuned: tuple[Path, Path, torch.nn.Module]
) -> None:
    weights, labels, net = fine_tuned
    code, out, err = run(
        "explain", str(CAT), "--model", "resnet18", "--weights", str(weights), "--labels", str(labels),
        "--out", str(tmp_path), "--json", "-k", "3",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["head"].startswith("avgpool input -> fc (3x512)")
    predicted = doc["images"][0]["predictions"]
    assert {p["name"] for p in predicted} == {"cat", "dog", "teapot"}
    # The same probabilities as the network itself on the same input.
    model = camtool.load_model(net)
    batch, _ = camtool.load_model("resnet18", weights=weights).preprocessing.prepare(
        camtool.load_image(CAT)
    )
    with torch.no_grad():
        expected = net(batch[None]).softmax(-1)[0]
    top = predicted[0]
    assert top["probability"] == pytest.approx(float(expected[top["index"]]), abs=1e-5)
    assert model.labels == ("class 0", "class 1", "class 2")
    assert (tmp_path / f"chelsea_cam_{top['index']}_{top['name']}.png").exists()


def test_label_count_must_match(
    tmp_path: Path, fine_tuned: tuple[Path, Path, torch.nn.Module]
) -> None:
    weights, _, _ = fine_tuned
    labels = tmp_path / "two.txt"
    labels.write_text("a\nb\n")
    code, _, err = run(
        "explain",
        str(CAT),
        "-m",
        "resnet18",
        "--weights",
        str(weights),
        "--labels",
        str(labels),
        "-o",
        str(tmp_path),
    )
    assert code == 1 and err == f"Error: {labels}: 2 labels for a classifier of 3 classes\n"


def test_safetensors_weights(
    tmp_path: Path, fine_tuned: tuple[Path, Path, torch.nn.Module]
) -> None:
    _, _, net = fine_tuned
    path = tmp_path / "my.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = camtool.load_model("resnet18", weights=path)
    assert cam_head(model).num_classes == 3 and model.weights == str(path)


def test_corrupt_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"\0" + os.urandom(4095))  # never a zip, a pickle or safetensors
    code, _, err = run(
        "explain", str(CAT), "-m", "resnet18", "--weights", str(path), "-o", str(tmp_path)
    )
    assert (
        code == 1
        and err.startswith(
            f"Error: {path}: is not a weights file: neither a torch file (zip or pickle) nor "
            "safetensors (it starts with bytes 00 "
        )
        and err.count("\n") == 1
    )


def test_checkpoint_of_another_architecture_lists_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    code, _, err = run(
        "explain", str(CAT), "-m", "resnet18", "--weights", str(path), "-o", str(tmp_path)
    )
    assert code == 1
    assert err == (
        f"Error: {path}: weights do not fit the architecture: 96 unexpected keys (first: "
        "layer1.2.conv1.weight, layer1.2.bn1.weight, layer1.2.bn1.bias)\n"
    )


class RunsCode:
    """Unpickling this object would create a file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": RunsCode(marker)}, path)
    assert not marker.exists()
    code, _, err = run(
        "explain", str(CAT), "-m", "resnet18", "--weights", str(path), "-o", str(tmp_path / "o")
    )
    assert code == 1
    assert err == (
        f"Error: {path}: refused: the file asks to run Python code (posix.system); camtool reads "
        "only plain tensors (weights_only=True)\n"
    )
    assert not marker.exists()
    with pytest.raises(camtool.ModelLoadError):
        camtool.load_model("resnet18", weights=path)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(1)) == 1  # pickle itself still works; only camtool refused


def test_torchvision_weight_name_uses_the_local_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resnet18:IMAGENET1K_V1 is read from $TORCH_HOME/hub/checkpoints when the file is there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(2)
    torch.save(torchvision.models.resnet18().state_dict(), cached)  # our own file, at the real name
    model = camtool.load_model("resnet18:IMAGENET1K_V1")
    assert model.weights == str(cached)
    assert model.labels[281] == "tabby" and len(model.labels) == 1000
    assert model.preprocessing.input_size == 224 and model.preprocessing.crop_pct == pytest.approx(
        224 / 256
    )
    code, _, err = run("explain", str(CAT), "-m", "resnet18:IMAGENET1K_V9", "-o", str(tmp_path))
    assert code == 2 and err.startswith(
        "Error: resnet18:IMAGENET1K_V9: unknown weights; resnet18 has IMAGENET1K_V1"
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on localhost serving a folder: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def small_net_file(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A squeezenet1_1 with 3 classes and random weights from ``seed``, saved at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = torchvision.models.squeezenet1_1(num_classes=3).state_dict()
    torch.save(state, path)
    return state


def url_card(folder: Path, name: str, url: str, sha256: str | None = None) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "three.txt").write_text("cat\ndog\nteapot\n")
    sha = f'sha256 = "{sha256}"\n' if sha256 else ""
    (folder / f"{name}.toml").write_text(
        f'name = "{name}"\narchitecture = "torchvision:squeezenet1_1"\nlabels = "three.txt"\n'
        f'[weights]\nurl = "{url}"\n{sha}'
    )


def assert_loaded(model: camtool.LoadedModel, state: dict[str, torch.Tensor]) -> None:
    own = model.module.state_dict()
    assert all(torch.equal(own[k].cpu(), v) for k, v in state.items())


def test_card_url_downloads_into_the_cache_and_checks_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: tuple[Path, str]
) -> None:
    """The real download code over real HTTP: hash checked, file cached, a bad hash refused."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder, base = served
    state = small_net_file(folder / "tiny-net.pth", 4)
    digest = hashlib.sha256((folder / "tiny-net.pth").read_bytes()).hexdigest()
    cards = tmp_path / "cards"
    url_card(cards, "good", f"{base}/tiny-net.pth", digest)
    url_card(cards, "bad", f"{base}/tiny-net.pth", "0" * 64)
    monkeypatch.setenv("CAMTOOL_MODELS", str(cards))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    with pytest.raises(camtool.WeightsHashError, match="downloaded file has sha256"):
        camtool.load_model("bad")
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # nothing half-written or unverified
    model = camtool.load_model("good")
    cached = hub_cache_path(f"{base}/tiny-net.pth", digest)
    assert model.weights == str(cached) and cached.is_relative_to(cache / "camtool")
    assert cached.read_bytes() == (folder / "tiny-net.pth").read_bytes()
    assert_loaded(model, state)


def test_two_urls_ending_in_the_same_name_keep_their_own_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: tuple[Path, str]
) -> None:
    """Two cards whose URLs both end in model.pth: each loads its own weights, every time; a cached
    file that no longer matches its sha256 is fetched again instead of failing for ever."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder, base = served
    first = small_net_file(folder / "a" / "model.pth", 5)
    second = small_net_file(folder / "b" / "model.pth", 6)
    digest = hashlib.sha256((folder / "b" / "model.pth").read_bytes()).hexdigest()
    cards = tmp_path / "cards"
    url_card(cards, "first", f"{base}/a/model.pth")
    url_card(cards, "second", f"{base}/b/model.pth", digest)
    url_card(cards, "third", (folder / "a" / "model.pth").as_uri())
    url_card(cards, "fourth", (folder / "b" / "model.pth").as_uri(), digest)
    monkeypatch.setenv("CAMTOOL_MODELS", str(cards))
    for _ in range(2):  # downloaded, then from the cache
        assert_loaded(camtool.load_model("first"), first)
        assert_loaded(camtool.load_model("second"), second)
    cached = camtool.load_model("second").weights
    Path(cached).write_bytes(b"damaged")
    assert_loaded(camtool.load_model("second"), second)
    assert Path(cached).read_bytes() == (folder / "b" / "model.pth").read_bytes()
    third, fourth = camtool.load_model("third"), camtool.load_model("fourth")  # file://: in place
    assert third.weights == str(folder / "a" / "model.pth")
    assert fourth.weights == str(folder / "b" / "model.pth")
    assert_loaded(third, first)
    assert_loaded(fourth, second)


def test_torchscript_model_file(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=5).eval()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    model = camtool.load_model(str(path))
    head = cam_head(model)
    assert head.kind == "sequential" and head.classifier_name == "fc"
    out = compute(model, torch.randn(1, 3, 224, 256), classes=[0, 4])
    torch.testing.assert_close(
        out.cams.mean((-2, -1)) + out.bias, out.logits[:, [0, 4]], atol=1e-4, rtol=1e-4
    )
    code, _, err = run(
        "explain", str(CAT), "-m", str(tmp_path / "weights_only.pth"), "-o", str(tmp_path)
    )
    assert (code, err) == (2, f"Error: {tmp_path / 'weights_only.pth'}: no such file\n")


def test_a_weights_file_given_as_the_model_is_explained(
    tmp_path: Path, fine_tuned: tuple[Path, Path, torch.nn.Module]
) -> None:
    weights, _, _ = fine_tuned
    code, _, err = run("explain", str(CAT), "-m", str(weights), "-o", str(tmp_path))
    assert code == 1
    assert err == (
        f"Error: {weights}: is a weights file, not a model: name the architecture and pass this "
        "file as weights (--model resnet50 --weights FILE)\n"
    )


def test_inspect_reports_the_head_and_refuses_with_the_reason() -> None:
    code, out, err = run("inspect", "resnet18", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["head_detail"] == {
        "kind": "pool_input", "features": "avgpool input", "classifier": "fc",
        "feature_shape": [512, 7, 7], "probe_size": 224, "probe_residual": info["head_detail"]["probe_residual"],
    }  # fmt: skip
    assert info["head_detail"]["probe_residual"] < 1e-4 and info["parameters"] == 11689512
    code, out, _ = run("inspect", "efficientnet_lite0", "--input-size", "320")
    assert code == 0 and "1280 channels, 10x10 cells for a 320 px square image" in out
    # The model loads (issue: loading knows nothing of its consumer); inspect says why CAM cannot
    # explain it, with the same reason as before.
    code, out, err = run("inspect", "mobilenet_v3_small", "--json")
    assert code == 0, err
    assert json.loads(out)["methods"]["cam"] == {
        "explains": False,
        "reason": "MobileNetV3: CAM is not exact for this network: a hidden layer between the global "
        "pooling and the classifier: 'classifier.0' (Linear), 'classifier.1' (Hardswish)",
    }


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_keeps_the_prediction_and_checks_the_identity(
    dtype: str, tmp_path: Path
) -> None:
    ex = camtool.explain(CAT, dtype=dtype)
    assert ex.predictions[0].name == "Egyptian cat"
    assert ex.residual < 5e-2 * max(1.0, ex.predictions[0].logit)
    code, _, err = run("explain", str(CAT), "--dtype", dtype, "-o", str(tmp_path))
    assert code == 0, err
    code, _, err = run("explain", str(CAT), "--dtype", "float8", "-o", str(tmp_path))
    assert (
        code == 2
        and err
        == "Error: --dtype float8: unknown dtype: choose float32 (fp32), float16 (fp16, "
        "half) or bfloat16 (bf16)\n"
    )


def test_offline_download_says_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with socket.socket() as probe:  # a port nothing listens on: the download is refused
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/far-0123abcd.pth"
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "far.toml").write_text(
        f'name = "far"\narchitecture = "torchvision:resnet18"\n[weights]\nurl = "{url}"\n'
    )
    monkeypatch.setenv("CAMTOOL_MODELS", str(tmp_path / "cards"))
    with pytest.raises(camtool.ModelLoadError) as info:
        camtool.load_model("far")
    target = hub_cache_path(url)
    assert target.is_relative_to(tmp_path / "torch" / "hub" / "checkpoints" / "camtool")
    assert str(info.value).endswith(f"; put the file at {target}")
    assert str(info.value).startswith(url) and not target.exists()


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (argparse.Namespace(lr=0.1, epochs=90), "argparse.Namespace"),
        (np.float64(0.71), "numpy._core.multiarray.scalar, numpy.dtype"),
    ],
)
def test_a_checkpoint_with_training_objects_names_them_and_how_to_load_it(
    tmp_path: Path, extra: object, names: str
) -> None:
    """As torchvision's reference scripts save: {'model': state dict, 'args': Namespace, ...}."""
    path = tmp_path / "checkpoint.pth"
    torch.manual_seed(7)
    state = torchvision.models.squeezenet1_1(num_classes=3).state_dict()
    torch.save({"model": state, "epoch": 3, "extra": extra}, path)
    code, _, err = run("inspect", "squeezenet1_1", "--weights", str(path))
    assert code == 1
    assert err == (
        f"Error: {path}: refused: the checkpoint holds Python objects besides tensors ({names}), "
        "which weights_only=True does not load; save the state dict alone "
        "(torch.save(model.state_dict(), FILE)), or, if you trust the file, allow them in Python "
        f"with torch.serialization.add_safe_globals([{names}]) before loading\n"
    )
    allowed = [type(extra)] if isinstance(extra, argparse.Namespace) else [
        np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float64))
    ]  # fmt: skip
    with torch.serialization.safe_globals(allowed):  # the advice works
        model = camtool.load_model("squeezenet1_1", weights=path, device="cpu")
    assert_loaded(model, state)


def test_finite_weights_that_overflow_are_named(tmp_path: Path) -> None:
    state = torch.load(verified_weights_file(find_card("efficientnet_lite0")), weights_only=True)
    state["_fc.weight"].fill_(1e38)
    path = tmp_path / "big.pth"
    torch.save(state, path)
    result = camtool_cli(
        "explain", str(CAT), "--method", "cam", "--weights", str(path), "-o", str(tmp_path / "o")
    )
    assert result.returncode == 1
    assert "NaN or infinity on a probe image" in result.stderr and "not exact" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
