"""Loading the user's own models: Hugging Face transformers classifiers, whole pickled models,
timm names and timm weights in the Hugging Face cache, and model cards naming architectures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.errors import ModelOutputError
from tests.conftest import CAT, ROOT, camtool_cli

transformers = pytest.importorskip("transformers")
runner = CliRunner()

LABELS = ("heron", "kettle", "lantern", "otter", "quince")


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def small_resnet() -> nn.Module:
    """A real transformers ResNetForImageClassification from a small local config (no download),
    random weights, five named classes."""
    config = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1], layer_type="basic",
        num_labels=5, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )  # fmt: skip
    torch.manual_seed(4)
    return transformers.ResNetForImageClassification(config).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    folder = tmp_path_factory.mktemp("hf") / "my-resnet"
    model = small_resnet()
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ConvNextImageProcessor",
                "size": {"shortest_edge": 96},
                "crop_pct": 0.875,
                "resample": 3,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
            }
        )
    )
    return folder, model


# --------------------------------------------------------------------------------------------
# transformers classifiers


def test_transformers_resnet_is_explained_exactly_with_its_id2label(
    hf_folder: tuple[Path, nn.Module],
) -> None:
    _, model = hf_folder
    loaded = camtool.load_model(model, preprocessing=camtool.Preprocessing(input_size=96))
    assert loaded.labels == LABELS
    assert loaded.labels_source == "the model's config.id2label (ResNetConfig)"
    ex = camtool.explain(CAT, loaded, method="cam", top_k=5)
    assert isinstance(ex, camtool.Explanation)
    batch, _ = loaded.preprocessing.prepare(camtool.load_image(CAT))
    with torch.no_grad():
        logits = model(batch[None]).logits[0]
    assert [p.index for p in ex.predictions] == logits.argsort(descending=True).tolist()
    assert ex.predictions[0].name == LABELS[int(logits.argmax())]
    head = camtool.methods.bind("cam", loaded).describe()
    assert head.startswith("resnet.pooler input -> classifier.1 (5x64)")
    assert ex.residual is not None and ex.residual < 1e-4 * max(1.0, float(logits.abs().max()))
    grad = camtool.explain(CAT, loaded, method="gradcam")
    assert isinstance(grad, camtool.Explanation)
    assert grad.predictions[0].index == int(logits.argmax())
    assert grad.heatmaps.shape[-2:] == (300, 451)


def test_tuple_outputs_and_plain_dicts_with_logits_are_understood() -> None:
    model = small_resnet()
    model.config.return_dict = False  # forward returns a tuple whose first element is the logits
    loaded = camtool.load_model(model, preprocessing=camtool.Preprocessing(input_size=64))
    assert loaded.labels == LABELS
    assert camtool.methods.bind("cam", loaded).describe().startswith("resnet.pooler input")

    class AsDict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=4)

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"features": x.mean(), "logits": self.net(x)}

    loaded = camtool.load_model(AsDict().eval(), preprocessing=camtool.Preprocessing(input_size=64))
    assert loaded.labels == ("class 0", "class 1", "class 2", "class 3")
    assert camtool.methods.bind("cam", loaded).describe().startswith("net.avgpool input -> net.fc")


class Segmenter(nn.Module):
    """Returns torchvision segmentation-style outputs: no class scores camtool can read."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        y = self.conv(x)
        return {"out": y, "aux": y}


def test_an_output_camtool_cannot_read_is_a_typed_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelOutputError) as caught:
        camtool.load_model(Segmenter())
    assert isinstance(caught.value, camtool.ModelLoadError)
    assert str(caught.value) == (
        "Segmenter: the network returns a dict with keys 'out', 'aux'; camtool reads [N, K] class "
        "scores from a tensor, a `logits` entry or attribute (Hugging Face ModelOutput, dict), or "
        "the first element of a tuple"
    )
    path = tmp_path / "segmenter.pt"
    torch.jit.save(torch.jit.script(Segmenter()), str(path))
    # In a process of its own: the claim is about what a user's terminal shows, and in-process
    # the captured stderr is shared with whatever an earlier test left running (a thread, a
    # logging handler, a finaliser), which on a busy machine can land a line in it.
    done = camtool_cli("explain", str(CAT), "-m", str(path), "-o", str(tmp_path))
    code, err = done.returncode, done.stderr
    assert code == 1
    assert err.startswith("Error: segmenter: the network returns a dict with keys 'out', 'aux';")
    assert err.count("\n") == 1


