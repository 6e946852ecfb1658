"""One RL trainer for GRPO and PPO: sample -> score -> old/ref log-probs -> advantages -> K
epochs of shuffled mini-batch updates, all on device except the reward call.

GRPO (the paper): n samples per prompt, group-relative advantages, KL loss to the frozen
reference with the k3 estimator, no critic. PPO: GAE advantages from a critic (a ScalarHeadModel,
its own optimizer and checkpoints). Both reuse `training.trainer.make_train_step` with the loss
of `rl.losses` and run in the loop of SFT and the reward model (`training.loop.Loop`); the
rollout lives in a device-resident `RolloutBatch`, and mini-batches are gathered on device from
a permutation (no host round trip between updates).
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlaif_jax.data import formatting
from rlaif_jax.models.decoder import Decoder
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.rl import algorithms, losses, rollout as rollout_lib, rollout_buffer
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.scoring.contract import (Rollout, Scorer, Scores, require_scores,
                                        token_space_id)
from rlaif_jax.sharding import host, mesh as mesh_lib
from rlaif_jax.tokenizers.base import Tokenizer
from rlaif_jax.training import checkpointing, loop as loop_lib, metrics as metrics_lib
from rlaif_jax.training import train_state as ts, trainer as trainer_lib


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """An RL run. Batch sizes count sequences: prompts_per_step * n_samples rows per rollout."""
  algorithm: str = "grpo"  # "grpo" | "ppo"
  total_steps: int = 100
  prompts_per_step: int = 8
  n_samples: int = 4
  mini_batch_size: int = 16  # sequences per optimizer update
  epochs: int = 1
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  actor: losses.ActorLossConfig = losses.ActorLossConfig()
  advantage: rollout_lib.AdvantageConfig = rollout_lib.AdvantageConfig()
  critic_clip: float = 0.5
  seed: int = 0
  log_every: int = 1
  checkpoint_every: int = 50
  keep_checkpoints: int = 2
  ref_on_host: bool = False
  # Scanned policies: slice the layers out of the stacked weights once per rollout (faster
  # decode, one transient copy of the layer weights) or in every decode step (no copy).
  unstack_layers_for_decode: bool = True
  # Rollouts: the KV cache starts with room for this many new tokens and doubles up to
  # max_new_tokens, so early steps attend over fewer slots (Sampler(grow_cache_from=...));
  # 0 or None allocates it whole.
  grow_cache_from: int | None = 64
  # Old log-probs: False recomputes them with a forward pass of the policy over the rollout
  # (verl's default); True uses the log-probs the sampler recorded while sampling with the same
  # parameters (one forward pass fewer per step; they differ from the recomputed ones only by
  # cached-decode vs full-forward rounding: ~1e-5 in fp32, more in bf16).
  old_log_probs_from_sampler: bool = False

  def __post_init__(self):
    if self.algorithm not in ("grpo", "ppo"):
      raise ValueError(f"rl.algorithm must be 'grpo' or 'ppo', got {self.algorithm!r}")
    rows = self.prompts_per_step * self.n_samples
    if rows % self.mini_batch_size:
      raise ValueError(f"rl.mini_batch_size={self.mini_batch_size} must divide the rollout size "
                       f"prompts_per_step*n_samples={rows}")
    if self.algorithm == "grpo" and self.advantage.estimator == "gae":
      raise ValueError("GRPO uses a group estimator ('grpo' or 'dr_grpo'), not 'gae'")
    if self.algorithm == "ppo" and self.advantage.estimator != "gae":
      raise ValueError("PPO needs advantage.estimator='gae'")
    if self.advantage.estimator != "gae" and self.advantage.group_size != self.n_samples:
      # Groups are contiguous blocks of group_size rows; any other size mixes prompts.
      raise ValueError(f"rl.advantage.group_size={self.advantage.group_size} must equal "
                       f"rl.n_samples={self.n_samples} (one group per prompt)")

  @property
  def updates_per_step(self) -> int:
    return self.epochs * self.prompts_per_step * self.n_samples // self.mini_batch_size


PromptSchedule = Callable[[int], Sequence[str]]  # step -> the step's requests (pure function)
# The NaN guard's metrics: a diverged critic must not be saved either.
WATCHED = ("loss", "grad_norm", "kl", "critic_loss", "critic_grad_norm", "critic_vf_loss")


def rollout_stats(rollout: Rollout, scores: Scores, lengths: np.ndarray) -> dict[str, float]:
  """A step's reward and length metrics: reward mean/std over valid rows, the invalid share,
  response tokens and characters, the share cut at the token limit, each reward part."""
  scored = scores.values[scores.valid]
  return {"reward_mean": float(scored.mean()) if scored.size else 0.0,
          "reward_std": float(scored.std()) if scored.size else 0.0,
          "reward_invalid_frac": float(1.0 - scores.valid.mean()),
          "response_len": float(np.mean(lengths)),
          "response_chars": float(np.mean([len(t) for t in rollout.completions])),
          "truncated_frac": float(np.mean(~rollout.stopped)),
          **part_means(scores.extras, scores.valid)}


def postfix(row: dict[str, float]) -> dict[str, str]:
  """The progress bar's figures of an RL step."""
  return {"reward": f"{row['reward_mean']:.3f}", "kl": f"{row['kl']:.4f}",
          "invalid": f"{row.get('reward_invalid_frac', 0.0):.2f}",
          "tok_s": f"{row['tokens_per_sec']:.0f}"}


