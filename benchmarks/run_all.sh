#!/usr/bin/env bash
# Every benchmark that feeds a plot, one after another on an otherwise idle machine (each writes
# benchmarks/results/<script>.json), then the plots (docs/img/*.png). About 45 minutes on 2 cores:
#
#   bench_convert       ~10 min   checkpoint conversion, in-process and fresh processes, peak RSS
#   bench_tokenizer     ~6 min    Python tokenizers against tiktoken and transformers
#   bench_tf_tokenizer  ~4 min    TFGPT2Tokenizer in the TF graph
#   bench_torch         ~5 min    PyTorch decoding / prefill / train step against transformers and the floor
#   bench_tf            ~5 min    TensorFlow, the same
#   bench_flax          ~5 min    Flax, the same
#   bench_train         ~7 min    training tokens/s, gpt2 train in each framework against transformers
#
# Usage (from anywhere):  benchmarks/run_all.sh [bench_torch bench_tf ...]   (default: all of them)
# A failing benchmark is reported and the others still run; the exit status is 1 if any failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
declare -A ARGS=(
    [bench_convert]=""
    [bench_tokenizer]=""
    [bench_tf_tokenizer]=""
    [bench_torch]="--repeats 5"
    [bench_tf]="--repeats 5"
    [bench_flax]="--repeats 3"
    [bench_train]="--repeats 5"
)
ORDER=(bench_convert bench_tokenizer bench_tf_tokenizer bench_torch bench_tf bench_flax bench_train)
if [ $# -gt 0 ]; then ORDER=("$@"); fi
mkdir -p benchmarks/results
failed=()
for name in "${ORDER[@]}"; do
    if [ -z "${ARGS[$name]+set}" ]; then
        echo "run_all.sh: unknown benchmark '$name' (choose from: ${!ARGS[*]})" >&2
        exit 2
    fi
    start=$(date +%s)
    echo "== $(date -u +%H:%M:%S) UTC: $PY benchmarks/$name.py ${ARGS[$name]} (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    # shellcheck disable=SC2086
    if ! $PY "benchmarks/$name.py" ${ARGS[$name]} 2>&1 | tee "benchmarks/results/$name.log"; then
        failed+=("$name")
    fi
    echo "== $name: $(( $(date +%s) - start )) s"
done
$PY benchmarks/plot.py
if [ ${#failed[@]} -gt 0 ]; then
    echo "run_all.sh: failed: ${failed[*]} (logs in benchmarks/results/<name>.log)" >&2
    exit 1
fi
