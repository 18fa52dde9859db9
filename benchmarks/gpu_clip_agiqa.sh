#!/usr/bin/env bash
# CLIP-AGIQA at the paper's size on one GPU, in one go; prints figures, asserts nothing.
#
#   bash benchmarks/gpu_clip_agiqa.sh [results folder, default outputs/gpu_clip_agiqa]
#   EPOCHS=2 SPLITS=2 bash benchmarks/gpu_clip_agiqa.sh    # shorter
#   COMPILE=1 bash benchmarks/gpu_clip_agiqa.sh            # + a compiled run (on an H200 it did not finish 2 x 3 epochs in 4.3 min)
#   ARCH=ViT-B-32-tiny SIZE=64 RESIZE=96 STRIDE=16 EPOCHS=2 bash benchmarks/gpu_clip_agiqa.sh   # the script itself, on a CPU
#
# The real training loop (`python -m ipiqa.training --method clip-agiqa`) with the AGIQA-3k preset's recipe -- CLIP
# ViT-B/32 (random init: the compute is the same as with OpenAI's weights), frozen; random 224 px crops with flips,
# batch 64, Adam 1e-4; the test score the mean over every 224 px crop at stride 64 -- on the AGIQA-3k-sized toy set
# squashed to 512 px (3,000 images, 2,400 training images per split):
# 1. fp32, as the preset trains (amp=False), then bf16 autocast (--amp True), then (COMPILE=1) bf16 with the model
#    through torch.compile (--torch_compile True). Each split's history.csv has an epoch's seconds; finished.txt when each
#    split's metrics were written. benchmarks/project_protocol.py turns them into the protocol's wall time
#    (AGIQA-3k: 10 splits x 50 epochs, one split at a time).
# 2. The scorer (`python -m ipiqa.scoring score`) on the fp32 run's models: all 3,000 toy images, every crop of each.
# On an H200 (2026-11-28) 1 took 72 + 68 s (fp32, bf16) and the scorer 165 s (before it batched 32 images, not 32 crops).
set -u
. "$(dirname "$0")/gpu_common.sh"
res=${1:-outputs/gpu_clip_agiqa}; run=${RUN_DIR:-/tmp/gpu_clip_agiqa_run}
gpu_setup "$res" "$run"

loop() {  # loop NAME OPTIONS...: one run of the training loop into $run/NAME, its log and projection into $res
  local name=$1; shift; local start; start=$(date +%s.%N)
  python3 -m ipiqa.training --dataset toy --method clip-agiqa --arch "${ARCH:-ViT-B-32}" --pretrained none \
      --image_size "${SIZE:-224}" --resize "${RESIZE:-512}" --test_stride "${STRIDE:-64}" --batch_size 64 --lr 1e-4 --epochs "${EPOCHS:-3}" --n_splits "${SPLITS:-2}" \
      --out_dir "$run/$name" "$@" > "$res/$name.log" 2>&1
  local rc=$?; tail -n 3 "$res/$name.log"
  echo "$name: exit $rc | wall $(seconds_since "$start") s" | tee -a "$res/$name.log"
  mark_finished "$run/$name" "$start"
  for d in "$run/$name"/split*/; do echo "$(basename "$d"): $(tr '\n' ' ' < "$d/history.csv")"; done | tee -a "$res/$name.log"
  python3 benchmarks/project_protocol.py "$run/$name" --processes 1 --epochs 50 2>&1 | tee "$res/$name.projection.txt"
}

loop fp32 --amp False
loop bf16 --amp True
[ "${COMPILE:-0}" = 1 ] && loop bf16_compiled --amp True --torch_compile True

score_run "$run/fp32" "$res"
tar -czf "$res/runs.tgz" --exclude='*.pt' -C "$(dirname "$run")" "$(basename "$run")"