def test_a_save_pretrained_folder_loads_from_the_command_line(
    tmp_path: Path, hf_folder: tuple[Path, nn.Module]
) -> None:
    folder, model = hf_folder
    code, out, err = run(
        "explain", str(CAT), "-m", f"hf:{folder}", "--json", "-k", "5", "-o", str(tmp_path)
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["method"] == "cam" and doc["head"].startswith("resnet.pooler input")
    predictions = doc["images"][0]["predictions"]
    assert {p["name"] for p in predictions} == set(LABELS)
    preprocessing = camtool.Preprocessing(96, (0.5,) * 3, (0.25,) * 3, "bicubic", 0.875)
    batch, _ = preprocessing.prepare(camtool.load_image(CAT))
    with torch.no_grad():
        logits = model(batch[None]).logits[0]
    assert predictions[0]["index"] == int(logits.argmax())
    assert predictions[0]["logit"] == pytest.approx(float(logits.max()), abs=1e-4)
    code, out, err = run("inspect", f"hf:{folder}", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["labels_source"] == "the model's config.id2label (ResNetConfig)"
    assert info["preprocessing"]["input_size"] == 96
    assert info["preprocessing"]["source"].startswith("the folder's preprocessor_config.json")
    code, _, err = run("inspect", f"hf:{tmp_path}")
    assert code == 1 and "no config.json" in err


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("crop_pct", 0.05, "crop_pct must be a finite number of at least 0.1, not 0.05"),
        ("image_mean", [2, 2, 2], "mean must be 3 numbers from 0 to 1, not (2.0, 2.0, 2.0)"),
        ("image_std", [0], "std must be 3 numbers from 0.001 to 10, not (0.0, 0.0, 0.0)"),
    ],
)
def test_a_preprocessor_config_out_of_bounds_is_a_model_error_naming_the_file(
    hf_folder: tuple[Path, nn.Module], tmp_path: Path, field: str, value: object, problem: str
) -> None:
    import shutil

    folder = tmp_path / "bad-resnet"
    shutil.copytree(hf_folder[0], folder)
    config = folder / "preprocessor_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), field: value}))
    with pytest.raises(camtool.ModelLoadError) as caught:
        camtool.load_model(f"hf:{folder}")
    assert str(caught.value) == f"{config}: {problem}"
    assert caught.value.exit_code == 1
    code, _, err = run("inspect", f"hf:{folder}")
    assert code == 1  # after transformers' own "Loading weights" bar
    assert err.splitlines()[-1] == f"Error: {config}: {problem}"


def test_a_timm_pretrained_cfg_out_of_bounds_is_a_model_error_naming_it() -> None:
    timm = pytest.importorskip("timm")
    for overlay, problem in (
        ({"crop_pct": 0.05}, "crop_pct must be a finite number of at least 0.1, not 0.05"),
        ({"mean": (0.5, 0.5, 7.0)}, "mean must be 3 numbers from 0 to 1, not (0.5, 0.5, 7.0)"),
    ):
        net = timm.create_model("test_resnet", pretrained_cfg_overlay=overlay)
        with pytest.raises(camtool.ModelLoadError) as caught:
            camtool.load_model(net, device="cpu")
        assert str(caught.value) == f"timm pretrained_cfg (test_resnet): {problem}"
        assert caught.value.exit_code == 1
        mine = camtool.Preprocessing(input_size=64)  # the caller's wins, and the cfg is not read
        assert camtool.load_model(net, preprocessing=mine).preprocessing == mine


# --------------------------------------------------------------------------------------------
# whole pickled models


@pytest.fixture(scope="module")
def pickled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    path = tmp_path_factory.mktemp("pickled") / "whole.pt"
    torch.manual_seed(5)
    net = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(net, path)  # the whole model, not its state dict
    return path, net


def test_a_whole_pickled_model_is_refused_with_how_to_convert_it(
    tmp_path: Path, pickled: tuple[Path, nn.Module]
) -> None:
    path, _ = pickled
    for args in (["-m", str(path)], ["-m", "resnet18", "--weights", str(path)]):
        code, _, err = run("explain", str(CAT), *args, "-o", str(tmp_path))
        assert code == 1
        assert err == (
            f"Error: {path}: is a whole pickled model (torch.save(model); classes "
            "torchvision.models.resnet.BasicBlock, torchvision.models.resnet.ResNet, "
            "torch.nn.modules.activation.ReLU, ...), not a state dict; camtool does not unpickle it "
            "by default because unpickling runs code the file names. Convert it once, where its "
            f"classes import: torch.save(torch.load({str(path)!r}, weights_only=False).state_dict(), "
            "'weights.pth'), then use --model ARCHITECTURE --weights weights.pth; or, if you trust "
            "the file, load it as it is with --unsafe-load-pickle (this runs the file's code)\n"
        )
    assert list(tmp_path.iterdir()) == []


