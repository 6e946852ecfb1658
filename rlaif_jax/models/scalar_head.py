"""A decoder trunk with a scalar head: the reward model (read at the last real token) and the PPO
critic (read at every token).

The trunk is any `Decoder` (random, loaded from HF, or restored from an SFT run), so the same
module serves all three initialisations.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.models.decoder import Decoder


def last_token_index(attention_mask: jax.Array) -> jax.Array:
  """int32[B]: index of the last real token of each row; correct for left and right padding."""
  t = attention_mask.shape[-1]
  return jnp.max(jnp.where(attention_mask.astype(bool), jnp.arange(t), 0), axis=-1)


class ScalarHeadModel(nnx.Module):
  """Decoder trunk + linear head D -> 1."""

  def __init__(self, backbone: Decoder, *, rngs: nnx.Rngs):
    if hasattr(backbone, "lm_head"):
      # Untied presets: the LM head (545M params for Qwen2.5-7B) is never used by a scalar head;
      # dropping it saves its weights, gradients and AdamW moments.
      del backbone.lm_head
    self.backbone = backbone
    d = backbone.cfg.hidden_size
    std = 1.0 / (d + 1) ** 0.5
    self.head = nnx.Param(std * jax.random.normal(rngs.params(), (d,), jnp.float32), axes=("embed",))
    self.head_bias = nnx.Param(jnp.zeros((), jnp.float32), axes=())

  @property
  def cfg(self):
    return self.backbone.cfg

  def token_values(self, tokens: jax.Array, positions: jax.Array,
                   attention_mask: jax.Array) -> jax.Array:
    """tokens, positions int32[B, T], attention_mask bool[B, T] -> f32[B, T] (critic values)."""
    h, _ = self.backbone.hidden_states(tokens, positions, attention_mask)
    return jnp.einsum("btd,d->bt", h.astype(jnp.float32), self.head.get_value()) + (
        self.head_bias.get_value())

  def __call__(self, tokens: jax.Array, positions: jax.Array,
               attention_mask: jax.Array) -> jax.Array:
    """-> f32[B]: the scalar at each row's last real token (the reward of the whole sequence)."""
    values = self.token_values(tokens, positions, attention_mask)
    idx = last_token_index(attention_mask)
    return jnp.take_along_axis(values, idx[:, None], axis=1)[:, 0]
