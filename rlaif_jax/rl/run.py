"""`run_rl`: wires the paper's RL stage from a config — policy from an SFT run (trained first if
absent), reward sources (reward model, LLM judge, offline job, Python callables), GRPO prompts
from grpo_data/train.parquet — and runs the RLTrainer, then exports the policy for inference.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
from flax import nnx

from rlaif_jax import storage
from rlaif_jax.data import greetings
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.rl import losses, rollout as rollout_lib
from rlaif_jax.rl.reward_sources import (CallableReward, OfflineFileReward, OnMainProcess,
                                         RewardSource, WeightedSum)
from rlaif_jax.rl.trainer import RLConfig, RLTrainer
from rlaif_jax.sharding import host, mesh as mesh_lib
from rlaif_jax.tokenizers import load_tokenizer
from rlaif_jax.training import checkpointing, optim, sft


ConfigResolver = Callable[[str], ml_collections.ConfigDict]


def stage_config(spec: Any, resolve: ConfigResolver | None, field: str
                 ) -> ml_collections.ConfigDict:
  """A sub-stage config: a ConfigDict as is, or a config name (e.g. "sft_tiny_cpu") turned into
  one by `resolve` (the entry point's, `launch.common.stage_config`: the library never imports
  configs/)."""
  if isinstance(spec, ml_collections.ConfigDict):
    return spec
  if resolve is None:
    raise ValueError(f"config.{field}={spec!r} names a config module, but no resolver was passed "
                     "(run through launch.rl / launch.pipeline, or pass a ConfigDict)")
  return resolve(spec)


def has_checkpoint(workdir: str | os.PathLike) -> bool:
  ckpt_dir = pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR
  if not ckpt_dir.exists():
    return False
  ckpt = checkpointing.Checkpointer(ckpt_dir, async_save=False)
  try:
    return ckpt.latest_step() is not None
  finally:
    ckpt.close()


def ensure_sft(config: Any, data_dir: pathlib.Path, resolve: ConfigResolver | None = None
               ) -> pathlib.Path:
  """The SFT run directory, trained with config.policy.sft_config when it has no checkpoint."""
  sft_dir = pathlib.Path(config.policy.sft_workdir)
  # Process 0's view decides for all (a host may not see another's files yet).
  if not host.agreed_flag((sft_dir / checkpointing.EXPORT_DIR / "config.json").exists()):
    print(f"no finished SFT run in {sft_dir}: training it first")
    sft.run_sft(stage_config(config.policy.sft_config, resolve, "policy.sft_config"), sft_dir,
                data_dir)
  return sft_dir


def ensure_reward_model(rm_cfg: Any, sft_dir: pathlib.Path, data_dir: pathlib.Path,
                        resolve: ConfigResolver | None = None) -> pathlib.Path:
  from rlaif_jax.training import reward_model
  rm_dir = pathlib.Path(rm_cfg.workdir)
  if not host.agreed_flag((rm_dir / "rm_report.json").exists()):
    print(f"no finished reward model in {rm_dir}: training it first (trunk from {sft_dir})")
    cfg = stage_config(rm_cfg.config, resolve, "reward.rm.config")
    with cfg.unlocked():
      cfg.init.sft_workdir = str(sft_dir)
    reward_model.run_train_rm(cfg, rm_dir, data_dir)
  return rm_dir


def _import_callable(path: str) -> Callable:
  module, _, name = path.partition(":")
  if not name:
    raise ValueError(f"reward callable {path!r} must look like 'package.module:function'")
  return getattr(importlib.import_module(module), name)


def build_reward(rcfg: Any, workdir: pathlib.Path, sft_dir: pathlib.Path,
                 data_dir: pathlib.Path, mesh, resolve: ConfigResolver | None = None
                 ) -> RewardSource:
  """config.reward.sources: a comma list of kind[:weight] with kinds rm, judge, offline,
  callable (config.reward.callable = 'pkg.mod:fn'); several are summed with their weights.

  reward.judge.fallback / reward.offline.fallback (default 0.0): the placeholder reward of an
  item the judge or the offline job failed to score. Such items are marked invalid
  (`last_valid_mask`) and masked out of the RL update, not scored with the fallback; it only
  shows in the sources' raw outputs."""
  parts = []
  for item in str(rcfg.sources).split(","):
    kind, _, weight = item.strip().partition(":")
    weight = float(weight) if weight else 1.0
    if kind == "rm":
      from rlaif_jax.training import reward_model
      rm_dir = ensure_reward_model(rcfg.rm, sft_dir, data_dir, resolve)
      source = reward_model.load_reward_model(rm_dir, mesh, batch_size=rcfg.rm.batch_size,
                                              debias=rcfg.rm.debias,
                                              on_host=rcfg.rm.get("on_host", False))
    elif kind == "judge":
      from rlaif_jax.judging.backends import make_backend
      from rlaif_jax.judging.reward import JudgeReward
      from rlaif_jax.judging.backends import SamplingParams
      j = rcfg.judge
      # constrained_json: the server implements response_format json_schema (verdict schema).
      backend = make_backend("openai", base_url=j.base_url, model=j.model,
                             api_key_env=j.api_key_env, concurrency=j.concurrency,
                             structured_output=bool(j.get("constrained_json", False)))
      source = JudgeReward(backend, j.principles, fallback=float(j.get("fallback", 0.0)),
                           max_attempts=int(j.get("max_attempts", 3)),
                           sampling=SamplingParams(temperature=float(j.get("temperature", 0.0)),
                                                   max_tokens=int(j.get("max_tokens", 512))))
    elif kind == "offline":
      source = OfflineFileReward(workdir / "exchange", timeout_s=rcfg.offline.timeout_s,
                                 fallback=float(rcfg.offline.get("fallback", 0.0)))
    elif kind == "callable":
      source = CallableReward(_import_callable(rcfg.callable))
    else:
      raise ValueError(f"config.reward.sources: unknown kind {kind!r} (rm, judge, offline, "
                       "callable)")
    if kind != "rm":  # host-side: asked once, by process 0, in a multi-host run
      source = OnMainProcess(source)
    parts.append((kind, source, weight))
  return parts[0][1] if len(parts) == 1 and parts[0][2] == 1.0 else WeightedSum(parts)


