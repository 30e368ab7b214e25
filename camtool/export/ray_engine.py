"""The Ray engine of :func:`camtool.export`: the same stages, run by a pool of Ray Data actors.

The driver (this process) lists the inputs, as the local runner does, and hands Ray one row per
image (its index, path and output stem). Each actor binds the method once (one model per actor,
on its own GPU when the cluster has GPUs) and runs the local runner's stages on a batch of rows:
reading and decoding (camtool's own reader: regular files only, size and pixel limits), the
explainer, rendering and encoding. An actor writes each file as a complete temporary file beside
its final name and returns only what it did: the image's manifest fields and
``(final name, temporary file)`` pairs, or the reason it failed. The driver then announces the
files in the manifest, renames them into place and writes the image's line, so the manifest and
the files agree exactly as they do locally (Ctrl-C, ``--resume``), and a task that Ray runs again
after a worker died leaves only temporary files, which the clean-up removes: no image is ever
written twice or half.

Ray is imported only when this engine runs (it comes with camtool's ``ray`` extra).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from camtool.errors import EXIT_ERROR, CamtoolError, InvalidArgumentError, OutputWriteError

if TYPE_CHECKING:
    import numpy as np

    from camtool.export.run import Plan, Recorder
    from camtool.export.stages import ExportOptions
    from camtool.journal import InterruptFlag

Engine = Literal["local", "ray"]

#: Bind a local cluster to the loopback interface (read by Ray when it is imported).
_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayNotInstalledError(CamtoolError):
    """``engine="ray"`` was asked for, but Ray Data is not installed."""

    exit_code = EXIT_ERROR


class RayEngineError(CamtoolError):
    """The Ray cluster could not be reached, or Ray gave up on the pipeline (an actor that cannot
    start, a task that failed on every retry)."""

    exit_code = EXIT_ERROR


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs.

    Attributes:
        address: the cluster (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``); None: the
            cluster this process is connected to already, else ``RAY_ADDRESS``, else the one
            ``ray start`` last started on this machine, else a new local one on 127.0.0.1.
        actors: the pool's size; None: one actor per GPU, or per CPU on a cluster without GPUs.
    """

    address: str | None = None
    actors: int | None = None


def check_engine(engine: str, address: str | None, actors: int | None) -> RayOptions | None:
    """Check the engine options of :func:`camtool.export`; return the Ray options, or None for
    the local engine. A cluster address must accept a connection within
    :data:`CONNECT_TIMEOUT_S` seconds (see :func:`probe_address`).

    Raises:
        InvalidArgumentError: an unknown engine, a pool of fewer than one actor, or Ray options
            without ``engine="ray"``. RayNotInstalledError: Ray Data cannot be imported.
            RayEngineError: nothing answers at the cluster address.
    """
    if engine == "local":
        if address is not None or actors is not None:
            raise InvalidArgumentError(
                "ray_address" if address is not None else "ray_actors",
                'is an option of the Ray engine; pass engine="ray" (--ray) too',
            )
        return None
    if engine != "ray":
        raise InvalidArgumentError(engine, "engine must be local or ray")
    if actors is not None and actors < 1:
        raise InvalidArgumentError(actors, "the Ray pool needs at least one actor")
    if address is None and "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault(_LOOPBACK_ONLY, "0")  # a local cluster listens on 127.0.0.1 only
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayNotInstalledError(
            "--ray",
            "needs Ray Data, which is not installed: install camtool's ray extra "
            "(pip install '.[ray]' in its checkout) or pip install 'ray[data]>=2.60'",
        ) from None
    target = address or os.environ.get("RAY_ADDRESS")
    if target and not ray.is_initialized():
        probe_address(target)  # before the model loads and anything is written
    return RayOptions(address, actors)


