r"""python -m benchmarks.grpo_step  # CPU: tiny preset, 4 prompts x 4 samples, 32 new tokens

GPU (one H100), issue 10's breakdown at 1.5B with the reward-model reward:
  python -m benchmarks.grpo_step --preset=qwen2_5_1_5b --rm_preset=qwen2_5_1_5b \
      --param_dtype=bfloat16 --dtype=bfloat16 --prompts=32 --new_tokens=512

Where the time of one GRPO step goes: `RLTrainer.rollout` (generate: the jitted sampler;
score: the reward model `RewardModelScorer` on the rollout (its token ids: it shares the
policy's tokenizer), plus `--reward_latency_s` of host-side waiting as a remote judge has;
prepare: the rest of the rollout, i.e. old/reference log-probs and advantages, synchronised
here) and `RLTrainer.update` (the actor's minibatch updates), the real trainer code on random
weights. Every phase is synchronised before its clock stops, except that the log-probs are
dispatched before scoring and overlap it: their device time shows up in "score" when the
reward model shares the device, and is hidden behind a judge's latency. The paper's shape by default: 4 samples per prompt, minibatch 16 prompts x 4, k3 KL
0.001, one epoch.

Random weights need a tokenizer for any vocabulary: `IdTokenizer` maps id i to the code point
0x10000 + i, so decode/encode round-trip every id exactly and the reward model re-encodes the
same number of tokens the policy sampled. The EOS id is never in the stop set (`--new_tokens`
are always generated, as the timing assumes).

Peer: the generate phase against the sampler's own steady-state rate is not a peer; the named
peer is transformers `generate` on the same prompts and weights (`--peer_generate`, same run),
sampling as our rollout does, timed as many times as our steps; both sides' best run gives
`ratio_generate_vs_transformers=<x>`. The last line is
`generate_share=<fraction of the step spent generating>`.
"""
from __future__ import annotations

import math
import tempfile
import time
from typing import Sequence

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from rlaif_jax.data import formatting
from rlaif_jax.models import checkpoint_bridge, config as config_lib
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.rl import losses, rollout as rollout_lib, trainer as rl
from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.tokenizers.base import Tokenizer
from rlaif_jax.training import optim
from rlaif_jax.training.reward_scoring import RewardModelScorer

_PRESET = flags.DEFINE_string("preset", "tiny", "Policy preset (rlaif_jax.models.config).")
_RM_PRESET = flags.DEFINE_string("rm_preset", None, "Reward-model trunk preset (default: preset).")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "Weights.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_SCAN = flags.DEFINE_bool("scan_layers", True, "Stacked layers (ModelConfig.scan_layers).")
_REMAT = flags.DEFINE_bool("remat", None, "Remat (default: on from 1B parameters).")
_PROMPTS = flags.DEFINE_integer("prompts", 4, "Prompts per step.")
_SAMPLES = flags.DEFINE_integer("samples", 4, "Samples per prompt (GRPO group).")
_MINI = flags.DEFINE_integer("mini_batch_prompts", 16, "Prompts per minibatch update (capped).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens (before the template).")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Tokens generated per sample.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps after one warm-up step (compilation).")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Mesh (data,fsdp,tensor); -1 = the rest.")
_SAMPLER_LP = flags.DEFINE_bool("old_log_probs_from_sampler", False, "RLConfig."
                                "old_log_probs_from_sampler: skip the old log-prob forward pass.")
_LATENCY = flags.DEFINE_float("reward_latency_s", 0.0, "Host-side wait added to every reward "
                              "call, as a remote LLM judge (path B) has; the old/reference "
                              "log-probs are computed on the device meanwhile.")
_PEER = flags.DEFINE_bool("peer_generate", True, "Time transformers generate on the same rows.")

_BASE = 0x10000


