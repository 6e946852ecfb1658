#!/usr/bin/env bash
# The accelerator benchmarks of issues 5 and 10, in parts that each fit one 10-minute call of the
# lent GPU machine (the inner time limits of a part add up to at most 570 s). Logs go to $OUT
# (default ./gpu_logs), one file per benchmark.
#
#   bash benchmarks/gpu_suite.sh sampler    # 1.5B decode vs transformers (issue 5: batch 32)
#   bash benchmarks/gpu_suite.sh sampler7b  # 7B decode vs transformers, roofline (issue 10:
#                                           # batch 64, timed first)
#   bash benchmarks/gpu_suite.sh train      # SFT/RM/GRPO train steps 0.5B/1.5B vs torch, MFU
#   bash benchmarks/gpu_suite.sh options    # 1.5B: cudnn attention, unrolled layers, remat
#                                           # policy "dots"; 7B GRPO memory
#   bash benchmarks/gpu_suite.sh grpo       # GRPO step breakdown at 1.5B with the RM reward
#   bash benchmarks/gpu_suite.sh decode     # 7B decode options: whole vs growing KV cache,
#                                           # scanned layers sliced per step (no unstacked copy)
#   bash benchmarks/gpu_suite.sh smoke      # all of them at CPU-small sizes (checks the suite)
#
# Every part prints the package versions first and the date before each run; compilations are
# cached in $JAX_COMPILATION_CACHE_DIR (default /tmp/rlaif_jax_compile_cache), so a shape that a
# part already compiled on the same machine compiles once. The exit status is 1 when a run failed
# or hit its limit (their names are printed last).
#
# The device image has jax, flax, optax, orbax, torch and transformers; packages it lacks travel
# as wheels in ./.wheels (ignored by git; carry it):
#   pip download --no-deps -d .wheels tensorboardX ml-collections
set -uo pipefail
part="${1:?usage: gpu_suite.sh sampler|sampler7b|train|options|grpo|decode|smoke}"
out="${OUT:-gpu_logs}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if [ -d .wheels ]; then
  "$py" -m pip install -q --no-index --no-deps --find-links .wheels tensorboardX ml-collections \
    >"$out/pip.log" 2>&1 || echo "wheel install failed: see $out/pip.log"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/rlaif_jax_compile_cache}"
mkdir -p "$JAX_COMPILATION_CACHE_DIR"
failed=""
run() {  # run NAME LIMIT_S CMD...: the output goes to $out/NAME.log, its tail to stdout
  local name=$1 limit=$2 rc
  shift 2
  echo "== $name [$(date '+%F %T %Z'), limit ${limit}s]: $*"
  timeout -k 15 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  case $rc in
    0) echo "   rc=0" ;;
    124|137) echo "   rc=$rc: TIMED OUT after ${limit}s" ;;
    *) echo "   rc=$rc: FAILED" ;;
  esac
  [ "$rc" -eq 0 ] || failed="$failed $name"
  grep -v -E "^(I|W)[0-9]{4} |Warning|warn\(" "$out/$name.log" | tail -25
}
echo "== part $part [$(date '+%F %T %Z')] on $(hostname)"
echo "JAX_COMPILATION_CACHE_DIR=$JAX_COMPILATION_CACHE_DIR"
"$py" - <<'EOF'
import importlib.metadata as md
import platform
names = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "flax", "optax",
         "orbax-checkpoint", "torch", "transformers", "numpy")
found = []
for name in names:
  try:
    found.append(f"{name} {md.version(name)}")
  except md.PackageNotFoundError:
    if not name.startswith("jax-cuda"):
      found.append(f"{name} MISSING")