def ray_address(value: str, default: str) -> str | None:
    """A ``--ray`` value as a cluster address: None for ``default`` (``--ray`` alone).

    Raises:
        InvalidArgumentError: a value that is an existing file or folder (an input swallowed by
            ``--ray`` written before the inputs) or an empty one.
    """
    if value == default:
        return None
    if not value.strip() or (os.path.exists(value) and ":" not in value):
        raise InvalidArgumentError(
            "--ray",
            f"{value!r} is not a cluster address (auto, HOST:PORT or ray://HOST:PORT); write "
            "--ray=ADDRESS, or --ray alone after the inputs",
        )
    return value


def run_on_ray(
    plan: Plan,
    recorder: Recorder,
    out: Path,
    options: ExportOptions,
    maps: int,
    crop: bool,
    interrupted: InterruptFlag,
    ray_options: RayOptions,
    spec: tuple[Any, Any, Any, str | None, dict[str, Any]],
    batch_size: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Export ``plan.todo`` on a Ray cluster, recording every image through ``recorder``.

    ``spec`` is ``(model, method, classes, device, model_options)`` as :func:`export` got them:
    each actor binds the method from it. ``batch_size``: images per forward pass (default: 16
    on CPU actors, 64 on GPU actors). Returns the actors' device and the summary's engine
    fields (``engine``, ``ray``: the address, the pool, the cluster's resources).

    Raises:
        OutputWriteError: the file system refused a file (the run stops; every image finished
            before is recorded).
    """
    import ray

    started_here = not ray.is_initialized()
    with warnings.catch_warnings():  # Ray's own deprecations (DataContext fields) are not ours
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
        job = _RayJob(
            plan, recorder, out, options, maps, crop, interrupted, ray_options, spec, batch_size
        )
        return _run_connected(job, started_here)


@dataclass(frozen=True)
class _RayJob:
    """The arguments of :func:`run_on_ray`, as its steps (:func:`_run_connected`, :func:`_run`)
    take them."""

    plan: Plan
    recorder: Recorder
    out: Path
    options: ExportOptions
    maps: int
    crop: bool
    interrupted: InterruptFlag
    ray_options: RayOptions
    spec: tuple[Any, Any, Any, str | None, dict[str, Any]]
    batch_size: int | None


def _run_connected(job: _RayJob, started_here: bool) -> tuple[str, dict[str, Any]]:
    import ray

    interrupted = job.interrupted
    try:
        if started_here:
            with _stop_at_once(interrupted):
                _connect(job.ray_options.address)
        return _run(job)
    except KeyboardInterrupt:
        if not interrupted:
            raise
        return "cpu", {"engine": "ray"}  # Ctrl-C before any image was finished
    except ray.exceptions.RayError as exc:
        raise RayEngineError("ray", f"the pipeline failed: {_one_line(exc, last=True)}") from None
    finally:
        if started_here:
            ray.shutdown()  # a local cluster stops; a remote one ends this job and its actors
        from camtool.export.manifest import remove_unfinished

        remove_unfinished(job.out, None)  # temporary files of images never renamed into place


#: How long a cluster address may take to accept a TCP connection before the run gives up.
CONNECT_TIMEOUT_S = 10.0


@contextmanager
def _stop_at_once(interrupted: InterruptFlag) -> Iterator[None]:
    """While the driver waits on Ray (connecting, starting the pool, waiting for a batch) and no
    image is between "files written" and "manifest line written", Ctrl-C sets ``interrupted``
    and stops the wait at once (KeyboardInterrupt), instead of waiting for the next image."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        interrupted.set = True
        raise KeyboardInterrupt

    def unraisable(info: Any) -> None:
        # The KeyboardInterrupt landed where Python cannot raise it (an at-fork hook while Ray
        # starts its processes): the flag is set, so the run stops once Ray gives control back.
        if not (interrupted and isinstance(info.exc_value, KeyboardInterrupt)):
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGINT, handler), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def probe_address(address: str) -> None:
    """Check that something accepts TCP connections at a ``HOST:PORT`` or ``ray://HOST:PORT``
    cluster address within :data:`CONNECT_TIMEOUT_S` seconds (Ray itself would retry for
    minutes). ``auto`` and other forms are left to Ray.

    Raises:
        RayEngineError: nothing answers there.
    """
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)/?", address.strip())
    if match is None:
        return
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = (
            f"no answer within {CONNECT_TIMEOUT_S:g} s"
            if isinstance(exc, TimeoutError)
            else (exc.strerror or str(exc)).lower()
        )
        raise RayEngineError(address, f"no Ray cluster answers there ({reason})") from None


