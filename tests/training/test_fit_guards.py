"""`camtool fit` refuses, before it reads any image, what would lose the data or the run: a model
folder that is, holds or lies inside the data; a non-empty, read-only or full output; class
folders that become one class. Real folders, real mounts (tmpfs, read-only or full), real runs."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.errors import InvalidArgumentError, OutputWriteError
from camtool.inputs import RealFolder, collect_inputs, lies_within
from camtool.training import DatasetError, read_dataset
from camtool.training.data import FitWarning
from camtool.training.guards import check_outside_data
from camtool.training.report import staged_folder

runner = CliRunner()

#: Options that keep a run small; the refusals under test come before any of them matters.
QUICK = ["--input-size", "32", "--epochs", "1", "-q", "--device", "cpu"]


def _tiny(folder: Path, classes: dict[str, int]) -> Path:
    for k, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (24, 24), (40 * i % 256, 60 * k % 256, 90)).save(
                folder / name / f"{i}.png"
            )
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _files_in(top: Path, folder: str) -> list[str]:
    return [folder, *(f"{folder}/{name}" for name in _files(top / folder))]


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".camtool-*"))


def _refused(args: list[str], code: int, cache: Path) -> str:
    """Run `camtool fit ARGS`; it must stop with `code` and one `Error:` line, before the
    backbone ran (no feature cache, no log line)."""
    result = runner.invoke(app, ["fit", *args, *QUICK, "--cache", str(cache)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not cache.exists()
    return lines[0]


@pytest.fixture
def mount() -> Iterator[Callable[..., Path]]:
    """``mount(folder, "ro", "size=64k")``: a real tmpfs there, unmounted afterwards; skips the
    test where this machine cannot mount (not root, no CAP_SYS_ADMIN: a container)."""
    mounted: list[Path] = []

    def make(folder: Path, *options: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join(("size=64k", *options)), "tmpfs", str(folder)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                "root ignores permissions, so only a read-only or full mount tests this"
            )
        mounted.append(folder)
        return folder

    if os.geteuid() != 0:
        pytest.skip("mounting a read-only or full tmpfs needs root")
    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_lies_within_resolves_links_and_relative_parts(tmp_path: Path) -> None:
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert lies_within(tmp_path / "link" / "cat", tmp_path / "data")
    assert lies_within(tmp_path / "data" / "cat" / ".." / "..", tmp_path)
    assert lies_within(tmp_path / "data", tmp_path / "link")
    assert lies_within(tmp_path / "data" / "not yet", tmp_path / "data")
    assert not lies_within(tmp_path / "data2", tmp_path / "data")  # a prefix is not a folder
    assert lies_within(tmp_path, "/")


def test_the_model_folder_is_never_the_data_nor_around_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _tiny(tmp_path / "data", {"cat": 3, "dog": 3})
    val = _tiny(tmp_path / "held" / "val", {"cat": 1, "dog": 1})
    cache = tmp_path / "cache"
    (tmp_path / "link").symlink_to(data)
    before = _files(tmp_path)
    line = _refused([str(data), "-o", str(data), "--overwrite"], 2, cache)
    assert line == (
        f"Error: {data}: is the data folder; choose a model folder outside the training data"
    )
    line = _refused([str(data), "-o", str(tmp_path), "--overwrite"], 2, cache)
    assert f"holds the data folder {data};" in line
    line = _refused([str(data), "-o", str(data / "cat" / "model")], 2, cache)
    assert f"lies inside the data folder {data};" in line
    line = _refused([str(tmp_path / "link"), "-o", str(data / ".."), "--overwrite"], 2, cache)
    assert "holds the data folder" in line
    line = _refused([str(data), "-o", str(tmp_path / "link"), "--overwrite"], 2, cache)
    assert "is the data folder" in line
    line = _refused(
        [str(data), "--val", str(val), "-o", str(tmp_path / "held"), "--overwrite"], 2, cache
    )
    assert f"holds the validation folder {val};" in line
    monkeypatch.chdir(tmp_path)  # relative paths, `-o .`
    line = _refused(["data", "-o", ".", "--overwrite"], 2, cache)
    assert line.startswith(f"Error: {tmp_path}: holds the data folder data;")
    # a CSV's listed files, wherever they are
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(data.glob("*/*.png"))]
    (tmp_path / "list.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    line = _refused(["list.csv", "-o", str(data / "cat"), "--overwrite"], 2, cache)
    assert f"holds {data / 'cat'}{os.sep}" in line and ".png, an image of list.csv;" in line
    _refused(["list.csv", "-o", ".", "--overwrite"], 2, cache)
    with pytest.raises(InvalidArgumentError, match="is the data folder"):
        camtool.fit(data, data, overwrite=True, device="cpu")
    assert _files(tmp_path) == sorted([*before, "list.csv"])  # nothing written, nothing lost


def test_the_model_folder_never_lies_inside_a_folder_the_data_is_read_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Class folders linked from elsewhere, an empty one too, a linked folder inside a class
    folder, a CSV's images' folder: a model folder inside one would be read as data next time."""
    data = _tiny(tmp_path / "data", {"dog": 3})
    real = _tiny(tmp_path / "x", {"cats_real": 3, "birds": 0, "more": 2})
    (data / "cat").symlink_to(real / "cats_real")
    (data / "bird").symlink_to(real / "birds")  # empty: skipped with a warning, still read
    (data / "dog" / "more").symlink_to(real / "more")
    cache = tmp_path / "cache"
    before = _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.warns(FitWarning, match="class folder has no images"):
        line = _refused(["data", "-o", "x/cats_real/model"], 2, cache)
    assert line == (
        f"Error: {real / 'cats_real' / 'model'}: lies inside the data folder data/cat "
        f"({real / 'cats_real'}); choose a model folder outside the training data"
    )
    with pytest.warns(FitWarning):
        line = _refused(["data", "-o", "x/birds/model"], 2, cache)
    assert f"lies inside the data folder data/bird ({real / 'birds'});" in line
    with pytest.warns(FitWarning):
        line = _refused(["data", "-o", "x/more/deeper/model"], 2, cache)
    assert f"lies inside the data folder data/dog/more ({real / 'more'});" in line
    _tiny(tmp_path / "train", {"cat": 2, "dog": 2})
    with pytest.warns(FitWarning):
        line = _refused(["train", "--val", "data", "-o", "x/more/model"], 2, cache)
    assert f"lies inside the validation folder data/dog/more ({real / 'more'});" in line
    with pytest.raises(InvalidArgumentError) as caught, pytest.warns(FitWarning):
        camtool.fit(data, real / "cats_real" / "m", device="cpu")
    assert caught.value.problem.startswith("lies inside the data folder")
    # a CSV's listed images: the model folder must not land among them
    (tmp_path / "list.csv").write_text(
        "x/more/0.png,a\nx/more/1.png,a\ndata/dog/0.png,b\ndata/dog/1.png,b\n"
    )
    line = _refused(["list.csv", "-o", "x/more/model"], 2, cache)
    assert line == (
        f"Error: {real / 'more' / 'model'}: lies inside the data folder {real / 'more'}; choose a "
        "model folder outside the training data"
    )
    assert _files(tmp_path) == sorted([*before, "list.csv", *_files_in(tmp_path, "train")])