print(f"python {platform.python_version()}; " + ", ".join(found))
EOF
if ! "$py" -c "import jax" 2>/dev/null; then
  echo "$py cannot import jax: set PYTHON to the interpreter that has the dependencies" >&2
  exit 2
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "no nvidia-smi on this machine"
fi
case "$part" in
  sampler)
    run sampler_1_5b 450 "$py" -m benchmarks.sampler --preset=qwen2_5_1_5b \
      --batch_sizes=32,64,8,1 --prompt_len=64 --new_tokens=256
    ;;
  sampler7b)  # batch 64 first: the row issue 10 needs
    run sampler_7b 550 "$py" -m benchmarks.sampler --preset=qwen2_5_7b \
      --batch_sizes=64,32,1 --prompt_len=64 --new_tokens=256
    ;;
  train)
    run train_step 555 "$py" -m benchmarks.train_step --presets=qwen2_5_0_5b,qwen2_5_1_5b \
      --param_dtype=bfloat16 --repeats=2 --worker_timeout_s=240
    ;;
  options)  # --worker_timeout_s: a slow measurement reports "timeout" in its table row
    run train_cudnn 150 "$py" -m benchmarks.train_step --presets=qwen2_5_1_5b --tasks=sft \
      --param_dtype=bfloat16 --attention_impl=cudnn --skip_transformers --repeats=2 \
      --worker_timeout_s=125
    run train_unrolled 110 "$py" -m benchmarks.train_step --presets=qwen2_5_1_5b --tasks=sft \
      --param_dtype=bfloat16 --noscan_layers --skip_transformers --repeats=2 \
      --worker_timeout_s=88
    run train_dots 100 "$py" -m benchmarks.train_step --presets=qwen2_5_1_5b --tasks=sft \
      --param_dtype=bfloat16 --remat_policy=dots --skip_transformers --repeats=2 \
      --worker_timeout_s=78
    run memory_7b 200 "$py" -m benchmarks.step_memory --presets=qwen2_5_7b \
      --param_dtype=bfloat16 --remat=on --tasks=grpo,sft,rollout --batch_size=8 --seq_len=768 \
      --layouts=scanned
    ;;
  grpo)
    run grpo_1_5b 555 "$py" -m benchmarks.grpo_step --preset=qwen2_5_1_5b \
      --rm_preset=qwen2_5_1_5b --param_dtype=bfloat16 --dtype=bfloat16 --prompts=32 \
      --new_tokens=512
    ;;
  decode)  # compare each with sampler_7b's batch-64 row (default: growing cache, unstacked)
    run decode_7b_whole_cache 270 "$py" -m benchmarks.sampler --preset=qwen2_5_7b \
      --batch_sizes=64 --prompt_len=64 --new_tokens=256 --grow_cache_from=0 --skip_transformers
    run decode_7b_scanned_per_step 270 "$py" -m benchmarks.sampler --preset=qwen2_5_7b \
      --batch_sizes=64 --prompt_len=64 --new_tokens=256 --scan_layers --nounstack_layers \
      --skip_transformers
    ;;
  smoke)  # every benchmark at CPU-small sizes: checks the suite itself before a GPU call
    run doctests 60 "$py" -c "import doctest, sys
from benchmarks import device_specs, sampler
results = [doctest.testmod(m) for m in (device_specs, sampler)]
print(results)
sys.exit(any(r.failed or not r.attempted for r in results))"
    run sampler_smoke 240 "$py" -m benchmarks.sampler --batch_sizes=2,1 --new_tokens=6 \
      --prompt_len=8 --num_layers=2 --trace_top=3 --grow_cache_from=2
    run sampler_smoke_ours 120 "$py" -m benchmarks.sampler --batch_sizes=2 --new_tokens=6 \
      --prompt_len=8 --num_layers=2 --skip_transformers --scan_layers --nounstack_layers
    run train_smoke 300 "$py" -m benchmarks.train_step --tasks=sft,grpo --steps=1 --repeats=1 \
      --warmup_steps=1 --seq_len=64 --batch_size=4 --worker_timeout_s=120
    run memory_smoke 200 "$py" -m benchmarks.step_memory --presets=tiny --tasks=grpo,rollout \
      --batch_size=2 --seq_len=128 --rollout_rows=4 --rollout_prompt_len=16 --rollout_new_tokens=8
    run grpo_smoke 240 "$py" -m benchmarks.grpo_step --new_tokens=8 --steps=1
    ;;
  *)
    echo "unknown part: $part" >&2
    exit 2
    ;;
esac
echo "== part $part done [$(date '+%F %T %Z')]${failed:+; failed or timed out:$failed}"
[ -z "$failed" ]