class IdTokenizer(Tokenizer):
  """Id i <-> the character chr(0x10000 + i): exact round trips for any vocabulary size."""

  def __init__(self, vocab_size: int):
    if _BASE + vocab_size > 0x110000:
      raise ValueError(f"vocab_size {vocab_size} exceeds the code points IdTokenizer can use")
    self._v = vocab_size

  def encode(self, text: str) -> list[int]:
    return [ord(c) - _BASE for c in text]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return "".join(chr(_BASE + int(i)) for i in ids)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return "".join(m["content"] for m in messages)

  eos_id = property(lambda self: 0)
  pad_id = property(lambda self: 0)
  bos_id = property(lambda self: None)
  vocab_size = property(lambda self: self._v)
  eot_id = property(lambda self: 0)
  stop_ids = property(lambda self: ())


def _cfg(preset: str, scan: bool) -> config_lib.ModelConfig:
  cfg = config_lib.preset(preset)
  remat = _REMAT.value if _REMAT.value is not None else cfg.num_params >= 1e9
  return cfg.replace(param_dtype=_PARAM_DTYPE.value, dtype=_DTYPE.value, remat=remat,
                     scan_layers=scan)


def _sync(tree) -> None:
  jax.block_until_ready(tree)


def build(workdir: str):
  mesh = mesh_lib.make_mesh([int(x) for x in _MESH.value])
  cfg = _cfg(_PRESET.value, _SCAN.value)
  rm_cfg = _cfg(_RM_PRESET.value or _PRESET.value, _SCAN.value).replace(
      vocab_size=cfg.vocab_size)
  tok = IdTokenizer(cfg.vocab_size)
  policy = checkpoint_bridge.init_sharded(cfg, mesh, seed=0)
  rm = ScalarHeadModel(checkpoint_bridge.init_sharded(rm_cfg, mesh, seed=1),
                       rngs=nnx.Rngs(params=2))
  prompt_budget = _PROMPT_LEN.value + 8
  fmt = formatting.FormatConfig(max_prompt_len=prompt_budget, max_response_len=_NEW.value,
                                use_chat_template=True, prompt_template="{query}",
                                min_bucket=min(128, prompt_budget))
  rows = _PROMPTS.value * _SAMPLES.value
  mini = min(_MINI.value, _PROMPTS.value) * _SAMPLES.value
  rcfg = rl.RLConfig(algorithm="grpo", total_steps=1000, prompts_per_step=_PROMPTS.value,
                     n_samples=_SAMPLES.value, mini_batch_size=mini, max_new_tokens=_NEW.value,
                     actor=losses.ActorLossConfig(kl_coef=0.001),
                     advantage=rollout_lib.AdvantageConfig(estimator="grpo",
                                                           group_size=_SAMPLES.value),
                     checkpoint_every=10 ** 9, log_every=10 ** 9,
                     old_log_probs_from_sampler=_SAMPLER_LP.value)
  opt, sched = optim.make_optimizer(3e-7, 1000, decay="constant")
  rng = np.random.RandomState(0)
  queries = ["".join(chr(_BASE + int(i)) for i in rng.randint(1, cfg.vocab_size, _PROMPT_LEN.value))
             for _ in range(_PROMPTS.value)]
  scorer = RewardModelScorer(rm, tok, fmt, batch_size=rows, mesh=mesh)
  if _LATENCY.value:
    scorer = _SlowReward(scorer, _LATENCY.value)
  trainer = rl.RLTrainer(policy, tok, scorer, lambda step: queries, rcfg, fmt, mesh, workdir, opt,
                         sched)
  trainer.sampler.stop_ids = ()  # always generate new_tokens tokens
  return trainer, cfg, queries, tok, fmt, rows


class _SlowReward:
  """A reward source that waits `latency_s` on the host before scoring (a remote judge)."""

  def __init__(self, inner, latency_s: float):
    self.inner, self.latency_s = inner, latency_s

  @property
  def name(self) -> str:
    return self.inner.name

  def score(self, rollout):
    time.sleep(self.latency_s)
    return self.inner.score(rollout)


