"""Errors that say what is wrong: unreadable inputs, NaN weights, impossible devices and sizes,
empty module names. Each through the real command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.image import MAX_INPUT_SIZE
from camtool.models.cards import builtin_card_dir
from tests.conftest import CAT, ROOT, camtool_cli

runner = CliRunner()

# Root reads every file whatever its mode: the test drops that power (CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH) for the command, so a mode-000 file is really unreadable to it.
DROP_DAC = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def as_nobody() -> None:  # pragma: no cover - runs in the child
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def unprivileged(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` without the power to read files their modes forbid: as nobody when it can
    run the interpreter, else as root without its DAC capabilities; skip when neither works."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges (as any other user the test runs with them)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(cwd)}
    probe = [sys.executable, "-c", "import camtool.cli"]
    try:
        if (
            subprocess.run(
                probe, preexec_fn=as_nobody, env=env, cwd=cwd, capture_output=True
            ).returncode
            == 0
        ):
            return subprocess.run(
                command, preexec_fn=as_nobody, env=env, cwd=cwd, capture_output=True, text=True
            )
    except PermissionError:  # the interpreter lives where nobody cannot reach (/root, say)
        pass
    if shutil.which("setpriv") is None:
        pytest.skip(
            "cannot drop privileges: nobody cannot run the interpreter and setpriv is missing"
        )
    return subprocess.run(DROP_DAC + command, env=env, cwd=cwd, capture_output=True, text=True)


def test_an_unreadable_input_fails_alone_like_a_missing_one(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    good = tmp_path / "good.png"
    Image.open(CAT).convert("RGB").resize((96, 64)).save(good)
    locked = tmp_path / "locked.png"
    shutil.copy(good, locked)
    locked.chmod(0o000)
    good.chmod(0o644)
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    result = unprivileged(
        [
            sys.executable,
            "-m",
            "camtool.cli",
            "explain",
            str(good),
            str(locked),
            str(missing),
            "-o",
            str(out),
        ],
        tmp_path,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"Error: {locked}: permission denied\nError: {missing}: no such file\n"
    assert [p.name for p in out.iterdir()] == ["good_cam_285_egyptian_cat.png"]


# -- 15c: say what is wrong instead of "CAM is not exact" ------------------------------------


def test_nan_weights_are_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(num_classes=3).state_dict()
    state["classifier.1.weight"][1, 2, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    line = (
        "Error: SqueezeNet: the weights 'classifier.1.weight' contain NaN (1 of 1536 values): "
        "the checkpoint is damaged or its training diverged\n"
    )
    code, _, err = run("inspect", "squeezenet1_1", "--weights", str(path))
    assert (code, err) == (1, line)
    code, _, err = run(
        "explain",
        str(CAT),
        "-m",
        "squeezenet1_1",
        "--weights",
        str(path),
        "-o",
        str(tmp_path / "o"),
    )
    assert (code, err) == (1, line)
    assert not (tmp_path / "o").exists()


def test_the_meta_device_is_refused_with_the_choices(tmp_path: Path) -> None:
    line = (
        "Error: --device meta: device 'meta' holds no data (shapes only): choose cpu, cuda, "
        "cuda:N (the N-th GPU), mps or auto\n"
    )
    assert run("inspect", "efficientnet_lite0", "--device", "meta")[::2] == (2, line)
    assert run("explain", str(CAT), "--device", "meta", "-o", str(tmp_path))[::2] == (2, line)
    assert list(tmp_path.iterdir()) == []


def test_a_huge_input_size_is_refused_with_the_bound(tmp_path: Path) -> None:
    code, _, err = run("inspect", "efficientnet_lite0", "--input-size", "100000")
    assert (code, err) == (
        2,
        f"Error: 100000: input size 100000 is too large: camtool takes at most {MAX_INPUT_SIZE} px "
        "(an image's long side may reach 8x that)\n",
    )
    card = tmp_path / "big.toml"
    text = (builtin_card_dir() / "efficientnet_lite0.toml").read_text()
    card.write_text(text.replace("input_size = 224", "input_size = 100000"))
    code, _, err = run("explain", str(CAT), "-m", str(card), "-o", str(tmp_path / "o"))
    assert (code, err) == (
        1,
        f"Error: {card}: bad model card: [preprocessing] input_size must be a whole number of "
        f"pixels from 16 to {MAX_INPUT_SIZE}, not 100000\n",
    )
    with pytest.raises(camtool.InvalidArgumentError, match="too large"):
        camtool.Preprocessing(input_size=MAX_INPUT_SIZE + 1)


# -- 15d: an empty module name is a usage error ----------------------------------------------


@pytest.mark.parametrize("option", ["--layer", "--classifier"])
def test_an_empty_module_name_is_a_usage_error(tmp_path: Path, option: str) -> None:
    line = f"Error: {option}: an empty module name names no module; leave the option out\n"
    cli = [sys.executable, "-m", "camtool.cli"]
    for args in (["inspect", "resnet18"], ["explain", str(CAT), "-o", str(tmp_path)]):
        for value in ("", " "):
            result = subprocess.run([*cli, *args, option, value], capture_output=True, text=True)
            assert (result.returncode, result.stderr) == (2, line)
    assert list(tmp_path.iterdir()) == []


def test_the_library_refuses_an_empty_module_name_too() -> None:
    net = torchvision.models.resnet18()
    model = camtool.load_model(net)  # issue 9: layers are the method's business, not loading's
    with pytest.raises(camtool.InvalidArgumentError, match="layer: an empty module name"):
        camtool.methods.bind("cam", model, layer="")
    with pytest.raises(camtool.InvalidArgumentError, match="classifier: an empty module name"):
        camtool.methods.bind("cam", model, classifier="")


def test_json_to_a_full_stdout_is_one_error_line(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        result = camtool_cli(
            "explain", str(CAT), "--json", "-o", str(tmp_path), stdout=full.fileno()
        )
    assert result.returncode == 1
    assert result.stderr == "Error: <stdout>: cannot write the output: No space left on device\n"