def part_means(extras: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, float]:
  """`reward_<name>`: the mean over valid rows of each part of a weighted-sum reward (the
  float32 extras `scoring.WeightedSum` returns under the part's name)."""
  out = {}
  for key, value in extras.items():
    if "." not in key and np.asarray(value).dtype == np.float32 and valid.any():
      out[f"reward_{key}"] = float(np.asarray(value)[valid].mean())
  return out


class RLTrainer:
  """Trains `policy` against `reward` (a `scoring.Scorer`), writing metrics/checkpoints to
  `workdir`."""

  def __init__(self, policy: Decoder, tokenizer: Tokenizer, reward: Scorer,
               prompts: PromptSchedule, cfg: RLConfig, fmt: formatting.FormatConfig, mesh: Mesh,
               workdir: str | pathlib.Path, actor_optimizer, actor_schedule=None,
               critic: ScalarHeadModel | None = None, critic_optimizer=None,
               meta: dict[str, Any] | None = None):
    if cfg.algorithm == "ppo" and (critic is None or critic_optimizer is None):
      raise ValueError("PPO needs a critic model and its optimizer")
    self.cfg, self.tok, self.reward, self.prompts, self.fmt = cfg, tokenizer, reward, prompts, fmt
    self.mesh, self.workdir = mesh, pathlib.Path(workdir)
    self.meta = dict(meta or {})
    self.token_space = token_space_id(tokenizer)  # lets a same-tokenizer RM score the ids
    # (query, completion, reward) of the latest rollout, reward NaN for an item the source could
    # not score; empty until a step runs (a rerun of a finished run runs none).
    self.last_texts: list[tuple[str, str, float]] = []
    self.actor_ckpt = checkpointing.Checkpointer(self.workdir / checkpointing.CHECKPOINT_DIR,
                                                 cfg.keep_checkpoints)
    self.critic_ckpt = (checkpointing.Checkpointer(self.workdir / "critic_checkpoints",
                                                   cfg.keep_checkpoints) if critic else None)
    self.writer = metrics_lib.MetricWriter(self.workdir)
    self.sampler = Sampler(policy, tokenizer, mesh=mesh,
                           unstack_layers=cfg.unstack_layers_for_decode,
                           grow_cache_from=cfg.grow_cache_from)
    self.actor_opt = actor_optimizer
    actor_step, critic_step = self._resume_steps()
    self.actor = self._restore_or_create(policy, actor_optimizer, self.actor_ckpt, actor_step)
    # The reference is the policy we start from (never the resumed one): exact resume.
    ref = nnx.state(policy, nnx.Param)
    self.ref_params = host.offload(ref) if cfg.ref_on_host else jax.tree.map(jnp.copy, ref)
    self.critic = (self._restore_or_create(critic, critic_optimizer, self.critic_ckpt,
                                           critic_step)
                   if critic is not None else None)
    # Dr. GRPO's constant normaliser is the response width, not the [B, P+R] row width.
    actor_cfg = cfg.actor
    if actor_cfg.loss_scale_factor is None:
      actor_cfg = dataclasses.replace(actor_cfg, loss_scale_factor=float(cfg.max_new_tokens))
    self.actor_loss_cfg = actor_cfg
    actor_loss = lambda model, batch, rng: losses.actor_loss(model, batch, actor_cfg)
    self.actor_step = trainer_lib.make_train_step(
        actor_loss, actor_optimizer, actor_schedule, mesh=mesh,
        shardings=ts.state_shardings(self.actor, mesh, actor_optimizer))
    if self.critic is not None:
      critic_loss = lambda model, batch, rng: losses.critic_loss(
          model, batch, cfg.critic_clip, actor_cfg.agg_mode, actor_cfg.loss_scale_factor)
      self.critic_step = trainer_lib.make_train_step(
          critic_loss, critic_optimizer, mesh=mesh,
          shardings=ts.state_shardings(self.critic, mesh, critic_optimizer))
    self.prepare = rollout_lib.make_prepare_fn(
        self.actor.graphdef, self.critic.graphdef if self.critic is not None else None,
        cfg.advantage)
    self._minibatch = jax.jit(rollout_buffer.minibatch, static_argnums=(3,))

  def _resume_steps(self) -> tuple[int | None, int | None]:
    """(actor, critic) checkpoint steps to resume from: the actor's latest, or with a critic
    (PPO) the latest RL step both saved. A kill between the two saves leaves the critic one
    step behind; resuming each from its own latest would pair a stale critic with the actor."""
    if self.critic_ckpt is None:
      return self.actor_ckpt.latest_step(), None

    def by_rl_step(ckpt) -> dict[int, int]:
      return {int(ckpt.restore_meta(s)["rl_step"]): s for s in ckpt.all_steps()}
    actor, critic = by_rl_step(self.actor_ckpt), by_rl_step(self.critic_ckpt)
    if not actor:
      return None, None
    common = actor.keys() & critic.keys()
    if not common:
      raise RuntimeError(
          f"{self.workdir}: the actor checkpoints (RL steps {sorted(actor)}) and the critic "
          f"checkpoints (RL steps {sorted(critic)}) share no step to resume from; move both "
          "checkpoint folders away to start over")
    return actor[max(common)], critic[max(common)]

  def _restore_or_create(self, model, optimizer, ckpt, step: int | None) -> ts.TrainState:
    if step is None:
      return ts.create_train_state(model, optimizer, self.mesh, self.cfg.seed)
    abstract = ts.abstract_train_state(nnx.eval_shape(lambda: model), optimizer, self.mesh)
    state, _ = ckpt.restore(abstract, step)
    return state

  @property
  def step(self) -> int:
    return int(jax.device_get(self.actor.step)) // self.cfg.updates_per_step

  # -- one RL step ---------------------------------------------------------------------------

  def rollout(self, step: int) -> tuple[rollout_buffer.RolloutBatch, dict[str, float]]:
    cfg = self.cfg
    queries = list(self.prompts(step))
    if len(queries) != cfg.prompts_per_step:
      raise ValueError(f"prompt schedule gave {len(queries)} prompts for step {step}; expected "
                       f"rl.prompts_per_step={cfg.prompts_per_step}")
    t0 = time.perf_counter()
    enc = formatting.encode_prompts(self.tok, queries, self.fmt)
    key = jax.random.fold_in(jax.random.key(cfg.seed), step)
    sampling = SamplingParams(cfg.temperature, cfg.top_k, cfg.top_p)
    out = self.sampler.generate_ids(self.actor.params, enc["tokens"],
                                    enc["attention_mask"].astype(bool), cfg.max_new_tokens,
                                    sampling, key, n=cfg.n_samples).to_numpy()
    lengths = out.lengths
    texts = [self.tok.decode(out.tokens[i, :lengths[i]]) for i in range(len(lengths))]
    t1 = time.perf_counter()
    seq, ids = self._device_sequences(enc, out)
    old_lp, ref_lp = self._log_probs(seq, enc, out)
    t2 = time.perf_counter()
    rep_queries = [q for q in queries for _ in range(cfg.n_samples)]
    rollout = Rollout(rep_queries, texts, np.asarray(out.stopped, bool), step=step,
                      columns={"query": rep_queries,
                               "group": np.repeat(np.arange(len(queries)), cfg.n_samples)},
                      token_space=self.token_space, **ids)
    scores = require_scores(getattr(self.reward, "name", "reward"), self.reward.score(rollout),
                            rollout.size)
    # Items the scorer could not score (a failed judge call) carry a placeholder reward, not a
    # verdict: they are masked out of the update and the group statistics, never trained on.
    rewards, valid = scores.values, scores.valid
    t3 = time.perf_counter()
    critic_params = self.critic.params if self.critic is not None else None
    row_sharding = mesh_lib.data_sharding(self.mesh, 1)
    with jax.set_mesh(self.mesh):
      batch = self.prepare.finish(old_lp, ref_lp, critic_params, seq,
                                  jax.device_put(rewards, row_sharding),
                                  None if valid.all() else jax.device_put(valid, row_sharding))
    stats = {**rollout_stats(rollout, scores, lengths), "t_generate": t1 - t0,
             "t_score": t3 - t2}
    self.last_texts = list(zip(rep_queries, texts, np.where(valid, rewards, np.nan).tolist()))
    return batch, stats

  def _device_sequences(self, enc: dict, out) -> tuple[dict, dict]:
    """(seq, ids) on the devices, rows over the data axes: seq the [B, P+R] rows of
    `rollout_buffer.assemble_sequences`; ids the scorers' view, the policy's prompt ids
    [B, P] and the response-only ids [B, R] with their masks (`Rollout` fields)."""
    n = self.cfg.n_samples
    prompts, prompt_mask = np.repeat(enc["tokens"], n, 0), np.repeat(enc["attention_mask"], n, 0)
    seq = rollout_buffer.assemble_sequences(prompts, prompt_mask, out.tokens,
                                            np.asarray(out.response_mask))
    ids = dict(prompt_ids=prompts.astype(np.int32), prompt_mask=prompt_mask.astype(bool),
               completion_ids=np.asarray(out.tokens, np.int32),
               completion_mask=np.asarray(out.response_mask).astype(bool))
    return jax.tree.map(
        lambda x: jax.device_put(x, mesh_lib.data_sharding(self.mesh, np.ndim(x))), (seq, ids))

  def _log_probs(self, seq: dict, enc: dict, out) -> tuple[jax.Array, jax.Array]:
    """(old, ref) log-probs f32[B, P+R], dispatched before scoring: they need no reward, so the
    device computes them while the host scores (a remote judge, the reward model's tokenizer)."""
    ref = self.ref_params
    if self.cfg.ref_on_host:
      ref = host.reload(ref)
    sampler_lp = None
    if self.cfg.old_log_probs_from_sampler:
      sampler_lp = jax.device_put(
          rollout_lib.sampler_log_probs_on_sequence(enc["tokens"].shape[1], out.logprobs),
          mesh_lib.data_sharding(self.mesh, 2))
    with jax.set_mesh(self.mesh):
      old_lp, ref_lp = self.prepare.log_probs(self.actor.params, ref, seq, sampler_lp)
    if self.cfg.ref_on_host:  # the reference leaves the device before a reward model arrives
      jax.block_until_ready((old_lp, ref_lp))
    return old_lp, ref_lp

  def update(self, batch: rollout_buffer.RolloutBatch, step: int) -> dict[str, float]:
    cfg = self.cfg
    rows = batch.size
    per_epoch = rows // cfg.mini_batch_size
    outs = []
    for epoch in range(cfg.epochs):
      perm = jax.random.permutation(
          jax.random.fold_in(jax.random.key(cfg.seed + 1), step * cfg.epochs + epoch), rows)
      for i in range(per_epoch):
        with jax.set_mesh(self.mesh):
          mb = self._minibatch(batch, perm, jnp.int32(i), cfg.mini_batch_size)
        if self.critic is not None:
          self.critic, c_out = self.critic_step(self.critic, mb)
          outs.append({f"critic_{k}": v for k, v in c_out.items()})
        self.actor, a_out = self.actor_step(self.actor, mb)
        outs.append(a_out)
    merged: dict[str, list[float]] = {}
    for o in host.to_host(outs):
      for k, v in o.items():
        merged.setdefault(k, []).append(float(v))
    return {k: float(np.mean(v)) for k, v in merged.items()}

  def _kl_to_ref(self, batch) -> float:
    kl = algorithms.kl_penalty(batch.old_log_probs, batch.ref_log_probs, self.cfg.actor.kl_kind)
    return float(host.to_host(algorithms.masked_mean(kl, batch.response_mask)))

  # -- the loop ------------------------------------------------------------------------------

  def train(self) -> dict[str, float]:
    """Runs RL steps from the resumed one to rl.total_steps in the shared loop (metrics rows,
    progress bar, NaN guard, checkpoints); returns the last step's row."""
    cfg = self.cfg
    loop = loop_lib.Loop(
        what="RL", desc=cfg.algorithm, total_steps=cfg.total_steps, checkpointer=self.actor_ckpt,
        writer=self.writer, save=self.save, close=self.close, watched=WATCHED, postfix=postfix,
        log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every)
    return loop.run(self.step, self.train_step)

  def train_step(self, step: int) -> tuple[dict[str, float], None]:
    """One RL step: rollout, scoring, updates; its row carries its own tokens_per_sec (response
    tokens over generate + score + update time)."""
    batch, stats = self.rollout(step)
    t0 = time.perf_counter()
    upd = self.update(batch, step)
    t_update = time.perf_counter() - t0
    row = {**stats, **{k: v for k, v in upd.items() if k != "loss_weight"},
           "kl": self._kl_to_ref(batch), "t_update": t_update}
    row["tokens_per_sec"] = float(host.to_host(batch.response_mask).sum()) / max(
        stats["t_generate"] + stats["t_score"] + t_update, 1e-9)
    return row, None

  def save(self, step: int) -> None:
    meta = {**self.meta, "rl_step": step, "kind": "policy"}
    self.actor_ckpt.save(self.actor, meta)
    if self.critic is not None:
      self.critic_ckpt.save(self.critic, {"rl_step": step, "kind": "critic"})

  def policy(self) -> Decoder:
    return self.actor.model()

  def close(self) -> None:
    for c in (self.actor_ckpt, self.critic_ckpt):
      if c is not None:
        c.close()
    self.actor_ckpt = self.critic_ckpt = None
    self.writer.close()