def time_step(trainer: rl.RLTrainer, step: int) -> dict[str, float]:
  t0 = time.perf_counter()
  batch, stats = trainer.rollout(step)
  _sync(batch)
  t1 = time.perf_counter()
  upd = trainer.update(batch, step)
  _sync(trainer.actor)
  t2 = time.perf_counter()
  prepare = (t1 - t0) - stats["t_generate"] - stats["t_score"]
  return {"generate": stats["t_generate"], "score": stats["t_score"], "prepare": prepare,
          "update": t2 - t1, "step": t2 - t0, "loss": upd.get("loss", math.nan)}


def peer_generate_seconds(trainer: rl.RLTrainer, cfg, queries, tok, fmt, runs: int
                          ) -> list[float]:
  """transformers generate (sampling like our rollout: temperature 1, no top-k/top-p, fixed
  length, same weights via an HF export) on the rows the sampler generates (each prompt
  repeated `samples` times): one warm-up call, then `runs` timed calls (as many as our timed
  steps, so both sides report the best of the same number of runs)."""
  import torch
  import transformers
  enc = formatting.encode_prompts(tok, queries, fmt)
  ids = torch.tensor(np.repeat(enc["tokens"], _SAMPLES.value, 0), dtype=torch.long)
  mask = torch.tensor(np.repeat(enc["attention_mask"], _SAMPLES.value, 0), dtype=torch.long)
  device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  with tempfile.TemporaryDirectory() as d:
    model = trainer.actor.model()
    checkpoint_bridge.export_hf_checkpoint(model, d, dtype=_PARAM_DTYPE.value)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        d, dtype=getattr(torch, _DTYPE.value)).to(device).eval()
  ids, mask = ids.to(device), mask.to(device)

  def run(n):
    with torch.inference_mode():
      hf.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=n,
                  min_new_tokens=n, pad_token_id=0, top_k=0)
    if device == "cuda":
      torch.cuda.synchronize()
  run(2)
  seconds = []
  for _ in range(runs):
    t = time.perf_counter()
    run(_NEW.value)
    seconds.append(time.perf_counter() - t)
  return seconds


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with tempfile.TemporaryDirectory() as workdir:
    trainer, cfg, queries, tok, fmt, rows = build(workdir)
    try:
      rm_name = _RM_PRESET.value or _PRESET.value
      print(f"preset={_PRESET.value} ({cfg.num_params / 1e6:.1f}M) rm={rm_name} backend={jax.default_backend()} ({jax.devices()[0].device_kind}) "
            f"rows={rows} ({_PROMPTS.value} prompts x {_SAMPLES.value}) prompt_len~"
            f"{_PROMPT_LEN.value} new_tokens={_NEW.value} dtype={_DTYPE.value} "
            f"scan_layers={_SCAN.value} remat={cfg.remat}")
      time_step(trainer, 1)  # compiles everything
      runs = [time_step(trainer, s) for s in range(2, 2 + _STEPS.value)]
      peer = (min(peer_generate_seconds(trainer, cfg, queries, tok, fmt, _STEPS.value))
              if _PEER.value else math.nan)
    finally:
      trainer.close()
  best = min(runs, key=lambda r: r["step"])
  print(f"{'phase':>9} {'seconds':>9} {'share':>7}")
  for phase in ("generate", "score", "prepare", "update"):
    print(f"{phase:>9} {best[phase]:>9.3f} {best[phase] / best['step']:>7.1%}")
  print(f"{'step':>9} {best['step']:>9.3f}  ({rows * _NEW.value / best['step']:.0f} generated "
        f"tokens/s over the whole step; best of {_STEPS.value})")
  if not math.isnan(peer):
    ours = min(r["generate"] for r in runs)
    print(f"transformers generate on the same {rows} rows: {peer:.3f} s, ours {ours:.3f} s "
          f"(sampling, {_NEW.value} tokens; best of {_STEPS.value} runs each)")
    print(f"ratio_generate_vs_transformers={peer / ours:.3f}")
  print(f"generate_share={best['generate'] / best['step']:.3f}")


if __name__ == "__main__":
  app.run(main)
