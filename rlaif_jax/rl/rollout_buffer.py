"""The device-resident rollout batch of one RL step, and on-device mini-batch selection.

Layout: each row is [left-padded prompt | response | right padding], length T = P + R.
Per-token arrays are aligned with `tokens`: index t holds the quantity *of token t* (its
log-probability given tokens < t, the critic's value of the prefix before it, its advantage...),
so `response_mask` selects exactly the generated tokens that the losses see.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from rlaif_jax.sharding import mesh as mesh_lib


@struct.dataclass
class RolloutBatch:
  """All arrays [B, T] unless noted; B = prompts × samples per prompt."""
  tokens: jax.Array  # int32
  positions: jax.Array  # int32, RoPE positions (0 at the first real prompt token)
  attention_mask: jax.Array  # bool, real tokens
  response_mask: jax.Array  # float32, 1 on generated tokens (EOS included, padding excluded)
  old_log_probs: jax.Array  # float32, log π_old(token t | < t) on response tokens
  ref_log_probs: jax.Array  # float32, log π_ref(token t | < t)
  values: jax.Array  # float32, critic values (zeros for GRPO)
  token_rewards: jax.Array  # float32, the sequence reward on each row's last response token
  advantages: jax.Array  # float32
  returns: jax.Array  # float32 (GAE returns; zeros for GRPO)
  sequence_rewards: jax.Array  # float32[B]

  @property
  def size(self) -> int:
    return self.tokens.shape[0]


def assemble_sequences(prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                       response_tokens: np.ndarray, response_mask: np.ndarray) -> dict:
  """Concatenates left-padded prompts [B, P] and right-padded responses [B, R] into [B, P+R]."""
  tokens = np.concatenate([prompt_tokens, response_tokens], axis=1).astype(np.int32)
  attn = np.concatenate([prompt_mask, response_mask], axis=1).astype(bool)
  positions = np.maximum(np.cumsum(attn, axis=1) - 1, 0).astype(np.int32)
  resp = np.concatenate([np.zeros_like(prompt_mask, np.float32),
                         response_mask.astype(np.float32)], axis=1)
  return {"tokens": tokens, "positions": positions, "attention_mask": attn, "response_mask": resp}


def shard_batch(batch: RolloutBatch, mesh: Mesh | None) -> RolloutBatch:
  """Places every array with its batch dimension over the mesh's data axes."""
  if mesh is None:
    return batch
  return jax.tree.map(lambda x: jax.device_put(x, mesh_lib.data_sharding(mesh, np.ndim(x))), batch)


def minibatch(batch: RolloutBatch, permutation: jax.Array, index: jax.Array,
              size: int) -> RolloutBatch:
  """Rows permutation[index*size : (index+1)*size] of every array, on device (jit-friendly)."""
  rows = jax.lax.dynamic_slice_in_dim(permutation, index * size, size)
  picked = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), batch)
  return jax.tree.map(lambda x: mesh_lib.shard_activation(x, ("batch",) + (None,) * (x.ndim - 1)),
                      picked)
