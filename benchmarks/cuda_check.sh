#!/usr/bin/env bash
# One pass over everything that needs a CUDA GPU, in the order that matters when GPU time is short:
#
#   bash benchmarks/cuda_check.sh [LOG_DIR]      # from the repository root, on a machine with a GPU
#
# 1. builds minibert._C in place with the CUDA kernels (for the GPU it finds, TORCH_CUDA_ARCH_LIST
#    overrides), 2. runs every CUDA test (`pytest -k cuda` over the op tests), 3. times the GPU rows of
#    benchmarks/attention.py (batch 8, head size 64), gelu.py, a 300-step `minibert pretrain` on the GPU,
#    then attention with head size 128 and layernorm.py. The benchmarks' results land in
#    benchmarks/results/*-cuda-<gpu>.{json,png} as always. Each stage has its own time limit and
#    writes its log to LOG_DIR (default: cuda-check/) as it goes, so a stage that hangs or fails leaves the
#    logs of the others; the last lines printed are a summary. PYTHON picks the interpreter (default python3).
set -u
LOG_DIR=${1:-cuda-check}
PY=${PYTHON:-python3}
mkdir -p "$LOG_DIR"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
summary=()

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to LOG_DIR/NAME.log, note the outcome
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name: $*"
    timeout --kill-after=10 "$limit" "$@" > "$LOG_DIR/$name.log" 2>&1
    rc=$?
    tail -n 25 "$LOG_DIR/$name.log"
    summary+=("$(printf '%-22s rc=%-3s %4ss' "$name" "$rc" $((SECONDS - start)))")
    return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
    | tee "$LOG_DIR/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    | tee -a "$LOG_DIR/gpu.txt"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
    export TORCH_CUDA_ARCH_LIST
fi

if stage build 600 env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" $PY setup.py build_ext --inplace; then
    stage backend 60 $PY -c "from minibert import ops; info = ops.backend_info(); print(info); \
assert info['cuda_kernels'] and info['cuda_device_present'], 'the extension was built without its CUDA kernels'"
    stage cuda-tests 400 $PY -m pytest -q -p no:cacheprovider -k cuda tests/test_ops_attention.py \
        tests/test_ops_gelu.py tests/test_ops_layernorm.py tests/test_ops_cross_entropy.py tests/test_ops_misc.py
    stage attention-d64 300 $PY benchmarks/attention.py --device cuda --batch 8
    stage gelu 150 $PY benchmarks/gelu.py --device cuda
    stage pretrain 300 $PY -m minibert pretrain --device cuda --steps 300 --quiet --overwrite \
        --out "$LOG_DIR/pretrain-run"
    find "$LOG_DIR/pretrain-run" \( -name '*.safetensors' -o -name '*.pt' \) -delete  # keep the logs only
    stage attention-d128 300 $PY benchmarks/attention.py --device cuda --batch 8 --head-dim 128
    stage layernorm 150 $PY benchmarks/layernorm.py --device cuda
fi
echo "=== summary (logs in $LOG_DIR)"
printf '%s\n' "${summary[@]}"
