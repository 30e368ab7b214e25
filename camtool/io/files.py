"""Files: safe reads (regular files only, size limits), and atomic writes (a temporary file beside
the target, renamed into place). No OpenCV here."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from camtool.errors import CamtoolError, ImageReadError, OutputWriteError

#: Text files camtool reads (label files, ``@list`` files, model cards) may hold at most this many
#: bytes (64 MiB: a list of about a million paths).
MAX_TEXT_BYTES = 64 << 20

_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_file(
    path: str | os.PathLike[str],
    max_bytes: int,
    error: type[CamtoolError] = ImageReadError,
    what: str = "image file",
) -> bytes:
    """Read a whole regular file of at most ``max_bytes`` bytes: the one way camtool reads files.

    The file is opened without blocking (opening a FIFO never waits for a writer) and the
    *opened descriptor* is checked, so a name swapped for a FIFO or a device between a check
    and the read cannot get past it. Reading stops past ``max_bytes`` (``/dev/zero`` or a file
    that grows while it is read).

    Args:
        path: the file. max_bytes: the size limit. error: the :class:`CamtoolError` subclass to
            raise. what: what the file should be, for messages ("label file").

    Raises:
        ``error``: missing, unreadable, not a regular file, or above the size limit.
    """
    fd = _open_regular_fd(path, error, what)
    try:
        info = os.fstat(fd)
        if info.st_size > max_bytes:
            raise error(path, _too_big(info.st_size, max_bytes))
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 24, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise error(path, _too_big(total, max_bytes))
        return b"".join(chunks)
    except OSError as exc:
        raise error(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _open_regular_fd(path: str | os.PathLike[str], error: type[CamtoolError], what: str) -> int:
    """Open ``path`` for reading without blocking and check the opened descriptor: a regular
    file, else ``error`` (a FIFO, a device, a directory, ...). The caller closes the descriptor."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(path, "no such file") from None
    except PermissionError:
        raise error(path, "permission denied") from None
    except OSError as exc:  # a socket (ENXIO), a loop of links, ...
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        raise error(
            path, not_regular(mode, what) or f"cannot read: {exc.strerror or exc}"
        ) from None
    try:
        problem = not_regular(os.fstat(fd).st_mode, what)
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
    if problem:
        os.close(fd)
        raise error(path, problem)
    return fd


def open_regular_file(
    path: str | os.PathLike[str], error: type[CamtoolError], what: str
) -> BinaryIO:
    """Open a regular file for reading in binary mode, refusing FIFOs, devices and directories
    on the opened descriptor (see :func:`read_file`), for readers that stream (weights, hashes,
    manifests) rather than read whole."""
    return os.fdopen(_open_regular_fd(path, error, what), "rb")


def not_regular(mode: int, what: str) -> str | None:
    """Why a file of ``mode`` (``os.stat``) cannot be read as ``what``: a FIFO, a device, a socket
    or a folder; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return f"is a directory, not {'an' if what[0] in 'aeiou' else 'a'} {what}"
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def _too_big(size: int, limit: int) -> str:
    return f"file holds more than {limit:,} bytes ({size:,} read), above the limit for it"


def read_text_file(
    path: str | os.PathLike[str], error: type[CamtoolError], what: str, encoding: str = "utf-8"
) -> str:
    """Read a regular text file of at most :data:`MAX_TEXT_BYTES` (see :func:`read_file`).

    Raises:
        ``error``: as :func:`read_file`, or the file is not valid text in ``encoding``.
    """
    data = read_file(path, MAX_TEXT_BYTES, error, what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(path, f"{what} is not {encoding} text (byte {exc.start})") from None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with open_atomic(path) as handle:
        handle.write(data)


#: Temporary files are named ``.camtool-<8 random characters>.part``: one fixed-length pattern
#: (so a final name that fits the file system's limit always has a temporary name that fits too),
#: which an export recognises and removes after a crash.
TEMP_PREFIX = ".camtool-"
TEMP_SUFFIX = ".part"


@contextmanager
def open_atomic(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    with _open_part(Path(path), rename=True) as (handle, _):
        yield handle


def write_part(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` (named as :func:`open_atomic` names
    them) and return that file, complete, without renaming it: the caller renames it into place
    (``os.replace``), or an export's clean-up removes it.

    Raises:
        OutputWriteError: the folder or the file cannot be written (nothing is left behind).
    """
    with _open_part(Path(path), rename=False) as (handle, tmp):
        handle.write(data)
    return tmp


@contextmanager
def _open_part(path: Path, rename: bool) -> Iterator[tuple[BinaryIO, Path]]:
    """A new temporary file beside ``path``, open for writing: yields ``(handle, its path)``.
    After the block the file is closed and, with ``rename``, renamed to ``path``. On any
    exception the temporary file is removed (an ``OSError`` becomes :class:`OutputWriteError`).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A fixed short name: a final name of NAME_MAX bytes must still leave room for it.
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise OutputWriteError(
            path.parent, f"cannot write here: {exc.strerror or exc}", exc.errno
        ) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle, Path(tmp)
        if rename:
            os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise OutputWriteError(path, f"cannot write: {exc.strerror or exc}", exc.errno) from None
    except BaseException:
        remove_quietly(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def remove_quietly(path: str) -> None:
    """Remove the file ``path`` if it is there; never raises."""
    with suppress(OSError):
        os.unlink(path)
