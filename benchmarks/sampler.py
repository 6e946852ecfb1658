r"""python -m benchmarks.sampler --batch_sizes=1,8,32 --new_tokens=64

Times our jitted sampler against `transformers` `generate` on the same random weights (greedy,
no early stop, so both produce exactly batch x new_tokens tokens; with `--row_tokens=K` every
row ends after K tokens of a new_tokens buffer, the shape of an RL rollout whose responses end
early, and transformers generates K). Default: a ~39M-parameter
Qwen2-shaped model (`--preset=cpu_small`) that runs on CPU in minutes; on GPU use e.g.
`--preset=qwen2_5_1_5b` (bf16 there by default). Warm-up (compilation, first CUDA calls) is
excluded. Prints a table, the tokens/s ratios, and as the last line
`ratio_vs_transformers_b32=<x>` (nan when batch 32 was not run).

On GPU it also prints the fraction of the memory-bandwidth roofline of the decode loop: bytes
read per decode step (`decode_bytes_per_step`: all parameters but the input embedding table of an
untied model, of which a step gathers only `batch` rows, + the K/V cache slots our loop attends
over, averaged over the steps since the cache grows by segments) x decode steps/s /
(--hbm_gbps x 1e9). --hbm_gbps defaults to the device kind's figure (benchmarks/device_specs.py:
H100 SXM 3350, H100 PCIe 2000, H200 4800); other GPUs need the flag. Decode steps/s comes from
the total time minus a 1-token call (the prefill).

Weights: a random transformers model built directly in the benchmark dtype on the benchmark
device, saved in that dtype and loaded into ours (the same weights for both); with
--skip_transformers ours is initialised on the device (`checkpoint_bridge.init_sharded`) and
transformers is never imported. When transformers also runs on the GPU, JAX gets
XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 (unless an XLA_PYTHON_CLIENT_* memory variable is set) so
that torch has room beside it. Batch sizes run in the order given: put the one that matters
first, a time limit then cuts the others.

`--constrained` adds a constrained-decoding row at the first batch size: the same greedy
generation with every row under a JSON-schema grammar (xgrammar masks from the host step hook,
`rlaif_jax.sampling.grammar`), over a byte-level BPE tokenizer built with the model's vocabulary
size (`benchmarks.grammar_libs.build_tokenizer`), no stop ids (so both runs take new_tokens
steps), printed as ms per step and as a ratio to the unconstrained run of the same process.
"""
import math
import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import device_specs
from rlaif_jax.models import checkpoint_bridge, config as config_lib
from rlaif_jax.sampling import sampler as sampler_lib
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler

_PRESET = flags.DEFINE_string("preset", "cpu_small", "cpu_small or a rlaif_jax.models preset.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32", "64"],
                                  "Batch sizes, timed in this order (put the one that matters "
                                  "first: a time limit then cuts the others).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 256, "New tokens per row.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed runs per setting (the best is kept).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "Weights and compute dtype (default: bfloat16 on GPU, else float32).")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", None, "Override the preset's layer count.")
_HBM_GBPS = flags.DEFINE_float("hbm_gbps", None, "Memory bandwidth (GB/s) for the GPU roofline. "
                                "Default: by device kind (benchmarks/device_specs.py).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0,
                                      "torch.set_num_threads for transformers (0 = default).")
_SKIP_HF = flags.DEFINE_bool("skip_transformers", False, "Time only our sampler.")
_TRACE_TOP = flags.DEFINE_integer("trace_top", 0, "After timing, trace one generation at the "
                                  "largest batch and print its N slowest XLA ops per step.")
_SCAN = flags.DEFINE_bool("scan_layers", False, "Load the model with stacked (scanned) layers.")
_UNSTACK = flags.DEFINE_bool("unstack_layers", True, "Scanned models: slice the layers once per "
                             "call (Sampler(unstack_layers=...)); false: in every decode step.")
_ROW_TOKENS = flags.DEFINE_integer(
    "row_tokens", None, "Rows end after this many tokens (a per-row limit) inside a buffer of "
    "--new_tokens: a rollout whose responses end early. transformers generates the same count. "
    "Default: --new_tokens.")
_CONSTRAINED = flags.DEFINE_bool("constrained", False, "Add the constrained-decoding row (see "
                                  "the module docstring).")
_GROW = flags.DEFINE_integer("grow_cache_from", 64, "Sampler(grow_cache_from=...): the KV cache "
                             "starts with room for this many new tokens and doubles; 0: whole.")


