"""Per-token statistics of the LM head, computed over sequence chunks.

A [B, T, V] fp32 logits tensor is 15 GB at B=32, T=768, V=152k. `map_head_over_chunks` runs the
head on [B, chunk] slices inside `lax.map` with a checkpointed body, so one chunk's logits is
alive at a time in the forward pass and it is recomputed, not stored, for the backward pass.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlaif_jax.models.decoder import Decoder

StatsFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]


def map_head_over_chunks(model: Decoder, hidden: jax.Array, targets: jax.Array, chunk: int,
                         stats: StatsFn) -> tuple[jax.Array, ...]:
  """hidden f32[B, N, D] (the states that predict targets), targets int32[B, N] ->
  stats(logits f32[B, c, V], targets[B, c]) evaluated chunk by chunk, each output f32[B, N]."""
  b, n = targets.shape
  chunk = max(1, min(chunk, n))
  pad = -n % chunk
  k = (n + pad) // chunk
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  t = jnp.pad(targets, ((0, 0), (0, pad)))
  h_chunks = jnp.moveaxis(h.reshape(b, k, chunk, h.shape[-1]), 1, 0)
  t_chunks = jnp.moveaxis(t.reshape(b, k, chunk), 1, 0)

  @jax.checkpoint
  def piece(args):
    h_c, t_c = args
    return tuple(stats(model.logits_from_hidden(h_c), t_c))

  outs = jax.lax.map(piece, (h_chunks, t_chunks))
  return tuple(jnp.moveaxis(o, 0, 1).reshape(b, k * chunk)[:, :n] for o in outs)
