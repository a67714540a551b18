#!/usr/bin/env bash
# The generated backward on the GPU (issue 13): its tests, then forward + backward against cuDNN
# SDPA and FlexAttention, the programs, the training step and long-context memory. Each stage
# writes its log under $OUT as it goes and has its own time limit, so a call cut short keeps
# what finished. Usage: benchmarks/run_backward_gpu.sh [tests|table|dense|profile|host|profile128|profile_more|doc|variants|programs|training]...
set -u
export FLASHLIGHT_TUNE_ON_CALL=${FLASHLIGHT_TUNE_ON_CALL:-1}  # tune at a bucket's first call: timed calls run tuned tiles
out=${OUT:-benchmarks/out}
mkdir -p "$out"
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "=== $name rc=$? ($(date +%T))"
  tail -n 40 "$out/$name.log"
}
for what in "${@:-dense}"; do
  case $what in
    tests) FLASHLIGHT_AUTOTUNE=0 stage tests 330 python -m pytest -q -p no:cacheprovider -p no:logging --tb=line \
             tests/test_backward_gpu.py tests/test_cuda_graphs.py tests/test_autocast.py tests/test_block_table.py tests/test_gradients.py tests/test_training_forward.py ;;
    dense) stage dense 300 python benchmarks/bench_attention.py --backward --variants full causal --head-dim 64 128 \
             --impls sdpa_cudnn flex flashlight --no-plot --warmup 10 --rep 40 --out "$out/bwd_dense" ;;
    table) stage table 90 python benchmarks/bench_block_table.py ;;
    profile128) stage profile128 200 python benchmarks/profile_backward.py --variants full causal --head-dim 128 ;;
    profile) stage profile 200 python benchmarks/profile_backward.py --variants full causal document_mask ;;
    host) FLASHLIGHT_AUTOTUNE=0 stage host 200 python benchmarks/profile_backward.py --variants document_mask causal --cprofile ;;
    profile_more) stage profile_more 200 python benchmarks/profile_backward.py --variants document_mask \
               --programs diffllama evoformer ;;
    doc) stage doc 300 python benchmarks/bench_attention.py --backward --variants document_mask causal --head-dim 64 128 \
          --impls flex flashlight --no-plot --warmup 10 --rep 40 --out "$out/bwd_doc"
         stage doc_fwd 120 python benchmarks/bench_attention.py --variants document_mask --head-dim 64 128 \
          --impls flex flashlight --no-plot --warmup 10 --rep 40 --out "$out/fwd_doc" ;;
    variants) stage variants 300 python benchmarks/bench_attention.py --backward --variants alibi softcap sliding_window \
               prefix_lm document_mask --head-dim 64 --impls flex flashlight --no-plot --warmup 10 --rep 40 \
               --out "$out/bwd_variants" ;;
    programs) stage programs_diffllama 120 python benchmarks/bench_programs.py --backward --programs diffllama \
               --impls flashlight,two_sdpa --warmup 10 --rep 40 --out "$out/programs_diffllama"
              stage programs_evoformer 200 python benchmarks/bench_programs.py --backward --programs evoformer \
               --impls flashlight,eager_compiled --warmup 10 --rep 40 --out "$out/programs_evoformer" ;;
    training) stage training 420 python benchmarks/bench_training.py --step --long --out "$out/training" ;;
    *) echo "unknown stage $what"; exit 2 ;;
  esac
done
