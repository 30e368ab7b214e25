"""The journal of a long run (an export, an evaluation): its locked output folder, its JSON Lines
file (written line by line, each line whole or not at all; read back for ``--resume``), the records
it holds, the Ctrl-C flag that lets a run stop between items, and the clock.

A journal holds one JSON object per line:

- ``{"type": "run", ...}`` opens each run (:func:`run_record`: camtool's version, when it started,
  whether it resumed, the working folder its relative paths start from, its settings);
- ``{"type": "writing", "input", "path", "outputs"}`` (:func:`writing_record`) is written just
  before an item's files are renamed into place: the files it is about to create;
- ``{"type": "image", "input", "path", "status": "ok" | "failed", ...}`` closes an item
  (:func:`image_record`, :func:`failed_record`): its outputs and results, or the reason it failed.
  ``input`` is the path as it was given, ``path`` its resolved form, which is what identifies an
  input from one run to the next.

:func:`record_problem` is the schema in one place; :func:`load_journal` the one reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from camtool._version import __version__
from camtool.errors import InvalidArgumentError, ManifestError, OutputBusyError, OutputWriteError
from camtool.io.files import open_regular_file

#: The lock file of an output folder a run is writing into.
LOCK = ".camtool-export.lock"

_SCORE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "index": int,
    "name": str,
    "probability": (int, float),
}


@dataclass
class JournalContents:
    """What a journal says.

    Attributes:
        records: ``{input as given: its last image record}`` (one entry per resolved input).
        runs: the run headers, oldest first.
        by_path: ``{resolved input path: its last image record}``.
        files: ``{resolved input path: absolute paths of the files its last record names}``.
        listed: all of those files.
        announced: absolute paths of every file a ``writing`` line named.
    """

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    by_path: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    listed: set[str] = field(default_factory=set)
    announced: set[str] = field(default_factory=set)


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)


def record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a manifest record's fields (as camtool's readers use them), or None:
    the schema in one place, so that a hand-edited line is one clear error, never a crash."""
    kind = record.get("type")
    if kind == "run":
        if not isinstance(record.get("cwd", "."), str) or not isinstance(
            record.get("settings", {}), dict
        ):
            return "is a run record whose cwd is not a string or whose settings are not an object"
        return None
    if "input" not in record:
        return None
    if not isinstance(record["input"], str) or not _is_list_of(record.get("outputs", []), str):
        return "has no valid input or outputs (a string and a list of strings)"
    if kind == "image" and record.get("status") not in ("ok", "failed"):
        return "is an image record whose status is neither ok nor failed"
    if (
        kind == "image"
        and record["status"] == "failed"
        and not isinstance(record.get("error"), str)
    ):
        return "is a failed image record without an error message"
    for key in ("predictions", "explained"):
        scores = record.get(key, [])
        if not isinstance(scores, list) or not all(
            isinstance(s, dict) and all(isinstance(s.get(k), t) for k, t in _SCORE_FIELDS.items())
            for s in scores
        ):
            return f"has {key} that are not a list of {{index, name, probability}} objects"
    return None


