#!/usr/bin/env bash
# The generated backward on the GPU: its tests in bf16/fp32 on CUDA, then forward + backward
# against cuDNN SDPA and FlexAttention (issue 13's bars). Usage: benchmarks/run_backward_gpu.sh [tests|dense|variants]
set -u
what=${1:-dense}
out=${OUT:-benchmarks/out}
mkdir -p "$out"
if [ "$what" = tests ]; then
  python -m pytest -q -p no:cacheprovider -p no:logging --tb=line tests/test_gradients.py tests/test_training_forward.py 2>&1 | tail -25
elif [ "$what" = dense ]; then
  python benchmarks/bench_attention.py --backward --variants full causal --head-dim 64 128 \
    --impls sdpa_cudnn flex flashlight --no-plot --out "$out/bwd_dense" 2>&1 | tail -30
else
  python benchmarks/bench_attention.py --backward --variants alibi softcap sliding_window prefix_lm document_mask \
    --head-dim 64 --impls flex flashlight --no-plot --out "$out/bwd_variants" 2>&1 | tail -30
fi
