"""Export on a Ray cluster: one local cluster (2 CPUs, bound to 127.0.0.1 only) for the module;
the Ray export equals the local one, Ctrl-C leaves exactly the listed files and --resume finishes,
summary.json names the engine and the cluster."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import camtool  # noqa: E402
from camtool.cli import app  # noqa: E402
from camtool.export import ExportOptions  # noqa: E402
from camtool.journal import load_journal as load_manifest  # noqa: E402
from tests.conftest import CAT, COFFEE, make_bad_inputs  # noqa: E402

CLI = [sys.executable, "-m", "camtool.cli"]
BOOKKEEPING = {"manifest.jsonl", "summary.json", ".camtool-export.lock"}
TEMP = re.compile(r"\.camtool-[a-z0-9_]{8}\.part")
PNG = ExportOptions(image_format="png")
#: One Ctrl-C stops a run this soon, however long Ray would take to start (a loaded machine).
STOP_WITHIN_S = 30  # a bound against hanging, loose enough for a busy machine (typically 2-4 s)


def _listening_addresses(session: str) -> set[str]:
    """Local addresses of the TCP sockets that this Ray session's processes listen on."""
    inodes: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if session not in cmdline:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.add(fields[1].split(":")[0])
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs on 127.0.0.1, shared by the module; its address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        node = ray.nodes()[0]
        assert node["NodeManagerAddress"] == "127.0.0.1"
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        session = Path(ray._private.worker._global_node.get_session_dir_path()).name
        listening = _listening_addresses(session)
        assert listening, "found no listening socket of the Ray session"
        # 127.0.0.1, in /proc/net/tcp's and tcp6's (IPv4-mapped) hex forms
        assert listening <= {"0100007F", "0000000000000000FFFF00000100007F"}, listening
        yield address
    finally:
        ray.shutdown()


def small_images(folder: Path, count: int) -> list[Path]:
    """``count`` small photos in two sizes (two shape buckets), some in a subfolder."""
    cat, coffee = Image.open(CAT).convert("RGB"), Image.open(COFFEE).convert("RGB")
    paths = []
    for i in range(count):
        path = folder / ("sub" if i % 3 == 0 else "") / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        (cat if i % 2 else coffee).resize((72, 56) if i % 4 else (64, 48)).rotate(i * 7).save(path)
        paths.append(path)
    return paths


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def listed_files(out: Path) -> set[str]:
    return {os.path.relpath(f, out) for f in load_manifest(out / "manifest.jsonl").listed}


def image_records(out: Path) -> dict[str, dict[str, Any]]:
    records = load_manifest(out / "manifest.jsonl").records
    return {os.path.relpath(k, out.parent): v for k, v in records.items()}


