#!/usr/bin/env bash
# The accelerator benchmarks of issues 5 and 10, in parts that each fit one 10-minute call of the
# lent GPU machine. Logs go to $OUT (default ./gpu_logs), one file per benchmark.
#
#   bash benchmarks/gpu_suite.sh sampler   # 1.5B and 7B decode vs transformers, roofline
#   bash benchmarks/gpu_suite.sh train     # SFT/RM/GRPO train steps 0.5B/1.5B vs torch, MFU
#   bash benchmarks/gpu_suite.sh options   # 1.5B: cudnn attention, unrolled layers, remat
#                                          # policy "dots"; 7B GRPO memory
#   bash benchmarks/gpu_suite.sh grpo      # GRPO step breakdown at 1.5B with the RM reward
#   bash benchmarks/gpu_suite.sh decode    # 7B decode options: whole vs growing KV cache,
#                                          # scanned layers sliced per step (no unstacked copy)
#   bash benchmarks/gpu_suite.sh smoke     # all of them at CPU-small sizes (checks the suite)
#
# The device image has jax, flax, optax, orbax, torch and transformers; packages it lacks travel
# as wheels in ./.wheels (ignored by git; carry it):
#   pip download --no-deps -d .wheels tensorboardX ml-collections
set -uo pipefail
part="${1:?usage: gpu_suite.sh sampler|train|options|grpo|decode|smoke}"
out="${OUT:-gpu_logs}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if [ -d .wheels ]; then
  "$py" -m pip install -q --no-index --no-deps --find-links .wheels tensorboardX ml-collections \
    >"$out/pip.log" 2>&1 || echo "wheel install failed: see $out/pip.log"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run() {  # run NAME LIMIT_S CMD...: tee the tail of the output into $out/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   rc=$?"
  grep -v -E "^(I|W)[0-9]{4} |Warning|warn\(" "$out/$name.log" | tail -25
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
case "$part" in
  sampler)
    run sampler_1_5b 270 "$py" -m benchmarks.sampler --preset=qwen2_5_1_5b \
      --batch_sizes=1,8,32,64 --prompt_len=64 --new_tokens=256
    run sampler_7b 300 "$py" -m benchmarks.sampler --preset=qwen2_5_7b \
      --batch_sizes=1,32,64 --prompt_len=64 --new_tokens=256
    ;;
  train)
    run train_step 570 "$py" -m benchmarks.train_step --presets=qwen2_5_0_5b,qwen2_5_1_5b \
      --param_dtype=bfloat16 --repeats=2 --worker_timeout_s=240
    ;;
  options)
    run train_cudnn 190 "$py" -m benchmarks.train_step --presets=qwen2_5_1_5b --tasks=sft \
      --param_dtype=bfloat16 --attention_impl=cudnn --skip_transformers --repeats=2
    run train_unrolled 130 "$py" -m benchmarks.train_step --presets=qwen2_5_1_5b --tasks=sft \
      --param_dtype=bfloat16 --noscan_layers --skip_transformers --repeats=2
    run train_dots 130 "$py" -m benchmarks.train_step --presets=qwen2_5_1_5b --tasks=sft \
      --param_dtype=bfloat16 --remat_policy=dots --skip_transformers --repeats=2
    run memory_7b 120 "$py" -m benchmarks.step_memory --presets=qwen2_5_7b \
      --param_dtype=bfloat16 --remat=on --tasks=grpo,sft,rollout --batch_size=8 --seq_len=768 \
      --layouts=scanned
    ;;
  grpo)
    run grpo_1_5b 570 "$py" -m benchmarks.grpo_step --preset=qwen2_5_1_5b \
      --rm_preset=qwen2_5_1_5b --param_dtype=bfloat16 --dtype=bfloat16 --prompts=32 \
      --new_tokens=512
    ;;
  decode)  # compare each with sampler_7b's batch-64 row (default: growing cache, unstacked)
    run decode_7b_whole_cache 280 "$py" -m benchmarks.sampler --preset=qwen2_5_7b \
      --batch_sizes=64 --prompt_len=64 --new_tokens=256 --grow_cache_from=0 --skip_transformers
    run decode_7b_scanned_per_step 280 "$py" -m benchmarks.sampler --preset=qwen2_5_7b \
      --batch_sizes=64 --prompt_len=64 --new_tokens=256 --scan_layers --nounstack_layers \
      --skip_transformers
    ;;
  smoke)  # every benchmark at CPU-small sizes: checks the suite itself before a GPU call
    run sampler_smoke 300 "$py" -m benchmarks.sampler --batch_sizes=2 --new_tokens=6 \
      --prompt_len=8 --num_layers=2 --trace_top=3 --grow_cache_from=2
    run train_smoke 400 "$py" -m benchmarks.train_step --tasks=sft,grpo --steps=1 --repeats=1 \
      --warmup_steps=1 --seq_len=64 --batch_size=4
    run memory_smoke 200 "$py" -m benchmarks.step_memory --presets=tiny --tasks=grpo,rollout \
      --batch_size=2 --seq_len=128 --rollout_rows=4 --rollout_prompt_len=16 --rollout_new_tokens=8
    run grpo_smoke 300 "$py" -m benchmarks.grpo_step --new_tokens=8 --steps=1
    ;;
  *)
    echo "unknown part: $part" >&2
    exit 2
    ;;
esac
