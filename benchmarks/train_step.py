r"""python -m benchmarks.train_step  # CPU: tiny preset, seq 256, batch 8, a few minutes

GPU (one H100): python -m benchmarks.train_step --presets=qwen2_5_0_5b,qwen2_5_1_5b,qwen2_5_7b \
    --param_dtype=bfloat16 --torch_compile  # 7B at batch 8 may OOM: add --batch_size=4
  then the same with --attention_impl=cudnn (flash attention) and with --noscan_layers (the
  unrolled layer list) to keep each option only with a measured gain.
Sharded (8 simulated CPU devices): XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    python -m benchmarks.train_step --mesh=2,2,2 --steps=3

Model-FLOPs utilisation (MFU), tokens/s and peak memory of three of our jitted train steps, each
`trainer.make_train_step` with AdamW from `optim.make_optimizer` (clip 1.0), random weights and
random tokens: sft (`sft.sft_loss`, loss on all but the first quarter), rm (`reward_model.rm_loss`
on a `ScalarHeadModel`, batch/2 pairs), grpo (`rl.losses.actor_loss` on a `RolloutBatch` of
left-padded prompts and right-padded responses). The peer, in the same run, is transformers +
torch on the same config and batch for sft and rm: `Qwen2ForCausalLM` / `Qwen2Model` + linear
head (Llama classes for llama presets) from `to_hf_config(cfg)`, SDPA, AdamW (fused on CUDA) with
the same clipping, bf16 autocast when compute and parameter dtypes differ, gradient checkpointing
when we remat, `torch.compile` of forward + loss with `--torch_compile` (a failure is reported and
the peer runs eager).

Each measurement runs in its own subprocess (its own peak memory; JAX's GPU preallocation never
competes with torch; our workers get XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 unless an
XLA_PYTHON_CLIENT_* memory variable is set). After the warm-up steps (compilation included),
`--repeats` rounds of `--steps` back-to-back steps, synchronised at each round's end; the best
round's mean counts. tokens/s counts all batch x seq_len positions, padding included.

MFU = (6 N + 12 L H E T) x tokens/s / peak FLOP/s (PaLM, app. B): N the parameters in a matmul
(not the input embedding lookup; the LM head, tied or not; the RM's D -> 1 head instead), L
layers, H E heads x head dim, T seq_len; remat recomputation not counted. Column MFU-c: the
same with the attention term halved, 6 N + 6 L H E T (MaxText's causal convention: the mask
skips half of the score and value matmuls). Peak: `--peak_tflops` x
devices, by default the vendor bf16 dense figure of the device kind (BF16_PEAK_TFLOPS: H100 SXM
989), on CPU the rate of a 2048^3 `jnp` matmul timed in the same run. Memory: device
`peak_bytes_in_use` (max over the mesh) / `torch.cuda.max_memory_allocated`; on CPU the process's
peak host RSS (and its rise over the RSS after imports). benchmarks/README.md explains the figures.

Prints a table per preset, the tokens/s ratios ours/transformers, and last one line per preset
`ratio_vs_transformers_sft_<preset>=<x>` (nan when the peer did not run).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import app, flags

from rlaif_jax.models import config as config_lib

_PRESETS = flags.DEFINE_list("presets", None, "Model presets (rlaif_jax.models.config.PRESETS). "
                             "Default: tiny on CPU, qwen2_5_0_5b,qwen2_5_1_5b,qwen2_5_7b else.")
_TASKS = flags.DEFINE_list("tasks", ["sft", "rm", "grpo"], "Steps to time: sft, rm, grpo.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Rows per step (RM: batch_size / 2 pairs).")
_SEQ = flags.DEFINE_integer("seq_len", None, "Tokens per row. Default: 256 on CPU, else 1024.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"],
                                 "Storage dtype of weights and AdamW moments (both frameworks).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Compute dtype. Default: bfloat16 on accelerators, float32 on CPU.")
_REMAT = flags.DEFINE_enum("remat", "auto", ["auto", "on", "off"],
                           "Rematerialise each layer (torch: gradient checkpointing); auto = on "
                           "for models of 1B parameters or more.")
_SCAN = flags.DEFINE_bool("scan_layers", True, "Stacked layers run by lax.scan "
                          "(ModelConfig.scan_layers); --noscan_layers: the unrolled layer list.")
_REMAT_POLICY = flags.DEFINE_enum("remat_policy", "full", ["full", "dots"],
                                  "ModelConfig.remat_policy: keep only layer inputs, or also "
                                  "matmul outputs.")
_ATTN = flags.DEFINE_enum("attention_impl", "einsum", ["einsum", "xla", "cudnn", "splash"],
                          "ModelConfig.attention_impl of the cache-free forward (cudnn: GPU, "
                          "splash: TPU).")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Our mesh (data,fsdp,tensor); -1 = the rest.")
_STEPS = flags.DEFINE_integer("steps", 4, "Back-to-back timed steps per round.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds per measurement; the best is kept.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 2, "Untimed steps first (compilation included).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Peak dense TFLOP/s of one device in the compute "
                           "dtype. Default: BF16_PEAK_TFLOPS by device kind; CPU: timed matmul.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "torch.compile the peer's forward+loss.")
_SKIP_HF = flags.DEFINE_bool("skip_transformers", False, "Time only our steps.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0 = default).")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", None, "Override the presets' layer count.")
_VOCAB = flags.DEFINE_integer("vocab_size", None, "Override the presets' vocabulary size.")
_LOGITS_CHUNK = flags.DEFINE_integer("logits_chunk", 256, "GRPO: ActorLossConfig.logits_chunk.")
_TIMEOUT = flags.DEFINE_integer("worker_timeout_s", 3600, "Limit for one measurement subprocess.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: JSON spec of one measurement to run.")
_WORKER_OUT = flags.DEFINE_string("worker_out", None, "Internal: where the worker writes JSON.")

# Vendor peak dense bf16 TFLOP/s per JAX device, matched against device_kind (first match wins).
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("TPU v4", 275.0),
                    ("TPU v5 lite", 197.0), ("TPU v5", 459.0), ("TPU v6 lite", 918.0))
TASKS = ("sft", "rm", "grpo")
PEER_TASKS = ("sft", "rm")
GIB = 2.0**30
JAX_MEMORY_ENV = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                  "XLA_PYTHON_CLIENT_ALLOCATOR")


# ---------------------------------------------------------------------------------------------
# Model size and FLOPs.


def model_config(spec: dict[str, Any]) -> config_lib.ModelConfig:
  """The preset of `spec` with its dtypes, remat and size overrides applied."""
  over = {k: spec[k] for k in ("num_layers", "vocab_size") if spec.get(k) is not None}
  cfg = config_lib.preset(spec["preset"], **over)
  remat = spec["remat"] == "on" or (spec["remat"] == "auto" and cfg.num_params >= 1e9)
  return cfg.replace(param_dtype=spec["param_dtype"], dtype=spec["dtype"], remat=remat,
                     scan_layers=spec.get("scan_layers", True),
                     attention_impl=spec.get("attention_impl", "einsum"),
                     remat_policy=spec.get("remat_policy", "full"))


def matmul_params(cfg: config_lib.ModelConfig, task: str) -> int:
  """Parameters that take part in a matmul per token: the trunk plus the LM head (or RM head)."""
  d, v = cfg.hidden_size, cfg.vocab_size
  trunk = cfg.num_params - v * d * (1 if cfg.tie_embeddings else 2)
  return trunk + (d if task == "rm" else v * d)


def flops_per_token(cfg: config_lib.ModelConfig, task: str, seq_len: int,
                    causal: bool = False) -> float:
  """Training FLOPs per token: 6 N + 12 L (H E) T (forward + backward; PaLM, no causal
  discount), or with `causal` the attention term halved, 6 N + 6 L (H E) T (MaxText)."""
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return 6.0 * matmul_params(cfg, task) + attention / (2 if causal else 1)


# ---------------------------------------------------------------------------------------------
# Synthetic batches (NumPy, identical for both frameworks).


def sft_batch(cfg: config_lib.ModelConfig, b: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Full rows of random tokens; the first quarter is the prompt (loss_mask 0)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (b, t), dtype=np.int32)
  loss_mask = np.zeros((b, t), np.int32)
  loss_mask[:, t // 4:] = 1
  return {"tokens": tokens, "loss_mask": loss_mask, "attention_mask": np.ones((b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()}


def rm_batch(cfg: config_lib.ModelConfig, b: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
  """b rows = b/2 (chosen, rejected) pairs, chosen rows first, as `rm_loss` expects."""
  full = sft_batch(cfg, b, t, seed)
  return {k: full[k] for k in ("tokens", "positions", "attention_mask")}


def rollout_arrays(cfg: config_lib.ModelConfig, b: int, t: int, seed: int = 0
                   ) -> dict[str, np.ndarray]:
  """The fields of a RolloutBatch: [left-padded prompt (t/4) | right-padded response], random
  lengths, old/ref log-probs near each other, GRPO advantages per row, zero values/returns."""
  from rlaif_jax.rl.rollout_buffer import assemble_sequences
  rng = np.random.default_rng(seed)
  p = t // 4
  r = t - p
  p_len = rng.integers(p // 2, p + 1, b)
  r_len = rng.integers(r // 2, r + 1, b)
  prompt_mask = np.arange(p)[None] >= (p - p_len)[:, None]
  resp_mask = np.arange(r)[None] < r_len[:, None]
  out = assemble_sequences(rng.integers(0, cfg.vocab_size, (b, p)) * prompt_mask, prompt_mask,
                           rng.integers(0, cfg.vocab_size, (b, r)) * resp_mask, resp_mask)
  mask = out["response_mask"]
  old = -rng.exponential(2.0, (b, t)).astype(np.float32) * mask
  seq_rewards = rng.normal(size=b).astype(np.float32)
  zeros = np.zeros((b, t), np.float32)
  out.update(old_log_probs=old, ref_log_probs=old + 0.05 * rng.normal(size=(b, t)).astype(
      np.float32) * mask, values=zeros, returns=zeros, token_rewards=zeros,
             advantages=seq_rewards[:, None] * mask, sequence_rewards=seq_rewards)
  return out


# ---------------------------------------------------------------------------------------------
# Measurement helpers (run inside the worker processes).


def rss_bytes() -> int:
  """Peak resident set size of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(step: Callable[[], Any], sync: Callable[[Any], None], warmup: int, steps: int,
               repeats: int) -> dict[str, float]:
  """{first_step_s, step_s, first_done}: the first call (compilation) alone; then, after
  `warmup` - 1 more untimed calls, `repeats` rounds of `steps` back-to-back calls synchronised
  once at the end; step_s is the best round's mean (robust to other jobs on a shared machine).
  first_done is the perf_counter time at which the first call had finished."""
  t0 = time.perf_counter()
  sync(step())
  first_done = time.perf_counter()
  for _ in range(max(warmup - 1, 0)):
    sync(step())
  best = math.inf
  for _ in range(repeats):
    t1 = time.perf_counter()
    out = None
    for _ in range(steps):
      out = step()
    sync(out)
    best = min(best, (time.perf_counter() - t1) / steps)
  return {"first_step_s": first_done - t0, "step_s": best, "first_done": first_done}


