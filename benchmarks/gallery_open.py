"""How fast a big export's gallery opens in headless Chromium.

Run: .venv/bin/python benchmarks/gallery_open.py [--images 2000]

Exports N photos (the benchmark data set of export_throughput.py) with --report, then times
Chromium loading index.html until its DOM is complete (--dump-dom), against Chromium loading an
empty page, and prints both and their difference (the gallery's own cost).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_throughput import make_dataset

ROOT = Path(__file__).resolve().parent.parent


def load_seconds(browser: str, url: str, profile: Path, repeat: int = 5) -> tuple[float, str]:
    times, dom = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
             "--dump-dom", url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times), dom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "camtool-bench")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    paths = make_dataset(args.data / "images", args.images)
    out = args.data / f"gallery-{args.images}"
    listing = args.data / f"gallery-{args.images}.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    if not (out / "index.html").exists():
        start = time.perf_counter()
        subprocess.run([str(ROOT / ".venv" / "bin" / "camtool"), "export", f"@{listing}", "-o", str(out), "-q",
                        "--format", "jpg", "--report"], check=True)  # fmt: skip
        print(f"export + gallery of {args.images} images: {time.perf_counter() - start:.0f} s")
    profile = Path(tempfile.mkdtemp())
    blank = out / "blank.html"
    blank.write_text("<!DOCTYPE html><title>blank</title>")
    empty, _ = load_seconds(browser, blank.as_uri(), profile)
    full, dom = load_seconds(browser, (out / "index.html").as_uri(), profile)
    cards = dom.count('class="card"')
    size = (out / "index.html").stat().st_size / 1e6
    print(f"index.html: {size:.1f} MB, {cards} cards rendered")
    print(f"{'page':24s} {'seconds (median of 5)':>22s}")
    print(f"{'empty page':24s} {empty:22.2f}")
    print(f"{'gallery':24s} {full:22.2f}")
    print(f"{'gallery minus empty':24s} {full - empty:22.2f}")


if __name__ == "__main__":
    main()
