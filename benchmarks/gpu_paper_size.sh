#!/usr/bin/env bash
# The paper-size checks on one GPU, in one go (4.6 minutes on an H200, 2026-11-27); prints figures, asserts nothing.
#
#   bash benchmarks/gpu_paper_size.sh [results folder, default outputs/gpu_paper_size]
#   SIZES=512 SCORE=0 bash benchmarks/gpu_paper_size.sh     # the benchmark at 512 px only, no scorer run (H100: 4.0 minutes)
#
# 1. The training loop itself, as the README's one-GPU torchrun line runs it (two splits at once, compiled): CLIP-RN50
#    (random init) at 512 px on the AGIQA-3k-sized toy set (3,000 images, 2,400 training images per split), 4 splits
#    x 3 epochs. Each split's history.csv has an epoch's seconds; finished.txt when each split's metrics were written.
#    benchmarks/project_protocol.py turns them into the AGIQA-3k protocol's wall time (10 splits x 100 epochs).
# 2. The scorer (`python -m ipiqa.scoring score`) on that run's models: all 3,000 toy images, each with its prompt.
# 3. bench_ipiqa.py at 224 and 512 px, bf16, batch 40, ipiqa's trunk compiled: images/s of a training step and of
#    scoring, ipiqa against the authors' configuration, peak memory, the projected AGIQA-3k protocol.
set -u
res=${1:-outputs/gpu_paper_size}; run=${RUN_DIR:-/tmp/gpu_paper_size_run}
mkdir -p "$res"; rm -rf "$run"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, open_clip; print('torch', torch.__version__, '| open_clip', open_clip.__version__)"; } | tee "$res/machine.txt"

start=$(date +%s.%N)
torchrun --standalone --nproc_per_node 2 -m ipiqa.training --dataset toy --arch RN50 --pretrained none --image_size 512 \
    --batch_size 40 --lr 1e-5 --amp True --torch_compile True --epochs 3 --n_splits 4 --out_dir "$run" > "$res/loop.log" 2>&1
echo "exit $? | wall $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s" | tee -a "$res/loop.log"
tail -n 6 "$res/loop.log"
for d in "$run"/split*/; do echo "$(basename "$d") $(stat -c %.3Y "$d/metrics.csv" 2>/dev/null)"; done > "$run/finished.txt"
echo "start $start" >> "$run/finished.txt"
tar -czf "$res/run.tgz" --exclude='*.pt' -C "$(dirname "$run")" "$(basename "$run")"
python3 benchmarks/project_protocol.py "$run" 2>&1 | tee "$res/projection.txt"

start=$(date +%s.%N)
[ "${SCORE:-1}" = 1 ] && python3 -m ipiqa.scoring score --model "$run" data/toy3k-v1/images --prompts data/toy3k-v1/data.csv > "$res/scores.csv" 2> "$res/score.log"
echo "scorer exit $? | $(($(wc -l < "$res/scores.csv") - 1)) rows | wall $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s" | tee -a "$res/score.log"
tail -n 3 "$res/score.log"

python3 benchmarks/bench_ipiqa.py --device cuda --batch-size 40 --amp --compile --sizes ${SIZES:-224 512} --repeat 10 2>&1 | tee "$res/bench.log"
