#!/usr/bin/env bash
# The first run on a GPU, before renting one for days: does the `base` preset of ldm-unet train in bf16 on
# real-size (256-px) crops, how fast, in how much memory, and how long does a whole photograph take to
# enhance? Under 8 minutes on one modern GPU (A100/H100/RTX 4090 class) with the default step counts.
#
#   python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"   # the README's command
#   bash benchmarks/gpu_check.sh [WORK_DIR]
#
# It installs nothing. Environment: AE_STEPS, DENOISER_STEPS, ADAPT_STEPS (default 300, 300, 100),
# BATCH (16, the preset's), CUDA_VISIBLE_DEVICES to choose the GPU. It prints images/s per stage, the peak
# GPU memory (nvidia-smi, sampled every 0.2 s), and the seconds to enhance a 2048² and a 4928×3264
# photograph on the fast path and with DDIM 50; any failure exits non-zero.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
AE_STEPS="${AE_STEPS:-300}" DENOISER_STEPS="${DENOISER_STEPS:-300}" ADAPT_STEPS="${ADAPT_STEPS:-100}"
BATCH="${BATCH:-16}"
export HF_HUB_OFFLINE=1

if ! command -v rdiff >/dev/null 2>&1 || ! python -c "import rdiff" >/dev/null 2>&1; then
    echo "gpu_check: rdiff is not installed in this environment; run the README's command first (pip install -e \".[test]\" in $here)." >&2
    exit 2
fi
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU is visible to torch (torch.cuda.is_available() is False), so there is nothing to check; on a CPU run 'pytest -m slow tests/test_large_presets.py' instead." >&2
    exit 3
fi

work="${1:-$(mktemp -d "${TMPDIR:-/tmp}/rdiff-gpu-check.XXXXXX")}"
mkdir -p "$work"
echo "gpu_check: working in $work"
python - "$work" <<'EOF'
# Training data: the scikit-image fundus photograph at its native 1411², and its mirror image (two files:
# one trains, one is held out), plus the two photographs to enhance, at 2048² and at 4928×3264 (a common
# fundus camera's sensor), both made from the same photograph.
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data
from skimage.transform import resize

work = Path(sys.argv[1])
(work / "data").mkdir(exist_ok=True)
(work / "photos").mkdir(exist_ok=True)
retina = data.retina()
Image.fromarray(retina).save(work / "data" / "retina.png")
Image.fromarray(np.ascontiguousarray(retina[:, ::-1])).save(work / "data" / "retina-mirrored.png")
square = (resize(retina, (2048, 2048), anti_aliasing=True) * 255).astype(np.uint8)
Image.fromarray(square).save(work / "photos" / "p2048.png")
wide = np.zeros((3264, 4928, 3), np.uint8)
disc = (resize(retina, (3264, 3264), anti_aliasing=True) * 255).astype(np.uint8)
wide[:, (4928 - 3264) // 2:(4928 - 3264) // 2 + 3264] = disc
Image.fromarray(wide).save(work / "photos" / "p4928x3264.png")
EOF

# peak GPU memory: nvidia-smi sampled in the background for the whole check
gpu_index="$(python -c "import torch; print(torch.cuda.current_device())")"
smi_log="$work/gpu_memory.csv"
monitor=""
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --id="$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$smi_log" 2>/dev/null &
    monitor=$!
fi
stop_monitor() { if [ -n "$monitor" ]; then kill "$monitor" 2>/dev/null || true; wait "$monitor" 2>/dev/null || true; fi; }
trap stop_monitor EXIT

started=$SECONDS
run="$work/run"
rm -rf "$run"
rdiff train --backbone ldm-unet --modality fundus --preset base --data "$work/data" --out "$run" \
    --set train.mixed_precision=bf16 --set train.batch_size="$BATCH" \
    --set train.steps.autoencoder="$AE_STEPS" --set train.steps.denoiser="$DENOISER_STEPS" \
    --set train.adapt_steps="$ADAPT_STEPS" --set train.checkpoint_every=1000000 --set train.val_every=50 \
    --set eval.crops=16
train_s=$((SECONDS - started))

enhance() {  # path steps photo -> seconds
    local t0=$SECONDS
    rdiff enhance --run "$run" "$work/photos/$3.png" --out "$work/out-$1$2-$3" --path "$1" ${2:+--steps "$2"} \
        --device cuda --dtype bfloat16 >/dev/null
    echo $((SECONDS - t0))
}
fast_2048=$(enhance fast "" p2048)
fast_wide=$(enhance fast "" p4928x3264)
ddim_2048=$(enhance sample 50 p2048)
ddim_wide=$(enhance sample 50 p4928x3264)
stop_monitor
trap - EXIT

python - "$run" "$smi_log" <<EOF
import json, sys
from pathlib import Path

run, smi = Path(sys.argv[1]), Path(sys.argv[2])
last = {}
for line in (run / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "images_per_s" in record:
        last[f"{record['phase']}:{record['stage']}"] = record
for name, record in last.items():
    print(f"{name:<26} {record['images_per_s']:>8.1f} images/s  (step {record['step']}, loss {record['loss']:.4f})")
used = [int(v) for v in smi.read_text().split() if v.strip().isdigit()] if smi.is_file() else []
print(f"{'peak GPU memory':<26} {max(used) / 1024:>8.2f} GiB (nvidia-smi, whole device)" if used
      else f"{'peak GPU memory':<26}      n/a (no nvidia-smi)")
report = json.loads((run / "report.json").read_text())
print(f"{'held-out PSNR (fast)':<26} {report['eval']['paths']['fast']['psnr']:>8.2f} dB after the short training")
print(f"{'training + evaluation':<26} {$train_s:>8d} s")
print(f"{'enhance 2048² fast':<26} {$fast_2048:>8d} s")
print(f"{'enhance 4928×3264 fast':<26} {$fast_wide:>8d} s")
print(f"{'enhance 2048² DDIM 50':<26} {$ddim_2048:>8d} s")
print(f"{'enhance 4928×3264 DDIM 50':<26} {$ddim_wide:>8d} s")
EOF
echo "gpu_check: passed in $((SECONDS - started)) s (run directory $run)"
