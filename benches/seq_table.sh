#!/usr/bin/env bash
# How the step cost grows with sequence length and batch (issue 12, goal 4): the cpu-small SFT
# step of `hone bench` against PyTorch eager (benches/pytorch_baseline.py, transformers' Llama,
# sdpa attention) at seq 128/256/512/1024 x batch 2/8, alternating hone and torch per cell, 2
# threads each, the malloc settings of ../shared/torch_bench. One JSON line per run, with the
# 1-minute load average it started at. Manual tool, not CI.
#
#   benches/seq_table.sh [HONE_BINARY] [PYTHON]
set -euo pipefail
hone=${1:-target/release/hone}
python=${2:-python3}
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592 MALLOC_TOP_PAD_=268435456
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 TORCH_THREADS=2
here=$(dirname "$0")
for seq in 128 256 512 1024; do
  for batch in 2 8; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    h=$("$hone" bench --preset cpu-small --mode sft --seq "$seq" --batch "$batch" --steps 3 --warmup 1 --threads 2)
    echo "{\"impl\":\"hone\",\"load\":$load,\"result\":$h}"
    load=$(cut -d' ' -f1 /proc/loadavg)
    t=$("$python" "$here/pytorch_baseline.py" --preset cpu-small --mode sft --seq "$seq" --batch "$batch" \
      --steps 3 --warmup 1 --threads 2 | tail -1)
    echo "{\"impl\":\"torch\",\"load\":$load,\"result\":$t}"
  done
done
