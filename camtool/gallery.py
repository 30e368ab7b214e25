"""An HTML gallery of an export: one self-contained ``index.html`` that works from ``file://``.

For each exported image: the original and every overlay (one per mapped class) as generated
thumbnails (loaded lazily), the top-k classes with probabilities, the CAM boxes, and links to the
full-size files; a colour legend saying what the colours mean; filtering by
predicted class, a text search on file names, sorting by confidence; and the failed inputs with
their reasons. No network access: no CDN scripts or fonts. Every string taken from a file name
or a label reaches the page as data and is inserted with ``textContent``, never as HTML.

The page state lives in the URL's fragment (``#class=espresso&q=cat&sort=asc``), so a filtered
view can be bookmarked (and tested with a headless browser).
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path
from typing import Any

import torch

from camtool.errors import CamtoolError, InvalidArgumentError
from camtool.export.manifest import MANIFEST, read_manifest
from camtool.html import html_page
from camtool.image import resize_image
from camtool.io.files import open_atomic
from camtool.io.images import load_image, save_image
from camtool.naming import fit
from camtool.progress import ProgressBar
from camtool.render import COLORMAPS, colormap_colors

THUMBS = "_thumbs"
THUMB_SIZE = 256


def thumbnail(image: torch.Tensor, size: int = THUMB_SIZE) -> torch.Tensor:
    """``Tensor[3,H,W]`` uint8 scaled (antialiased) so its longer side is at most ``size``."""
    height, width = int(image.shape[1]), int(image.shape[2])
    scale = min(1.0, size / max(height, width))
    return resize_image(
        image, (max(1, round(height * scale)), max(1, round(width * scale))), "bilinear"
    )


def _thumb(source: Path, folder: Path, stem: str) -> str | None:
    """A thumbnail of ``source`` in ``folder``, named after the file's path, size and time, so
    that a new export into the same folder never shows an old picture; None if unreadable."""
    try:
        stat = source.stat()
    except OSError:
        return None
    key = hashlib.sha1(
        f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()[:10]
    target = folder / fit(stem, f"_{key}.jpg")  # one safe name that fits, whatever the stem
    try:
        if not target.exists():
            save_image(target, thumbnail(load_image(source)), quality=80)
        return str(target)
    except CamtoolError:
        return None


def write_gallery(export_dir: str | os.PathLike[str], progress: bool = False) -> Path:
    """Write ``export_dir/index.html`` (and thumbnails under ``export_dir/_thumbs``) from the
    export's manifest; return the page's path.

    Raises:
        InvalidArgumentError: ``export_dir`` holds no manifest (run ``camtool export`` first).
    """
    root = Path(export_dir)
    records, runs = read_manifest(root / MANIFEST)
    if not runs and not records:
        raise InvalidArgumentError(
            root, f"no {MANIFEST} here: not the output folder of camtool export"
        )
    ok = [r for r in records.values() if r.get("status") == "ok" and r.get("outputs")]
    failed = [
        {"input": r["input"], "error": r.get("error", "")}
        for r in records.values()
        if r.get("status") == "failed"
    ]
    bar = ProgressBar("gallery", len(ok), "img") if progress else None
    cards = []
    base = (
        Path(runs[-1].get("cwd", ".")) if runs else Path(".")
    )  # the export's relative paths start there
    settings = runs[-1].get("settings", {}) if runs else {}
    per_class = 2 if settings.get("heatmap") else 1  # outputs: overlay [, heatmap] per class
    try:
        for record in ok:
            cards.append(_card(root, record, base, per_class))
            if bar:
                bar.advance()
    finally:
        if bar:
            bar.stop()
    model = runs[-1].get("settings", {}).get("model", "") if runs else ""
    last = runs[-1] if runs else {}
    made_from = last.get("made_from", last.get("head", ""))  # runs before made_from existed: "head"
    method = runs[-1].get("method", "cam") if runs else ""
    detail = runs[-1].get("head_detail", {}) if runs else {}
    exact = method not in ("", "none") and bool(
        detail.get("decomposition", True) if isinstance(detail, dict) else True
    )
    data = {"model": model, "method": method, "made_from": made_from, "cards": cards, "failed": failed,
            "legend": colour_legend(str(settings.get("colormap", "jet")),
                                    str(settings.get("scale", "per-map")), exact)}  # fmt: skip
    page = html_page("camtool gallery", _STYLE, _BODY, _SCRIPT, data)
    target = root / "index.html"
    with open_atomic(target) as handle:
        handle.write(page.encode("utf-8"))
    return target


def colour_legend(colormap: str, scale: str, exact: bool) -> dict[str, Any]:
    """What the gallery's colour legend shows: the colour map as CSS colours from its lowest to
    its highest value, and what the two ends mean for this export's scale and method."""
    colors = colormap_colors(colormap if colormap in COLORMAPS else "jet")
    stops = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colors]
    units = "contribution to the class's logit" if exact else "map value"
    if scale == "joint":
        meaning = (
            f"low to high {units}, on one scale for all maps of an image: a class the model "
            "barely sees stays cool"
        )
    else:
        meaning = f"low to high {units}, each map stretched to the full range on its own"
    return {"colormap": colormap, "scale": scale, "colors": stops, "meaning": meaning}


