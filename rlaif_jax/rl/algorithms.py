"""GRPO / PPO math as pure JAX functions with verl's semantics (`verl/trainer/ppo/core_algos.py`).

Conventions shared by every function here:
  * `B` responses in a batch, `T` response tokens (right padded), `V` vocabulary entries.
  * Masks are float or bool arrays; a non-zero entry marks a real response token. Values at
    masked positions never reach a loss or a metric (NaNs there are ignored too).
  * Losses are minimised: policy-gradient terms carry the minus sign (`-A * ratio`), a positive
    advantage pushes a token's probability up.
  * `log_probs` are the current (differentiable) policy's log-probabilities of the sampled tokens,
    `old_log_probs` those of the policy that sampled them, `ref_log_probs` the frozen reference's.
  * String options (`agg_mode`, `kind`) and `group_size` are static: close over them (or use
    `static_argnames`) when jitting.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")


def _float_mask(mask: Array, like: Array) -> Array:
  """The mask as a float array of `like`'s float dtype (float32 for integer `like`)."""
  dtype = like.dtype if jnp.issubdtype(like.dtype, jnp.floating) else jnp.float32
  return jnp.asarray(mask).astype(dtype)


def _nonzero_or_one(x: Array) -> Array:
  """`x` where it is non-zero, else 1: a safe denominator for counts that may be 0."""
  return jnp.where(x != 0, x, jnp.ones_like(x))


# -- Masked reductions ------------------------------------------------------------------------


