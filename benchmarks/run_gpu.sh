#!/usr/bin/env bash
# The GPU checks and figures of the PyTorch models, in one go (used on a lent H100/H200; see RESULTS.md):
# tests/torch/test_cuda.py + test_compiled.py, then benchmarks/bench_torch_gpu.py. Logs go to ${OUT:-.}.
# When .whl/ holds wheels (transformers 4.57.6 and the hub / tokenizers versions it needs), they are installed
# to /tmp/site first, so that the reference is the pinned transformers whatever the machine has.
set -u
out=${OUT:-.}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider tests/torch/test_cuda.py \
    tests/torch/test_compiled.py 2>&1 | tee "$out/tests.log" | tail -25
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/bench_torch_gpu.py --json "$out/gpu.json" "$@" 2>&1 \
    | tee "$out/bench.log" | grep -v "^train {\|^infer {"
