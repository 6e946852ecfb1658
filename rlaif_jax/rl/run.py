"""`run_rl`: wires the paper's RL stage from a config — policy from an SFT run (trained first if
absent), the reward (a weighted sum of scorers: reward model, LLM judge, curator, length,
offline job, Python callables; `scoring.config`), GRPO prompts from grpo_data/train.parquet — and
runs the RLTrainer, then exports the policy for inference.

Config shape: `config.rl` (algorithm and batch: `RLConfig` minus the loop fields), `config.loop`
(total_steps, log_every, checkpoint_every, keep_checkpoints: as SFT and RM), `config.reward`
(`use` + one block per scorer). Unknown keys are refused, naming them.
"""
from __future__ import annotations

import dataclasses
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
from rlaif_jax.judging import scorers as scorers_lib
from rlaif_jax.rl import losses, rollout as rollout_lib
from rlaif_jax.rl.trainer import RLConfig, RLTrainer
from rlaif_jax.scoring import config as scoring_config
from rlaif_jax.scoring.contract import Scorer
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


def ensure_reward_model(rm_cfg: scoring_config.RewardModelConfig, sft_dir: pathlib.Path,
                        data_dir: pathlib.Path, resolve: ConfigResolver | None = None
                        ) -> pathlib.Path:
  """rm_cfg.workdir, where the reward model is trained first (config `rm_cfg.config`, trunk
  from `sft_dir`) when it holds no finished run."""
  from rlaif_jax.training import reward_model
  if not rm_cfg.workdir:
    raise scoring_config.ScorerConfigError(f"{rm_cfg.where}.workdir is not set")
  rm_dir = pathlib.Path(rm_cfg.workdir)
  if not host.agreed_flag((rm_dir / "rm_report.json").exists()):
    print(f"no finished reward model in {rm_dir}: training it first (trunk from {sft_dir})")
    if rm_cfg.config is None:
      raise scoring_config.ScorerConfigError(
          f"{rm_cfg.where}: {rm_dir} holds no reward model and config (the RM stage config to "
          "train it with) is not set")
    cfg = stage_config(rm_cfg.config, resolve, f"{rm_cfg.where}.config")
    with cfg.unlocked():
      cfg.init.sft_workdir = str(sft_dir)
    reward_model.run_train_rm(cfg, rm_dir, data_dir)
  return rm_dir


def build_reward(reward_cfg: Any, workdir: pathlib.Path, sft_dir: pathlib.Path,
                 data_dir: pathlib.Path, mesh, resolve: ConfigResolver | None = None) -> Scorer:
  """The RL reward of `config.reward` (`scoring.config.reward_config`): the weighted sum of the
  scorers named in `reward.use`; a reward model missing from its workdir is trained first.

  A row some scorer could not score (a failed judge call, an offline `error` line) is not
  valid: masked out of the RL update, never trained on with the scorer's `fallback` value."""
  parsed = scoring_config.reward_config(reward_cfg)
  resolved = []
  for c in parsed.scorers:
    if isinstance(c, scoring_config.RewardModelConfig):
      c = scorers_lib.with_workdir(c, str(ensure_reward_model(c, sft_dir, data_dir, resolve)))
    resolved.append(c)
  return scorers_lib.build_reward(scoring_config.RewardConfig(tuple(resolved)), mesh=mesh,
                                  workdir=workdir)


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


LOOP_FIELDS = ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints")


def strict_fields(cls: type, block: Any, where: str, exclude: Sequence[str] = ()
                  ) -> dict[str, Any]:
  """block's keys as constructor arguments of dataclass `cls`; ValueError naming the keys that
  are not fields of `cls` (or are excluded: they belong elsewhere)."""
  names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
  keys = list(block.keys())
  unknown = sorted(k for k in keys if k not in names)
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
  return {k: block[k] for k in keys}


def rl_config(config: Any) -> RLConfig:
  """`config.rl` (+ rl.actor, rl.advantage) and `config.loop` as an RLConfig; unknown keys
  (e.g. a loop field left in config.rl) are refused, naming them."""
  r = config.rl
  actor = losses.ActorLossConfig(**strict_fields(losses.ActorLossConfig, r.actor,
                                                 "config.rl.actor"))
  adv = rollout_lib.AdvantageConfig(group_size=r.n_samples, **strict_fields(
      rollout_lib.AdvantageConfig, r.advantage, "config.rl.advantage", exclude=("group_size",)))
  rl = strict_fields(RLConfig, r, "config.rl", exclude=LOOP_FIELDS)
  loop = strict_fields(RLConfig, config.loop, "config.loop",
                       exclude=[f.name for f in dataclasses.fields(RLConfig)
                                if f.name not in LOOP_FIELDS])
  return RLConfig(**{**rl, "actor": actor, "advantage": adv, **loop})


def run_rl(config: Any, workdir: str | os.PathLike, data_dir: str | os.PathLike,
           resolve_config: ConfigResolver | None = None) -> dict[str, Any]:
  """Runs (or resumes) GRPO/PPO in `workdir`; writes metrics.jsonl, checkpoints, export/.
  `resolve_config` turns the config names in policy.sft_config / reward.rm.config into
  ConfigDicts when a missing SFT run or reward model must be trained first."""
  t0 = time.perf_counter()
  workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  cfg = rl_config(config)  # config errors before anything is trained or loaded
  scoring_config.reward_config(config.reward)
  mesh = mesh_lib.mesh_from_config(config)
  sft_dir = ensure_sft(config, data_dir, resolve_config)
  sft_meta = json.loads((sft_dir / checkpointing.EXPORT_DIR / "model_config.json").read_text())
  tok_path = _sft_tokenizer(sft_dir)
  tok = load_tokenizer(tok_path)
  options = sft.compute_options(config.model)  # remat, remat_policy, attention_impl
  policy = checkpointing.load_model_from_workdir(sft_dir, mesh, **options)
  reward = build_reward(config.reward, workdir, sft_dir, data_dir, mesh, resolve_config)
  reward_text = " + ".join(f"{c.weight:g}*{c.name}"
                           for c in scoring_config.reward_config(config.reward).scorers)
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
          f"{cfg.n_samples} samples; {len(queries)} prompts; reward {reward_text}")
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
    text = "(no rollout in this invocation: the run had already reached loop.total_steps)"
  else:
    text = "\n".join(f"[{q}] ({r:.3f}) -> {c}" for q, c, r in samples)
  storage.write_text(str(path), text + "\n")
  return text


def _sft_tokenizer(sft_dir: pathlib.Path) -> pathlib.Path:
  export = sft_dir / checkpointing.EXPORT_DIR
  return export / "tokenizer.model" if (export / "tokenizer.model").exists() else export
