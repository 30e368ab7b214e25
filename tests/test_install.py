"""Installing camtool into an environment that already has torch: a built wheel, with an extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import CAT, CAT_CLASSES, ROOT

pytestmark = pytest.mark.slow


def clean_env() -> dict[str, str]:
    """The environment without this checkout on the path, so the installed camtool is used."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=clean_env(), cwd=cwd, timeout=300, check=False
    )


def venv_beside_torch(folder: Path) -> Path:
    """A fresh venv that already has torch and the other dependencies but not camtool: a
    ``.pth`` file points at a folder of links to this environment's packages (camtool left out).
    Nothing is copied, so it takes a second, and pip sees those packages as installed."""
    site = Path(sysconfig.get_paths()["purelib"])
    shared = folder / "shared-site"
    shared.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("camtool", "__editable__", "_camtool")) or name.endswith(".pth"):
            continue
        (shared / entry.name).symlink_to(entry)
    venv = folder / "venv"
    done = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], folder)
    assert done.returncode == 0, done.stderr
    purelib = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        folder,
    ).stdout.strip()
    Path(purelib, "existing-packages.pth").write_text(f"{shared}\n")
    return venv


def test_a_built_wheel_installs_beside_an_existing_torch_and_explains(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    done = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(wheels), str(ROOT)],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("camtool-*.whl")

    venv = venv_beside_torch(tmp_path)
    python = venv / "bin" / "python"
    done = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
         f"{wheel}[lite12]"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully installed camtool-" in done.stdout
    assert "torch" not in done.stdout.split("Successfully installed", 1)[1]
    # pip kept the torch that was there: same version, same files, nothing new in the venv
    where = run(
        [
            str(python),
            "-c",
            "import torch, camtool; print(torch.__version__, torch.__file__, camtool.__file__)",
        ],
        tmp_path,
    ).stdout.split()
    assert where[0] == torch.__version__
    assert Path(where[1]).resolve() == Path(torch.__file__).resolve()
    assert Path(where[2]).is_relative_to(venv)  # the installed camtool, not this checkout
    assert not list(venv.glob("lib/python*/site-packages/torch"))

    out = tmp_path / "out"
    done = run(
        [str(venv / "bin" / "camtool"), "explain", str(CAT), "--json", "-o", str(out)], tmp_path
    )
    assert done.returncode == 0, done.stderr
    image = json.loads(done.stdout)["images"][0]
    assert image["predictions"][0]["index"] in CAT_CLASSES
    (overlay,) = image["outputs"]
    assert Image.open(overlay).size == Image.open(CAT).size == (451, 300)

    done = run([str(venv / "bin" / "camtool"), "models"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "efficientnet_lite1" in done.stdout and "missing" not in done.stdout
