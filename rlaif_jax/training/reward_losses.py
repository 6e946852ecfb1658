"""Bradley–Terry reward-model loss and pair metrics (pure functions)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def bradley_terry_loss(chosen: jax.Array, rejected: jax.Array, margin: jax.Array | None = None,
                       center_coef: float = 0.0, weights: jax.Array | None = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """-mean log σ(r_chosen - r_rejected - margin) + center_coef * mean((r_chosen + r_rejected)²).

  chosen, rejected: f32[B] rewards of each pair's two responses; margin: optional f32[B] (the
  Llama-2 margin loss). The centering term (as TRL's `center_rewards_coefficient`) keeps rewards
  near zero mean without changing their differences. Metrics: pair accuracy (chosen strictly
  higher), mean reward and mean reward gap. `weights` (f32[B], e.g. 0 for the filler pairs of a
  padded eval batch) turns every mean into a weighted mean (an all-zero weight gives 0).
  """
  if weights is None:
    mean = jnp.mean
  else:
    w = weights.astype(jnp.float32)
    total = jnp.sum(w)
    total = jnp.where(total > 0, total, 1.0)
    mean = lambda x: jnp.sum(jnp.where(w != 0, x, 0.0) * w) / total
  diff = chosen - rejected
  if margin is not None:
    diff = diff - margin
  loss = -mean(jax.nn.log_sigmoid(diff))
  if center_coef:
    loss = loss + center_coef * mean((chosen + rejected) ** 2)
  metrics = {
      "pair_accuracy": mean((chosen > rejected).astype(jnp.float32)),
      "reward_mean": mean(0.5 * (chosen + rejected)),
      "reward_gap": mean(chosen - rejected),
  }
  return loss, metrics
