#!/bin/bash
# The speed comparison of ../shared/torch_bench/README.md: hone and PyTorch alternating, SFT and
# DPO, three rounds, the malloc settings below for both; one JSON line per pair of runs with the
# 1-minute load average at its start.
#
# cpu-small: PyTorch is ../shared/torch_bench/bench.py (the issue's baseline), 6 steps after 2
# warm-up steps. cpu-135m (the real 135M Llama shape): PyTorch is benches/pytorch_baseline.py
# (transformers' Llama, `--ref forward` for DPO as bench.py does), 4 steps after 1 warm-up step.
# PRESETS (default "cpu-small cpu-135m"), ROUNDS (3), HONE, PY (a Python with torch and
# transformers), BENCH (bench.py) and BASELINE (pytorch_baseline.py) override the defaults.
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592 MALLOC_TOP_PAD_=268435456
here="$(cd "$(dirname "$0")/.." && pwd)"
HONE=${HONE:-$here/target/release/hone}
PY=${PY:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/trl-venv/bin/python}
BENCH=${BENCH:-$here/../shared/torch_bench/bench.py}
BASELINE=${BASELINE:-$here/benches/pytorch_baseline.py}
field() { grep -o "\"$1\": *[0-9.]*" | head -1 | sed 's/.*: *//'; }
torch_run() { # preset mode
  if [ "$1" = cpu-small ]; then
    TORCH_THREADS=2 OMP_NUM_THREADS=2 $PY $BENCH $2 sdpa 6 2 2>/dev/null | field tokens_per_s
  else
    local ref=""
    [ "$2" = dpo ] && ref="--ref forward"
    OMP_NUM_THREADS=2 $PY $BASELINE --preset $1 --mode $2 $ref --steps 4 --warmup 1 --threads 2 2>/dev/null \
      | field tokens_per_second
  fi
}
for preset in ${PRESETS:-cpu-small cpu-135m}; do
  if [ "$preset" = cpu-small ]; then steps="--steps 6 --warmup 2"; else steps="--steps 4 --warmup 1"; fi
  for round in $(seq ${ROUNDS:-3}); do
    for mode in sft dpo; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      h=$(RAYON_NUM_THREADS=2 $HONE bench --preset $preset --mode $mode $steps --threads 2 2>/dev/null)
      t=$(torch_run $preset $mode)
      echo "{\"preset\":\"$preset\",\"round\":$round,\"mode\":\"$mode\",\"load\":$load,\"hone\":$(echo "$h" | field tokens_per_second),\"hone_cpu_s_per_step\":$(echo "$h" | field cpu_s_per_step),\"torch\":$t}"
    done
  done
done
