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
. "$(dirname "$0")/gpu_common.sh"
res=${1:-outputs/gpu_paper_size}; run=${RUN_DIR:-/tmp/gpu_paper_size_run}
gpu_setup "$res" "$run"

start=$(date +%s.%N)
torchrun --standalone --nproc_per_node 2 -m ipiqa.training --dataset toy --arch RN50 --pretrained none --image_size 512 \
    --batch_size 40 --lr 1e-5 --amp True --torch_compile True --epochs 3 --n_splits 4 --out_dir "$run" > "$res/loop.log" 2>&1
echo "exit $? | wall $(seconds_since "$start") s" | tee -a "$res/loop.log"
tail -n 6 "$res/loop.log"
mark_finished "$run" "$start"
tar -czf "$res/run.tgz" --exclude='*.pt' -C "$(dirname "$run")" "$(basename "$run")"
python3 benchmarks/project_protocol.py "$run" 2>&1 | tee "$res/projection.txt"

[ "${SCORE:-1}" = 1 ] && score_run "$run" "$res"

python3 benchmarks/bench_ipiqa.py --device cuda --batch-size 40 --amp --compile --sizes ${SIZES:-224 512} --repeat 10 2>&1 | tee "$res/bench.log"