def test_unsafe_load_pickle_loads_a_whole_pickled_model(
    tmp_path: Path, pickled: tuple[Path, nn.Module]
) -> None:
    path, net = pickled
    batch, _ = camtool.Preprocessing().prepare(camtool.load_image(CAT))
    with torch.no_grad():
        expected = net(batch[None])[0]
    for args in (["-m", str(path)], ["-m", "resnet18", "--weights", str(path)]):
        code, out, err = run(
            "explain", str(CAT), *args, "--unsafe-load-pickle", "--json", "-k", "3", "-o", str(tmp_path)
        )  # fmt: skip
        assert code == 0, err
        doc = json.loads(out)
        assert doc["head"].startswith("avgpool input -> fc (3x512)")
        top = doc["images"][0]["predictions"][0]
        assert top["index"] == int(expected.argmax())
        assert top["logit"] == pytest.approx(float(expected.max()), abs=1e-4)
    loaded = camtool.load_model(str(path), unsafe_load_pickle=True, device="cpu")
    assert isinstance(loaded.module, torchvision.models.ResNet) and len(loaded.labels) == 3
    code, out, err = run("inspect", str(path), "--unsafe-load-pickle", "--json")
    assert code == 0, err
    assert json.loads(out)["methods"]["cam"]["explains"] is True


# --------------------------------------------------------------------------------------------
# timm names and the Hugging Face cache


def test_an_unknown_timm_name_suggests_real_timm_names(tmp_path: Path) -> None:
    code, _, err = run("explain", str(CAT), "-m", "timm:resnet18x", "-o", str(tmp_path))
    assert code == 2
    assert err.startswith("Error: timm:resnet18x: unknown timm model; did you mean timm:resnet18,")
    assert ":DEFAULT" not in err and err.count("\n") == 1
    card = tmp_path / "typo.toml"
    card.write_text('architecture = "timm:resnet18x"\nrandom_weights = true\n')
    code, _, err = run("inspect", str(card))
    assert code == 2 and "did you mean timm:resnet18," in err


def camtool_process(args: list[str], hf_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "camtool.cli", *args], capture_output=True, text=True, env=env,
        timeout=180, check=False,
    )  # fmt: skip


def test_timm_weights_in_the_hugging_face_cache_are_used_offline(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(6)
    net = timm.create_model("test_resnet", pretrained=False).eval()
    # the layout huggingface_hub gives a downloaded file: blobs, a snapshot per revision, refs
    repo = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, snapshot / "model.safetensors"
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)

    done = camtool_process(
        ["explain", str(CAT), "-m", "timm:test_resnet", "--json", "-o", str(tmp_path / "o")],
        tmp_path / "hf",
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    top = doc["images"][0]["predictions"][0]
    loaded = camtool.load_model(net, device="cpu")  # the same weights, timm's pretrained_cfg
    assert loaded.preprocessing.input_size == 160
    batch, _ = loaded.preprocessing.prepare(camtool.load_image(CAT))
    with torch.no_grad():
        expected = net(batch[None])[0]
    assert top["index"] == int(expected.argmax())
    assert top["logit"] == pytest.approx(float(expected.max()), abs=1e-3)

    empty = tmp_path / "empty"
    done = camtool_process(["explain", str(CAT), "-m", "timm:test_resnet"], empty)
    assert done.returncode == 1
    assert done.stderr == (
        "Error: timm:test_resnet: no pretrained weights (timm/test_resnet.r160_in1k "
        f"model.safetensors) in the Hugging Face cache {empty / 'hub'}; camtool does not download "
        "them: fetch them once with `hf download timm/test_resnet.r160_in1k model.safetensors` (or "
        "timm.create_model('test_resnet', pretrained=True) online), set HF_HOME to where they are, "
        "or pass a weights file (--weights FILE)\n"
    )


# --------------------------------------------------------------------------------------------
# cards


def test_a_card_naming_resnet18_gives_what_the_model_option_gives(tmp_path: Path) -> None:
    torch.manual_seed(8)
    net = torchvision.models.resnet18(num_classes=3).eval()
    weights = tmp_path / "pets.pth"
    torch.save(net.state_dict(), weights)
    (tmp_path / "pets.txt").write_text("cat\ndog\nrabbit\n")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = tmp_path / "pets.toml"
    card.write_text(
        f'name = "pets"\narchitecture = "resnet18"\nlabels = "pets.txt"\n\n'
        f'[preprocessing]\ninput_size = 224\ninterpolation = "bicubic"\ncrop_pct = 0.875\n\n'
        f'[weights]\nfile = "pets.pth"\nsha256 = "{digest}"\n'
    )
    by_card = run(
        "explain", str(CAT), "-m", str(card), "--json", "-k", "3", "-o", str(tmp_path / "a")
    )
    by_name = run(
        "explain", str(CAT), "-m", "resnet18", "--weights", str(weights), "--labels",
        str(tmp_path / "pets.txt"), "--json", "-k", "3", "-o", str(tmp_path / "b"),
    )  # fmt: skip
    assert by_card[0] == 0, by_card[2]
    assert by_name[0] == 0, by_name[2]
    card_doc, name_doc = json.loads(by_card[1]), json.loads(by_name[1])
    assert card_doc["head"] == name_doc["head"]
    card_top = card_doc["images"][0]["predictions"]
    name_top = name_doc["images"][0]["predictions"]
    assert [p["name"] for p in card_top] == [p["name"] for p in name_top]
    for a, b in zip(card_top, name_top, strict=True):
        assert a["logit"] == pytest.approx(b["logit"], abs=1e-5)
