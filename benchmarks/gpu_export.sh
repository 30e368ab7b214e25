#!/usr/bin/env bash
# The GPU export measurement in one script, for a CUDA machine (an H100/H200-class GPU, 16 CPUs).
#
#   bash benchmarks/gpu_export.sh                              # the measurement (a few minutes)
#   bash benchmarks/gpu_export.sh --device cpu --images 50     # a smoke run on any machine
#
# What it does:
#   1. installs camtool's wheel (and any other wheel) from dist/ into a virtual environment that
#      sees the machine's torch and torchvision (--system-site-packages), without the network;
#      TorchCodec is used when its wheel is in dist/ or it is installed already (camtool[gpu]),
#      else torchvision's nvJPEG decoder. Build the wheel beforehand, where PyPI is reachable:
#        pip wheel --no-deps --no-build-isolation -w dist .
#        pip download --no-deps -d dist torchcodec            # optional
#   2. writes 640x480 JPEGs (quality 90) from the bundled and foolbox photos: the table's images,
#      then up to 50,000 for the memory check;
#   3. for the default model (EfficientNet-Lite0, its trained weights) and torchvision's ResNet-50
#      (random weights: the speed is the same as with trained ones, the maps are meaningless),
#      runs benchmarks/export_throughput.py on the GPU: the bare forward pass (bfloat16), camtool's
#      device runner (`camtool export --device cuda`: its defaults, bfloat16, batches of 256),
#      camtool's local runner, pytorch-grad-cam and torchcam (as their users write the loop, on
#      the GPU, batches of 256), each in its own process, in the same run; then the device runner
#      alone on 10,000 and 50,000 images (is memory flat?);
#   4. prints images/s, peak host memory (the process tree's RSS) and peak GPU memory, and writes
#      the tables and JSON into $OUT (when set) or benchmarks/results/.
#
# Options: --device cuda|cpu (default cuda), --images N (table, default 2000), --scale "N M"
# (device runner alone; default "10000 50000" on cuda, N+10 on cpu), --models "a b".
set -euo pipefail

DEVICE=cuda
IMAGES=2000
SCALE=""
MODELS="efficientnet_lite0 resnet50"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --images) IMAGES="$2"; shift 2 ;;
        --scale) SCALE="$2"; shift 2 ;;
        --models) MODELS="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$SCALE" ]; then
    if [ "$DEVICE" = cpu ]; then SCALE="$((IMAGES + 10))"; else SCALE="10000 50000"; fi
fi
BATCH=256
if [ "$DEVICE" = cpu ]; then BATCH=16; fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RESULTS="${OUT:-$ROOT/benchmarks/results}"
DATA="${DATA:-${TMPDIR:-/tmp}/camtool-gpu-bench}"
VENV="${VENV:-${TMPDIR:-/tmp}/camtool-gpu-venv}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$RESULTS" "$DATA"
START=$(date +%s)

# 1. camtool from its wheel, no network
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    WHEELS=$(ls "$ROOT"/dist/*.whl "$ROOT"/*.whl 2>/dev/null || true)
    if ! ls $WHEELS 2>/dev/null | grep -q '/camtool-'; then
        echo "no camtool wheel in dist/: build it first (pip wheel --no-deps --no-build-isolation -w dist .)" >&2
        exit 1
    fi
    "$PYTHON" -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install -q --no-deps --no-index --force-reinstall $WHEELS
    PY="$VENV/bin/python"
else
    PY="$PYTHON"
fi
export PATH="$(dirname "$PY"):$PATH"  # the `camtool` command of that environment
cd "$DATA"  # import camtool from the installed wheel, not from a source tree
"$PY" - <<'EOF'
import torch, camtool
print(f"camtool {camtool.__version__}, torch {torch.__version__}, CUDA {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
try:
    import torchcodec
    print(f"torchcodec {torchcodec.__version__}: JPEG decoding on the device")
except Exception as exc:
    print(f"no torchcodec ({type(exc).__name__}): torchvision's decoder on the device")
for peer in ("pytorch_grad_cam", "torchcam"):
    try:
        __import__(peer)
    except ImportError:
        print(f"warning: {peer} is not installed: its row is left out")
EOF
METHODS="forward,camtool,camtool-local"
"$PY" -c "import pytorch_grad_cam" 2>/dev/null && METHODS="$METHODS,gradcam"
"$PY" -c "import torchcam" 2>/dev/null && METHODS="$METHODS,torchcam"

# 2. 640x480 JPEGs, written in parallel (export_throughput.py keeps files that exist)
LARGEST=$(printf '%s\n' "$IMAGES" $SCALE | sort -n | tail -1)
"$PY" - "$DATA/images" "$LARGEST" "$ROOT" <<'EOF'
import importlib.util, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import cv2

folder, count, root = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
photos = sorted((root / "examples").glob("*.png")) + sorted((root / "examples").glob("*.jpg"))
spec = importlib.util.find_spec("foolbox")
if spec and spec.submodule_search_locations:
    photos += sorted((Path(next(iter(spec.submodule_search_locations))) / "data").glob("imagenet_*.jpg"))
sources = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (640, 480), interpolation=cv2.INTER_AREA) for p in photos]

def write(start: int) -> int:
    cv2.setNumThreads(1)
    for i in range(start, min(start + 1000, count)):
        path = folder / f"{i // 1000:03d}" / f"photo_{i:06d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            image = cv2.flip(sources[i % len(sources)], 1) if (i // len(sources)) % 2 else sources[i % len(sources)]
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return start

with ProcessPoolExecutor() as pool:
    list(pool.map(write, range(0, count, 1000)))
print(f"{count} 640x480 JPEGs in {folder}")
EOF

# 3. the tables
for MODEL in $MODELS; do
    EXTRA=()
    if [ "$MODEL" = resnet50 ]; then
        WEIGHTS="$DATA/resnet50_random.pth"
        [ -f "$WEIGHTS" ] || "$PY" -c "import sys, torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.resnet50().state_dict(), sys.argv[1])" "$WEIGHTS"
        EXTRA=(--weights "$WEIGHTS")
    fi
    echo
    echo "== $MODEL on $DEVICE =="
    "$PY" "$ROOT/benchmarks/export_throughput.py" --device "$DEVICE" --runner device \
        --model "$MODEL" "${EXTRA[@]}" --images "$IMAGES" --scale $SCALE --batch-size "$BATCH" \
        --methods "$METHODS" --data "$DATA" --json "$RESULTS/gpu_export_$MODEL.json" \
        | tee "$RESULTS/gpu_export_$MODEL.txt"
done
echo
echo "done in $(( $(date +%s) - START )) s; results in $RESULTS"
