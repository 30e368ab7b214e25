"""Your own weights, safely: state dicts, safetensors, torchvision names, TorchScript, downloads."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.methods.cam import compute
from tests.conftest import CAT, cam_head

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
    path.write_bytes(os.urandom(4096))
    code, _, err = run(
        "explain", str(CAT), "-m", "resnet18", "--weights", str(path), "-o", str(tmp_path)
    )
    assert (
        code == 1
        and err.startswith(f"Error: {path}: not a readable weights file (")
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


def test_card_url_downloads_into_the_cache_and_checks_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real download code, fed a file:// URL: hash checked, file cached, a bad hash refused."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = tmp_path / "served" / "tiny-resnet18.pth"
    source.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cards = tmp_path / "cards"
    cards.mkdir()
    for name, sha in (("good", digest), ("bad", "0" * 64)):
        (cards / f"{name}.toml").write_text(
            f'name = "{name}"\narchitecture = "torchvision:resnet18"\n'
            f'[weights]\nurl = "{source.as_uri()}"\nsha256 = "{sha}"\n'
        )
    monkeypatch.setenv("CAMTOOL_MODELS", str(cards))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    with pytest.raises(camtool.WeightsHashError, match="downloaded file has sha256"):
        camtool.load_model("bad")
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing half-written or unverified
    model = camtool.load_model("good")
    assert model.weights == str(cache / "tiny-resnet18.pth")
    assert (cache / "tiny-resnet18.pth").read_bytes() == source.read_bytes()


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
    assert code == 2 and "unknown model" in err


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
    assert code == 0 and "1280x10x10 at 320 px" in out
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
        and err == "Error: float8: unknown dtype; choose one of float32, float16, bfloat16\n"
    )


def test_offline_download_says_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "far.toml").write_text(
        'name = "far"\narchitecture = "torchvision:resnet18"\n'
        f'[weights]\nurl = "{(tmp_path / "nowhere" / "far-0123abcd.pth").as_uri()}"\n'
    )
    monkeypatch.setenv("CAMTOOL_MODELS", str(tmp_path / "cards"))
    with pytest.raises(camtool.ModelLoadError) as info:
        camtool.load_model("far")
    target = tmp_path / "torch" / "hub" / "checkpoints" / "far-0123abcd.pth"
    assert str(info.value).endswith(f"; put the file at {target}")
    assert str(info.value).startswith("file://") and not target.exists()