def test_a_non_empty_output_is_refused_before_any_image_is_read(tmp_path: Path) -> None:
    data = _tiny(tmp_path / "data", {"cat": 3, "dog": 3})
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    line = _refused([str(data), "-o", str(taken)], 2, tmp_path / "cache")
    assert line == (
        f"Error: {taken}: exists and is not empty; choose another folder or overwrite it"
    )
    assert (taken / "notes.txt").read_text() == "mine"
    with pytest.raises(InvalidArgumentError, match="exists and is not empty"):
        camtool.fit(data, taken, device="cpu")
    assert _parts(tmp_path) == []


def test_a_read_only_output_is_refused_before_any_image_is_read(
    tmp_path: Path, mount: Callable[..., Path]
) -> None:
    data = _tiny(tmp_path / "data", {"cat": 3, "dog": 3})
    cache = tmp_path / "cache"
    read_only = mount(tmp_path / "ro", "ro")
    for out in (read_only / "model", read_only / "a" / "b" / "model"):  # parents not there yet
        line = _refused([str(data), "-o", str(out)], 1, cache)
        assert line == f"Error: {read_only}: cannot write here: Read-only file system"
    line = _refused([str(data), "-o", str(read_only), "--overwrite"], 1, cache)
    assert line.startswith(f"Error: {read_only}: ")  # a mount point cannot be replaced
    with pytest.raises(OutputWriteError) as caught:
        camtool.fit(data, read_only / "model", device="cpu")
    assert caught.value.errno == errno.EROFS
    assert _files(read_only) == [] and _parts(tmp_path) == []


def test_an_output_on_a_full_disk_is_refused_before_any_image_is_read(
    tmp_path: Path, mount: Callable[..., Path]
) -> None:
    data = _tiny(tmp_path / "data", {"cat": 3, "dog": 3})
    full = mount(tmp_path / "full")
    with open(full / "filler", "wb", buffering=0) as handle, pytest.raises(OSError):
        while True:
            handle.write(bytes(4096))
    line = _refused([str(data), "-o", str(full / "model")], 1, tmp_path / "cache")
    assert line == f"Error: {full}: cannot write here: No space left on device"
    with pytest.raises(OutputWriteError) as caught:
        camtool.fit(data, full / "model", device="cpu")
    assert caught.value.errno == errno.ENOSPC
    assert _files(full) == ["filler"] and _parts(tmp_path) == []  # no probe left behind


