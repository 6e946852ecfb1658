"""Turning sampled responses and their rewards into a device-resident RolloutBatch.

One jitted function computes, for the whole batch at once: old log-probs (the policy that
sampled), reference log-probs (the frozen initial policy), critic values (PPO), token-level
rewards, and advantages (GRPO: group-relative on sequence rewards; PPO: GAE on token rewards).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.rl import algorithms, losses
from rlaif_jax.rl.rollout_buffer import RolloutBatch


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
  estimator: str = "grpo"  # "grpo" | "dr_grpo" | "gae"
  group_size: int = 4
  gamma: float = 1.0
  lam: float = 1.0
  kl_in_reward_coef: float = 0.0  # PPO-style KL penalty folded into token rewards (paper: 0)
  kl_kind: str = "low_var_kl"
  logits_chunk: int = 256


@dataclasses.dataclass(frozen=True)
class Prepare:
  """Turns a scored rollout into a RolloutBatch in two jitted stages (`make_prepare_fn`).

  log_probs(policy_params, ref_params, seq, sampler_log_probs=None) -> (old, ref) f32[B, T]
    needs no reward: the trainer dispatches it before scoring, so the device computes the
    log-probs while the host waits for the reward (a remote LLM judge, the tokenizer).
    sampler_log_probs: None recomputes the old log-probs with a forward pass of the policy;
    else f32[B, T] aligned with seq["tokens"] (`sampler_log_probs_on_sequence`), the log-probs
    the sampler recorded while it sampled with the same parameters, used as they are (one
    forward pass fewer; equal up to the cached-decode vs full-forward rounding).
  finish(old, ref, critic_params|None, seq, seq_rewards, valid=None) -> RolloutBatch: token
    rewards, critic values (PPO) and advantages. valid: None (every row scored) or bool[B], False
    for rows the reward could not score (`scoring.Scores.valid`): their response
    mask rows are zeroed (no gradient, no critic target, no token reward) and the GRPO group
    statistics use valid rows only (`algorithms.group_relative_advantages(valid=)`). None keeps the unmasked path.
  Calling the object runs both. seq: dict from `rollout_buffer.assemble_sequences` (device
  arrays); seq_rewards f32[B].
  """
  log_probs: Callable[..., tuple[jax.Array, jax.Array]]
  finish: Callable[..., RolloutBatch]

  def __call__(self, policy_params, ref_params, critic_params, seq, seq_rewards,
               sampler_log_probs=None, valid=None) -> RolloutBatch:
    old_lp, ref_lp = self.log_probs(policy_params, ref_params, seq, sampler_log_probs)
    return self.finish(old_lp, ref_lp, critic_params, seq, seq_rewards, valid)


_NORMALIZE_STD = {"grpo": True, "dr_grpo": False}


def make_prepare_fn(policy_graphdef: nnx.GraphDef, critic_graphdef: nnx.GraphDef | None,
                    cfg: AdvantageConfig) -> Prepare:
  """The two jitted stages of `Prepare` for this policy (and critic) graph."""

  def forward_log_probs(graphdef, params, seq):
    model = nnx.merge(graphdef, params)
    lp, _ = losses.token_log_probs_and_entropy(model, seq["tokens"], seq["positions"],
                                               seq["attention_mask"], cfg.logits_chunk,
                                               with_entropy=False)
    return lp

  @jax.jit
  def log_probs(policy_params, ref_params, seq, sampler_log_probs=None):
    mask = seq["response_mask"]
    if sampler_log_probs is None:
      old_lp = forward_log_probs(policy_graphdef, policy_params, seq) * mask
    else:
      old_lp = sampler_log_probs * mask
    return old_lp, forward_log_probs(policy_graphdef, ref_params, seq) * mask

  @jax.jit
  def finish(old_lp, ref_lp, critic_params, seq, seq_rewards, valid=None) -> RolloutBatch:
    mask = seq["response_mask"]
    if valid is not None:  # unscored rows: no gradient, no token reward, no critic target
      mask = mask * jnp.asarray(valid)[:, None].astype(mask.dtype)
    token_rewards = algorithms.last_token_rewards(seq_rewards, mask)
    if cfg.kl_in_reward_coef:
      token_rewards = token_rewards - cfg.kl_in_reward_coef * algorithms.kl_penalty(
          old_lp, ref_lp, cfg.kl_kind) * mask
    if cfg.estimator == "gae":
      if critic_graphdef is None:
        raise ValueError("the 'gae' estimator needs a critic")
      critic = nnx.merge(critic_graphdef, critic_params)
      values = losses.critic_values(critic, seq["tokens"], seq["positions"],
                                    seq["attention_mask"]) * mask
      advantages, returns = algorithms.gae_advantages(token_rewards, values, mask, cfg.gamma,
                                                      cfg.lam)
    else:
      if valid is None:
        estimator = algorithms.get_advantage_estimator(cfg.estimator)
        seq_adv = estimator(seq_rewards, cfg.group_size)
      elif cfg.estimator in _NORMALIZE_STD:
        seq_adv = algorithms.group_relative_advantages(
            seq_rewards, cfg.group_size, normalize_std=_NORMALIZE_STD[cfg.estimator], valid=valid)
      else:
        raise ValueError(f"advantage estimator {cfg.estimator!r} cannot mask unscored rows")
      advantages = algorithms.sequence_to_token_advantages(seq_adv, mask)
      values = returns = jnp.zeros_like(mask)
    return RolloutBatch(tokens=seq["tokens"], positions=seq["positions"],
                        attention_mask=seq["attention_mask"], response_mask=mask,
                        old_log_probs=old_lp, ref_log_probs=ref_lp, values=values,
                        token_rewards=token_rewards, advantages=advantages * mask,
                        returns=returns * mask, sequence_rewards=seq_rewards)

  return Prepare(log_probs=log_probs, finish=finish)


def sampler_log_probs_on_sequence(prompt_len: int, response_log_probs) -> jax.Array:
  """The sampler's f32[B, R] response log-probs placed on the [B, P + R] sequence of
  `rollout_buffer.assemble_sequences` (zeros over the prompt)."""
  lp = jnp.asarray(response_log_probs, jnp.float32)
  return jnp.pad(lp, ((0, 0), (prompt_len, 0)))
