"""What drawing eval's report costs: the overlays from the measuring pass's maps (kept) against
mapping each shown image again (what the report did before), in forward passes and seconds, in
the same run, on the CPU, on the default model.

Run: .venv/bin/python benchmarks/eval_report.py [--images 4] [--size 96] [--steps 8]
     [--method cam --method scorecam]

Three steps on the same photos (the bundled ones, repeated), deletion only: measuring alone
(``report=False``), measuring and writing the report (the overlays from the kept maps), and
writing the report of the first run again with no kept maps (every overlay's map made again, as
before). Forward passes are counted by a hook on the network (one per image through it).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import camtool
from camtool.metrics.evaluate import evaluate
from camtool.metrics.maps import method_maps
from camtool.metrics.report import write_report_files

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PHOTOS = ["chelsea.png", "coffee.png", "camera.png", "grace_hopper.jpg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--method", action="append", default=None)
    args = parser.parse_args()
    methods = args.method or ["cam", "scorecam"]
    model = camtool.load_model("efficientnet_lite0", device="cpu")
    for name in methods:
        camtool.methods.bind(name, model)
    folder = Path(tempfile.mkdtemp())
    photos = []
    for i in range(args.images):
        source = EXAMPLES / PHOTOS[i % len(PHOTOS)]
        photos.append(folder / "in" / f"{i}_{source.name}")
        photos[-1].parent.mkdir(exist_ok=True)
        shutil.copy(source, photos[-1])
    rows: list[int] = []
    model.module.register_forward_hook(lambda _m, a, _o: rows.append(int(a[0].shape[0])))
    options: dict[str, Any] = {"metrics": ["deletion"], "size": args.size, "steps": args.steps}

    def timed(run: Any) -> tuple[Any, float, int]:
        rows.clear()
        started = time.perf_counter()
        result = run()
        return result, time.perf_counter() - started, sum(rows)

    measured, t_measure, p_measure = timed(
        lambda: evaluate(photos, methods, model=model, out=folder / "a", report=False, **options)
    )
    both, t_both, p_both = timed(
        lambda: evaluate(photos, methods, model=model, out=folder / "b", **options)
    )
    sources = {name: method_maps(model, name) for name in methods}
    _, t_again, p_again = timed(lambda: write_report_files(measured, model, sources))
    print(f"{args.images} images at {args.size} px, {' + '.join(methods)}, deletion {args.steps}")
    print(f"{'step':<44} {'passes':>8} {'seconds':>8}")
    print(f"{'measuring alone (report=False)':<44} {p_measure:>8} {t_measure:>8.1f}")
    print(f"{'measuring + report (kept maps)':<44} {p_both:>8} {t_both:>8.1f}")
    # EvalReport.seconds ends before the report is written: the rest is the report's
    print(f"{'  of which the report':<44} {p_both - p_measure:>8} {t_both - both.seconds:>8.1f}")
    print(f"{'report mapping the shown images again':<44} {p_again:>8} {t_again:>8.1f}")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