def load_journal(path: Path) -> JournalContents:
    """Read a manifest (the only function that parses one). A torn last line, left by a killed
    run, is ignored; a missing file reads as empty.

    Raises:
        ManifestError: a line other than the last is not JSON, or a line is not a JSON object,
            or an image line has no input path.
    """
    contents = JournalContents()
    if not path.exists():
        return contents
    try:
        with open_regular_file(path, ManifestError, "manifest") as handle:  # never a FIFO
            data = handle.read()
    except OSError as exc:
        raise ManifestError(path, f"cannot read: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    cwd = Path.cwd()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if number == len(lines):  # no newline after it: a line a killed run left unfinished
                continue
            raise ManifestError(path, f"line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise ManifestError(path, f"line {number} is not a JSON object")
        problem = record_problem(record)
        if problem:
            raise ManifestError(path, f"line {number} {problem}")
        kind = record.get("type")
        if kind == "run":
            contents.runs.append(record)
            cwd = Path(str(record.get("cwd") or "."))
            continue
        if "input" not in record:
            continue
        source = record["input"]
        files = record.get("outputs", [])
        absolute = [os.path.normpath(cwd / str(f)) for f in files]
        key = str(record.get("path") or os.path.realpath(cwd / source))
        if kind == "writing":
            contents.announced.update(absolute)
            continue
        earlier = contents.by_path.get(key)
        if earlier is not None:
            contents.records.pop(earlier["input"], None)
        contents.by_path[key] = record
        contents.records[source] = record
        contents.files[key] = absolute if record.get("status") == "ok" else []
    contents.listed = {f for files in contents.files.values() for f in files}
    return contents


class JournalWriter:
    """Append-only JSON Lines file, written by one process (the folder's lock holder) from any
    thread. Each line reaches the file whole or not at all: a failed write (a full disk) is cut
    off again, so the lines after it stay readable."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                self._drop_torn_line()
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
            self.fd = os.open(path, flags | (0 if append else os.O_TRUNC), 0o666)
            self.size = os.fstat(self.fd).st_size
        except OSError as exc:
            message = f"cannot write the manifest: {exc.strerror or exc}"
            raise OutputWriteError(path, message, exc.errno) from None

    def _drop_torn_line(self) -> None:
        """Cut a last line that a killed run left unfinished (truncating, never rewriting)."""
        if not self.path.exists():
            return
        data_end = self.path.stat().st_size
        with self.path.open("rb") as handle:
            position = data_end
            while position > 0:
                step = min(4096, position)
                handle.seek(position - step)
                newline = handle.read(step).rfind(b"\n")
                if newline >= 0:
                    position = position - step + newline + 1
                    break
                position -= step
        if position != data_end:
            os.truncate(self.path, position)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line."""
        data = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, self.size)
                message = f"cannot write the manifest: {exc.strerror or exc}"
                raise OutputWriteError(self.path, message, exc.errno) from None
            self.size += len(data)

    def close(self) -> None:
        """Close the file (every line is already in it)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


#: The name of the command that holds an output folder's lock, as its lock file records it.
_COMMAND = re.compile(r"[a-z][a-z-]{0,19}")


@contextlib.contextmanager
def locked_output(out: Path, command: str = "export") -> Iterator[None]:
    """Hold ``out``'s lock (an OS file lock on ``out/.camtool-export.lock``) for the block; the
    lock file is removed at the end. The OS drops the lock when the process ends, however it ends.
    The lock file holds ``<pid> <command>`` (``export``, ``eval``): a second run names the holder.
    A folder the block created is removed again when it ends empty (a run refused before it wrote
    anything leaves nothing behind).

    Raises:
        OutputBusyError: another process holds the lock (naming its command and pid).
        OutputWriteError: ``out`` cannot be created or written.
    """
    if not _COMMAND.fullmatch(command):
        raise InvalidArgumentError(command, "a command name is a short lowercase word")
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = out / LOCK
    created = not out.exists()  # a folder this run made is removed again if it stays empty
    try:
        out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(os.read(fd, 64))
                os.close(fd)
                raise OutputBusyError(
                    out, f"is being written by another camtool {holder}"
                ) from None
            # The holder before us may have removed the file after we opened it: lock the file
            # that is there now, never an unlinked one.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode("ascii"))
    except OSError as exc:
        raise OutputWriteError(
            out, f"cannot write here: {exc.strerror or exc}", exc.errno
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        if created:  # refused before writing anything (a bad layer, say): leave no empty folder
            with contextlib.suppress(OSError):
                out.rmdir()


def _lock_holder(content: bytes) -> str:
    """``export (pid 12)`` from a lock file's ``12 export`` (``run (pid 12)`` from the bare pid of
    an earlier camtool, ``run (pid unknown)`` from a file not written yet)."""
    words = content.decode("ascii", "replace").split()
    pid = words[0] if words and words[0].isdigit() else "unknown"
    command = words[1] if len(words) > 1 and _COMMAND.fullmatch(words[1]) else "run"
    return f"{command} (pid {pid})"


# --------------------------------------------------------------------------------------------
# Resuming


def earlier_journal(path: Path, resume: bool) -> JournalContents | None:
    """The manifest an earlier run left. A fresh run only needs it to clean up after a killed
    run, so there an unreadable manifest is no obstacle (it is replaced); ``--resume`` needs it."""
    try:
        return load_journal(path)
    except ManifestError:
        if resume:
            raise
        return None


def check_same_settings(path: Path, earlier: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume when the settings of the manifest's last run (``earlier``) differ from
    this run's (``now``): the outputs would mix two kinds of pictures.

    Raises:
        InvalidArgumentError: naming each setting that changed as ``name: old -> new``.
    """
    changes = settings_changes(earlier, now)
    if changes:
        raise InvalidArgumentError(
            path,
            f"was written with other settings ({'; '.join(changes)}); use another --out, or the "
            "same options",
        )


