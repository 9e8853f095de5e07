#!/bin/bash
# The speed comparison of ../shared/torch_bench/README.md: hone and PyTorch alternating on the
# cpu-small preset, SFT and DPO, three rounds, the malloc settings below for both; one JSON line per
# pair of runs with the 1-minute load average at its start. HONE, PY (a Python with torch) and
# BENCH (bench.py) override the defaults.
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=8589934592 MALLOC_TOP_PAD_=268435456
here="$(cd "$(dirname "$0")/.." && pwd)"
HONE=${HONE:-$here/target/release/hone}
PY=${PY:-${XDG_CACHE_HOME:-$HOME/.cache}/hone/trl-venv/bin/python}
BENCH=${BENCH:-$here/../shared/torch_bench/bench.py}
for round in 1 2 3; do
  for mode in sft dpo; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    h=$(RAYON_NUM_THREADS=2 $HONE bench --preset cpu-small --mode $mode --steps 6 --threads 2 2>/dev/null | grep -o '"tokens_per_second":[0-9.]*' | head -1 | cut -d: -f2)
    t=$(TORCH_THREADS=2 OMP_NUM_THREADS=2 $PY $BENCH $mode sdpa 6 2 2>/dev/null | grep -o '"tokens_per_s": *[0-9.]*' | head -1 | sed 's/.*: *//')
    echo "{\"round\":$round,\"mode\":\"$mode\",\"load\":$load,\"hone\":$h,\"torch\":$t}"
  done
done
