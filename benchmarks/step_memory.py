r"""python -m benchmarks.step_memory --presets=qwen2_5_0_5b --layouts=scanned,unrolled

Device memory of our jitted train steps from XLA's own buffer assignment, without allocating a
single weight: the step (`trainer.make_train_step`, AdamW, clip 1.0) is lowered on abstract
shapes (`jax.eval_shape` of the sharded TrainState, `ShapeDtypeStruct` batches) and compiled for
the local backend, and `compiled.memory_analysis()` gives the bytes of the arguments (params +
AdamW moments + batch), the outputs, the temporaries and what the outputs alias (donation).
A 7B step can therefore be sized on a laptop CPU; XLA:CPU and XLA:GPU assign buffers with the
same algorithm but different fusion and scheduling, so on CPU the figure is an estimate, and on a
GPU the device's real `peak_bytes_in_use` (benchmarks/train_step.py) is the measurement.

Per step: peak estimate = arguments + temporaries + outputs - aliased (donated) bytes, per
device. For grpo, the reference policy (kept on device unless `ref_on_host`) adds its parameter
bytes, printed as a separate column. The last line per preset is
`peak_gib_<task>_<preset>_<layout>=<x>`.

Examples:
  python -m benchmarks.step_memory --presets=qwen2_5_0_5b --layouts=scanned,unrolled
  python -m benchmarks.step_memory --presets=qwen2_5_7b --param_dtype=bfloat16 \
      --tasks=grpo --batch_size=8 --seq_len=768 --layouts=scanned
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import device_specs, train_step as tsb
from rlaif_jax.models import config as config_lib

# Shared with benchmarks/train_step.py (importing it defines them): --presets (default here
# qwen2_5_0_5b), --tasks, --batch_size, --seq_len (default here 1024), --param_dtype, --dtype
# (default here bfloat16), --remat (auto: on from 1B parameters), --remat_policy, --attention_impl,
# --num_layers, --vocab_size, --mesh, --logits_chunk.
_LAYOUTS = flags.DEFINE_list("layouts", ["scanned", "unrolled"],
                             "Layer layouts: scanned (ModelConfig.scan_layers) and/or unrolled.")
_DEVICE_GIB = flags.DEFINE_float("device_gib", None, "Device memory (GiB) for the 'fits' "
                                  "column. Default: by device kind (benchmarks/device_specs.py: "
                                  "H100 80, H200 141); on CPU 80 (an H100).")
_ROLL_PROMPT = flags.DEFINE_integer("rollout_prompt_len", 256, "Task rollout: prompt tokens.")
_ROLL_NEW = flags.DEFINE_integer("rollout_new_tokens", 512, "Task rollout: new tokens per row.")
_ROLL_ROWS = flags.DEFINE_integer("rollout_rows", 128, "Task rollout: sequences sampled at once "
                                  "(prompts x samples; the paper: 32 x 4).")
_UNSTACK = flags.DEFINE_bool("unstack_layers", True, "Task rollout, scanned models: "
                             "Sampler(unstack_layers=...).")
_GROW = flags.DEFINE_integer("grow_cache_from", 64, "Task rollout: Sampler(grow_cache_from=...); "
                             "0: the whole cache from the start.")

_GIB = 2 ** 30


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def step_memory(cfg: config_lib.ModelConfig, task: str, batch_size: int, seq_len: int,
                mesh_shape: list[int], logits_chunk: int) -> dict[str, float]:
  """Compiles one train step of `task` on abstract inputs; returns byte counts (per device)."""
  from rlaif_jax.sharding import mesh as mesh_lib
  from rlaif_jax.training import optim, train_state as ts, trainer
  mesh = mesh_lib.make_mesh(mesh_shape)
  optimizer, schedule = optim.make_optimizer(1e-5, total_steps=100_000)
  state = jax.eval_shape(lambda: tsb._our_state(cfg, task, mesh, optimizer)[0])
  shardings = ts.state_shardings(state, mesh, optimizer)
  spec = {"task": task, "batch_size": batch_size, "seq_len": seq_len, "logits_chunk": logits_chunk}
  holder = {}

  def batch_only():
    holder["loss_fn"], batch = tsb._our_loss_and_batch(cfg, spec, mesh)
    return batch

  batch = jax.eval_shape(batch_only)  # the (small) batch arrays are never placed
  loss_fn = holder["loss_fn"]
  step_fn = trainer.make_train_step(loss_fn, optimizer, schedule, mesh=mesh, shardings=shardings)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, _abstract(batch)).compile()
  ma = compiled.memory_analysis()
  params = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state.params))
  out = {"args": ma.argument_size_in_bytes, "temp": ma.temp_size_in_bytes,
         "output": ma.output_size_in_bytes, "alias": ma.alias_size_in_bytes,
         "params": float(params) / mesh.devices.size, "compile_s": time.perf_counter() - t0}
  out["peak"] = out["args"] + out["temp"] + out["output"] - out["alias"]
  return out


def rollout_memory(cfg: config_lib.ModelConfig, rows: int, prompt_len: int, new_tokens: int,
                   mesh_shape: list[int], unstack: bool) -> dict[str, float]:
  """Compiles the sampler's prefill and decode loop for `rows` prompts of `prompt_len` tokens and
  `new_tokens` new tokens on abstract weights; returns the larger of the two (per device)."""
  from flax import nnx

  from rlaif_jax.models import checkpoint_bridge
  from rlaif_jax.sampling import sampler as sampler_lib
  from rlaif_jax.sampling.logits_processing import SamplingArrays, SamplingParams
  from rlaif_jax.sharding import mesh as mesh_lib
  from rlaif_jax.training import train_state as ts
  mesh = mesh_lib.make_mesh(mesh_shape)
  graphdef, state = nnx.split(checkpoint_bridge.abstract_model(cfg))
  shardings = ts.variable_shardings(state, mesh)
  params = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        state, shardings)
  rows_sh = mesh_lib.data_sharding(mesh, 2)
  tokens = jax.ShapeDtypeStruct((rows, prompt_len), np.int32, sharding=rows_sh)
  mask = jax.ShapeDtypeStruct((rows, prompt_len), np.bool_, sharding=rows_sh)
  arrays = _abstract(SamplingArrays.from_params([SamplingParams()] * rows, new_tokens))
  stop, pad = jax.ShapeDtypeStruct((8,), np.int32), jax.ShapeDtypeStruct((), np.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    args = (graphdef, params, tokens, mask, arrays, stop, pad, key)
    spans = sampler_lib.cache_spans(new_tokens, _GROW.value or None)
    kw = dict(max_new_tokens=new_tokens, unstack=unstack, first_span=spans[0])
    prefill = sampler_lib._prefill_jit.lower(*args, **kw).compile().memory_analysis()
    sampler_state = jax.eval_shape(lambda *a: sampler_lib._prefill(*a, **kw), *args)
    fn, fn_args = sampler_lib.decode_call(graphdef, params, sampler_state, unstack, spans)
    decode = fn.lower(*fn_args).compile().memory_analysis()
  best = {}
  for ma in (prefill, decode):
    r = {"args": ma.argument_size_in_bytes, "temp": ma.temp_size_in_bytes,
         "output": ma.output_size_in_bytes, "alias": ma.alias_size_in_bytes}
    r["peak"] = r["args"] + r["temp"] + r["output"] - r["alias"]
    if r["peak"] > best.get("peak", -1):
      best = r
  n_params = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
  best.update(params=float(n_params) / mesh.devices.size, compile_s=time.perf_counter() - t0)
  return best


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for layout in _LAYOUTS.value:
    if layout not in ("scanned", "unrolled"):
      raise app.UsageError(f"--layouts: {layout!r} is not scanned or unrolled")
  mesh_shape = [int(x) for x in tsb._MESH.value]
  backend, kind = jax.default_backend(), jax.devices()[0].device_kind
  try:
    device_gib, gib_note = device_specs.resolve(_DEVICE_GIB.value, "device_gib", backend, kind,
                                                cpu_default=80.0)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  seq_len, dtype = tsb._SEQ.value or 1024, tsb._DTYPE.value or "bfloat16"
  print(f"backend={backend} ({kind}) devices={jax.device_count()} "
        f"batch={tsb._BATCH.value} seq_len={seq_len} param_dtype={tsb._PARAM_DTYPE.value} "
        f"dtype={dtype} remat={tsb._REMAT.value}; GiB per device from "
        f"compiled.memory_analysis(); device_gib={device_gib:g} ({gib_note})")
  print(f"{'preset':>14} {'task':>5} {'layout':>9} {'args':>7} {'temp':>7} {'out-alias':>9} "
        f"{'peak':>7} {'+res':>6} {'fits ' + f'{device_gib:g}':>8} {'compile s':>9}")
  lines = []
  for name in tsb._PRESETS.value or ["qwen2_5_0_5b"]:
    spec = {"preset": name, "num_layers": tsb._NUM_LAYERS.value, "vocab_size": tsb._VOCAB.value,
            "param_dtype": tsb._PARAM_DTYPE.value, "dtype": dtype, "remat": tsb._REMAT.value,
            "attention_impl": tsb._ATTN.value, "remat_policy": tsb._REMAT_POLICY.value}
    for task in tsb._TASKS.value:
      for layout in _LAYOUTS.value:
        cfg = tsb.model_config({**spec, "scan_layers": layout == "scanned"})
        if task == "rollout":
          r = rollout_memory(cfg, _ROLL_ROWS.value, _ROLL_PROMPT.value, _ROLL_NEW.value,
                             mesh_shape, _UNSTACK.value)
        else:
          r = step_memory(cfg, task, tsb._BATCH.value, seq_len, mesh_shape,
                          tsb._LOGITS_CHUNK.value)
        # Resident beside the step: grpo update, the reference policy; rollout, the actor's
        # AdamW moments (two params-sized arrays) and the reference policy.
        ref = r["params"] * {"grpo": 1, "rollout": 3}.get(task, 0) / _GIB
        total = r["peak"] / _GIB + ref
        print(f"{name:>14} {task:>5} {layout:>9} {r['args'] / _GIB:>7.2f} {r['temp'] / _GIB:>7.2f} "
              f"{(r['output'] - r['alias']) / _GIB:>9.2f} {r['peak'] / _GIB:>7.2f} {ref:>6.2f} "
              f"{'yes' if total <= device_gib else 'no':>8} {r['compile_s']:>9.1f}",
              flush=True)
        lines.append(f"peak_gib_{task}_{name}_{layout}={total:.2f}")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
