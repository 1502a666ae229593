#!/usr/bin/env bash
# The GPU tests and the whole-model benchmarks in one bounded run, each step under its own time
# limit, logs and JSON written to a folder (default ./gpu-checks). Run from the repository root on
# a CUDA machine with the project installed (`pip install -e ".[gpu]"`):
#
#     bash scripts/gpu_checks.sh [OUT_DIR]
#
# Each test file runs separately with -x, so a failure's traceback is printed before the next file.
set -uo pipefail
out="${1:-gpu-checks}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1

step() {  # step SECONDS NAME COMMAND...: run COMMAND under a time limit, log to OUT/NAME.log
    local limit="$1" name="$2"
    shift 2
    echo "=== $name"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "exit $? (log: $out/$name.log)"
    tail -15 "$out/$name.log"
}

# -s prints the bf16 agreement shares; with pytest-timeout installed, --timeout bounds one test
# (fla's GLA autotunes its kernels on first use: its bf16 agreement case takes about 90 s,
# the full-size fast-stack cases about 40 s each with torch.compile).
per_test=()
python -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 300)
for file in tests/test_ssm_step.py tests/test_ssm_prefill.py tests/test_kernels_linear.py tests/test_kernels_norm.py tests/test_kernels_stack.py tests/test_engine_gpu.py \
            tests/test_kernels_mamba.py tests/test_accelerate.py tests/test_kernels_ssd.py \
            tests/test_jrt_fast_stack.py tests/test_modeling_jrt.py tests/test_reuse_gpu.py \
            tests/test_kernels_gpu.py; do
    step 300 "$(basename "$file" .py)" python -m pytest -q -x -s -m gpu -rA -p no:cacheprovider \
        "${per_test[@]}" "$file"
done
step 300 bench-linear python scripts/bench_linear.py --json "$out/linear.json"
step 600 bench-model jrt bench model --json "$out/model.json" --plot "$out/model.png"
step 600 bench-decode-model jrt bench decode-model --models mamba-1.4b,mamba2-1.3b,jrt-rnn-1.3b,based-1.3b,transformer-1.3b \
    --json "$out/decode-model.json"
# fla autotunes each GLA kernel over all its configurations the first time it sees a shape (tens
# of seconds a shape on a fresh machine; Triton caches the choice on disk), so GLA runs alone
step 600 bench-decode-model-gla jrt bench decode-model --models gla-1.3b --json "$out/decode-model-gla.json"
step 600 bench-reuse jrt bench reuse --json "$out/reuse.json"
# two passes over the prompts per model (the first pays the one-off costs), one model a step
for model in mamba-1.4b mamba2-1.3b jrt-rnn-1.3b based-1.3b gla-1.3b; do
    step 300 "bench-eval-throughput-$model" jrt bench eval-throughput --prompts 300 --models "$model" \
        --json "$out/eval-throughput-$model.json"
done
step 600 bench-eval-throughput-transformer jrt bench eval-throughput --prompts 100 --models transformer-1.3b \
    --json "$out/eval-throughput-transformer-1.3b.json"