def is_oom(err: BaseException) -> bool:
  text = f"{type(err).__name__} {err}".lower()
  return any(s in text for s in ("resource_exhausted", "out of memory", "outofmemory"))


# ---------------------------------------------------------------------------------------------
# Our steps.


def _our_state(cfg, task: str, mesh, optimizer):
  """A sharded TrainState around a random Decoder (or ScalarHeadModel on it)."""
  import jax
  from flax import nnx

  from rlaif_jax.models import checkpoint_bridge
  from rlaif_jax.models.scalar_head import ScalarHeadModel
  from rlaif_jax.training import train_state as ts
  model = checkpoint_bridge.init_sharded(cfg, mesh, seed=0)
  if task == "rm":
    model = ScalarHeadModel(model, rngs=nnx.Rngs(params=1))
  state = ts.create_train_state(model, optimizer, mesh, seed=0)
  shardings = ts.state_shardings(state, mesh, optimizer)
  return jax.device_put(state, shardings), shardings


def _our_loss_and_batch(cfg, spec: dict[str, Any], mesh):
  """(loss_fn, device batch) of spec's task."""
  from rlaif_jax.rl import losses, rollout_buffer
  from rlaif_jax.training import reward_model, sft, trainer
  task, b, t = spec["task"], spec["batch_size"], spec["seq_len"]
  if task == "sft":
    return sft.sft_loss, trainer.put_batch(sft_batch(cfg, b, t), mesh)
  if task == "rm":
    return reward_model.rm_loss, trainer.put_batch(rm_batch(cfg, b, t), mesh)
  actor_cfg = losses.ActorLossConfig(logits_chunk=spec["logits_chunk"])
  batch = rollout_buffer.shard_batch(rollout_buffer.RolloutBatch(**rollout_arrays(cfg, b, t)),
                                     mesh)
  return (lambda model, batch, rng: losses.actor_loss(model, batch, actor_cfg)), batch


