"""Typed errors raised by camtool. Each carries the exit code the CLI uses for it.

Every message is one line that names the input it is about (a file, a model, a class) and what is
wrong with it, so the CLI can print ``Error: <subject>: <problem>`` and nothing else.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


def run_exit_code(failed: int, interrupted: bool) -> int:
    """The exit code of a run over many inputs (an export, an evaluation): 130 when it was
    interrupted (Ctrl-C), else 3 when ``failed`` inputs (any) could not be done, else 0."""
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if failed else EXIT_OK


class CamtoolError(Exception):
    """Base class of every error camtool raises on purpose.

    Args:
        subject: what the error is about (a path, a model name, a class name), or ``None``.
        problem: what is wrong, as a short lower-case phrase.
    """

    exit_code: int = EXIT_ERROR

    def __init__(self, subject: object | None, problem: str) -> None:
        self.subject = None if subject is None else str(subject)
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.subject}: {self.problem}" if self.subject else self.problem


class ImageReadError(CamtoolError):
    """An input could not be read as an image (missing, empty, truncated, not an image, ...)."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the configured limit (see ``camtool.io.MAX_PIXELS``)."""


class OutputWriteError(CamtoolError):
    """An output file could not be written.

    ``errno`` is the operating system's error number when the file system refused the write
    (a full disk, a read-only or forbidden folder), None when the problem was this one file
    (an image OpenCV cannot encode, a path that would leave the output folder).
    """

    def __init__(self, subject: object | None, problem: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(subject, problem)


class ModelLoadError(CamtoolError):
    """A model could not be built or its weights could not be loaded."""


class ModelOutputError(ModelLoadError):
    """A network's output holds no class scores camtool can read (the message names what it
    returned: its type, shape or keys)."""


class UnknownModelError(ModelLoadError):
    """A model name that is neither a built-in card, a user card nor a card file."""

    exit_code = EXIT_USAGE


class WeightsHashError(ModelLoadError):
    """A weights file whose sha256 differs from the one its model card promises."""


class UnsupportedModelError(CamtoolError):
    """A method cannot explain this network (for CAM: it is not exact, or no CAM head was found).

    A usage error: the model loads; choose another method (``camtool inspect`` says which fit).
    """

    exit_code = EXIT_USAGE


class ModelRunError(CamtoolError, RuntimeError):
    """The network failed while running on a batch (the message names the batch size and why)."""


class DeviceMemoryError(ModelRunError):
    """The device ran out of memory on a batch (``torch.OutOfMemoryError`` inside the network): a
    smaller batch may fit, so the device runner retries with half of it."""


class ClassSelectionError(CamtoolError):
    """An unknown class name or an out-of-range class index."""

    exit_code = EXIT_USAGE


class InvalidArgumentError(CamtoolError):
    """An argument with a value camtool cannot use (an unknown colour map, alpha outside [0, 1])."""

    exit_code = EXIT_USAGE


class NotDecompositionError(CamtoolError):
    """A measure that needs a decomposition (completeness) was asked of maps that do not claim to
    decompose the score (Grad-CAM, Score-CAM, ...: no bias comes with them)."""

    exit_code = EXIT_USAGE


class ManifestError(CamtoolError):
    """An export's ``manifest.jsonl`` holds a line camtool cannot use (not a JSON object, say)."""


class OutputBusyError(CamtoolError):
    """Another camtool export is writing into the same output folder (it holds the folder's lock)."""
