#!/usr/bin/env bash
# One pass over everything that needs a CUDA GPU, in the order that matters when GPU time is short:
#
#   bash benchmarks/cuda_check.sh [LOG_DIR]      # from the repository root, on a machine with a GPU
#
# 1. builds minibert._C in place with the CUDA kernels (for the GPU it finds, TORCH_CUDA_ARCH_LIST
#    overrides), 2. runs every CUDA test (`pytest -k cuda` over the op tests), 3. times the GPU rows of
#    benchmarks/attention.py (batch 8, head size 64), gelu.py and layernorm.py, 4. lists the kernels torch's
#    SDPA runs for bfloat16 attention and profiles the fused attention's kernels with Nsight Compute where
#    `ncu` exists, 5. times attention with head size 128 and runs a 300-step `minibert pretrain --amp`
#    (bfloat16 autocast, so the tensor-core kernels) on the GPU.
#    The benchmarks' results land in benchmarks/results/*-cuda-<gpu>.{json,png} as always.
# Each stage has its own time limit and writes its log to LOG_DIR (default: cuda-check/) as it goes, so a
# stage that hangs or fails leaves the logs of the others; the last lines printed are a summary. PYTHON
# picks the interpreter (default python3). ONLY="cuda-tests attention-d64" runs those stages alone (names as
# in the summary; the build and the backend check always run): a second pass after a change, when GPU time
# is short.
set -u
LOG_DIR=${1:-cuda-check}
PY=${PYTHON:-python3}
mkdir -p "$LOG_DIR"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
summary=()
# bfloat16 attention, batch 8, 12 heads, S = 2048, head size 64: the shapes of benchmarks/attention.py
SHAPES="import torch; from minibert import ops; import torch.nn.functional as F
q, k, v, do = (torch.randn(8, 12, 2048, 64, device='cuda', dtype=torch.bfloat16, requires_grad=True) for _ in range(4))"
SDPA_KERNELS="$SHAPES
from torch.profiler import profile, ProfilerActivity
for _ in range(2): torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), do)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), do); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=8, max_name_column_width=110))"
FUSED_STEPS="$SHAPES
for _ in range(3): torch.autograd.grad(ops.attention(q, k, v), (q, k, v), do)
torch.cuda.synchronize()"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to LOG_DIR/NAME.log, note the outcome
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    if [ -n "${ONLY:-}" ] && [ "$name" != build ] && [ "$name" != backend ] && [[ " $ONLY " != *" $name "* ]]; then
        return 0
    fi
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
    stage layernorm 150 $PY benchmarks/layernorm.py --device cuda
    # Which kernels torch's SDPA runs for the bfloat16 case above (its default choice is the "sdpa" row).
    stage sdpa-kernels 120 $PY -c "$SDPA_KERNELS"
    # Where the fused attention's time goes, by the hardware counters (where Nsight Compute can read them).
    if command -v ncu > /dev/null; then
        stage profile 240 ncu --clock-control none -k regex:attention --launch-skip 3 --launch-count 3 \
            --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
            --section MemoryWorkloadAnalysis $PY -c "$FUSED_STEPS"
    fi
    stage attention-d128 300 $PY benchmarks/attention.py --device cuda --batch 8 --head-dim 128
    stage pretrain 300 $PY -m minibert pretrain --device cuda --amp --steps 300 --quiet --overwrite \
        --out "$LOG_DIR/pretrain-run"
    [ -d "$LOG_DIR/pretrain-run" ] && find "$LOG_DIR/pretrain-run" \( -name '*.safetensors' -o -name '*.pt' \) -delete  # keep the logs only
fi
echo "=== summary (logs in $LOG_DIR)"
printf '%s\n' "${summary[@]}"