def _card(root: Path, record: dict[str, Any], base: Path, per_class: int = 1) -> dict[str, Any]:
    stem = str(record.get("output_stem", Path(record["input"]).stem))
    outputs = [base / p for p in record["outputs"]]
    original = base / record["input"]
    thumbs = root / THUMBS
    original_thumb = _thumb(original, thumbs, f"{stem}_input")
    explained_all = record.get("explained", [])
    overlays = outputs[0 : per_class * len(explained_all) : per_class] or outputs[:1]
    overlay_thumbs = [
        _thumb(path, thumbs, f"{stem}_cam" if i == 0 else f"{stem}_cam{i + 1}")
        for i, path in enumerate(overlays)
    ]

    def link(path: str | Path | None) -> str | None:
        """A relative URL (percent-encoded: '#', '?' and '%' in file names stay part of the path)."""
        if path is None:
            return None
        relative = Path(os.path.relpath(Path(path).absolute(), root.absolute())).as_posix()
        return urllib.parse.quote(relative, safe="/")

    top = record.get("predictions", [{}])[0]
    explained = record.get("explained", [{}])
    return {
        "name": original.name,
        "path": record["input"],
        "width": record.get("width"),
        "height": record.get("height"),
        "top": top.get("name", ""),
        "confidence": top.get("probability", 0.0),
        "predictions": [
            [p["name"], p["index"], p["probability"]] for p in record.get("predictions", [])
        ],
        "box": explained[0].get("box") if explained else None,
        "explained": explained[0].get("name", "") if explained else "",
        "thumb": link(original_thumb),
        "overlayThumb": link(overlay_thumbs[0]),
        "maps": [
            {
                "name": score.get("name", ""),
                "index": score.get("index"),
                "probability": score.get("probability", 0.0),
                "box": score.get("box"),
                "thumb": link(thumb),
                "href": link(path),
            }
            for score, thumb, path in zip(explained_all, overlay_thumbs, overlays, strict=False)
        ],
        "original": link(original),
        "outputs": [[link(p), p.name] for p in outputs],
    }


_STYLE = """body{font:14px system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{position:sticky;top:0;background:#fff;padding:10px 16px;border-bottom:1px solid #ddd;display:flex;gap:12px;flex-wrap:wrap;align-items:center;z-index:1}
header h1{font-size:16px;margin:0 12px 0 0}
#count{color:#666}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:12px;padding:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.pair{display:flex;gap:6px}
.pair a{flex:1;min-width:0}
.pair img{width:100%;height:200px;object-fit:contain;background:#eee;display:block}
.name{font-weight:600;overflow-wrap:anywhere;margin:6px 0 2px}
table{border-collapse:collapse;width:100%;font-size:13px}
td{padding:1px 4px}
td.p{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#666;font-size:12px}
.maps{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}
.maps figure{margin:0;width:calc(25% - 5px);min-width:100px}
.maps img{width:100%;height:100px;object-fit:contain;background:#eee;display:block}
.maps figcaption{font-size:12px;overflow-wrap:anywhere}
#legend{display:flex;align-items:center;gap:6px;font-size:12px;color:#444}
#legend .bar{width:160px;height:12px;border:1px solid #999}
#failures{padding:0 16px 16px}
#failures li{overflow-wrap:anywhere}
"""

_BODY = """<header><h1>camtool gallery</h1>
<label>class <select id="cls"><option value="">all</option></select></label>
<label>search <input id="q" type="search" placeholder="file name"></label>
<label>sort <select id="sort"><option value="desc">confidence high-low</option><option value="asc">confidence low-high</option><option value="name">name</option></select></label>
<span id="count"></span><span class="meta" id="model"></span>
<div id="legend"><span>low</span><span class="bar"></span><span>high</span><span id="meaning"></span></div></header>
<main id="cards"></main><div id="end"></div>
<section id="failures"></section>
"""