def cut_responses_notes(reward: RewardSource, max_new_tokens: int) -> list[str]:
  """Known limit, said aloud: a reward model encodes every completion as a finished turn (its
  end-of-turn id appended) unless the text exceeds its max_response_len - 1 tokens, so a
  completion cut at rl.max_new_tokens below that is scored as if it had ended there."""
  parts = [s for _, s, _ in reward.sources] if isinstance(reward, WeightedSum) else [reward]
  notes = []
  for source in parts:
    fmt = getattr(source, "fmt", None)
    if fmt is not None and max_new_tokens < fmt.max_response_len - 1:
      notes.append(f"rl.max_new_tokens={max_new_tokens} is below the reward model's "
                   f"max_response_len - 1 = {fmt.max_response_len - 1}: a completion cut at the "
                   "token limit is scored as a finished greeting (the rollout's truncated_frac "
                   "says how often)")
  return notes


def prompt_schedule(queries: Sequence[str], per_step: int, seed: int
                    ) -> Callable[[int], list[str]]:
  """step (1-based) -> its prompts: epoch-wise permutations drawn from (seed, epoch), so the
  prompts of a step are a pure function of the step (exact resume)."""
  n = len(queries)
  if n < per_step:
    raise ValueError(f"{n} prompts cannot fill a step of {per_step}")
  per_epoch = n // per_step

  def prompts(step: int) -> list[str]:
    epoch, b = divmod(step - 1, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [queries[i] for i in order[b * per_step:(b + 1) * per_step]]
  return prompts


def rl_config(config: Any) -> RLConfig:
  r = config.rl
  actor = losses.ActorLossConfig(**dict(r.actor))
  adv = rollout_lib.AdvantageConfig(group_size=r.n_samples, **dict(r.advantage))
  fields = {f.name for f in dataclasses.fields(RLConfig)} - {"actor", "advantage"}
  return RLConfig(actor=actor, advantage=adv, **{k: r[k] for k in fields if k in r})


def run_rl(config: Any, workdir: str | os.PathLike, data_dir: str | os.PathLike,
           resolve_config: ConfigResolver | None = None) -> dict[str, Any]:
  """Runs (or resumes) GRPO/PPO in `workdir`; writes metrics.jsonl, checkpoints, export/.
  `resolve_config` turns the config names in policy.sft_config / reward.rm.config into
  ConfigDicts when a missing SFT run or reward model must be trained first."""
  t0 = time.perf_counter()
  workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = mesh_lib.mesh_from_config(config)
  sft_dir = ensure_sft(config, data_dir, resolve_config)
  sft_meta = json.loads((sft_dir / checkpointing.EXPORT_DIR / "model_config.json").read_text())
  tok_path = _sft_tokenizer(sft_dir)
  tok = load_tokenizer(tok_path)
  options = sft.compute_options(config.model)  # remat, remat_policy, attention_impl
  policy = checkpointing.load_model_from_workdir(sft_dir, mesh, **options)
  reward = build_reward(config.reward, workdir, sft_dir, data_dir, mesh, resolve_config)
  cfg = rl_config(config)
  for note in cut_responses_notes(reward, cfg.max_new_tokens):
    print(f"note: {note}", flush=True)
  fmt = sft.format_config(config.format)
  queries = [p.query for p in greetings.load_rl_prompts(data_dir, "train")]
  if config.data.get("max_prompts"):
    queries = queries[:config.data.max_prompts]
  total_updates = cfg.total_steps * cfg.updates_per_step
  actor_opt, actor_sched = optim.optimizer_from_config(config.optim, total_updates)
  critic = critic_opt = None
  if cfg.algorithm == "ppo":
    trunk = checkpointing.load_model_from_workdir(sft_dir, mesh, **options)
    critic = ScalarHeadModel(trunk, rngs=nnx.Rngs(params=config.rl.seed + 7))
    critic_opt, _ = optim.optimizer_from_config(config.critic_optim, total_updates)
  meta = {"model_config": sft_meta, "tokenizer": str(tok_path), "sft_workdir": str(sft_dir),
          "config": json.loads(config.to_json())}
  trainer = RLTrainer(policy, tok, reward, prompt_schedule(queries, cfg.prompts_per_step,
                                                           cfg.seed), cfg, fmt, mesh, workdir,
                      actor_opt, actor_sched, critic, critic_opt, meta)
  try:
    print(f"{cfg.algorithm}: {cfg.total_steps} steps x {cfg.prompts_per_step} prompts x "
          f"{cfg.n_samples} samples; {len(queries)} prompts; reward {config.reward.sources}")
    last = trainer.train()
    model = trainer.policy()
    samples = trainer.last_texts[:8]
  finally:
    trainer.close()
  export = checkpointing.export_for_inference(workdir, model, tok_path, config.export.dtype, mesh)
  if host.is_main():
    text = write_samples(workdir, samples)
    print(f"last rollout samples:\n{text}")
  wall = time.perf_counter() - t0
  print(f"{cfg.algorithm} done in {wall:.0f}s; export {export}")
  return {"last": last, "export": str(export), "wall_s": wall}


def write_samples(workdir: pathlib.Path, samples: Sequence[tuple[str, str, float]]) -> str:
  """Writes WORKDIR/samples.txt from the last rollout's (query, completion, reward) and returns
  its text (atomically: a kill mid-write leaves the old file or none). A rerun of a finished run
  rolls out nothing: it keeps the samples.txt of the run that did the last step, or writes a
  line saying none were drawn."""
  path = workdir / "samples.txt"
  if not samples:
    if path.exists():
      return path.read_text(encoding="utf-8").rstrip("\n")
    text = "(no rollout in this invocation: the run had already reached rl.total_steps)"
  else:
    text = "\n".join(f"[{q}] ({r:.3f}) -> {c}" for q, c, r in samples)
  storage.write_text(str(path), text + "\n")
  return text


def _sft_tokenizer(sft_dir: pathlib.Path) -> pathlib.Path:
  export = sft_dir / checkpointing.EXPORT_DIR
  return export / "tokenizer.model" if (export / "tokenizer.model").exists() else export