def _device_peak_bytes(mesh) -> int | None:
  stats = [d.memory_stats() for d in mesh.devices.flat]
  if any(s is None or "peak_bytes_in_use" not in s for s in stats):
    return None
  return max(int(s["peak_bytes_in_use"]) for s in stats)


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
  """Times our jitted train step for spec's task; also counts compilations in the timed steps
  and checks that the input state was donated."""
  import jax
  from jax import monitoring

  from rlaif_jax.sharding import mesh as mesh_lib
  from rlaif_jax.training import optim, trainer
  baseline = rss_bytes()
  cfg = model_config(spec)
  mesh = mesh_lib.make_mesh([int(x) for x in spec["mesh"]])
  optimizer, schedule = optim.make_optimizer(1e-5, total_steps=100_000)
  state, shardings = _our_state(cfg, spec["task"], mesh, optimizer)
  loss_fn, batch = _our_loss_and_batch(cfg, spec, mesh)
  step_fn = trainer.make_train_step(loss_fn, optimizer, schedule, mesh=mesh, shardings=shardings)
  initial_params = jax.tree.leaves(state.params)
  holder = {"state": state}
  del state
  compile_times: list[float] = []

  def count(event: str, duration: float, **_):
    # A compilation, or one served by the persistent compilation cache (JAX_COMPILATION_CACHE_DIR;
    # a cache hit records no backend_compile event).
    if event in ("/jax/core/compile/backend_compile_duration",
                 "/jax/compilation_cache/cache_retrieval_time_sec"):
      compile_times.append(time.perf_counter())

  def one():
    holder["state"], metrics = step_fn(holder["state"], batch)
    return metrics

  def sync(metrics):
    jax.block_until_ready((holder["state"], metrics))

  monitoring.register_event_duration_secs_listener(count)
  try:
    timing = time_steps(one, sync, spec["warmup_steps"], spec["steps"], spec["repeats"])
  finally:
    monitoring.unregister_event_duration_listener(count)
  first_done = timing.pop("first_done")
  donated = all(x.is_deleted() for x in initial_params)
  recompiles = sum(t > first_done for t in compile_times)
  device_peak = _device_peak_bytes(mesh)
  return {**timing, "donated": donated, "compiles_after_first": recompiles,
          "devices": int(mesh.devices.size), "remat": cfg.remat,
          "peak_bytes": device_peak if device_peak is not None else rss_bytes(),
          "baseline_bytes": None if device_peak is not None else baseline,
          "memory_kind": "device" if device_peak is not None else "host_rss"}