_SCRIPT = """"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const cls = document.getElementById("cls"), q = document.getElementById("q"), sort = document.getElementById("sort");
document.getElementById("model").textContent = data.model + " - " + data.method + ": " + data.made_from;
document.querySelector("#legend .bar").style.background = "linear-gradient(to right, " + data.legend.colors.join(", ") + ")";
document.getElementById("meaning").textContent = data.legend.colormap + ": " + data.legend.meaning;
[...new Set(data.cards.map(c => c.top))].sort().forEach(name => { const o = el("option", name); o.value = name; cls.appendChild(o); });
function image(src, href, alt) {
  const a = el("a"); if (href) a.href = href;
  const img = el("img"); img.loading = "lazy"; img.alt = alt; if (src) img.src = src;
  a.appendChild(img); return a;
}
function card(c) {
  const d = el("div", undefined, "card"); d.dataset.top = c.top;
  const pair = el("div", undefined, "pair");
  pair.appendChild(image(c.thumb, c.original, "input")); pair.appendChild(image(c.overlayThumb, c.outputs[0][0], "CAM overlay"));
  d.appendChild(pair); d.appendChild(el("div", c.name, "name"));
  const t = el("table");
  c.predictions.forEach(p => { const r = el("tr"); r.appendChild(el("td", p[0])); r.appendChild(el("td", "#" + p[1], "meta")); r.appendChild(el("td", p[2].toFixed(3), "p")); t.appendChild(r); });
  d.appendChild(t);
  const meta = el("div", "CAM of " + c.explained + (c.box ? ", box [" + c.box.join(", ") + "]" : ", no box") + ", " + c.width + "x" + c.height, "meta");
  d.appendChild(meta);
  if (c.maps.length > 1) {
    const maps = el("div", undefined, "maps");
    c.maps.forEach(m => {
      const f = el("figure"); f.appendChild(image(m.thumb, m.href, "map of " + m.name));
      f.appendChild(el("figcaption", m.name + " " + m.probability.toFixed(2) + (m.box ? " [" + m.box.join(", ") + "]" : "")));
      maps.appendChild(f);
    });
    d.appendChild(maps);
  }
  const links = el("div", undefined, "meta");
  c.outputs.forEach(o => { const a = el("a", o[1]); a.href = o[0]; links.appendChild(a); links.appendChild(document.createTextNode(" ")); });
  d.appendChild(links);
  return d;
}
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.has("class")) cls.value = h.get("class");
  if (h.has("q")) q.value = h.get("q");
  if (h.has("sort")) sort.value = h.get("sort");
}
// Cards are built PAGE at a time, the next ones when the sentinel below them scrolls into view,
// so a gallery of 10,000 images opens as fast as one of 60.
const PAGE = 60, main = document.getElementById("cards"), sentinel = el("div");
let shown = [], built = 0;
function more() {
  const next = shown.slice(built, built + PAGE); built += next.length;
  main.append(...next.map(card));
}
new IntersectionObserver(entries => { if (entries.some(e => e.isIntersecting)) more(); }, { rootMargin: "800px" }).observe(sentinel);
function render() {
  const needle = q.value.toLowerCase();
  shown = data.cards.filter(c => (!cls.value || c.top === cls.value) && c.path.toLowerCase().includes(needle));
  const by = sort.value;
  shown.sort((a, b) => by === "name" ? a.path.localeCompare(b.path) : by === "asc" ? a.confidence - b.confidence : b.confidence - a.confidence);
  main.replaceChildren(); built = 0; more();
  document.getElementById("count").textContent = shown.length + " of " + data.cards.length + " images";
  const state = new URLSearchParams(); if (cls.value) state.set("class", cls.value); if (q.value) state.set("q", q.value); if (by !== "desc") state.set("sort", by);
  history.replaceState(null, "", "#" + state.toString());
}
function failures() {
  const s = document.getElementById("failures"); if (!data.failed.length) return;
  s.appendChild(el("h2", data.failed.length + " failed inputs"));
  const ul = el("ul"); data.failed.forEach(f => { ul.appendChild(el("li", f.error.startsWith(f.input) ? f.error : f.input + ": " + f.error)); }); s.appendChild(ul);
}
document.getElementById("end").appendChild(sentinel);
readHash(); [cls, q, sort].forEach(x => x.addEventListener("input", render)); window.addEventListener("hashchange", () => { readHash(); render(); });
render(); failures();
"""
