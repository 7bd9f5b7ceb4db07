#!/usr/bin/env bash
# Every GPU check of polycom in one run, so all ratios come from one machine and one session.
#
# Meant for a lent H100/H200 with a copy of this tree (no .git), torch and triton preinstalled and no
# network; 10-13 minutes, so run it as two device calls (ONLY=, below). Each step has its own time limit, so a slow step cannot eat the others,
# and its full log goes to $OUT/<step>.log (the last lines are printed too):
#
#   1. kernel-tests   the Triton kernels against the fp64 references on the GPU (tests/ops_triton), and the
#                     ops inside a captured CUDA graph replayed on new data (test_cuda_graph_capture.py)
#   2. fused-mlp      the fused MLP and closed-form tests (tests/core) with CUDA tensors available
#   3. bench-ops      `polycom bench ops --quick`, both kernel variants (rows: $OUT/ops.jsonl, ops.csv)
#   4. bench-model    `polycom bench model --quick --mlp-paths both` at the anchor preset: LM step time,
#                     peak memory, saved bytes per activation, fused and unfused (rows: $OUT/bench_model.jsonl)
#   5. anchor         the baseline script at $ANCHOR (the official-code anchor), when that file exists
#   6. torchtitan     20 steps of torchtitan's trainer on the polycom debug config, SwiGLU and PolyNorm side by
#                     side (bf16, compile on, torchtitan's CUDA graph capture on: a config that fails under
#                     it is measured again without, with its twin): tokens/s and peak memory
#                     (rows: $OUT/torchtitan_steps.jsonl).
#                     The machine has no package index: run `bash benchmarks/gpu_wheels.sh` here first and
#                     carry .whl/ with the tree; the wheels are installed into /tmp/site.
#   7. torchtitan-moe the same on the MoE debug config: the PolyCom experts' CUDA path (bf16 grouped GEMM
#                     with the rows past the last expert masked) inside torchtitan's token dispatch.
#
# Usage (repository root):
#
#   COMMIT=<git sha of the tree> OUT=<folder> bash benchmarks/gpu_session.sh
#   DRY_RUN=1 bash benchmarks/gpu_session.sh      # print the commands only
#   ONLY="bench-model torchtitan" bash benchmarks/gpu_session.sh   # some steps (a device call lasts <= 10 min)
#
# Afterwards append the rows to benchmarks/results/ (never rewrite earlier rows) and update the tables in
# benchmarks/README.md.

set -u
OUT=${OUT:-gpu-session}
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
ANCHOR=${ANCHOR:-shared/bench/gpu_anchor.py}
PY=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
        return 0
    fi
    if [ -n "${DRY_RUN:-}" ]; then
        echo "$*"
        return 0
    fi
    echo "== $name: up to ${limit}s, $(date -u +%H:%M:%S)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc, $(date -u +%H:%M:%S)"
    tail -n 25 "$OUT/$name.log"
}

if [ -z "${DRY_RUN:-}" ]; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
    cat "$OUT/gpu.txt"
fi
step kernel-tests 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/ops_triton
step fused-mlp 90 "$PY" -m pytest -q -x -p no:cacheprovider tests/core/test_fused_mlp.py tests/core/test_closed_form_blocks.py
step bench-ops 180 "$PY" -m polycom bench ops --quick --providers polycom eager compile \
    --tiling variant=1 --tiling variant=2 --out "$OUT" --commit "$COMMIT"
step bench-model 200 "$PY" -m polycom bench model --quick --mlp-paths both \
    --activations polynorm,polyrelu,relu2,gelu --out "$OUT/bench_model.jsonl" --commit "$COMMIT"
if [ -f "$ANCHOR" ] || [ -n "${DRY_RUN:-}" ]; then
    step anchor 120 "$PY" "$ANCHOR"
fi
if [ -d .whl ] && [ -z "${DRY_RUN:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
step torchtitan 420 "$PY" -m polycom.integrations.torchtitan.bench --steps 20 \
    --configs polycom_debug_swiglu polycom_debug_polynorm --out "$OUT/torchtitan_steps.jsonl" --commit "$COMMIT"
step torchtitan-moe 300 "$PY" -m polycom.integrations.torchtitan.bench --steps 20 \
    --configs polycom_debug_moe_swiglu polycom_debug_moe_polynorm --out "$OUT/torchtitan_steps.jsonl" --commit "$COMMIT"