def cpu_small(**overrides) -> config_lib.ModelConfig:
  base = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8,
              num_heads=8, num_kv_heads=2, head_dim=64, rope_theta=1e6, qkv_bias=True,
              tie_embeddings=True, max_position_embeddings=4096, architecture="qwen2")
  base.update(overrides)
  return config_lib.ModelConfig(**base)


def build_models(cfg: config_lib.ModelConfig, dtype: str, device: str, skip_hf: bool):
  """(HF model or None, ours) holding the same random weights.

  The HF model is built directly in `dtype` on `device` (as train_step._hf_models: no fp32
  host copy, whose single-threaded init and 30 GB checkpoint took minutes at 7B), saved in that
  dtype and loaded into ours. With `skip_hf`, ours alone, initialised on the device.
  """
  if skip_hf:
    return None, checkpoint_bridge.init_sharded(
        cfg.replace(param_dtype=dtype, dtype=dtype, scan_layers=_SCAN.value), seed=0)
  import torch
  import transformers
  cls_cfg, cls_model = ((transformers.Qwen2Config, transformers.Qwen2ForCausalLM)
                        if cfg.architecture == "qwen2"
                        else (transformers.LlamaConfig, transformers.LlamaForCausalLM))
  hf_cfg = cls_cfg(**config_lib.to_hf_config(cfg, torch_dtype=dtype))
  torch.manual_seed(0)
  default = torch.get_default_dtype()
  torch.set_default_dtype(getattr(torch, dtype))
  try:
    with torch.device(device):
      hf = cls_model(hf_cfg).eval()
  finally:
    torch.set_default_dtype(default)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    ours = checkpoint_bridge.load_hf_checkpoint(d, param_dtype=dtype, dtype=dtype,
                                                scan_layers=_SCAN.value)
  return hf, ours


def time_ours(sampler: Sampler, tokens, mask, new_tokens: int, repeats: int,
              row_tokens: int | None = None) -> tuple[float, float]:
  """(seconds for the full generation, seconds for a 1-token call ~ prefill). With row_tokens,
  every row ends after that many tokens of its `new_tokens` buffer."""
  def run(n):
    limit = row_tokens if n == new_tokens and row_tokens else n
    out = sampler.generate_ids(None, tokens, mask, n, SamplingParams.greedy(max_tokens=limit),
                               stop_ids=())
    jax.block_until_ready(out)
    assert int(np.min(np.asarray(out.lengths))) == limit
  run(new_tokens), run(1)  # compile both shapes
  best = best_prefill = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    run(new_tokens)
    best = min(best, time.perf_counter() - t)
    t = time.perf_counter()
    run(1)
    best_prefill = min(best_prefill, time.perf_counter() - t)
  return best, best_prefill


def time_hf(hf, tokens, new_tokens: int, repeats: int, device: str) -> float:
  import torch
  ids = torch.tensor(tokens, dtype=torch.long, device=device)
  mask = torch.ones_like(ids)

  def run(n):
    with torch.inference_mode():
      out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                        min_new_tokens=n, pad_token_id=0)
    if device == "cuda":
      torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + n
  run(2)  # warm-up
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    run(new_tokens)
    best = min(best, time.perf_counter() - t)
  return best


def print_trace(sampler: Sampler, cfg: config_lib.ModelConfig, b: int, p: int, n: int,
                top: int) -> None:
  """The slowest XLA ops of the decode loop (n - 1 steps after the prefill), per step."""
  from benchmarks import xla_trace
  tokens = np.random.RandomState(b).randint(0, cfg.vocab_size, (b, p)).astype(np.int32)
  arrays = sampler_lib.SamplingArrays.from_params([SamplingParams.greedy()] * b, n)
  args = (sampler.graphdef, sampler.params, jax.numpy.asarray(tokens),
          jax.numpy.ones((b, p), bool), arrays, np.full(8, -1, np.int32), np.int32(0),
          jax.random.key(0))
  spans = sampler_lib.cache_spans(n, sampler.grow_cache_from)
  prefill = lambda: sampler_lib._prefill_jit(*args, max_new_tokens=n, first_span=spans[0])
  call = lambda s: sampler_lib.decode_call(sampler.graphdef, sampler.params, s, True, spans)
  fn, fn_args = call(prefill())
  hlo = [fn.lower(*fn_args).compile().as_text()]
  jax.block_until_ready(fn(*fn_args))  # compile
  fn, fn_args = call(jax.block_until_ready(prefill()))  # the decode call donates (consumes) it
  print(f"slowest XLA ops of the decode loop, ms per step, batch {b} (concurrent ops overlap):")
  for ms, name, shape, op in xla_trace.top_ops(
      lambda: fn(*fn_args), hlo, top, per=max(n - 1, 1)):
    print(f"  {ms:8.3f}  {name:28s} {shape:28s} {op}")