def masked_sum(values: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
  """Sum of `values * mask` over `axis` (all axes when None); NaNs under a zero mask are ignored.

  Args:
    values: f32[...].
    mask: same shape as `values`, float weights or bool.
    axis: axis or axes to reduce.
  Returns:
    `values` reduced over `axis`.
  """
  mask = _float_mask(mask, values)
  return jnp.sum(jnp.where(mask != 0, values, 0.0) * mask, axis=axis)


def masked_mean(values: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
  """Masked mean, `masked_sum / (mask.sum() + 1e-8)` as verl (an all-masked input gives 0)."""
  mask = _float_mask(mask, values)
  return masked_sum(values, mask, axis) / (jnp.sum(mask, axis=axis) + 1e-8)


def masked_var(values: Array, mask: Array, unbiased: bool = True) -> Array:
  """Variance of the masked entries of `values` (all axes), with Bessel's correction if unbiased.

  verl raises when fewer than two entries are unmasked; under jit this cannot raise, so the
  correction is skipped there (one entry gives variance 0, none gives 0).
  """
  mask = _float_mask(mask, values)
  mean = masked_mean(values, mask)
  variance = masked_mean((values - mean) ** 2, mask)
  if unbiased:
    count = jnp.sum(mask)
    variance = variance * jnp.where(count > 1, count / jnp.maximum(count - 1, 1e-8), 1.0)
  return variance


def masked_whiten(values: Array, mask: Array, shift_mean: bool = True) -> Array:
  """`(values - mean) / sqrt(var + 1e-8)` with mean/unbiased var over the masked entries (verl).

  Args:
    values: f32[...]; mask: same shape.
    shift_mean: if False the mean is added back after scaling.
  Returns:
    f32[...] same shape; entries under a zero mask are transformed too but carry no meaning.
  """
  mean = masked_mean(values, mask)
  whitened = (values - mean) * jax.lax.rsqrt(masked_var(values, mask) + 1e-8)
  return whitened if shift_mean else whitened + mean


def aggregate_loss(
    loss_mat: Array, mask: Array, mode: str = "token-mean", loss_scale_factor: float | None = None
) -> Array:
  """Reduce a per-token loss to a scalar as verl's `agg_loss` (single data-parallel rank).

  Modes:
    "token-mean": sum over all unmasked tokens / number of unmasked tokens.
    "seq-mean-token-sum": per-sequence token sums, averaged over sequences with any token.
    "seq-mean-token-mean": per-sequence token means, averaged over sequences with any token.
    "seq-mean-token-sum-norm": sum of per-sequence token sums / `loss_scale_factor` (default T),
      Dr. GRPO's length-unbiased constant normaliser. verl's T is the response length; when
      `loss_mat` spans prompt and response ([B, P+R], P varying per step), pass the response
      width (max new tokens) as `loss_scale_factor` so the normaliser stays constant.
  An all-masked batch gives 0 (verl would divide by zero).

  Args:
    loss_mat: f32[B, T]; mask: [B, T].
  Returns:
    f32[] scalar loss.
  """
  mask = _float_mask(mask, loss_mat)
  if mode == "token-mean":
    return masked_sum(loss_mat, mask) / _nonzero_or_one(jnp.sum(mask))
  seq_tokens = jnp.sum(mask, axis=-1)
  seq_sums = masked_sum(loss_mat, mask, axis=-1)
  if mode == "seq-mean-token-sum-norm":
    scale = loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor
    return jnp.sum(seq_sums) / scale
  if mode == "seq-mean-token-sum":
    seq_losses = seq_sums
  elif mode == "seq-mean-token-mean":
    seq_losses = seq_sums / (seq_tokens + 1e-8)
  else:
    raise ValueError(f"Unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}.")
  seq_mask = (seq_tokens > 0).astype(seq_losses.dtype)
  return masked_sum(seq_losses, seq_mask) / _nonzero_or_one(jnp.sum(seq_mask))


# ---------------------------------------------------------------------------------------------
# Advantages.
# ---------------------------------------------------------------------------------------------


def group_relative_advantages(
    rewards: Array, group_size: int, eps: float = 1e-6, normalize_std: bool = True,
    valid: Array | None = None) -> Array:
  """GRPO advantages: each reward relative to the other responses to the same prompt.

  Groups are contiguous: responses `[g * group_size, (g + 1) * group_size)` share a prompt (the
  layout of `n` samples per prompt). Matches verl's `compute_grpo_outcome_advantage`:
  `(r - mean_g) / (std_g + eps)` with the unbiased std (torch.std); `normalize_std=False` is
  Dr. GRPO's `r - mean_g`. A group of one gets mean 0 and std 1, as in verl. A group whose rewards
  are all equal gets exactly zero advantage (the mean is taken relative to the group's first
  reward, so identical floats cancel exactly).

  Args:
    rewards: f32[B] scalar reward per response, B divisible by `group_size`.
    group_size: responses per prompt (static).
    eps: added to the std.
    normalize_std: divide by the group std (GRPO) or not (Dr. GRPO).
    valid: optional bool[B], False for rows that were not scored (a failed judge call). Group
      statistics then use each group's c valid rows only: valid rows get
      `(r - mean) / (std + eps)`, invalid rows 0, and a group with c < 2 gets 0 everywhere (no
      comparison to learn from); with group_size 1, valid rows get `r / (1 + eps)`. All rows
      valid gives bit-for-bit the unmasked result.
  Returns:
    f32[B] advantages.
  """
  if rewards.ndim != 1:
    raise ValueError(f"rewards must be f32[B], got shape {rewards.shape}.")
  batch = rewards.shape[0]
  if group_size < 1 or batch % group_size:
    raise ValueError(f"batch of {batch} rewards is not a whole number of groups of {group_size}.")
  grouped = rewards.astype(jnp.float32).reshape(batch // group_size, group_size)
  v = (jnp.ones(grouped.shape, bool) if valid is None
       else jnp.asarray(valid).astype(bool).reshape(grouped.shape))
  if group_size == 1:
    adv = grouped / (1.0 + eps) if normalize_std else grouped
    return jnp.where(v, adv, 0.0).reshape(batch)
  count = jnp.sum(v.astype(jnp.float32), axis=-1, keepdims=True)
  first = jnp.take_along_axis(grouped, jnp.argmax(v, axis=-1)[:, None], axis=-1)
  shifted = jnp.where(v, grouped - first, 0.0)
  centered = jnp.where(v, shifted - jnp.sum(shifted, -1, keepdims=True) / jnp.maximum(count, 1),
                       0.0)
  std = jnp.sqrt(jnp.sum(centered**2, axis=-1, keepdims=True) / jnp.maximum(count - 1, 1))
  adv = centered / (std + eps) if normalize_std else centered
  return jnp.where(v & (count >= 2), adv, 0.0).reshape(batch)


def sequence_to_token_advantages(advantages: Array, response_mask: Array) -> Array:
  """Broadcast one advantage per response to its tokens, zero outside the mask.

  Args:
    advantages: f32[B]; response_mask: [B, T].
  Returns:
    f32[B, T] with `advantages[b]` at every unmasked token of row b.
  """
  mask = _float_mask(response_mask, advantages)
  return advantages[:, None] * mask


def last_token_rewards(rewards: Array, response_mask: Array) -> Array:
  """Place each response's scalar reward on its last unmasked token (verl's token_level_scores).

  Args:
    rewards: f32[B]; response_mask: [B, T].
  Returns:
    f32[B, T], zero except `rewards[b]` at row b's last unmasked position (all-zero for an
    all-masked row).
  """
  present = jnp.asarray(response_mask) != 0
  length = present.shape[-1]
  last = length - 1 - jnp.argmax(present[:, ::-1], axis=-1)
  at_last = jnp.arange(length)[None, :] == last[:, None]
  at_last = at_last & jnp.any(present, axis=-1, keepdims=True)
  return jnp.where(at_last, rewards.astype(jnp.float32)[:, None], 0.0)


def gae_advantages(
    rewards: Array,
    values: Array,
    response_mask: Array,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten: bool = True,
) -> tuple[Array, Array]:
  """Generalised advantage estimation as verl's `compute_gae_advantage_return`.

  Reverse scan over time: `delta_t = r_t + gamma * V_next - V_t`, `A_t = delta_t + gamma * lam *
  A_next`, where masked tokens pass `V_next` and `A_next` through unchanged (so they are skipped).
  Returns are `A + V` before whitening; the advantages are then whitened over the masked tokens.

  Args:
    rewards: f32[B, T] token-level rewards (typically the score on the last response token, see
      `last_token_rewards`, minus any in-reward KL penalty).
    values: f32[B, T] critic values of the rollout.
    response_mask: [B, T].
    gamma: discount; lam: GAE lambda.
    whiten: whiten the advantages over masked tokens (verl always does).
  Returns:
    (advantages f32[B, T], returns f32[B, T]); entries outside the mask carry no meaning.
  """
  rewards = rewards.astype(jnp.float32)
  values = values.astype(jnp.float32)
  mask = _float_mask(response_mask, rewards)

  def step(carry: tuple[Array, Array], inputs: tuple[Array, Array, Array]):
    next_value, next_advantage = carry
    reward, value, present = inputs
    delta = reward + gamma * next_value - value
    advantage = delta + gamma * lam * next_advantage
    next_value = value * present + (1.0 - present) * next_value
    next_advantage = advantage * present + (1.0 - present) * next_advantage
    return (next_value, next_advantage), next_advantage

  zeros = jnp.zeros(rewards.shape[:1], jnp.float32)
  _, advantages = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True)
  advantages = advantages.T
  returns = advantages + values
  if whiten:
    advantages = masked_whiten(advantages, mask)
  return advantages, returns


# ---------------------------------------------------------------------------------------------
# Per-token quantities from logits.
# ---------------------------------------------------------------------------------------------


def token_log_probs(logits: Array, tokens: Array) -> Array:
  """log softmax(logits)[tokens], computed as `logit[token] - logsumexp(logits)` (no one-hot).

  Args:
    logits: f32/bf16[B, T, V] (the logits that predict `tokens`, i.e. already shifted).
    tokens: i32[B, T].
  Returns:
    f32[B, T].
  """
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def entropy_from_logits(logits: Array) -> Array:
  """Entropy of softmax(logits) per position, stable for large and -inf logits.

  Args:
    logits: f32/bf16[B, T, V].
  Returns:
    f32[B, T], `-sum_v p_v log p_v` (terms with p_v = 0 contribute 0).
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(log_p)
  # Zero log p where p == 0 *before* the product so neither value nor gradient sees 0 * -inf.
  return -jnp.sum(p * jnp.where(p > 0, log_p, 0.0), axis=-1)


def kl_penalty(log_probs: Array, ref_log_probs: Array, kind: str = "low_var_kl") -> Array:
  """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs (verl/Schulman).

  Kinds, with `d = log_probs - ref_log_probs`:
    "kl"/"k1": d.  "abs": |d|.  "mse"/"k2": d^2 / 2.
    "low_var_kl"/"k3": exp(-d) + d - 1 with -d clamped to [-20, 20] and the result to [-10, 10].
    A trailing "+" (e.g. "k3+") keeps the value of the named estimator but takes the gradient of
    k2, which is the unbiased gradient of the KL (verl's straight-through trick).

  Args:
    log_probs, ref_log_probs: f32[B, T].
  Returns:
    f32[B, T].
  """
  straight_through = kind.endswith("+")
  base = kind[:-1] if straight_through else kind
  diff = log_probs - ref_log_probs
  if base in ("kl", "k1"):
    value = diff
  elif base == "abs":
    value = jnp.abs(diff)
  elif base in ("mse", "k2"):
    value = 0.5 * jnp.square(diff)
  elif base in ("low_var_kl", "k3"):
    log_ratio = jnp.clip(-diff, -20.0, 20.0)
    value = jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)
  else:
    raise ValueError(
        f"Unknown KL estimator {kind!r}; expected one of {KL_KINDS}, optionally with '+'.")
  if not straight_through:
    return value
  surrogate = 0.5 * jnp.square(diff)
  return surrogate - jax.lax.stop_gradient(surrogate) + jax.lax.stop_gradient(value)


# ---------------------------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------------------------


def ppo_policy_loss(
    log_probs: Array,
    old_log_probs: Array,
    advantages: Array,
    mask: Array,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
) -> tuple[Array, Metrics]:
  """Clipped PPO surrogate with dual clip for negative advantages (verl's "vanilla" loss).

  Per token, with `ratio = exp(clip(log_probs - old_log_probs, -20, 20))`:
    l = max(-A * ratio, -A * clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)),
    and where A < 0: l = min(l, -A * clip_ratio_c) (bounds the loss of a very off-policy token).

  Args:
    log_probs, old_log_probs, advantages: f32[B, T]; mask: [B, T].
    clip_ratio_low, clip_ratio_high: PPO clip range (asymmetric = DAPO clip-higher).
    clip_ratio_c: dual-clip bound, must exceed 1.
    agg_mode, loss_scale_factor: see `aggregate_loss`.
  Returns:
    (pg_loss f32[], metrics) with metrics (all f32[] over masked tokens):
      "pg_loss": the loss; "clip_frac": fraction where the clipped term was active;
      "clip_frac_lower": fraction where the dual clip was active (A < 0);
      "approx_kl": mean of old_log_probs - log_probs (verl's ppo_kl, k1 of the update);
      "ratio_mean": mean importance ratio.
  """
  if isinstance(clip_ratio_c, (int, float)) and clip_ratio_c <= 1.0:
    raise ValueError(f"clip_ratio_c (dual-clip bound) must be > 1, got {clip_ratio_c}.")
  log_ratio = jnp.clip(log_probs - old_log_probs, -20.0, 20.0)
  ratio = jnp.exp(log_ratio)
  loss_unclipped = -advantages * ratio
  loss_clipped = -advantages * jnp.clip(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
  loss_ppo = jnp.maximum(loss_unclipped, loss_clipped)
  loss_dual_bound = -advantages * clip_ratio_c
  negative = advantages < 0
  dual_active = (loss_ppo > loss_dual_bound) & negative
  loss_mat = jnp.where(negative, jnp.minimum(loss_ppo, loss_dual_bound), loss_ppo)
  pg_loss = aggregate_loss(loss_mat, mask, agg_mode, loss_scale_factor)
  metrics = {
      "pg_loss": pg_loss,
      "clip_frac": masked_mean((loss_clipped > loss_unclipped).astype(jnp.float32), mask),
      "clip_frac_lower": masked_mean(dual_active.astype(jnp.float32), mask),
      "approx_kl": masked_mean(-log_ratio, mask),
      "ratio_mean": masked_mean(ratio, mask),
  }
  return pg_loss, metrics


def value_loss(
    values: Array,
    old_values: Array,
    returns: Array,
    mask: Array,
    clip_range: float = 0.5,
    agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
) -> tuple[Array, Metrics]:
  """Clipped critic loss as verl's `compute_value_loss`.

  `0.5 * agg(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2))`.

  Args:
    values: f32[B, T] current critic predictions; old_values: f32[B, T] rollout-time values;
    returns: f32[B, T] GAE returns; mask: [B, T]; clip_range: c.
    agg_mode, loss_scale_factor: see `aggregate_loss`.
  Returns:
    (vf_loss f32[], metrics) with "vf_loss", "vf_clip_frac" (fraction where the clipped error was
    larger) and "vpred_mean" (mean prediction), all over masked tokens.
  """
  clipped = jnp.clip(values, old_values - clip_range, old_values + clip_range)
  error_unclipped = jnp.square(values - returns)
  error_clipped = jnp.square(clipped - returns)
  vf_loss = 0.5 * aggregate_loss(jnp.maximum(error_unclipped, error_clipped), mask, agg_mode,
                                 loss_scale_factor)
  metrics = {
      "vf_loss": vf_loss,
      "vf_clip_frac": masked_mean((error_clipped > error_unclipped).astype(jnp.float32), mask),
      "vpred_mean": masked_mean(values, mask),
  }
  return vf_loss, metrics


def grpo_loss(
    log_probs: Array,
    old_log_probs: Array,
    ref_log_probs: Array | None,
    advantages: Array,
    mask: Array,
    clip_ratio: float = 0.2,
    kl_coef: float = 0.001,
    kl_kind: str = "low_var_kl",
    entropy_coef: float = 0.0,
    entropies: Array | None = None,
    agg_mode: str = "token-mean",
    clip_ratio_high: float | None = None,
    clip_ratio_c: float = 3.0,
    loss_scale_factor: float | None = None,
) -> tuple[Array, Metrics]:
  """verl's actor loss: `pg_loss - entropy_coef * entropy + kl_coef * kl_loss`.

  The policy term is `ppo_policy_loss`; the KL term is `kl_penalty(log_probs, ref_log_probs,
  kl_kind)` aggregated with the same `agg_mode` (verl's `use_kl_loss=True`), the entropy term is
  `entropies` aggregated likewise. The paper's setting is the default: clip 0.2, k3 KL with
  coefficient 0.001, token-mean aggregation.

  Args:
    log_probs, old_log_probs: f32[B, T]; ref_log_probs: f32[B, T] or None (no KL term).
    advantages: f32[B, T], or f32[B] (broadcast to the masked tokens).
    mask: [B, T].
    clip_ratio: symmetric clip range; `clip_ratio_high` overrides the upper side when given.
    kl_coef, kl_kind: KL loss coefficient and estimator (see `kl_penalty`).
    entropy_coef: entropy bonus coefficient; needs `entropies` when non-zero.
    entropies: f32[B, T] per-token entropies of the current policy (`entropy_from_logits`).
    agg_mode, loss_scale_factor: see `aggregate_loss` (every term uses them).
    clip_ratio_c: dual-clip bound.
  Returns:
    (loss f32[], metrics): `ppo_policy_loss`'s metrics plus "loss" (the total), "kl_loss" (when
    `ref_log_probs` is given) and "entropy" (when `entropies` is given).
  """
  if advantages.ndim == 1:
    advantages = sequence_to_token_advantages(advantages, mask)
  high = clip_ratio if clip_ratio_high is None else clip_ratio_high
  loss, metrics = ppo_policy_loss(
      log_probs, old_log_probs, advantages, mask, clip_ratio, high, clip_ratio_c, agg_mode,
      loss_scale_factor)
  if entropies is not None:
    entropy = aggregate_loss(entropies, mask, agg_mode, loss_scale_factor)
    metrics["entropy"] = entropy
    loss = loss - entropy_coef * entropy
  elif not isinstance(entropy_coef, (int, float)) or entropy_coef != 0:
    raise ValueError("entropy_coef is non-zero but no per-token entropies were passed.")
  if ref_log_probs is not None:
    kl_loss = aggregate_loss(kl_penalty(log_probs, ref_log_probs, kl_kind), mask, agg_mode,
                             loss_scale_factor)
    metrics["kl_loss"] = kl_loss
    loss = loss + kl_coef * kl_loss
  metrics["loss"] = loss
  return loss, metrics


# ---------------------------------------------------------------------------------------------
# Registries: a trainer picks by config name.
# ---------------------------------------------------------------------------------------------

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Array | tuple[Array, Array]]] = {
    "grpo": group_relative_advantages,
    "dr_grpo": functools.partial(group_relative_advantages, normalize_std=False),
    "gae": gae_advantages,
}

POLICY_LOSSES: dict[str, Callable[..., tuple[Array, Metrics]]] = {
    "vanilla": ppo_policy_loss,
}


def get_advantage_estimator(name: str) -> Callable[..., Array | tuple[Array, Array]]:
  """The advantage estimator registered as `name` ("grpo", "dr_grpo", "gae")."""
  if name not in ADVANTAGE_ESTIMATORS:
    raise ValueError(
        f"Unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}.")
  return ADVANTAGE_ESTIMATORS[name]


def get_policy_loss(name: str) -> Callable[..., tuple[Array, Metrics]]:
  """The policy loss registered as `name` ("vanilla": clipped PPO with dual clip)."""
  if name not in POLICY_LOSSES:
    raise ValueError(f"Unknown policy loss {name!r}; known: {sorted(POLICY_LOSSES)}.")
  return POLICY_LOSSES[name]
