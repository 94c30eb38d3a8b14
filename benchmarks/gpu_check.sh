#!/usr/bin/env bash
# The GPU check of the inference issue as one prepared command for a lent GPU machine (the
# device tool's `run`, which starts in the repository root and collects files under $OUT):
#
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
#
# 1. records the GPU (nvidia-smi) and which onnxruntime providers exist there;
# 2. installs wheels carried in .whl/ if any (an onnxruntime-gpu build, say; see the device
#    tool's README for how to carry them);
# 3. a seconds-long smoke run of benchmarks/latency.py on the GPU path, so a broken path fails
#    in seconds rather than after minutes;
# 4. the full latency grid: onnxruntime on CUDA when its CUDA provider is there, and always the
#    same fused computation in torch on the GPU (eager and as a captured CUDA graph), the path
#    measured when onnxruntime-gpu cannot be installed (its wheel is 256 MB, above what a call
#    can carry).
#
# Results land in $OUT (latency-<device>-torch-cuda.md/.json, logs); commit them under
# benchmarks/results/ with the machine named. Locally, TORCH_DEVICE=cpu QUICK_ONLY=1 runs the
# same steps on the CPU as a dry run.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
QUICK_ONLY=${QUICK_ONLY:-0}
FULL_TIMEOUT_S=${FULL_TIMEOUT_S:-420}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

(nvidia-smi || echo 'nvidia-smi: not available') > "$OUT/nvidia-smi.txt" 2>&1
if compgen -G '.whl/*.whl' > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - > "$OUT/providers.txt" 2>&1 <<'EOF'
import onnxruntime, torch
print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
EOF
cat "$OUT/providers.txt"
ORT_DEVICE=cpu
if [ "$TORCH_DEVICE" = cuda ] && grep -q CUDAExecutionProvider "$OUT/providers.txt"; then
    ORT_DEVICE=cuda
fi

echo "smoke run (onnxruntime on $ORT_DEVICE, torch on $TORCH_DEVICE)"
if ! "$PY" benchmarks/latency.py --quick --repeats 3 --device "$ORT_DEVICE" \
        --torch-device "$TORCH_DEVICE" --out "$OUT/quick" > "$OUT/quick.log" 2>&1; then
    tail -40 "$OUT/quick.log"
    exit 1
fi
grep -A8 '## The fused computation in torch' "$OUT/quick.log"
[ "$QUICK_ONLY" = 1 ] && exit 0

echo "full grid (at most $FULL_TIMEOUT_S s)"
timeout "$FULL_TIMEOUT_S" "$PY" benchmarks/latency.py --threads 8 --device "$ORT_DEVICE" \
    --torch-device "$TORCH_DEVICE" --out "$OUT" > "$OUT/latency.log" 2>&1
status=$?
sed -n '/## Same-run ratios/,$p' "$OUT/latency.log"
exit $status
