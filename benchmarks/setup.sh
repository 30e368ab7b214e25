#!/usr/bin/env bash
# The benchmarks' own environment: .venv-bench sees everything in camtool's .venv (through a .pth
# file) and adds the peers compared against, pytorch-grad-cam and torchcam, which are not camtool
# dependencies. Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh test
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  main=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  bench=$(.venv-bench/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # addsitedir (not a plain path line) so the .pth files there, camtool's editable install among
  # them, are processed too.
  echo "import site; site.addsitedir('$main')" > "$bench/camtool-main-venv.pth"
fi
.venv-bench/bin/python -m pip --disable-pip-version-check -q install -c constraints.txt \
  "grad-cam==1.5.7" "torchcam==0.5.0"
