"""What ``camtool eval`` writes from its per-image results: ``results.json``, ``results.csv``, the
deletion and insertion curves as PNG plots (drawn with OpenCV), overlays of the worst and best
images per measure, and ``index.html``, a self-contained page linking them (on
:mod:`camtool.html`'s page shell; every string inserted as text, never HTML). The summaries (mean
and 95% interval per method and measure) are :mod:`camtool.metrics.summaries`'.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from camtool.errors import CamtoolError
from camtool.html import html_page
from camtool.io.files import open_atomic, write_bytes_atomic
from camtool.io.images import load_image, save_image
from camtool.io.opencv import cv2
from camtool.metrics.summaries import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MEASURES

if TYPE_CHECKING:
    from camtool.metrics.evaluate import EvalReport
    from camtool.models.loading import LoadedModel

#: The measures whose worst and best images get overlays (one value per image that orders them).
RANKED = ("deletion", "insertion", "road_morf", "average_drop", "top1_iou", "pointing_game")

#: Images shown at each end of a ranking.
SHOWN = 3

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Files


def write_report_files(
    report: EvalReport,
    model: LoadedModel,
    sources: dict[str, Any],
    kept: dict[tuple[str, str], torch.Tensor] | None = None,
) -> list[Path]:
    """Write ``results.json``, ``results.csv``, ``curves_*.png``, overlays and ``index.html``
    into ``report.out_dir``; return their paths.

    ``kept``: the maps of the measuring pass by ``(method, path)`` (``Tensor[S,S]`` float32 at
    the evaluation's size); an overlay whose map is not among them (an image an earlier run
    measured) maps its image again with ``sources[method]``."""
    out = report.out_dir
    assert out is not None
    files = [_write_json(report, out), _write_csv(report, out)]
    curves = [_write_curve(report, out, metric) for metric in ("deletion", "insertion")]
    files += [c for c in curves if c is not None]
    ranked = rankings(report)
    overlays = _write_overlays(report, out, model, sources, ranked, kept or {})
    files += sorted(set(overlays.values()))
    files.append(_write_html(report, out, ranked, overlays, [c for c in curves if c]))
    return files


def _write_json(report: EvalReport, out: Path) -> Path:
    from camtool._version import __version__

    protocols = {name: {"better": b, "unit": u, "what": w} for name, (b, u, w) in MEASURES.items()}
    data = {
        "camtool": __version__, "settings": report.settings,
        "interval": f"95% percentile bootstrap over images ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})",
        "measures": protocols,
        "total": report.total, "evaluated": report.evaluated, "skipped": report.skipped,
        "failed": report.failed, "failures": [{"input": f.input, "error": f.error} for f in report.failures],
        "boxes_without_an_input": list(report.unmatched_boxes),
        "boxes_rescaled": list(report.rescaled),
        "not_applicable": {k: list(v) for k, v in report.not_applicable.items()},
    }  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    data["results"] = results
    for s in report.summaries:
        results.setdefault(s.method, {})[s.measure] = {
            "mean": s.mean, "low": s.low, "high": s.high, "n": s.n, "better": s.better, "unit": s.unit,
        }  # fmt: skip
    path = out / "results.json"
    write_bytes_atomic(path, json.dumps(data, indent=2, allow_nan=False).encode("utf-8"))
    return path


CSV_MEASURES = [m for m in MEASURES if m != "max_box_acc"] + ["top1_iou"]


def _write_csv(report: EvalReport, out: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["input", "width", "height", "class", "class_name", "class_source", "method", *CSV_MEASURES]
    )
    for record in sorted(report.records, key=lambda r: r["input"]):
        for method, values in record["results"].items():
            writer.writerow(
                [record["input"], record["width"], record["height"], record["class"],
                 record["class_name"], record["class_source"], method,
                 *("" if values.get(m) is None else f"{values[m]:.6g}" for m in CSV_MEASURES)]
            )  # fmt: skip
    path = out / "results.csv"
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def mean_curves(report: EvalReport, metric: str) -> dict[str, np.ndarray]:
    """Per method, the mean ``[S+1]`` curve of ``metric`` over the images."""
    found: dict[str, list[list[float]]] = {}
    for record in report.records:
        for method, curves in record.get("curves", {}).items():
            if metric in curves:
                found.setdefault(method, []).append(curves[metric])
    return {m: np.asarray(c, dtype=np.float64).mean(axis=0) for m, c in found.items() if c}


def plot_curves(
    curves: dict[str, np.ndarray], title: str, xlabel: str, size: tuple[int, int] = (720, 480)
) -> np.ndarray:
    """A line plot (one line per method, with a legend) as a BGR ``[H,W,3]`` uint8 array: x from
    0 to 1, y from 0 to the highest value (at least 1e-3), axes with ticks and labels."""
    width, height = size
    canvas = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 50, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1e-3] + [float(c.max()) for c in curves.values() if len(c)])
    font = cv2.FONT_HERSHEY_SIMPLEX
    black, grey = (0, 0, 0), (210, 210, 210)

    def point(x: float, y: float) -> tuple[int, int]:
        return left + round(x * plot_w), top + plot_h - round(y / peak * plot_h)

    for i in range(5):
        fraction = i / 4
        x, _ = point(fraction, 0)
        cv2.line(canvas, (x, top), (x, top + plot_h), grey, 1)
        cv2.putText(
            canvas, f"{fraction:.2f}", (x - 14, top + plot_h + 18), font, 0.4, black, 1, cv2.LINE_AA
        )
        _, yy = point(0, peak * fraction)
        cv2.line(canvas, (left, yy), (left + plot_w, yy), grey, 1)
        cv2.putText(
            canvas, f"{peak * fraction:.2f}", (left - 40, yy + 4), font, 0.4, black, 1, cv2.LINE_AA
        )
    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), black, 1)
    cv2.putText(canvas, title, (left, 20), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(
        canvas, xlabel, (left + plot_w // 2 - 110, height - 15), font, 0.45, black, 1, cv2.LINE_AA
    )
    cv2.putText(canvas, "class probability", (5, top - 8), font, 0.4, black, 1, cv2.LINE_AA)
    for n, (method, values) in enumerate(curves.items()):
        r, g, b = _COLOURS[n % len(_COLOURS)]
        xs = np.linspace(0, 1, len(values))
        points = np.array(
            [point(float(x), float(y)) for x, y in zip(xs, values, strict=True)], np.int32
        )
        cv2.polylines(canvas, [points], False, (b, g, r), 2, cv2.LINE_AA)
        auc = float(np.trapezoid(values, xs)) if len(values) > 1 else float(values[0])
        ly = top + 18 + 20 * n
        cv2.line(canvas, (left + plot_w - 190, ly - 4), (left + plot_w - 165, ly - 4), (b, g, r), 3)
        cv2.putText(
            canvas,
            f"{method} (AUC {auc:.3f})",
            (left + plot_w - 160, ly),
            font,
            0.45,
            black,
            1,
            cv2.LINE_AA,
        )
    return canvas


def _write_curve(report: EvalReport, out: Path, metric: str) -> Path | None:
    curves = mean_curves(report, metric)
    if not curves:
        return None
    count = len(report.records)
    verb = "deleted" if metric == "deletion" else "inserted"
    better = "lower" if metric == "deletion" else "higher"
    canvas = plot_curves(
        curves, f"{metric.capitalize()}: mean over {count} images ({better} area is better)",
        f"fraction of pixels {verb}",
    )  # fmt: skip
    path = out / f"curves_{metric}.png"
    image = torch.from_numpy(np.ascontiguousarray(canvas[:, :, ::-1])).permute(2, 0, 1)
    save_image(path, image.contiguous())
    return path


def rankings(report: EvalReport) -> dict[str, dict[str, dict[str, list[dict[str, Any]]]]]:
    """``{measure: {method: {"worst": [...], "best": [...]}}}``: up to :data:`SHOWN` records at
    each end of each ranked measure (each entry: input, stem, value)."""
    found: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    methods = list(dict.fromkeys(m for r in report.records for m in r["results"]))
    for measure in RANKED:
        better = "higher" if measure in ("top1_iou",) else MEASURES[measure][0]
        for method in methods:
            scored = [
                (r["results"][method][measure], r)
                for r in report.records
                if r["results"].get(method, {}).get(measure) is not None
            ]
            if not scored:
                continue
            scored.sort(key=lambda pair: (pair[0], pair[1]["input"]), reverse=better == "higher")
            best = scored[:SHOWN]
            worst = [p for p in scored[::-1] if p not in best][:SHOWN]

            def entry(pair: tuple[float, dict[str, Any]]) -> dict[str, Any]:
                return {"input": pair[1]["input"], "path": pair[1]["path"],
                        "stem": pair[1].get("output_stem") or Path(pair[1]["input"]).stem,
                        "value": pair[0], "class_name": pair[1]["class_name"]}  # fmt: skip

            found.setdefault(measure, {})[method] = {
                "best": [entry(p) for p in best],
                "worst": [entry(p) for p in worst],
            }
    return found


def _write_overlays(
    report: EvalReport,
    out: Path,
    model: LoadedModel,
    sources: dict[str, Any],
    ranked: dict[str, dict[str, dict[str, list[dict[str, Any]]]]],
    kept: dict[tuple[str, str], torch.Tensor],
) -> dict[tuple[str, str], Path]:
    """The overlay of each image a ranking shows, per method: its map (at the evaluation's size,
    resized to the image; the measured one when ``kept`` has it) over the original, with its
    ground-truth boxes in green."""
    from camtool.boxes import draw_box
    from camtool.image import resize_image
    from camtool.naming import component
    from camtool.render import normalize_cams, overlay

    by_path = {r["path"]: r for r in report.records}
    wanted: dict[str, set[str]] = {}
    for per_method in ranked.values():
        for method, ends in per_method.items():
            for entry in ends["best"] + ends["worst"]:
                wanted.setdefault(method, set()).add(entry["path"])
    size = int(report.settings["size"])
    written: dict[tuple[str, str], Path] = {}
    for method, paths in wanted.items():
        for path in sorted(paths):
            record = by_path[path]
            try:
                image = load_image(record["input"] if os.path.exists(record["input"]) else path)
            except CamtoolError:
                continue  # gone since it was evaluated: the page shows no picture for it
            height, width = int(image.shape[1]), int(image.shape[2])
            heat = kept.get((method, path))
            if heat is None:
                squeezed = resize_image(image, (size, size), model.preprocessing.interpolation)
                pixels = squeezed[None].float().div_(255)
                maps = sources[method](pixels, torch.tensor([int(record["class"])]))
                heat = maps.maps if hasattr(maps, "maps") else maps
            else:
                heat = heat[None]
            heat = torch.nn.functional.interpolate(
                heat[:, None].float().cpu(),
                size=(height, width),
                mode="bilinear",
                align_corners=False,
            )[0]
            picture = overlay(image, normalize_cams(heat)[0])
            for box in record.get("boxes", []):
                x1, y1, x2, y2 = (round(v) for v in box)
                picture = draw_box(picture, (x1, y1, x2, y2))
            target = (
                out
                / "overlays"
                / component(method)
                / f"{record['output_stem'] or 'image'}_{component(method)}.png"
            )
            save_image(target, picture)
            written[(method, path)] = target
    return written


def _link(path: Path, root: Path) -> str:
    relative = Path(os.path.relpath(path.absolute(), root.absolute())).as_posix()
    return urllib.parse.quote(relative, safe="/")


def shown_settings(settings: dict[str, Any]) -> list[list[str]]:
    """The run's settings as ``[name, value]`` rows for the page: lists joined with commas,
    None as ``-``, and an installed file (the weights in the Python environment or a cache) by
    its name, never its absolute path; the full values are in ``results.json``."""

    def shown(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return ", ".join(shown(v) for v in value)
        if isinstance(value, str) and os.path.isabs(value) and _installed(Path(value)):
            return f"{Path(value).name} (installed)"
        return str(value)

    return [[name, shown(v)] for name, v in settings.items() if not isinstance(v, dict)]


def _installed(path: Path) -> bool:
    """True for a file in the Python environment (its prefixes, site-packages), camtool's own
    folder or a user cache (``~/.cache``: torch hub, Hugging Face)."""
    import site
    import sys

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    roots |= {str(Path(__file__).resolve().parents[1]), str(Path.home() / ".cache")}
    resolved = path.resolve()
    return any(
        path.is_relative_to(root) or resolved.is_relative_to(Path(root).resolve()) for root in roots
    )


def _write_html(
    report: EvalReport,
    out: Path,
    ranked: dict[str, dict[str, dict[str, list[dict[str, Any]]]]],
    overlays: dict[tuple[str, str], Path],
    curves: list[Path],
) -> Path:
    summaries = [
        {"method": s.method, "measure": s.measure, "mean": s.mean, "low": s.low, "high": s.high,
         "n": s.n, "better": s.better, "unit": s.unit}
        for s in report.summaries
    ]  # fmt: skip
    rankings_out = []
    for measure, per_method in ranked.items():
        for method, ends in per_method.items():
            rankings_out.append({
                "measure": measure, "method": method,
                **{end: [{**e, "href": _link(overlays[(method, e["path"])], out)
                          if (method, e["path"]) in overlays else None} for e in ends[end]]
                   for end in ("worst", "best")},
            })  # fmt: skip
    data = {
        "settings": shown_settings(report.settings),
        "boxes": report.settings.get("boxes") is not None,
        "summaries": summaries,
        "what": {name: w for name, (_, _, w) in MEASURES.items()} | {"top1_iou": "IoU of the top-1 box"},
        "rankings": rankings_out,
        "curves": [_link(c, out) for c in curves],
        "failed": [{"input": f.input, "error": f.error} for f in report.failures],
        "files": {"json": "results.json", "csv": "results.csv"},
    }  # fmt: skip
    page = html_page("camtool evaluation", _STYLE, _BODY, _SCRIPT, data)
    path = out / "index.html"
    with open_atomic(path) as handle:
        handle.write(page.encode("utf-8"))
    return path


_STYLE = """body{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-variant-numeric:tabular-nums}
th{overflow-wrap:anywhere}
th:first-child,td:first-child{text-align:left}
.wide{max-width:100%;overflow-x:auto}
#summary td{white-space:nowrap}
.interval{color:#666;font-size:12px}
#settings td{text-align:left;font-size:12px;color:#444;overflow-wrap:anywhere;max-width:60em}
.ranking{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0}
.row{display:flex;gap:8px;flex-wrap:wrap}
figure{margin:0;width:180px}
figure img{width:180px;height:140px;object-fit:contain;background:#eee;display:block}
figcaption{font-size:12px;overflow-wrap:anywhere}
.curves img{max-width:48%}
.meta{color:#666;font-size:12px}
"""

_BODY = """<h1>camtool evaluation</h1>
<details open><summary>Settings</summary><div class="wide"><table id="settings"></table></div></details>
<p><a id="json">results.json</a> <a id="csv">results.csv</a></p>
<h2>Summary: mean and 95% interval over the images</h2>
<p class="meta">&darr; lower is better, &uarr; higher is better; n: the images measured.</p>
<div class="wide" id="summary"></div>
<h2>Curves</h2>
<div class="curves" id="curves"></div>
<h2>Worst and best images</h2>
<p class="meta" id="legend">Each picture is the method's map over the image.</p>
<div id="rankings"></div>
<section id="failures"></section>
"""

_SCRIPT = """"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const settings = document.getElementById("settings");
data.settings.forEach(([name, value]) => { const tr = el("tr"); tr.appendChild(el("th", name)); tr.appendChild(el("td", value)); settings.appendChild(tr); });
if (data.boxes) document.getElementById("legend").textContent += " The green box is the ground truth: the annotated boxes of the class the map explains.";
document.getElementById("json").href = data.files.json; document.getElementById("csv").href = data.files.csv;
const fmt = (v, s) => s.measure === "completeness" ? v.toExponential(1) : v.toFixed(s.unit === "%" ? 1 : 3);
const methods = [...new Set(data.summaries.map(s => s.method))];
const measures = [...new Set(data.summaries.map(s => s.measure))];
const table = el("table"); const head = el("tr"); head.appendChild(el("th", "measure"));
methods.forEach(m => head.appendChild(el("th", m)));
table.appendChild(head);
measures.forEach(m => {
  const better = data.summaries.find(x => x.measure === m).better;
  const row = el("tr"); const name = el("th", m + (better === "lower" ? " \u2193" : " \u2191"));
  name.title = (data.what[m] || m) + "; " + better + " is better"; row.appendChild(name);
  methods.forEach(method => {
    const s = data.summaries.find(x => x.method === method && x.measure === m);
    const cell = el("td", s ? fmt(s.mean, s) + s.unit : "-");
    if (s) cell.appendChild(el("div", "[" + fmt(s.low, s) + ", " + fmt(s.high, s) + "] n=" + s.n, "interval"));
    row.appendChild(cell);
  });
  table.appendChild(row);
});
document.getElementById("summary").appendChild(table);
data.curves.forEach(c => { const img = el("img"); img.src = c; img.alt = "curve " + c; document.getElementById("curves").appendChild(img); });
const box = document.getElementById("rankings");
data.rankings.forEach(r => {
  const d = el("div", undefined, "ranking"); d.dataset.measure = r.measure; d.dataset.method = r.method;
  d.appendChild(el("h3", r.measure + " - " + r.method + " (" + (data.what[r.measure] || r.measure) + ")"));
  ["worst", "best"].forEach(end => {
    d.appendChild(el("div", end, "meta")); const row = el("div", undefined, "row");
    r[end].forEach(e => {
      const f = el("figure"); f.className = end;
      const a = el("a"); if (e.href) a.href = e.href;
      const img = el("img"); img.alt = end + " " + r.measure + " " + e.input; img.loading = "lazy"; if (e.href) img.src = e.href;
      a.appendChild(img); f.appendChild(a);
      f.appendChild(el("figcaption", e.input + " (" + e.class_name + "): " + Number(e.value).toFixed(3)));
      row.appendChild(f);
    });
    d.appendChild(row);
  });
  box.appendChild(d);
});
if (data.failed.length) {
  const s = document.getElementById("failures"); s.appendChild(el("h2", data.failed.length + " failed inputs"));
  const ul = el("ul"); data.failed.forEach(f => ul.appendChild(el("li", f.input + ": " + f.error))); s.appendChild(ul);
}
"""