# ---------------------------------------------------------------------------------------------
# The transformers + torch peer.


def _hf_models(cfg, task: str, device: str, param_dtype):
  """(trunk or LM, RM head or None) on `device` in `param_dtype`, SDPA attention."""
  import torch
  import transformers
  classes = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                       transformers.Qwen2Model),
             "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                       transformers.LlamaModel)}[cfg.architecture]
  hf_cfg = classes[0](**config_lib.to_hf_config(cfg), attn_implementation="sdpa")
  torch.manual_seed(0)
  default = torch.get_default_dtype()
  torch.set_default_dtype(param_dtype)  # build in the storage dtype: no fp32 copy of a 7B model
  try:
    with torch.device(device):
      model = (classes[2] if task == "rm" else classes[1])(hf_cfg)
      head = torch.nn.Linear(cfg.hidden_size, 1, dtype=torch.float32) if task == "rm" else None
  finally:
    torch.set_default_dtype(default)
  if cfg.remat:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
  model.train()
  return model, head


def _torch_loss_fn(model, head, task: str, autocast: Callable[[], Any]):
  """forward + loss of the peer: (tokens, attention_mask, targets) -> loss."""
  import torch
  import torch.nn.functional as F

  def sft(tokens, mask, labels):
    with autocast():
      logits = model(input_ids=tokens, attention_mask=mask, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                           ignore_index=-100)

  def rm(tokens, mask, last):
    with autocast():
      h = model(input_ids=tokens, attention_mask=mask, use_cache=False).last_hidden_state
    scores = head(h[torch.arange(h.shape[0], device=h.device), last].float())[:, 0]
    b = scores.shape[0] // 2
    return -F.logsigmoid(scores[:b] - scores[b:]).mean()

  return sft if task == "sft" else rm