def settings_before(run: dict[str, Any]) -> dict[str, Any]:
    """The settings a journal's ``run`` record holds, with those that camtool recorded only later
    set to the value every earlier run used (``upsample``: ``"placed"``), so that a run written
    by an earlier camtool resumes."""
    return {"upsample": "placed", **(run.get("settings") or {})}


def settings_changes(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each setting whose value differs, as ``name: old -> new`` (values in JSON, ``(unset)`` for
    a setting one of the runs did not record), in the order of ``now`` then ``earlier``."""

    def shown(settings: dict[str, Any], name: str) -> str:
        return json.dumps(settings[name], ensure_ascii=False) if name in settings else "(unset)"

    names = list(now) + [name for name in earlier if name not in now]
    return [
        f"{name}: {shown(earlier, name)} -> {shown(now, name)}"
        for name in names
        if name not in earlier or name not in now or earlier[name] != now[name]
    ]


class Resolved(Protocol):
    """An input as a journal knows it: by its resolved path."""

    @property
    def resolved(self) -> str: ...


Item = TypeVar("Item", bound=Resolved)


def split_resumed(
    items: Sequence[Item], earlier: JournalContents | None
) -> tuple[list[Item], list[dict[str, Any]]]:
    """Inputs still to do, and the failure records carried over from the earlier run."""
    if earlier is None:
        return list(items), []
    todo, carried = [], []
    for item in items:
        record = earlier.by_path.get(item.resolved)
        if record is None:
            todo.append(item)
        elif record.get("status") == "failed":
            carried.append(record)
        elif not all(os.path.exists(p) for p in earlier.files.get(item.resolved, [])):
            todo.append(item)
    return todo, carried


# --------------------------------------------------------------------------------------------
# Interrupting, and the clock


class InterruptFlag:
    """A boolean set from a signal handler."""

    def __init__(self) -> None:
        self.set = False

    def __bool__(self) -> bool:
        return self.set


@contextlib.contextmanager
def interrupt_flag() -> Iterator[InterruptFlag]:
    """Turn Ctrl-C into a flag the run checks between items, so that no item is ever left between
    'files written' and 'journal line written'. A second Ctrl-C stops at once."""
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.set:
            raise KeyboardInterrupt
        flag.set = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def now() -> str:
    """The time now, UTC, to the second, as ISO 8601 (``2026-12-07T01:02:03+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Records


def run_record(settings: dict[str, Any], resumed: bool, **fields: Any) -> dict[str, Any]:
    """The line that opens a run: camtool's version, the time, whether it resumed, the working
    folder (relative paths in later lines start there), ``settings`` and any further ``fields``."""
    return {"type": "run", "camtool": __version__, "started": now(), "resumed": resumed,
            "cwd": os.getcwd(), "settings": settings, **fields}  # fmt: skip


def writing_record(source: str, path: str, outputs: Sequence[Path]) -> dict[str, Any]:
    """The line written before an item's files are renamed into place: the files it announces."""
    return {"type": "writing", "input": source, "path": path, "outputs": [str(p) for p in outputs]}


def image_record(
    source: str, path: str, results: dict[str, Any], outputs: Sequence[Path] | None = None
) -> dict[str, Any]:
    """The line that closes an item done: its resolved ``path``, its ``results`` (an
    explanation's or a measure's fields) and the files it wrote (``outputs``, when it writes
    any)."""
    written = {"outputs": [str(p) for p in outputs]} if outputs is not None else {}
    return {"type": "image", "input": source, "path": path, "status": "ok", **results, **written}


def failed_record(source: str, error: str, path: str | None = None) -> dict[str, Any]:
    """The line that closes an item that failed, with the reason (``path``: its resolved form,
    when it was found)."""
    where = {"path": path} if path is not None else {}
    return {"type": "image", "input": source, **where, "status": "failed", "error": error}