def mean_cache_slots(prompt_len: int, new_tokens: int, grow_from: int | None,
                     row_tokens: int | None = None) -> float:
  """Cache slots a decode step attends over, averaged over the decode steps (row_tokens - 1,
  default new_tokens - 1; the cache grows by segments, `cache_spans`)."""
  steps = (row_tokens or new_tokens) - 1
  total, start = 0, 1  # step s (1-based tokens so far) runs in the first segment ending > s
  for end in sampler_lib.cache_spans(new_tokens, grow_from):
    total += max(min(end, steps + 1) - start, 0) * (prompt_len + end - 1)
    start = end
  return total / max(steps, 1)


def decode_bytes_per_step(cfg: config_lib.ModelConfig, batch: int, cache_len: float,
                          itemsize: int) -> float:
  """Bytes one decode step must read from device memory: every weight once, except the input
  embedding table of an untied model (the step gathers only `batch` of its rows; a tied table
  is read whole as the LM head), plus K and V of `cache_len` slots per row and layer.

  >>> tied, untied = cpu_small(), cpu_small(tie_embeddings=False)
  >>> decode_bytes_per_step(tied, 1, 0, 2) == 2 * tied.num_params
  True
  >>> decode_bytes_per_step(untied, 1, 0, 2) == 2 * (untied.num_params - 32000 * 512)
  True
  >>> kv = decode_bytes_per_step(tied, 4, 10, 2) - decode_bytes_per_step(tied, 4, 0, 2)
  >>> kv == 2 * 8 * 4 * 10 * 2 * 64 * 2  # K and V x layers x rows x slots x kv heads x dim x 2 B
  True

  Qwen2.5-7B (untied): the input table is 7.2% of its parameters.

  >>> q7 = config_lib.preset("qwen2_5_7b")
  >>> round(1 - decode_bytes_per_step(q7, 1, 0, 2) / (2 * q7.num_params), 3)
  0.072
  """
  kv = 2 * cfg.num_layers * batch * cache_len * cfg.num_kv_heads * cfg.head_dim * itemsize
  weights = cfg.num_params - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size)
  return float(weights * itemsize + kv)


CONSTRAINED_SCHEMA = {"type": "object", "properties": {
    "explanation": {"type": "string"}, "verdict": {"enum": ["Good", "Bad"]}},
    "required": ["explanation", "verdict"], "additionalProperties": False}


def time_constrained(sampler: Sampler, cfg: config_lib.ModelConfig, b: int, p: int,
                     n: int) -> tuple[float, float, float]:
  """(unconstrained s, constrained s, fraction of row-steps whose mask was computed) for one
  greedy generation of b rows x n steps, warm (each timed after one untimed run)."""
  import json
  from benchmarks.grammar_libs import build_tokenizer
  from rlaif_jax.sampling import decode_step, grammar

  class HFOnly:  # what grammar.GrammarHook reads of a tokenizer
    hf = build_tokenizer(cfg.vocab_size)
  tokenizer = HFOnly()
  eos = tokenizer.hf.eos_token_id
  fmt = ("json_schema", json.dumps(CONSTRAINED_SCHEMA))
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (b, p)).astype(np.int32)
  mask = np.ones((b, p), bool)
  greedy = SamplingParams.greedy()
  filled = [0]

  def run(constrained: bool) -> float:
    handle = None
    if constrained:
      hook = grammar.GrammarHook(tokenizer, [fmt] * b, cfg.vocab_size, (eos,))

      def counting(step, prev, lengths, done, bitmask, cancel, logprobs):
        hook(step, prev, lengths, done, bitmask, cancel, logprobs)
        filled[0] += sum(not m.is_terminated() for m in hook.matchers.values())
      handle = decode_step.register_hook(counting)
    start = time.perf_counter()
    try:
      out = sampler.generate_ids(None, tokens, mask, n, greedy, 0, stop_ids=(), step_hook=handle)
      jax.block_until_ready(out.tokens)
    finally:
      if handle is not None:
        decode_step.unregister_hook(handle)
    return time.perf_counter() - start

  run(False), run(True)  # compile
  filled[0] = 0
  plain, constrained = run(False), run(True)
  return plain, constrained, filled[0] / (b * n)


