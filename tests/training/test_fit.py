"""`camtool fit`: a GAP head trained on Fashion-MNIST (Debian's dataset-fashion-mnist), reloaded
from its card and explained; the Flatten comparison; the cache; bad data; Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.training import DatasetError, FitWarning, read_dataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import fashion_mnist  # noqa: E402

pytestmark = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason="Debian's dataset-fashion-mnist is not installed (scripts/setup.sh test installs it)",
)

runner = CliRunner()

#: Measured: 0.830 (GAP head, 500 train / 200 val images at 64 px, seed 0, 30 epochs).
MIN_VAL_ACCURACY = 0.78
SIZE = "64"  # 28x28 images at 64 px: 2x2 feature maps, 1200 backbone passes in a few seconds


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One `camtool fit` through the CLI: 500 training and 200 validation images."""
    root = tmp_path_factory.mktemp("fit")
    data = fashion_mnist.write_folder(root / "fm", train=500, val=200, seed=0)
    out, cache = root / "mymodel", root / "cache"
    result = runner.invoke(app, [
        "fit", str(data / "train"), "-o", str(out), "--val", str(data / "val"),
        "--input-size", SIZE, "--epochs", "30", "--cache", str(cache), "-q", "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return {"data": data, "out": out, "cache": cache, "stdout": Path(result.stdout)}


def test_gap_head_learns_fashion_mnist_and_writes_the_model_folder(
    trained: dict[str, Path],
) -> None:
    out = trained["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "card.toml", "labels.txt", "report", "weights.safetensors",
    ]  # fmt: skip
    card = tomllib.loads((out / "card.toml").read_text())
    metrics = card["training"]["metrics"]
    assert metrics["gap_val_accuracy"] >= MIN_VAL_ACCURACY
    assert metrics["gap_parameters"] == 1280 * 10 + 10
    assert card["training"]["train_images"] == 500 and card["training"]["val_images"] == 200
    assert card["training"]["data"] == str(trained["data"] / "train")
    assert len(card["training"]["data_sha256"]) == 64
    assert card["preprocessing"]["input_size"] == 64
    assert (out / "labels.txt").read_text().splitlines()[0] == "Ankle boot"
    report = out / "report"
    assert Image.open(report / "confusion.png").mode == "RGB"
    sheets = sorted(p.name for p in report.glob("class_*.png"))
    assert len(sheets) == 10 and "class_8_t_shirt_top.png" in sheets
    matrix = json.loads((report / "metrics.json").read_text())["confusion_matrix"]
    assert sum(map(sum, matrix)) == 200
    assert "gap" in str(trained["stdout"]) and "exact CAMs" in str(trained["stdout"])


def test_saved_card_explains_validation_images_as_training_predicted(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    with open(trained["out"] / "report" / "validation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = rows[::40]
    result = runner.invoke(app, [
        "explain", *[r["file"] for r in picked], "-m", str(trained["out"] / "card.toml"),
        "--json", "-o", str(tmp_path), "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["method"] == "cam"
    for row, image in zip(picked, doc["images"], strict=True):
        assert image["predictions"][0]["name"] == row["predicted"]
        assert abs(image["predictions"][0]["probability"] - float(row["probability"])) < 1e-3
        assert image["identity_residual"] < 1e-4  # the CAM identity holds on the trained head


def test_second_run_reads_the_feature_cache(trained: dict[str, Path], tmp_path: Path) -> None:
    data, cache = trained["data"], trained["cache"]
    files = sorted(cache.iterdir())
    assert [f.suffix for f in files] == [".safetensors"] * 2  # train (with flips) and val
    report = camtool.fit(
        data / "train", tmp_path / "again", val=data / "val", input_size=64, epochs=5,
        learning_rate=3e-3, cache_dir=cache, device="cpu", report=False,
    )  # fmt: skip
    assert report.features_cached and sorted(cache.iterdir()) == files
    assert report.heads[0].epochs == 5 and not (tmp_path / "again" / "report").exists()
    ex = camtool.explain(report.validation[0].path, report.model)
    assert ex.predictions[0].index == report.validation[0].predicted


def test_flatten_head_is_compared_and_explained_by_the_integrated_head(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    data = fashion_mnist.write_folder(tmp_path / "fm", train=200, val=100, seed=1)
    report = camtool.fit(
        data / "train", tmp_path / "flat", val=data / "val", input_size=64, head="flatten",
        epochs=10, use_cache=False, device="cpu", report=False,
    )  # fmt: skip
    gap, flatten = report.heads
    assert (gap.head, flatten.head) == ("gap", "flatten")
    assert gap.parameters == 12_810 and flatten.parameters == 1280 * 2 * 2 * 10 + 10
    text = report.summary()
    assert "12,810" in text and "51,210" in text and "integrated-head" in text
    card = tomllib.loads(report.card.read_text())
    assert card["architecture_options"] == {"head": "flatten", "grid": 2}
    ok, reason = camtool.methods.can_explain("cam", report.model)
    assert not ok, reason
    ex = camtool.explain(report.validation[0].path, report.model)
    assert ex.method == "integrated-head"
    assert ex.predictions[0].index == report.validation[0].predicted


def _tiny(folder: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (24, 24), (40 * i % 256, 200 if "a" in name else 20, 90)).save(
                folder / name / f"{i}.png"
            )
    return folder


def test_bad_data_gives_one_clear_line(tmp_path: Path) -> None:
    one = _tiny(tmp_path / "one", {"cat": 3})
    result = runner.invoke(app, ["fit", str(one), "-o", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {one}: one class ('cat'): a classifier needs at least two classes"
    )
    clash = _tiny(tmp_path / "clash", {"T-shirt": 2, "t shirt": 2})
    result = runner.invoke(app, ["fit", str(clash), "-o", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "classes 'T-shirt' and 't shirt' have the same file name 't_shirt'" in result.stderr
    lonely = _tiny(tmp_path / "lonely", {"cat": 3, "dog": 1})
    result = runner.invoke(app, ["fit", str(lonely), "-o", str(tmp_path / "m")])
    assert result.exit_code == 1 and "class 'dog' has 1 image" in result.stderr
    assert not (tmp_path / "m").exists()
    with pytest.raises(DatasetError, match="line 2: expected 'file,label', got 3 fields"):
        (tmp_path / "bad.csv").write_text("file,label\na.png,cat,extra\n")
        camtool.fit(tmp_path / "bad.csv", tmp_path / "m")


def test_unreadable_images_and_empty_classes_are_left_out_with_a_warning(tmp_path: Path) -> None:
    data = _tiny(tmp_path / "data", {"cat": 4, "dog": 4})
    (data / "empty").mkdir()
    (data / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.glob("*/*.png"))]
    (data / "list.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    with pytest.warns(FitWarning) as caught:
        report = camtool.fit(
            data, tmp_path / "m", input_size=32, epochs=2, use_cache=False, device="cpu",
            report=False,
        )  # fmt: skip
    messages = [str(w.message) for w in caught]
    assert any("class folder has no images; class 'empty' is left out" in m for m in messages)
    assert any(m.startswith(str(data / "dog" / "broken.png")) and "left out" in m for m in messages)
    assert report.labels == ("cat", "dog") and len(report.skipped) == 1
    assert report.train_images + report.val_images == 8
    from_csv = read_dataset(data / "list.csv")
    assert from_csv.labels == ("cat", "dog") and from_csv.counts() == [4, 5]
    assert from_csv.samples[-1].path == data / "dog" / "broken.png"
    result = runner.invoke(app, ["fit", str(data), "-o", str(tmp_path / "m"), "-q"])
    assert result.exit_code == 2  # a usage error, found before any image is read
    assert "exists and is not empty" in result.stderr


def test_ctrl_c_keeps_the_best_checkpoint(trained: dict[str, Path], tmp_path: Path) -> None:
    data, out = trained["data"], tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "camtool.cli", "fit", str(data / "train"), "-o", str(out),
         "--val", str(data / "val"), "--input-size", SIZE, "--epochs", "100000",
         "--cache", str(trained["cache"]), "-q", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # the cache is warm: training starts within seconds
        lines.append(line)
        if line.startswith("training the gap head"):
            break
    time.sleep(6.0)  # some epochs end (under load too); 100000 do not
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(lines) + stderr
    assert "Interrupted: saved the best epoch so far." in stdout, stderr
    card = tomllib.loads((out / "card.toml").read_text())
    assert card["training"]["interrupted"] is True
    assert 1 <= card["training"]["metrics"]["gap_best_epoch"] < 100000
    assert [p.name for p in tmp_path.iterdir()] == ["stopped"]  # no temporary folder left
    model = camtool.load_model(str(out / "card.toml"), device="cpu")
    assert model.labels[0] == "Ankle boot" and tuple(model.module._fc.weight.shape) == (10, 1280)
    assert torch.isfinite(model.module._fc.weight).all()


def test_finetune_trains_the_last_stage_and_stays_exact(tmp_path: Path) -> None:
    """`finetune_stages=1` changes the backbone's last stage (not the earlier ones), and the saved
    model reloads with the predictions training made, explained by exact CAM."""
    data = fashion_mnist.write_folder(tmp_path / "fm", train=40, val=20, seed=1)
    report = camtool.fit(
        data / "train", tmp_path / "tuned", val=data / "val", input_size=32, epochs=2,
        finetune_stages=1, device="cpu", report=False, use_cache=False,
    )  # fmt: skip
    base = camtool.load_model("efficientnet_lite0", device="cpu").module.state_dict()
    tuned = report.model.module.state_dict()
    changed = {
        name for name, value in tuned.items()
        if name in base and value.shape == base[name].shape and value.is_floating_point()
        and not torch.equal(value.cpu(), base[name].cpu())
    }  # fmt: skip
    assert changed, "fine-tuning changed no backbone weight"
    early = ("_conv_stem.", "_bn0.", "_blocks.0.", "_blocks.1.")
    assert not any(name.startswith(early) for name in changed), sorted(changed)[:5]
    assert any(name.startswith("_conv_head.") for name in changed), sorted(changed)[:5]
    image = report.validation[0]
    ex = camtool.explain(image.path, report.model, method="cam", device="cpu")
    assert ex.method == "cam" and ex.residual is not None and abs(ex.residual) < 1e-3
    assert ex.predictions[0].index == image.predicted