def test_fit_into_the_current_folder_leaves_no_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _tiny(tmp_path / "data", {"cat": 3, "dog": 3})
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = runner.invoke(app, ["fit", str(data), "-o", ".", "--no-cache", *QUICK])
    assert result.exit_code == 0, result.stderr
    assert (here / "card.toml").is_file() and (here / "weights.safetensors").is_file()
    assert _parts(tmp_path) == []


def test_staged_folder_leaves_nothing_behind_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mount: Callable[..., Path]
) -> None:
    target = mount(tmp_path / "mounted")  # a mount point: renaming it fails (EBUSY)
    (target / "earlier.txt").write_text("kept")
    with pytest.raises(OutputWriteError), staged_folder(target, overwrite=True) as folder:
        (folder / "card.toml").write_text("new")
    assert _files(target) == ["earlier.txt"] and _parts(tmp_path) == []
    work = tmp_path / "work"
    work.mkdir()
    (work / "old.txt").write_text("old")
    monkeypatch.chdir(work)
    with staged_folder(Path("."), overwrite=True) as folder:  # `-o . --overwrite`
        (folder / "card.toml").write_text("new")
    assert _files(work) == ["card.toml"] and _parts(tmp_path) == []


def test_class_folders_that_strip_to_one_name_are_refused(tmp_path: Path) -> None:
    data = _tiny(tmp_path / "data", {"cat": 2, " cat": 2, "dog": 2})
    with pytest.raises(DatasetError) as caught:
        read_dataset(data)
    assert caught.value.problem == (
        "class folders ' cat' and 'cat' have the same class name 'cat'; rename one"
    )
    result = runner.invoke(app, ["fit", str(data), "-o", str(tmp_path / "m"), *QUICK])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {data}: class folders ' cat' and 'cat' have the same class name 'cat'; rename one"
    )
    assert not (tmp_path / "m").exists()


def _count_realpath(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every path that ``os.path.realpath`` resolves from now on (it still resolves)."""
    calls: list[object] = []
    real = os.path.realpath

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "realpath", counted)
    return calls


def test_a_folder_is_resolved_once_for_many_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _tiny(tmp_path / "data", {"cat": 20, "dog": 20})
    (tmp_path / "link").symlink_to(data)
    folder = RealFolder(tmp_path / "link")
    assert folder.real == str(data)
    assert folder.holds(data / "cat" / "0.png") and folder.holds(tmp_path / "link" / "x")
    assert not folder.holds(tmp_path / "data2") and folder.holds_real(str(data / "cat"))
    (tmp_path / "link").unlink()  # resolved when made: relinking it changes nothing
    (tmp_path / "link").symlink_to(tmp_path)
    assert folder.holds(data / "dog") and not folder.holds(tmp_path / "other")
    assert RealFolder("/").holds(tmp_path) and lies_within(tmp_path, "/")
    # listing 40 files with an output folder to leave out: each file and folder resolved once
    calls = _count_realpath(monkeypatch)
    items, failures = collect_inputs([data], exclude=tmp_path / "out")
    assert len(items) == 40 and failures == []
    assert len(calls) == 40 + 3 + 1  # the files, the folders walked (data, cat, dog), the output
    # fit's check that the model folder holds no image: the folder once, each image once
    dataset = read_dataset(data)
    calls.clear()
    check_outside_data(tmp_path / "model", [("data", dataset)])
    assert len(calls) == 1 + 40 + 2  # the model folder, each image, each class folder


def test_an_empty_folder_that_strips_to_a_class_name_is_left_out(tmp_path: Path) -> None:
    data = _tiny(tmp_path / "data", {" cat": 0, "cat": 2, "dog": 2, "dog ": 0})
    with pytest.warns(FitWarning) as caught:
        dataset = read_dataset(data)
    assert [str(w.message) for w in caught] == [
        f"{data / ' cat'}: class folder has no images; class ' cat' is left out",
        f"{data / 'dog '}: class folder has no images; class 'dog ' is left out",
    ]
    assert dataset.labels == ("cat", "dog") and dataset.counts() == [2, 2]
    assert [s.path.parent.name for s in dataset.samples] == ["cat", "cat", "dog", "dog"]


@pytest.mark.parametrize(
    ("option", "value"), [("epochs", 0), ("epochs", 2.5), ("batch_size", -1), ("batch_size", 2.5)]
)
def test_epochs_and_batch_size_must_be_positive_integers(
    tmp_path: Path, option: str, value: object
) -> None:
    data = _tiny(tmp_path / "data", {"cat": 3, "dog": 3})
    with pytest.raises(InvalidArgumentError) as caught:
        camtool.fit(data, tmp_path / "m", device="cpu", **{option: value})  # type: ignore[arg-type]
    assert str(caught.value) == f"{option}: expected a positive integer, got {value!r}"
    assert _files(tmp_path) == _files_in(tmp_path, "data")