def _torch_inputs(cfg, spec: dict[str, Any], device: str):
  import torch
  b, t = spec["batch_size"], spec["seq_len"]
  if spec["task"] == "sft":
    host = sft_batch(cfg, b, t)
    third = np.where(host["loss_mask"] == 1, host["tokens"], -100)
  else:
    host = rm_batch(cfg, b, t)
    third = t - 1 - np.argmax(host["attention_mask"][:, ::-1], axis=1)  # last real token
  as_t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).long().to(device)
  return as_t(host["tokens"]), as_t(host["attention_mask"]), as_t(third)


def run_torch(spec: dict[str, Any]) -> dict[str, Any]:
  """Times the transformers + torch step (AdamW, clip 1.0) of spec's task."""
  import torch
  if spec["torch_threads"]:
    torch.set_num_threads(spec["torch_threads"])
  baseline = rss_bytes()
  cfg = model_config(spec)
  device = spec["torch_device"]
  if device == "cuda" and not torch.cuda.is_available():
    raise RuntimeError(f"JAX sees a GPU but torch {torch.__version__} has no CUDA; install a CUDA "
                       "build of torch or pass --skip_transformers")
  torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls on GPU, as XLA's default
  pdt, cdt = (getattr(torch, spec[k]) for k in ("param_dtype", "dtype"))
  model, head = _hf_models(cfg, spec["task"], device, pdt)
  params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
  opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                          fused=device == "cuda")
  autocast = ((lambda: torch.autocast(device, dtype=cdt)) if cdt != pdt
              else contextlib.nullcontext)
  loss_fn = _torch_loss_fn(model, head, spec["task"], autocast)
  inputs = _torch_inputs(cfg, spec, device)
  note, compile_s = "", None
  if spec["torch_compile"]:
    compiled = torch.compile(loss_fn)
    t0 = time.perf_counter()
    try:
      compiled(*inputs).backward()  # compilation errors surface on the first call
      loss_fn, note, compile_s = compiled, "torch.compile", time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - any inductor/dynamo failure: report, run eager
      note = f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); eager"
    opt.zero_grad(set_to_none=True)

  def one():
    loss = loss_fn(*inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  def sync(_):
    if device == "cuda":
      torch.cuda.synchronize()

  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  timing = time_steps(one, sync, spec["warmup_steps"], spec["steps"], spec["repeats"])
  timing.pop("first_done")
  if compile_s is not None:  # the first call, with compilation, ran before time_steps
    timing["first_step_s"] = compile_s
  on_gpu = device == "cuda"
  return {**timing, "devices": 1, "remat": cfg.remat, "note": note,
          "peak_bytes": torch.cuda.max_memory_allocated() if on_gpu else rss_bytes(),
          "baseline_bytes": None if on_gpu else baseline,
          "memory_kind": "device" if on_gpu else "host_rss"}


# ---------------------------------------------------------------------------------------------
# The device probe.


def cpu_matmul_tflops(dtype: str, n: int = 2048, repeats: int = 10) -> float:
  """TFLOP/s of the best of `repeats` jitted n x n x n matmuls on the default device."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e12


def run_probe(spec: dict[str, Any]) -> dict[str, Any]:
  """Backend, device kind and count; on CPU the measured matmul rate."""
  import jax
  backend = jax.default_backend()
  dtype = spec["dtype"] or ("float32" if backend == "cpu" else "bfloat16")
  out = {"backend": backend, "device_kind": jax.devices()[0].device_kind,
         "num_devices": jax.device_count(), "dtype": dtype, "matmul_tflops": None}
  if backend == "cpu":
    out["matmul_tflops"] = cpu_matmul_tflops(dtype)
  return out


WORKERS = {"probe": run_probe, "ours": run_ours, "torch": run_torch}


def worker_main(spec: dict[str, Any], out_path: str) -> None:
  """Runs one measurement; an OOM or other failure becomes a status in the JSON result."""
  try:
    result = {"status": "ok", **WORKERS[spec["role"]](spec)}
  except Exception as e:  # noqa: BLE001 - reported to the parent, which prints it
    status = "OOM" if is_oom(e) else "error"
    result = {"status": status, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
              if str(e) else type(e).__name__}
    import traceback
    traceback.print_exc()
  pathlib.Path(out_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The parent: spawns measurements, prints the tables.


def worker_env() -> dict[str, str]:
  """The environment of a worker: JAX may take 95% of accelerator memory (its default 75% would
  handicap us against torch, which can use all of it) unless the user chose a memory setting."""
  env = dict(os.environ)
  if not any(k in env for k in JAX_MEMORY_ENV):
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.95"
  return env


def spawn(spec: dict[str, Any], timeout_s: int) -> dict[str, Any]:
  """Runs `spec` in a fresh `python -m benchmarks.train_step --worker=...` process."""
  root = pathlib.Path(__file__).resolve().parents[1]
  with tempfile.TemporaryDirectory() as d:
    out = pathlib.Path(d) / "result.json"
    cmd = [sys.executable, "-m", "benchmarks.train_step", f"--worker={json.dumps(spec)}",
           f"--worker_out={out}"]
    try:
      proc = subprocess.run(cmd, check=False, cwd=root, env=worker_env(), capture_output=True,
                            text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
      return {"status": "timeout", "error": f"no result within --worker_timeout_s={timeout_s}"}
    if out.exists():
      result = json.loads(out.read_text())
    else:
      result = {"status": "crashed", "error": f"exit code {proc.returncode}"}
  if result["status"] != "ok":
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    print(f"  [{spec['role']} {spec.get('task')} {spec.get('preset')}] {result['status']}: "
          f"{result.get('error')}\n    " + "\n    ".join(tail), file=sys.stderr, flush=True)
  return result


def peak_tflops(probe: dict[str, Any]) -> tuple[float, str]:
  """(peak TFLOP/s of the whole mesh's hardware, how it was obtained)."""
  n, kind = probe["num_devices"], probe["device_kind"]
  if _PEAK.value is not None:
    return _PEAK.value * n, f"--peak_tflops={_PEAK.value:g} x {n} device(s)"
  if probe["backend"] == "cpu":  # simulated host devices share the same cores: no x n
    return probe["matmul_tflops"], (f"measured: best {probe['dtype']} 2048^3 jnp matmul on this "
                                    "CPU (all simulated devices share its cores)")
  if probe["dtype"] == "bfloat16":
    for name, tf in BF16_PEAK_TFLOPS:
      if name in kind:
        return tf * n, f"{kind} bf16 dense {tf:g} x {n} device(s)"
  raise app.UsageError(f"no default peak for {kind!r} with dtype={probe['dtype']}; "
                       "pass --peak_tflops (dense TFLOP/s of one device in the compute dtype)")


def _mem(r: dict[str, Any]) -> str:
  if r.get("status") != "ok":
    return "-"
  text = f"{r['peak_bytes'] / GIB:.2f}"
  if r.get("baseline_bytes") is not None:
    text += f" (+{(r['peak_bytes'] - r['baseline_bytes']) / GIB:.2f})"
  return text


def print_row(task: str, impl: str, r: dict[str, Any], tokens: int,
              flops_tok: tuple[float, float], peak: float) -> float:
  """One table row; `flops_tok` = (PaLM, causal) FLOPs per token; returns tokens/s (nan when
  the measurement failed)."""
  if r.get("status") != "ok":
    print(f"{task:<5} {impl:<22} {r.get('status', 'skipped')}: {r.get('error', '')}", flush=True)
    return math.nan
  tps = tokens / r["step_s"]
  mfu, mfu_causal = (f * tps / (peak * 1e12) for f in flops_tok)
  checks = [] if impl.startswith("transformers") else [
      f"donated={r['donated']}", f"recompiles={r['compiles_after_first']}"]
  if r.get("note"):
    checks.append(r["note"])
  print(f"{task:<5} {impl:<22} {1e3 * r['step_s']:>9.1f} {tps:>10.0f} {mfu:>7.2%} "
        f"{mfu_causal:>7.2%} {_mem(r):>15} {r['first_step_s']:>8.1f}  {' '.join(checks)}",
        flush=True)
  return tps


def bench_preset(name: str, base: dict[str, Any], probe: dict[str, Any], peak: float
                 ) -> dict[str, float]:
  """Runs and prints every task of one preset; returns {task: tokens/s ratio ours/peer}."""
  spec = {**base, "preset": name}
  cfg = model_config(spec)
  b, t = spec["batch_size"], spec["seq_len"]
  print(f"\n== {name}: {cfg.num_params / 1e6:.1f}M params, batch {b} x seq {t} = {b * t} "
        f"tokens/step, param_dtype={cfg.param_dtype} dtype={cfg.dtype} remat={cfg.remat} "
        f"mesh(data,fsdp,tensor)={','.join(spec['mesh'])} on {probe['num_devices']} "
        f"{probe['device_kind']}", flush=True)
  print(f"{'task':<5} {'impl':<22} {'step ms':>9} {'tokens/s':>10} {'MFU':>7} {'MFU-c':>7} "
        f"{'peak mem GiB':>15} {'first s':>8}  checks", flush=True)
  ratios = {}
  for task in spec["tasks"]:
    flops_tok = (flops_per_token(cfg, task, t), flops_per_token(cfg, task, t, causal=True))
    ours = print_row(task, "ours", spawn({**spec, "role": "ours", "task": task},
                                         spec["worker_timeout_s"]), b * t, flops_tok, peak)
    if task not in PEER_TASKS or spec["skip_transformers"]:
      continue
    peer_name = "transformers+compile" if spec["torch_compile"] else "transformers"
    peer = print_row(task, peer_name, spawn({**spec, "role": "torch", "task": task},
                                            spec["worker_timeout_s"]), b * t, flops_tok, peak)
    ratios[task] = ours / peer
  return ratios


def check_flags() -> None:
  """Flag errors found before any subprocess starts."""
  unknown = set(_TASKS.value) - set(TASKS)
  if unknown:
    raise app.UsageError(f"--tasks: unknown {sorted(unknown)}; choose from {TASKS}")
  if "rm" in _TASKS.value and _BATCH.value % 2:
    raise app.UsageError(f"--batch_size={_BATCH.value}: the RM step needs an even number of rows "
                         "(batch_size / 2 chosen-rejected pairs)")
  bad = [p for p in (_PRESETS.value or []) if p not in config_lib.PRESETS]
  if bad:
    raise app.UsageError(f"--presets: unknown {bad}; known: {sorted(config_lib.PRESETS)}")


def base_spec(probe: dict[str, Any]) -> dict[str, Any]:
  """The flag values every worker needs, with the backend's defaults resolved."""
  on_cpu = probe["backend"] == "cpu"
  skip_hf = _SKIP_HF.value
  if not on_cpu and probe["backend"] != "gpu" and not skip_hf:
    print(f"transformers peer skipped: torch has no {probe['backend']} device here")
    skip_hf = True
  return {
      "tasks": list(_TASKS.value), "batch_size": _BATCH.value,
      "seq_len": _SEQ.value or (256 if on_cpu else 1024), "param_dtype": _PARAM_DTYPE.value,
      "dtype": probe["dtype"], "remat": _REMAT.value, "scan_layers": _SCAN.value,
      "attention_impl": _ATTN.value, "remat_policy": _REMAT_POLICY.value,
      "mesh": _MESH.value,
      "steps": _STEPS.value, "repeats": max(_REPEATS.value, 1),
      "warmup_steps": max(_WARMUP.value, 1), "torch_compile": _TORCH_COMPILE.value,
      "skip_transformers": skip_hf, "torch_threads": _TORCH_THREADS.value,
      "torch_device": "cpu" if on_cpu else "cuda", "num_layers": _NUM_LAYERS.value,
      "vocab_size": _VOCAB.value, "logits_chunk": _LOGITS_CHUNK.value,
      "worker_timeout_s": _TIMEOUT.value}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKER.value is not None:
    worker_main(json.loads(_WORKER.value), _WORKER_OUT.value)
    return
  check_flags()
  probe = spawn({"role": "probe", "dtype": _DTYPE.value}, _TIMEOUT.value)
  if probe["status"] != "ok":
    raise SystemExit(f"device probe failed: {probe.get('error')}")
  peak, peak_note = peak_tflops(probe)
  base = base_spec(probe)
  presets = _PRESETS.value or (["tiny"] if probe["backend"] == "cpu"
                               else ["qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b"])
  print(f"backend={probe['backend']} devices={probe['num_devices']} x {probe['device_kind']}; "
        f"peak {peak:.3f} TFLOP/s ({peak_note})\nMFU uses 6N + 12 L H E T FLOPs per token "
        "(PaLM; N = matmul params incl. LM head; see the module docstring), MFU-c 6N + 6 L H E T "
        "(MaxText's causal attention). Memory: "
        + ("per-device peak_bytes_in_use (ours) / torch.cuda.max_memory_allocated"
           if probe["backend"] != "cpu" else
           "host peak RSS of each measuring process (rise over its RSS after imports)")
        + f"; step time: best of {base['repeats']} rounds of {base['steps']} steps after "
        f"{base['warmup_steps']} warm-up.", flush=True)
  if probe["num_devices"] > 1:
    print(f"note: ours runs on the mesh's {probe['num_devices']} devices, transformers on one.")
  all_ratios = {name: bench_preset(name, base, probe, peak) for name in presets}
  print()
  for name, ratios in all_ratios.items():
    if ratios:
      print(f"{name}: tokens/s ratio ours/transformers: "
            + ", ".join(f"{k}={v:.3f}" for k, v in ratios.items()))
  for name, ratios in all_ratios.items():
    print(f"ratio_vs_transformers_sft_{name}={ratios.get('sft', math.nan):.3f}")


if __name__ == "__main__":
  app.run(main)
