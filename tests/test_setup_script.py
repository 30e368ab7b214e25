"""Which torch build ``scripts/setup.sh`` installs: the CPU build where there is no NVIDIA driver
and PyTorch's CPU index answers, else the default build (``setup.sh torch-plan`` says which and
why, and installs nothing). The index is a real HTTP server on this machine, or a closed port."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

DRIVER = shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def torch_plan(index: str) -> str:
    env = {**os.environ, "CAMTOOL_TORCH_CPU_INDEX": index}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), "torch-plan"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def cpu_index(tmp_path: Path) -> Iterator[str]:
    """A local stand-in for https://download.pytorch.org/whl/cpu: it answers for ``torch/``."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<a href='torch-2.14.1+cpu.whl'>torch</a>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_without_a_driver_the_cpu_build_comes_from_an_index_that_answers(cpu_index: str) -> None:
    expected = "default: an NVIDIA driver is present" if DRIVER else f"cpu {cpu_index}"
    assert torch_plan(cpu_index).startswith(expected)


def test_an_index_that_cannot_be_reached_falls_back_to_the_default_build() -> None:
    index = f"http://127.0.0.1:{closed_port()}/whl/cpu"
    plan = torch_plan(index)
    if DRIVER:
        assert plan.startswith("default: an NVIDIA driver is present")
    else:
        assert plan == (
            f"default: no NVIDIA driver, but {index} cannot be reached (the default build runs "
            "on a CPU too)"
        )
    assert torch_plan("") in (
        "default: CAMTOOL_TORCH_CPU_INDEX is empty",
        "default: an NVIDIA driver is present (the default build brings CUDA)",
    )
