#!/usr/bin/env bash
# Create .venv with camtool and its dependencies. `scripts/setup.sh` for users, `scripts/setup.sh test`
# for the test suite (test-only packages, and MkDocs for the docs site that .ci/run builds). Safe to
# run again: it only installs what is missing. `scripts/setup.sh torch-plan` only says which torch
# build it would install, and why.
#
# torch: on a machine without an NVIDIA driver (no nvidia-smi, no /proc/driver/nvidia) the CPU build
# comes from $CAMTOOL_TORCH_CPU_INDEX (PyTorch's CPU wheels: a few hundred MB instead of gigabytes
# of CUDA libraries) when that index answers within 5 s; otherwise, and with a driver, the default
# build from the configured index. CAMTOOL_TORCH_CPU_INDEX= (empty) turns the CPU choice off. A
# torch already in .venv is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CPU_INDEX=${CAMTOOL_TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}

# Prints "cpu <index>" or "default: <why>".
torch_plan() {
  if command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ]; then
    echo "default: an NVIDIA driver is present (the default build brings CUDA)"
  elif [ -z "$CPU_INDEX" ]; then
    echo "default: CAMTOOL_TORCH_CPU_INDEX is empty"
  elif "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).close()' \
      "$CPU_INDEX/torch/" >/dev/null 2>&1; then
    echo "cpu $CPU_INDEX"
  else
    echo "default: no NVIDIA driver, but $CPU_INDEX cannot be reached (the default build runs on a CPU too)"
  fi
}
if [ "${1:-}" = "torch-plan" ]; then
  torch_plan
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  plan=$(torch_plan)
  echo "torch: $plan" >&2
  if [ "${plan%% *}" = "cpu" ]; then
    # the pinned versions (constraints.txt's torch==X matches X+cpu); the configured index stays
    pip install -c constraints.txt --extra-index-url "$CPU_INDEX" torch torchvision ||
      echo "torch: the CPU build did not install; the default build instead" >&2
  fi
fi
extras=""
# the suite runs the Ray export and ROAD solver tests too; .ci/run builds the docs site
[ "${1:-}" = "test" ] && extras="[test,ray,eval,docs]"
pip install -c constraints.txt -e ".${extras}"
if [ "${1:-}" = "test" ]; then
  # foolbox ships 20 labelled ImageNet photos; its own dependencies (jax/tf adapters) are not needed.
  pip install --no-deps "foolbox==3.3.4"
  # Peers of the differential tests (tests/methods/test_peers.py). grad-cam's metadata asks for OpenCV,
  # which camtool already has as opencv-python-headless: install it without dependencies, plus
  # the packages `import pytorch_grad_cam` really imports.
  pip install -c constraints.txt "torchcam==0.5.0" ttach tqdm scipy scikit-learn matplotlib
  pip install -c constraints.txt --no-deps "grad-cam==1.5.7"
fi
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  # The gallery's browser test drives Debian's headless Chromium; without it that test is skipped.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium) >/dev/null 2>&1 || echo "note: Chromium could not be installed; the browser test will be skipped" >&2
fi
if [ "${1:-}" = "test" ] && [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  # `camtool fit`'s test trains on Debian's Fashion-MNIST; without it that test is skipped.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: dataset-fashion-mnist could not be installed; the fit tests will be skipped" >&2
fi
