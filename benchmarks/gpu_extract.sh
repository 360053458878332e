#!/usr/bin/env bash
# Extraction on a GPU: encoder-only vs end-to-end tiles/s for resnet50_trunc and ViT-S/16, by batch size,
# precision (fp32 / fp16 / bf16 autocast) and DataLoader workers, with peak GPU memory; prints one table.
# Each configuration runs benchmarks/extract_throughput.py in a fresh process (peak memory per configuration)
# on a cached synthetic 40,000 x 30,000 px slide at 20x (256-px tiles resized to 224). About 6 minutes on a GPU.
#
#   benchmarks/gpu_extract.sh                    # on the GPU
#   benchmarks/gpu_extract.sh --device cpu       # smoke test of the whole script on a CPU (tiny slide, fp32)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
device=cuda
[[ "${1:-}" == "--device" ]] && device="$2"
workdir="${WORKDIR:-${TMPDIR:-/tmp}/cmamil-gpu-bench}"
mkdir -p "$workdir"

if [[ "$device" == cpu ]]; then        # smoke: one small configuration per encoder
  slide=(--width 1536 --height 1024) seconds=1
  runs=("64 fp32 1")
else
  slide=(--width 40000 --height 30000) seconds=5
  runs=("64 fp32 8" "256 fp32 8" "256 fp16 8" "256 bf16 8" "256 fp16 4" "256 fp16 16")
fi

printf '| encoder | batch | precision | workers | encoder only tiles/s | end to end tiles/s | ratio | peak GPU GiB |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for encoder in resnet50_trunc timm:vit_small_patch16_224; do
  for run in "${runs[@]}"; do
    read -r batch precision workers <<<"$run"
    [[ "$device" == cpu ]] && batch=4
    line="$("$python" "$here/extract_throughput.py" "${slide[@]}" --magnifications 20 --tile-px 256 \
      --input-px 224 --encoder "$encoder" --batch-size "$batch" --precision "$precision" \
      --num-workers "$workers" --device "$device" --ceiling-seconds "$seconds" --workdir "$workdir" --json \
      | tail -n 1)"
    "$python" - "$encoder" "$batch" "$precision" "$workers" "$line" <<'PY'
import json, sys
encoder, batch, precision, workers, line = sys.argv[1:]
f = json.loads(line)
print(f"| {encoder} | {batch} | {precision} | {workers} | {f['encoder_only']:.1f} | {f['end_to_end']:.1f} | "
      f"{f['end_to_end'] / f['encoder_only']:.2f} | {f['gpu_peak_gib']:.2f} |")
PY
  done
done