def _torch_threads() -> int:
  import torch
  return torch.get_num_threads()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  batch_sizes = [int(x) for x in _BATCH_SIZES.value]
  mem_env = [k for k in os.environ if k.startswith("XLA_PYTHON_CLIENT_")]
  if not _SKIP_HF.value and not mem_env:  # before the backend starts; torch needs room beside
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.5"  # JAX's default 75% preallocation
  on_gpu = jax.default_backend() == "gpu"
  kind = jax.devices()[0].device_kind
  hbm_gbps, hbm_note = None, ""
  if on_gpu:
    try:
      hbm_gbps, hbm_note = device_specs.resolve(_HBM_GBPS.value, "hbm_gbps", "gpu", kind)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  dtype = _DTYPE.value or ("bfloat16" if on_gpu else "float32")
  overrides = {} if _NUM_LAYERS.value is None else {"num_layers": _NUM_LAYERS.value}
  cfg = (cpu_small(**overrides) if _PRESET.value == "cpu_small"
         else config_lib.preset(_PRESET.value, **overrides))
  device = "cuda" if on_gpu else "cpu"
  if _TORCH_THREADS.value:
    import torch
    torch.set_num_threads(_TORCH_THREADS.value)
  t0 = time.perf_counter()
  hf, ours = build_models(cfg, dtype, device, _SKIP_HF.value)
  build_s = time.perf_counter() - t0
  sampler = Sampler(ours, unstack_layers=_UNSTACK.value, grow_cache_from=_GROW.value or None)
  p, n = _PROMPT_LEN.value, _NEW_TOKENS.value
  k = _ROW_TOKENS.value or n  # tokens each row generates
  if not 1 <= k <= n:
    raise app.UsageError(f"--row_tokens={k} must be in [1, --new_tokens={n}]")
  print(f"preset={_PRESET.value} params={cfg.num_params / 1e6:.1f}M dtype={dtype} "
        f"backend={jax.default_backend()} ({kind}) prompt_len={p} "
        f"new_tokens={n} row_tokens={k} "
        f"torch_threads={'-' if _SKIP_HF.value else _torch_threads()} "
        f"cache_spans={sampler_lib.cache_spans(n, sampler.grow_cache_from)}")
  fraction = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "default")
  print(f"models built in {build_s:.1f} s ("
        + ("ours only, on-device init" if _SKIP_HF.value else "transformers -> ours") + ")"
        + (f"; XLA_PYTHON_CLIENT_MEM_FRACTION={fraction}; hbm_gbps={hbm_gbps:g} ({hbm_note})"
           if on_gpu else ""), flush=True)
  header = f"{'batch':>5} {'ours tok/s':>11} {'hf tok/s':>9} {'ratio':>6} {'ours ms/step':>12}"
  print(header + (f" {'roofline':>8}" if on_gpu else ""))
  ratios = {}
  for b in batch_sizes:
    tokens = np.random.RandomState(b).randint(0, cfg.vocab_size, (b, p)).astype(np.int32)
    total, prefill = time_ours(sampler, tokens, np.ones((b, p), bool), n, _REPEATS.value, k)
    ours_tps = b * k / total
    hf_tps = math.nan if _SKIP_HF.value else b * k / time_hf(hf, tokens, k, _REPEATS.value,
                                                             device)
    ratios[b] = ours_tps / hf_tps
    step_s = max(total - prefill, 1e-9) / max(k - 1, 1)
    row = f"{b:>5} {ours_tps:>11.1f} {hf_tps:>9.1f} {ratios[b]:>6.2f} {1e3 * step_s:>12.2f}"
    if on_gpu:
      itemsize = np.dtype(jax.numpy.dtype(dtype)).itemsize
      moved = decode_bytes_per_step(
          cfg, b, mean_cache_slots(p, n, sampler.grow_cache_from, k), itemsize)
      row += f" {moved / step_s / (hbm_gbps * 1e9):>8.1%}"
    print(row, flush=True)
  if _CONSTRAINED.value:
    b = batch_sizes[0]
    plain, constrained, masked = time_constrained(sampler, cfg, b, p, n)
    print(f"constrained decoding (json_schema, xgrammar, batch {b}, {n} steps): "
          f"{1e3 * constrained / n:.2f} ms/step vs {1e3 * plain / n:.2f} unconstrained, ratio "
          f"{constrained / plain:.2f} (masks computed on {masked:.0%} of row-steps)", flush=True)
  if _TRACE_TOP.value:
    print_trace(sampler, cfg, max(batch_sizes), p, n, _TRACE_TOP.value)
  print("tokens/s ratio ours/transformers: " + ", ".join(f"b{b}={r:.2f}"
                                                         for b, r in ratios.items()))
  print(f"ratio_vs_transformers_b32={ratios.get(32, math.nan):.3f}")


if __name__ == "__main__":
  app.run(main)
