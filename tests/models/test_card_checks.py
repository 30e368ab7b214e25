"""Model cards whose values validate but would break later, and weights files that are not weights:
each refused on reading, with the card (or file) and the field named, and nothing run."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.models.cards import LOADING_OPTIONS, ModelCard, builtin_card_dir, read_card
from tests.conftest import CAT

runner = CliRunner()

LITE0 = (builtin_card_dir() / "efficientnet_lite0.toml").read_text()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def lite0_card(folder: Path, values: dict[str, str]) -> Path:
    """The built-in efficientnet_lite0 card with ``[preprocessing]`` keys set to TOML ``values``
    (a key the card lacks is added), written in ``folder``."""
    text = LITE0
    for key, value in values.items():
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.MULTILINE)
        if not count:
            text = text.replace("[preprocessing]\n", f"[preprocessing]\n{key} = {value}\n")
    path = folder / "card.toml"
    path.write_text(text)
    return path


# -- numbers: finite, in range, and no crop that resizes past the pixel limit ----------------


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"input_size": "inf"}, "input_size must be a whole number of pixels from 16 to 4096, not inf"),
        ({"input_size": "nan"}, "input_size must be a whole number of pixels from 16 to 4096, not nan"),
        ({"input_size": "224.5"},
         "input_size must be a whole number of pixels from 16 to 4096, not 224.5"),
        ({"input_size": "true"},
         "input_size must be a whole number of pixels from 16 to 4096, not True"),
        ({"crop_pct": "1e-300"}, "crop_pct must be a number from 0.1 to 1, not 1e-300"),
        ({"crop_pct": "nan"}, "crop_pct must be a number from 0.1 to 1, not nan"),
        ({"crop_pct": "inf"}, "crop_pct must be a number from 0.1 to 1, not inf"),
        ({"crop_pct": '"0.9"'}, "crop_pct must be a number from 0.1 to 1, not '0.9'"),
        ({"crop_pct": "1.15"}, "crop_pct must be a number from 0.1 to 1, not 1.15"),
        ({"input_size": "4096", "crop_pct": "0.01"},
         "crop_pct must be a number from 0.1 to 1, not 0.01"),
        ({"crop_pct": "0.2"}, None),  # 224 / 0.2 = 1120 px: fine
        ({"input_size": "4096", "crop_pct": "0.2"},
         "crop_pct 0.2 at input size 4096 would resize images to a shorter side of 20480 px for the "
         "crop, above camtool's limit of 10000 px (100 megapixels for a square image): use a "
         "crop_pct of at least 0.4096"),
        ({"mean": "[nan, 0.5, 0.5]"}, "mean must be 3 numbers from 0 to 1, not [nan, 0.5, 0.5]"),
        ({"mean": "[true, 0.5, 0.5]"}, "mean must be 3 numbers from 0 to 1, not [True, 0.5, 0.5]"),
        ({"mean": "0.5"}, "mean must be 3 numbers from 0 to 1, not 0.5"),
        ({"std": "[1e-300, 0.5, 0.5]"},
         "std must be 3 numbers from 0.001 to 10, not [1e-300, 0.5, 0.5]"),
        ({"std": "[inf, 0.5, 0.5]"}, "std must be 3 numbers from 0.001 to 10, not [inf, 0.5, 0.5]"),
        ({"crop_ptc": "0.95"},
         "has an unknown key 'crop_ptc' (keys: input_size, interpolation, crop_pct, mean, std)"),
    ],
)  # fmt: skip
def test_a_card_number_that_would_break_later_is_refused_naming_the_field(
    tmp_path: Path, values: dict[str, str], problem: str | None
) -> None:
    card = lite0_card(tmp_path, values)
    code, _, err = run("explain", str(CAT), "-m", str(card), "--crop", "-o", str(tmp_path / "o"))
    if problem is None:
        assert code == 0, err
        return
    assert (code, err) == (1, f"Error: {card}: bad model card: [preprocessing] {problem}\n")


def test_preprocessing_refuses_a_crop_past_the_limit_from_any_source() -> None:
    """Not only cards: a Preprocessing built in Python (or from a Hugging Face folder's config)."""
    with pytest.raises(camtool.InvalidArgumentError, match="crop_pct must be a finite number"):
        camtool.Preprocessing(crop_pct=1e-300)
    with pytest.raises(camtool.InvalidArgumentError, match="crop_pct must be a finite number"):
        camtool.Preprocessing(crop_pct=float("inf"))
    assert camtool.Preprocessing(input_size=448, crop_pct=1.15).crop_pct == 1.15  # timm's VOLO
    with pytest.raises(camtool.InvalidArgumentError, match="shorter side of 20480 px"):
        camtool.Preprocessing(input_size=4096, crop_pct=0.2)
    with pytest.raises(camtool.InvalidArgumentError, match="std must be 3 numbers"):
        camtool.Preprocessing(std=(0.0, 1.0, 1.0))


# -- [architecture_options]: nothing that loads a file or fetches weights ----------------------


def test_a_checkpoint_path_option_cannot_bypass_the_cards_sha256(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    import timm

    torch.manual_seed(3)
    other = timm.create_model("resnet18", num_classes=3)
    checkpoint = tmp_path / "other.pth"
    torch.save(other.state_dict(), checkpoint)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    card = tmp_path / "card.toml"
    card.write_text(
        'architecture = "timm:resnet18"\nlabels = "labels.txt"\nrandom_weights = true\n\n'
        f'[architecture_options]\ncheckpoint_path = "{checkpoint}"\n'
    )
    code, _, err = run("explain", str(CAT), "-m", str(card), "-o", str(tmp_path / "o"))
    assert (code, err) == (
        1,
        f"Error: {card}: bad model card: [architecture_options] checkpoint_path is not allowed: it "
        "loads a checkpoint file (timm); a card's weights come only from its [weights] table, "
        "checked against its sha256\n",
    )
    # a card built in Python is held to the same rule
    python_card = ModelCard(
        "c", "timm:resnet18", labels=str(tmp_path / "labels.txt"), path=card,
        options={"checkpoint_path": str(checkpoint)},
    )  # fmt: skip
    with pytest.raises(camtool.ModelLoadError, match="checkpoint_path is not allowed"):
        camtool.load_model(python_card, device="cpu")


@pytest.mark.parametrize("option", sorted(LOADING_OPTIONS))
def test_every_loading_option_is_refused_with_its_name(tmp_path: Path, option: str) -> None:
    card = tmp_path / "card.toml"
    card.write_text(
        f'architecture = "resnet18"\nrandom_weights = true\n\n[architecture_options]\n{option} = true\n'
    )
    with pytest.raises(camtool.ModelLoadError) as caught:
        read_card(card)
    assert caught.value.subject == str(card)
    assert caught.value.problem.startswith(
        f"bad model card: [architecture_options] {option} is not allowed: it "
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("{ file = 'x.pth' }", "{'file': 'x.pth'}"),
        ("nan", "nan"),
        ("[1, [2, inf]]", "[1, [2, inf]]"),
    ],
)
def test_an_option_value_must_be_plain_toml(tmp_path: Path, value: str, shown: str) -> None:
    card = tmp_path / "card.toml"
    card.write_text(
        f'architecture = "resnet18"\nrandom_weights = true\n\n[architecture_options]\nx = {value}\n'
    )
    code, _, err = run("explain", str(CAT), "-m", str(card), "-o", str(tmp_path / "o"))
    assert (code, err) == (
        1,
        f"Error: {card}: bad model card: [architecture_options] x must be a string, a boolean, a "
        f"finite number or a list of them, not {shown}\n",
    )


def test_plain_option_values_still_reach_the_builder(tmp_path: Path) -> None:
    card = tmp_path / "card.toml"
    card.write_text(
        'architecture = "torchvision:resnet50"\nrandom_weights = true\n\n'
        "[architecture_options]\nzero_init_residual = true\nreplace_stride_with_dilation = "
        "[false, false, true]\n"
    )
    module = camtool.load_model(str(card), device="cpu").module
    assert isinstance(module, torchvision.models.ResNet)
    assert module.layer4[1].conv2.dilation == (2, 2)


# -- a card's weights file that is not a weights file ----------------------------------------


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="needs /etc/passwd")
def test_a_card_pointing_at_etc_passwd_says_it_is_not_a_weights_file(tmp_path: Path) -> None:
    relative = os.path.relpath("/etc/passwd", tmp_path)
    card = tmp_path / "card.toml"
    card.write_text(f'architecture = "resnet18"\n[weights]\nfile = "{relative}"\n')
    code, _, err = run("explain", str(CAT), "-m", str(card), "-o", str(tmp_path / "o"))
    assert (code, err) == (
        1,
        f"Error: {card}: [weights] file '{relative}' (/etc/passwd): is a text file, not a weights "
        "file (a torch file or safetensors)\n",
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty, not a weights file"),
        (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)),
         "is not a weights file: neither a torch file (zip or pickle) nor safetensors (it starts "
         "with bytes 7f 45 4c 46 02 01 01 00)"),
        (pickle.dumps({"fc.weight": [1.0, 2.0]}),
         "is a plain Python pickle holding no tensors, not a torch file or safetensors"),
    ],
)  # fmt: skip
def test_a_card_weights_file_outside_its_folder_is_named_with_what_it_is(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.pth").write_bytes(content)
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "card.toml"
    digest = hashlib.sha256(content).hexdigest()
    card.write_text(
        f'architecture = "resnet18"\n[weights]\nfile = "../elsewhere/w.pth"\nsha256 = "{digest}"\n'
    )
    code, _, err = run("explain", str(CAT), "-m", str(card), "-o", str(tmp_path / "o"))
    where = (tmp_path / "elsewhere" / "w.pth").resolve()
    assert (code, err) == (
        1,
        f"Error: {card}: [weights] file '../elsewhere/w.pth' ({where}): {problem}\n",
    )


# -- a plain pickle that would run code is named, and never unpickled ---------------------------


class RunsCode:
    """Unpickling this object would create a file: a stand-in for a malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_plain_pickle_that_would_run_code_is_named_and_never_unpickled(
    tmp_path: Path, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    path.write_bytes(pickle.dumps(RunsCode(marker), protocol=protocol))
    line = (
        f"Error: {path}: is a plain Python pickle, not a torch file; camtool never unpickles it "
        f"because unpickling runs code (it names {os.system.__module__}.system)\n"
    )
    for unsafe in ([], ["--unsafe-load-pickle"]):
        code, _, err = run(
            "explain", str(CAT), "-m", "resnet18", "--weights", str(path), *unsafe,
            "-o", str(tmp_path / "o"),
        )  # fmt: skip
        assert (code, err) == (1, line)
        assert not marker.exists()
    card = tmp_path / "card.toml"
    card.write_text('architecture = "resnet18"\n[weights]\nfile = "weights.pth"\n')
    code, _, err = run("explain", str(CAT), "-m", str(card), "-o", str(tmp_path / "o"))
    assert (code, err) == (
        1,
        f"Error: {card}: [weights] file 'weights.pth' ({path.resolve()}): is a plain Python "
        "pickle, not a torch file; camtool never unpickles it because unpickling runs code (it "
        f"names {os.system.__module__}.system)\n",
    )
    assert not marker.exists()


def test_a_legacy_torch_file_that_would_run_code_names_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "legacy.pth"
    torch.save({"payload": RunsCode(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(camtool.ModelLoadError) as caught:
        camtool.load_model("resnet18", weights=path, device="cpu")
    assert caught.value.problem == (
        f"refused: the file asks to run Python code ({os.system.__module__}.system); camtool "
        "reads only plain tensors (weights_only=True)"
    )
    assert not marker.exists()


def test_torch_files_of_both_formats_and_safetensors_named_pth_still_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(5)
    net = torchvision.models.resnet18(num_classes=3).eval()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "safetensors.pth"))
    for name in ("zip.pth", "legacy.pth", "safetensors.pth"):
        loaded = camtool.load_model("resnet18", weights=tmp_path / name, device="cpu").module
        assert torch.equal(loaded.state_dict()["fc.weight"], net.fc.weight), name


def test_a_crop_larger_than_the_resized_image_is_refused_not_sliced() -> None:
    # timm's VOLO models have crop_pct 1.15: the resized image is smaller than the crop, and the
    # centre-crop offset went negative, keeping a sliver of ~30 rows of the image
    volo = camtool.Preprocessing(input_size=224, crop_pct=1.15)
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        volo.prepare(image, crop=True)
    assert str(caught.value) == (
        "crop: this model's crop_pct is 1.15 (above 1): its centre crop would pad the image, "
        "which camtool does not do; use the whole image (no crop)"
    )
    batch, _ = volo.prepare(image)  # the whole image is fine
    assert tuple(batch.shape) == (3, 224, 299)


def test_crop_with_a_crop_pct_above_1_is_refused_once_before_any_image_is_read(
    tmp_path: Path,
) -> None:
    """One usage error for the run (exit 2), not one failure per image (exit 3)."""
    from camtool.image import check_crop
    from camtool.video import explain_frames
    from tests.conftest import COFFEE

    volo = camtool.load_model(
        "efficientnet_lite0", preprocessing=camtool.Preprocessing(crop_pct=1.15), device="cpu"
    )
    message = (
        "crop: this model's crop_pct is 1.15 (above 1): its centre crop would pad the image, "
        "which camtool does not do; use the whole image (no crop)"
    )
    check_crop(volo.preprocessing, crop=False)  # the whole image: fine
    check_crop(camtool.Preprocessing(crop_pct=1.0), crop=True)
    missing = tmp_path / "missing.png"  # never read: the refusal comes first
    calls = {
        "explain": lambda: camtool.explain([CAT, missing], volo, crop=True),
        "explain_iter": lambda: list(camtool.explain_iter([CAT, COFFEE], volo, crop=True)),
        "export": lambda: camtool.export([CAT, COFFEE], tmp_path / "out", volo, crop=True),
        "explain_frames": lambda: explain_frames(iter([]), volo, crop=True),
        "explain_video": lambda: camtool.explain_video(
            missing, tmp_path / "clip.mp4", volo, crop=True
        ),
    }
    for name, call in calls.items():
        with pytest.raises(camtool.InvalidArgumentError) as caught:
            call()
        assert (str(caught.value), caught.value.exit_code) == (message, 2), name
    assert [p.name for p in tmp_path.rglob("*")] in ([], ["out"])  # nothing written
    assert camtool.explain(CAT, volo).explained  # without crop the model explains
