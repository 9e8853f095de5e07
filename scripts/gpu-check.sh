#!/usr/bin/env bash
# The one prepared device check (issue 14): run it on the GPU machine with the CUDA build of hone.
#
#   bash ../shared/gpu/build-cuda.sh --bins && strip target-cuda/release/hone    # here, on CPU
#   (device tool) bash scripts/gpu-check.sh                                       # there
#
# Every part is time-boxed and writes its results under $OUT as it goes, so a timeout still brings
# back what finished; the last thing printed is one summary table. Rehearse it on CPU with
#   HONE=target/release/hone DEVICE=cpu OUT=/tmp/gpu-out bash scripts/gpu-check.sh
# Environment: HONE (binary), DEVICE (cuda), OUT (results folder), PYTHON (python3), BUDGET_S
# (seconds for the whole script, default 290).
set -u
cd "$(dirname "$0")/.."
HONE=${HONE:-target-cuda/release/hone}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-./gpu-out}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-290}
START=$(date +%s)
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
printf 'part\tresult\tseconds\tdetail\n' > "$SUMMARY"

if [ "$DEVICE" != cpu ] && [ -z "${LD_LIBRARY_PATH:-}" ] && [ -x /opt/torch/.venv/bin/python ]; then
    # The CUDA runtime and cuBLAS live in the GPU machine's PyTorch environment (../shared/GPU.md).
    LD_LIBRARY_PATH=$(/opt/torch/.venv/bin/python -c 'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13","lib"))')
    export LD_LIBRARY_PATH
fi

# part NAME SECONDS COMMAND...: runs COMMAND with a time box no longer than what is left of the
# budget, output in $OUT/NAME.log, one row in the summary (the log's last line as its detail).
part() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 5 ]; then
        printf '%s\tskipped\t0\tout of time\n' "$name" >> "$SUMMARY"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0 rc
    t0=$(date +%s)
    # The parts are shell functions: run them in a child bash so `timeout` can kill the whole part.
    timeout "$limit" bash -c '"$@"' part "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local result=ok
    [ $rc -eq 124 ] && result=timeout
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && result="failed($rc)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$result" "$(($(date +%s) - t0))" "$(tail -n 1 "$OUT/$name.log" | tr '\t' ' ' | cut -c1-100)" >> "$SUMMARY"
}

machine() {
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    else
        echo "no nvidia-smi: $(uname -m), $(nproc) cores"
    fi
    if ldd "$HONE" | grep 'not found'; then return 1; fi
    "$HONE" --version
}

oracle() {
    local set=$1 fixtures=tests/fixtures/$1
    "$HONE" score --device "$DEVICE" --model "$fixtures/model" --data "$fixtures/sft.jsonl" > "$OUT/$set-sft.jsonl" || return 1
    "$HONE" score --device "$DEVICE" --model "$fixtures/model" --ref "$fixtures/ref" --data "$fixtures/prefs.jsonl" > "$OUT/$set-conversational.jsonl" || return 1
    "$HONE" score --device "$DEVICE" --model "$fixtures/model" --ref "$fixtures/ref" --data "$fixtures/prefs_plain.jsonl" > "$OUT/$set-plain.jsonl" || return 1
    "$HONE" generate --device "$DEVICE" --model "$fixtures/model" --data "$fixtures/gen_prompts.jsonl" --max-new-tokens 20 > "$OUT/$set-generation.jsonl" || return 1
    local rc=0
    for kind in sft conversational plain generation; do
        "$PYTHON" scripts/gpu_compare.py "$fixtures/expected.json" "$kind" "$OUT/$set-$kind.jsonl" || rc=1
    done
    return $rc
}

bench() {
    "$HONE" bench --device "$DEVICE" "$@" | tee -a "$OUT/bench.jsonl"
}

# A short pipeline on the sample world: every stage, evaluation and gates, on the device.
short_run() {
    local dir=$OUT/run
    rm -rf "$dir" && mkdir -p "$dir"
    cp -r sample-data "$dir/world"
    sed -i -e "s/^max_steps = .*/max_steps = 10/" -e "s/^checkpoint_every = .*/checkpoint_every = 5/" \
        -e "s/^\[run\]$/[run]\ndevice = \"$DEVICE\"/" "$dir/world/pipeline.toml"
    "$HONE" run --headless --runs-dir "$dir/runs" "$dir/world/pipeline.toml"
    local run
    run=$(ls -d "$dir"/runs/*/ | head -n 1)
    grep -c '"event":"gate_decided"' "$run/events.jsonl"
    grep '"memory/peak_bytes"' "$run/events.jsonl" | tail -n 1 | cut -c1-200
    echo "run finished: $(grep -o '"decision":"[a-z]*"' "$run/events.jsonl" | tail -n 1)"
}

export HONE DEVICE OUT PYTHON
export -f machine oracle bench short_run
part machine 20 machine
part oracle-llama 60 oracle llama
part oracle-qwen2 60 oracle qwen2
part bench-small-sft 60 bench --preset cpu-small --mode sft --steps 5 --warmup 1
part bench-135m-sft 90 bench --preset cpu-135m --mode sft --steps 3 --warmup 1
part bench-135m-dpo 90 bench --preset cpu-135m --mode dpo --steps 3 --warmup 1
part short-run 150 short_run

echo
column -t -s $'\t' "$SUMMARY" 2> /dev/null || cat "$SUMMARY"
! grep -q 'failed\|timeout' "$SUMMARY"