def test_ray_export_equals_the_local_export(cluster: str, tmp_path: Path) -> None:
    """Good and bad files: the same files, overlays equal within rounding, the same manifest
    lines (failures with the same reasons); summary.json names the engine and the cluster."""
    folder = tmp_path / "in"
    small_images(folder, 8)
    bad = make_bad_inputs(folder / "bad")
    local = camtool.export([folder], tmp_path / "local", options=PNG, batch_size=4, workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        remote = camtool.export(
            [folder], tmp_path / "ray", options=PNG, batch_size=4, engine="ray", ray_actors=2
        )
    assert [str(w.message) for w in caught if "/ray/" in w.filename] == []  # Ray's are not ours
    assert (remote.total, remote.exported, remote.failed) == (local.total, 8, local.failed)
    assert remote.failed == 5  # empty, not an image, truncated jpeg and png, huge
    files = files_under(tmp_path / "local") - BOOKKEEPING
    assert files_under(tmp_path / "ray") - BOOKKEEPING == files
    assert len(files) == 8
    for name in files:
        a = np.asarray(Image.open(tmp_path / "local" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "ray" / name), dtype=np.int16)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 2, name  # batches differ: float rounding only
    ours, theirs = image_records(tmp_path / "local"), image_records(tmp_path / "ray")
    assert ours.keys() == theirs.keys()
    for key, record in ours.items():
        other = theirs[key]
        assert other["status"] == record["status"]
        if record["status"] == "failed":
            assert other["error"] == record["error"]
            continue
        assert [os.path.relpath(str(p), tmp_path / "local") for p in record["outputs"]] == [
            os.path.relpath(str(p), tmp_path / "ray") for p in other["outputs"]
        ]
        for field in ("input", "path", "output_stem", "width", "height", "model", "method",
                      "head", "network_input", "feature_grid"):  # fmt: skip
            assert other[field] == record[field], field
        for mine, yours in zip(record["explained"], other["explained"], strict=True):
            assert (mine["index"], mine["name"]) == (yours["index"], yours["name"])
            assert mine["probability"] == pytest.approx(yours["probability"], abs=1e-4)
        assert [p["index"] for p in record["predictions"]] == [
            p["index"] for p in other["predictions"]
        ]
    errors = {os.path.basename(k): v["error"] for k, v in theirs.items() if v["status"] == "failed"}
    assert errors["notes.jpg"].endswith(bad["not-an-image"][1])
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["engine"] == "ray" and summary["device"] == "cpu"
    assert summary["ray"]["actors"] == 2 and summary["ray"]["gpus_per_actor"] == 0
    assert summary["ray"]["address"] == cluster
    assert summary["ray"]["resources"]["CPU"] == 2.0
    assert summary["ray"]["resources"]["nodes"] == 1
    assert summary["exported"] == 8 and summary["failed"] == 5
    assert json.loads((tmp_path / "local" / "summary.json").read_text())["engine"] == "local"


def test_ctrl_c_leaves_the_listed_files_and_resume_finishes(cluster: str, tmp_path: Path) -> None:
    """SIGINT to a driver on the cluster: exit 130, every finished file listed and complete,
    nothing listed missing; --resume (in this process, on the same cluster) does the rest."""
    folder = tmp_path / "in"
    inputs = small_images(folder, 40)
    out = tmp_path / "out"
    args = [*CLI, "export", str(folder), "-o", str(out), "--format", "png", "--batch-size", "2",
            "--ray", cluster, "--ray-actors", "2", "-q"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (out / "manifest.jsonl").exists() and '"status": "ok"' in (
            out / "manifest.jsonl"
        ).read_text():
            break
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.startswith("Error: ") and "--resume" in stderr
    assert stderr.count("\n") == 1, stderr
    left = files_under(out) - BOOKKEEPING
    listed = listed_files(out)
    assert 1 <= len(listed) < len(inputs)
    assert {name for name in left if not TEMP.fullmatch(Path(name).name)} == listed
    for name in listed:
        # complete (overlays of 64x48 and 72x56 images are enlarged 5x and 4x)
        assert camtool.load_image(out / name).shape[1:] in ((240, 320), (224, 288))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["engine"] == "ray"
    resume = ["export", str(folder), "-o", str(out), "--format", "png", "--batch-size", "2",
              "--ray", "--ray-actors", "2", "--resume", "-q"]  # fmt: skip
    result = CliRunner().invoke(app, resume)  # in this process: on the module's cluster
    assert result.exit_code == 0, result.stderr
    assert files_under(out) == listed_files(out) | {"manifest.jsonl", "summary.json"}
    done = [
        r["input"]
        for line in (out / "manifest.jsonl").read_text().splitlines()
        if (r := json.loads(line)).get("type") == "image" and r["status"] == "ok"
    ]
    assert sorted(done) == sorted(str(p) for p in inputs)  # each input exactly once


def test_unreachable_address_fails_fast_in_one_line(tmp_path: Path) -> None:
    """`--ray 127.0.0.1:PORT` where nothing listens: one line, exit 1 within seconds (not Ray's
    minutes of retries), before anything is written."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "out"
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "export", str(CAT), "-o", str(out), "--ray", address],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )  # fmt: skip
    assert time.monotonic() - started < 60  # the process's start (torch, Ray) included
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"Error: {address}: no Ray cluster answers there (connection refused)\n"
    assert not out.exists()  # no manifest, no lock, no summary


def test_one_ctrl_c_while_ray_starts_stops_the_run(cluster: str, tmp_path: Path) -> None:
    """One SIGINT as soon as the driver has started (Ray connecting, the pool starting): exit
    130 within seconds, nothing listed, no file left; --resume does everything."""
    folder = tmp_path / "in"
    inputs = small_images(folder, 6)
    out = tmp_path / "out"
    args = [*CLI, "export", str(folder), "-o", str(out), "--format", "png", "--batch-size", "6",
            "--ray", cluster, "--ray-actors", "1", "-q"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "manifest.jsonl").exists():
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()
    time.sleep(0.1)  # the driver is past its SIGINT handler and connecting to Ray
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    stopped_after = time.monotonic() - sent
    assert process.returncode == 130, stderr
    assert stderr.startswith("Error: ") and "--resume" in stderr and stderr.count("\n") == 1
    assert stopped_after < STOP_WITHIN_S, stopped_after
    assert listed_files(out) == set()
    assert files_under(out) == {"manifest.jsonl", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["engine"] == "ray"
    resume = subprocess.run(
        [*CLI, "export", str(folder), "-o", str(out), "--format", "png", "--ray", cluster,
         "--resume", "-q"], capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert resume.returncode == 0, resume.stderr
    assert (resume.stdout, resume.stderr) == ("", "")  # quiet: nothing of Ray's either
    assert len(listed_files(out)) == len(inputs)
