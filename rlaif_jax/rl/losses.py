"""RL losses of a model on a RolloutBatch: the actor (GRPO/PPO) and the critic (PPO).

Per-token quantities are aligned with tokens (index t is about token t): the model's output at
position t-1 predicts token t, so we compute at positions [0, T-1) and shift right by one.
Logits are computed in chunks along the sequence under `jax.checkpoint`, so a [B, T, V] fp32
tensor never exists at once (V is 152k for Qwen2.5).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlaif_jax.models import chunked_head
from rlaif_jax.models.decoder import Decoder
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.rl import algorithms
from rlaif_jax.rl.rollout_buffer import RolloutBatch


@dataclasses.dataclass(frozen=True)
class ActorLossConfig:
  clip_ratio: float = 0.2
  clip_ratio_high: float | None = None
  clip_ratio_c: float = 3.0
  kl_coef: float = 0.001
  kl_kind: str = "low_var_kl"
  entropy_coef: float = 0.0
  agg_mode: str = "token-mean"
  # "seq-mean-token-sum-norm" (Dr. GRPO) divides by this constant; the losses see [B, P+R] rows
  # whose prompt width P varies per step, so RLTrainer sets it to rl.max_new_tokens (verl's
  # response length) when left None.
  loss_scale_factor: float | None = None
  logits_chunk: int = 256


def _check_scale_factor(agg_mode: str, loss_scale_factor: float | None) -> None:
  if agg_mode == "seq-mean-token-sum-norm" and not loss_scale_factor:
    raise ValueError("agg_mode='seq-mean-token-sum-norm' on [B, P+R] rollout rows needs a "
                     "constant loss_scale_factor (the response width, rl.max_new_tokens); the "
                     "row width varies with each step's prompt padding")


def shift_right(x: jax.Array) -> jax.Array:
  """[B, T-1] (about tokens 1..T-1) -> [B, T] aligned with tokens (index 0 gets zero)."""
  return jnp.pad(x, ((0, 0), (1, 0)))


def token_log_probs_and_entropy(model: Decoder, tokens: jax.Array, positions: jax.Array,
                                attention_mask: jax.Array, chunk: int = 256,
                                with_entropy: bool = True) -> tuple[jax.Array, jax.Array]:
  """(log π(token t | < t), entropy of π(· | < t)) as f32[B, T], aligned with tokens.

  The LM head runs over sequence chunks (`models.chunked_head`): one chunk's logits at a time.
  """
  h, _ = model.hidden_states(tokens, positions, attention_mask)

  def stats(logits, targets):
    lp = algorithms.token_log_probs(logits, targets)
    return lp, (algorithms.entropy_from_logits(logits) if with_entropy else jnp.zeros_like(lp))

  lp, ent = chunked_head.map_head_over_chunks(model, h[:, :-1], tokens[:, 1:], chunk, stats)
  return shift_right(lp), shift_right(ent)


def actor_loss(model: Decoder, batch: RolloutBatch, cfg: ActorLossConfig
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """verl's actor objective on the batch's response tokens (GRPO and PPO share it)."""
  _check_scale_factor(cfg.agg_mode, cfg.loss_scale_factor)
  log_probs, entropy = token_log_probs_and_entropy(
      model, batch.tokens, batch.positions, batch.attention_mask, cfg.logits_chunk)
  if not cfg.entropy_coef:  # a metric only: do not differentiate it (saves ~1/3 of the step)
    entropy = jax.lax.stop_gradient(entropy)
  ref = batch.ref_log_probs if cfg.kl_coef else None
  loss, metrics = algorithms.grpo_loss(
      log_probs, batch.old_log_probs, ref, batch.advantages, batch.response_mask,
      clip_ratio=cfg.clip_ratio, kl_coef=cfg.kl_coef, kl_kind=cfg.kl_kind,
      entropy_coef=cfg.entropy_coef, entropies=entropy, agg_mode=cfg.agg_mode,
      clip_ratio_high=cfg.clip_ratio_high, clip_ratio_c=cfg.clip_ratio_c,
      loss_scale_factor=cfg.loss_scale_factor)
  if ref is None:  # still report the KL to the reference, which the paper's runs monitor
    metrics["kl_loss"] = algorithms.masked_mean(
        algorithms.kl_penalty(log_probs, batch.ref_log_probs, cfg.kl_kind), batch.response_mask)
  return loss, metrics


def critic_values(critic: ScalarHeadModel, tokens: jax.Array, positions: jax.Array,
                  attention_mask: jax.Array) -> jax.Array:
  """V(state before token t) as f32[B, T], aligned with tokens (verl's value layout)."""
  return shift_right(critic.token_values(tokens, positions, attention_mask)[:, :-1])


def critic_loss(critic: ScalarHeadModel, batch: RolloutBatch, clip_range: float = 0.5,
                agg_mode: str = "token-mean", loss_scale_factor: float | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  _check_scale_factor(agg_mode, loss_scale_factor)
  values = critic_values(critic, batch.tokens, batch.positions, batch.attention_mask)
  return algorithms.value_loss(values, batch.values, batch.returns, batch.response_mask,
                               clip_range, agg_mode, loss_scale_factor)