def _connect(address: str | None) -> None:
    import logging

    import ray

    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=True,
        )
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        raise RayEngineError(where, f"cannot connect to Ray: {_one_line(exc)}") from None


def _one_line(exc: BaseException, last: bool = False) -> str:
    """An exception's message as one line: its first line, or (``last``: the end of a remote
    traceback, where Ray puts the cause) its last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = (lines[-1] if last else lines[0]) if lines else type(exc).__name__
    return line[:300]


def cluster_resources() -> dict[str, Any]:
    """The connected cluster's totals: nodes, CPUs, GPUs, memory and object store (bytes)."""
    import ray

    totals = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "nodes": len(nodes),
        "CPU": totals.get("CPU", 0.0),
        "GPU": totals.get("GPU", 0.0),
        "memory": int(totals.get("memory", 0)),
        "object_store_memory": int(totals.get("object_store_memory", 0)),
    }


def pool_shape(
    resources: dict[str, Any], actors: int | None, device: str | None
) -> tuple[int, float, float, str]:
    """The pool: ``(actors, GPUs per actor, CPUs per actor, the actors' device)``. One GPU per
    actor when the cluster has GPUs (and ``device`` allows one), one actor per GPU by default;
    otherwise one CPU per actor, one actor per CPU."""
    gpus = (
        int(resources["GPU"]) if device in (None, "auto") or str(device).startswith("cuda") else 0
    )
    if gpus:
        return actors or gpus, 1.0, 1.0, "cuda"
    return actors or max(1, int(resources["CPU"])), 0.0, 1.0, "cpu"


def _run(job: _RayJob) -> tuple[str, dict[str, Any]]:
    import logging

    import ray
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # camtool reports progress and errors
    resources = cluster_resources()
    size, gpus, cpus, device = pool_shape(resources, job.ray_options.actors, job.spec[3])
    engine = {"engine": "ray", "ray": {"address": _address(), "actors": size,
              "gpus_per_actor": gpus, "cpus_per_actor": cpus, "resources": resources}}  # fmt: skip
    batch_size = job.batch_size or (64 if device == "cuda" else 16)
    todo, interrupted = job.plan.todo, job.interrupted
    if not todo:
        return device, engine
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows camtool's own bar
    context.print_on_execution_start = False
    rows = ray.data.from_items(
        [
            {"index": i, "path": str(item.path), "stem": str(item.stem)}
            for i, item in enumerate(todo)
        ]
    )
    results = rows.map_batches(
        _ExportActor,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        num_gpus=gpus,
        num_cpus=cpus,
        fn_constructor_kwargs=dict(
            spec=job.spec,
            device=device,
            cwd=os.getcwd(),
            out=str(job.out),
            options=job.options,
            maps=job.maps,
            crop=job.crop,
            batch_size=batch_size,
        ),
    )  # Ray Data restarts an actor whose worker died and runs its batch again (temporary files)
    batches: Iterator[dict[str, np.ndarray]] = iter(
        results.iter_batches(batch_size=None, batch_format="numpy")
    )
    try:
        while not interrupted:
            try:
                with _stop_at_once(interrupted):  # Ctrl-C while Ray starts or works: stop now
                    batch = next(batches, None)
            except KeyboardInterrupt:
                if not interrupted:
                    raise
                break
            if batch is None:
                break
            for index, text in zip(batch["index"], batch["record"], strict=True):
                if interrupted:
                    return device, engine
                _record(job.recorder, todo[int(index)], json.loads(str(text)))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the pipeline and its actors now
    return device, engine


