#!/usr/bin/env bash
# One command for a CUDA machine: train the paper config (fp16 autocast on CUDA), export it, time it.
#   benchmarks/train_paper_gpu.sh DATA_DIR STATE_DIR [MINUTES] [CONFIG]   (CONFIG: paper, default, or base)
# DATA_DIR holds caseNN_ct.nii.gz / caseNN_label.nii.gz pairs (../shared/data; case01 is skipped: it is the test
# case). STATE_DIR is outside the repository; rerunning the command resumes the run there. Writes
# STATE_DIR/CONFIG.pt (fp16) and STATE_DIR/benchmark.json, and prints the timings.
set -euo pipefail
data=${1:?DATA_DIR}; state=${2:?STATE_DIR}; minutes=${3:-12}; config=${4:-paper}
cases=()
for ct in "$data"/case0[2-9]_ct.nii.gz; do cases+=(--case "$ct" "${ct%_ct.nii.gz}_label.nii.gz"); done
start=$(date +%s)
if [ -f "$state/run/trainer_state.pt" ]; then
  timeout --signal=INT "${minutes}m" liver-e2net train --resume "$state/run" --device cuda --progress none || true
else
  timeout --signal=INT "${minutes}m" liver-e2net train "${cases[@]}" -o "$state/run" --config "$config" --device cuda \
    --val-cases case02 --optimizer adamw --batch-size 16 --steps-per-epoch 200 --epochs 200 \
    --synthetic-tumors 0.7 --synthetic-border-probability 0.5 --tumor-pos-weight 10 --ema-decay 0.995 --workers "$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))" --progress none || true
fi
echo "training: $(( $(date +%s) - start )) s wall"
liver-e2net export-model --stage1 "$state/run/best.pt" -o "$state/$config.pt" --name "Liver E2Net $config (GPU)"
liver-e2net benchmark --model "$state/$config.pt" --device cuda --repeats 5 --json "$state/benchmark.json"
