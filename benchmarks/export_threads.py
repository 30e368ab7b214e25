"""Where an export's time goes, thread by thread: CPU time, time waiting for a core, and what
the explaining (main) thread waits for.

Run:  .venv/bin/python benchmarks/export_threads.py [--images 400 --photos uniform]

It runs `camtool.export` in this process on the photos of benchmarks/export_throughput.py (made
once under --data; --photos uniform: all 640x480), the default network, batch 16, overlay JPEGs,
and samples /proc/self/task every 0.1 s: per group of threads (the main thread, which runs the
forward passes and hands images on; the decoding threads; the writer threads; the rest, mostly
OpenMP's worker threads of the forward pass) the CPU time and the time spent runnable but waiting
for a core (schedstat), per image. It also times, on the main thread, the calls that can make it
wait: the next decoded image, the bound method (forward pass and maps), the writers (when 2
batches of images are in flight) and the manifest. Set OMP_WAIT_POLICY and the like in the
environment to compare. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from export_throughput import make_dataset  # benchmarks/ is on sys.path when run as a script

import camtool.binding
import camtool.export.run
import camtool.export.runner
import camtool.export.stages
from camtool.export.stages import ExportOptions

SPENT: Counter[str] = Counter()


def timed(owner: Any, name: str, label: str) -> None:
    """Wrap ``owner.name`` so that its wall time on any thread is added to ``SPENT[label]``."""
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def timed_generator(owner: Any, name: str, label: str) -> None:
    """Wrap the generator function ``owner.name``: the time each ``next()`` takes."""
    original: Callable[..., Iterator[Any]] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        items = original(*args, **kwargs)
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                SPENT[label] += time.perf_counter() - start
            yield item

    setattr(owner, name, wrapper)


class ThreadSampler:
    """Samples every thread of this process: name group -> (CPU s, run-queue wait s)."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[str, float, float]] = {}
        self.first: dict[int, tuple[str, float, float]] = {}
        self.names: dict[int, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="sampler", daemon=True)

    def read(self) -> None:
        for thread in threading.enumerate():
            if thread.native_id is not None:
                self.names[thread.native_id] = thread.name.rsplit("_", 1)[0]
        tick = os.sysconf("SC_CLK_TCK")
        for task in os.listdir("/proc/self/task"):
            try:
                fields = Path(f"/proc/self/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
                wait = Path(f"/proc/self/task/{task}/schedstat").read_text().split()[1]
            except OSError:
                continue
            tid = int(task)
            group = self.names.get(tid, "other (OpenMP, torch, OpenCV)")
            cpu = (int(fields[11]) + int(fields[12])) / tick
            self.last[tid] = (group, cpu, int(wait) / 1e9)
            self.first.setdefault(tid, self.last[tid])

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.read()

    def __enter__(self) -> ThreadSampler:
        self.read()
        self.first = dict(self.last)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.read()

    def groups(self) -> dict[str, tuple[float, float, int]]:
        totals: dict[str, list[float]] = {}
        for tid, (group, cpu, wait) in self.last.items():
            _, cpu0, wait0 = self.first.get(tid, (group, 0.0, 0.0))
            entry = totals.setdefault(group, [0.0, 0.0, 0])
            entry[0] += cpu - cpu0
            entry[1] += wait - wait0
            entry[2] += 1
        return {k: (v[0], v[1], int(v[2])) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--photos", choices=["mixed", "uniform"], default="uniform")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "camtool-bench")
    args = parser.parse_args()
    paths = make_dataset(args.data / "images", args.images, args.photos)
    out = args.data / "runs" / "threads"
    shutil.rmtree(out, ignore_errors=True)

    stages, runner = camtool.export.stages, camtool.export.runner
    timed_generator(stages, "_decoded", "main: next decoded image")
    timed(camtool.binding.BoundMethod, "__call__", "main: bound method (forward + maps)")
    timed(runner, "wait", "main: wait for the writers")
    timed(camtool.export.run.Recorder, "finish", "main: record finished images")
    timed(runner, "render_and_write", "writers: render_and_write (wall, all threads)")
    timed(stages._DecodeDataset, "__getitem__", "decoders: decode + prepare (wall)")

    with ThreadSampler() as sampler:
        start, cpu = time.perf_counter(), time.process_time()
        report = runner.export(
            [str(p) for p in paths], out, device="cpu", batch_size=args.batch, runner="local",
            options=ExportOptions(image_format="jpg"),
        )  # fmt: skip
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    n, work = report.exported, wall - report.load_seconds
    print(
        f"{n} JPEG photos ({args.photos}), batch {args.batch}: {n / work:.1f} images/s after "
        f"the model's load ({report.load_seconds:.1f} s); the process used {cpu / wall:.2f} "
        f"cores; load average {os.getloadavg()[0]:.1f}; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
    )
    print(f"{'threads':32s} {'n':>3s} {'CPU ms/img':>11s} {'waiting for a core ms/img':>26s}")
    for group, (busy, waiting, count) in sorted(sampler.groups().items(), key=lambda g: -g[1][0]):
        print(f"{group:32s} {count:3d} {1000 * busy / n:11.1f} {1000 * waiting / n:26.1f}")
    print(f"{'main thread, wall':48s} {'ms/img':>8s}")
    for label, seconds in sorted(SPENT.items()):
        print(f"{label:48s} {1000 * seconds / n:8.2f}")
    print(f"{'main: the whole export (wall, after the load)':48s} {1000 * work / n:8.2f}")


if __name__ == "__main__":
    main()