def _address() -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


def _record(recorder: Recorder, item: Any, record: dict[str, Any]) -> None:
    """One image's result, on the driver: a failure, or its files announced, renamed into place
    and listed; a file-system refusal stops the run."""
    from camtool.inputs import ExportFailure

    status = record["status"]
    if status == "failed":
        recorder.failure(ExportFailure(str(item.path), record["error"]), item)
        return
    if status == "stop":
        raise OutputWriteError(record["subject"], record["problem"], record["errno"])
    pairs = [(Path(target), Path(part)) for target, part in record["files"]]
    targets = [target for target, _ in pairs]
    recorder.announcer(item)(targets)
    renamed: list[Path] = []
    try:
        for target, part in pairs:
            os.replace(part, target)
            renamed.append(target)
    except OSError as exc:
        for path in renamed:
            path.unlink(missing_ok=True)
        for _, part in pairs:
            part.unlink(missing_ok=True)
        raise OutputWriteError(
            targets[len(renamed)], f"cannot write: {exc.strerror or exc}", exc.errno
        ) from None
    recorder.done(item, record["details"], targets)


class _ExportActor:
    """One actor of the pool: the bound method (loaded once) and the export stages."""

    def __init__(
        self,
        spec: tuple[Any, Any, Any, str | None, dict[str, Any]],
        device: str,
        cwd: str,
        out: str,
        options: ExportOptions,
        maps: int,
        crop: bool,
        batch_size: int,
    ) -> None:
        import torch

        from camtool.binding import bind_method

        os.chdir(cwd)  # relative inputs and OUT mean what they mean to the driver
        if device == "cpu":
            torch.set_num_threads(1)
        model, method, classes, _, model_options = spec
        self.bound = bind_method(model, method, classes, device=device, **model_options)
        self.out, self.options = Path(out), options
        self.maps, self.crop, self.batch_size = maps, crop, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows ``index, path, stem`` -> rows ``index, record`` (a JSON text per image)."""
        import numpy as np

        from camtool.export.stages import explain_stream
        from camtool.inputs import InputItem

        items = [
            InputItem(Path(str(path)), PurePosixPath(str(stem)))
            for path, stem in zip(batch["path"], batch["stem"], strict=True)
        ]
        records: list[dict[str, Any]] = [{} for _ in items]
        stream = explain_stream(items, self.bound, self.maps, self.crop, self.batch_size, 0)
        for result in stream:
            item = items[result.index]
            if result.error is not None or result.out is None:
                records[result.index] = {
                    "status": "failed",
                    "error": result.error or "unknown error",
                }
            else:
                records[result.index] = self._render(result, item)
        texts = np.array([json.dumps(r) for r in records], dtype=object)
        return {"index": batch["index"], "record": texts}

    def _render(self, result: Any, item: Any) -> dict[str, Any]:
        from camtool.export.stages import render_and_write
        from camtool.io.files import write_part

        parts: list[list[str]] = []

        def leave_part(target: Path, data: bytes) -> None:
            parts.append([str(target), str(write_part(target, data))])

        try:
            ex, _, reason = render_and_write(
                self.bound.model, result, item, self.out, self.options, None, leave_part
            )
        except OutputWriteError as exc:
            _remove(parts)
            return {"status": "stop", "subject": exc.subject, "problem": exc.problem,
                    "errno": exc.errno}  # fmt: skip
        if ex is None:
            _remove(parts)
            return {"status": "failed", "error": reason or "unknown error"}
        return {"status": "ok", "details": ex.to_dict(), "files": parts}


def _remove(parts: list[list[str]]) -> None:
    for _, part in parts:
        Path(part).unlink(missing_ok=True)
