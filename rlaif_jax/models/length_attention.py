"""Causal attention over padded rows expressed as sequence lengths, for cuDNN flash attention.

cuDNN's fused attention (`jax.nn.dot_product_attention(implementation="cudnn")`) takes padding
only as per-row lengths (real tokens first, padding after): a boolean mask becomes a bias that
must be [B, N, T, S]-shaped, which a [B, 1, 1, S] key mask is not, and a full one would give up
the flash kernel's memory saving. Our rows pad on the left (prompts), on the right (responses,
SFT and pair batches) or both (RL sequences), always around one contiguous run of real tokens.
So each row is rotated left by its count of leading padding, attended with lengths and
`is_causal` (the rotation keeps the order of the real tokens, so causality by slot holds), and
rotated back. Padded query slots come back as zeros.

Requirement: every row's real tokens form one contiguous run (true of every batch this library
builds); a row with padding between real tokens would attend to that padding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _rotate(x: jax.Array, shift: jax.Array) -> jax.Array:
  """Row b of x [B, T, ...] rotated left by shift[b] slots."""
  t = x.shape[1]
  idx = (jnp.arange(t)[None, :] + shift[:, None]) % t
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_mask: jax.Array,
              implementation: str = "cudnn") -> jax.Array:
  """q [B, T, H, E], k/v [B, T, K, E], kv_mask bool[B, T] -> [B, T, H, E] (zeros on padding).

  `implementation` is passed to `jax.nn.dot_product_attention` ("cudnn" on NVIDIA GPUs; "xla"
  runs the same lengths path anywhere, which is how the CPU tests check the rotation).
  """
  mask = kv_mask.astype(bool)
  lead = jnp.argmax(mask, axis=1).astype(jnp.int32)  # leading padding (0 for an empty row)
  lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
  q, k, v = (_rotate(x, lead) for x in (q, k, v))
  out = jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=lengths,
                                     key_value_seq_lengths=lengths,
                                     implementation=implementation)
  out = _rotate(out, -lead)
  return jnp.where(mask[:, :, None, None], out, jnp.zeros((), out.dtype))
