# What the GPU scripts (gpu_paper_size.sh, gpu_clip_agiqa.sh) share; sourced by them, not run.

gpu_setup() {  # gpu_setup RES RUN: RES made, RUN emptied, unbuffered output, the machine and versions into RES/machine.txt
  mkdir -p "$1"; rm -rf "$2"
  export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, open_clip; print('torch', torch.__version__, '| open_clip', open_clip.__version__)"; } | tee "$1/machine.txt"
}

seconds_since() { python3 -c "print(round($(date +%s.%N) - $1, 1))"; }  # seconds_since START (a `date +%s.%N`)

mark_finished() {  # mark_finished RUN START: RUN/finished.txt as project_protocol.py reads it (each split's metrics.csv time, the launch)
  mkdir -p "$1"
  for d in "$1"/split*/; do echo "$(basename "$d") $(stat -c %.3Y "$d/metrics.csv" 2>/dev/null)"; done > "$1/finished.txt"
  echo "start $2" >> "$1/finished.txt"
}

score_run() {  # score_run RUN RES: `ipiqa score` of the whole toy set with RUN's models into RES/scores.csv; rows and wall time
  local start; start=$(date +%s.%N)
  python3 -m ipiqa.scoring score --model "$1" data/toy3k-v2/images --prompts data/toy3k-v2/data.csv > "$2/scores.csv" 2> "$2/score.log"
  local rc=$?; tail -n 2 "$2/score.log"
  echo "scorer exit $rc | $(($(wc -l < "$2/scores.csv") - 1)) rows | wall $(seconds_since "$start") s" | tee -a "$2/score.log"
}
