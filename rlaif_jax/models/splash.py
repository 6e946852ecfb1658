"""Splash attention (the Pallas flash-attention kernel for TPU) for the cache-free forward.

`attention(q, k, v, kv_mask)`: q [B, T, H, E], k and v [B, T, K, E] (grouped-query: H a multiple
of K, handled by the kernel without repeating k/v), kv_mask bool[B, T] (False on padding) ->
[B, T, H, E], causal by slot with padded keys masked: on every real query the same result as
the einsum path of `decoder.Attention`.

* Padding: real tokens are segment 1 and padding segment 0. Splash attends only within a
  segment, so padded keys never reach a real query, and a padded query (whose output nothing
  reads) attends to padded keys, so no score row is empty. T is padded up to a multiple of 128
  (the kernel's smallest block) with more segment-0 slots.
* Sharding: a Pallas kernel is not partitioned by XLA, so under a mesh (`jax.set_mesh`) it runs
  per shard in `jax.shard_map`: rows over the batch axes, heads over `tensor` when the kv heads
  divide by it (the same logical rules as the rest of the model; otherwise heads replicated).
* Backends: compiled on TPU; on CPU the same kernel runs in Pallas interpret mode (slow, for
  tests: the numerics are proven here); on GPU it is refused (use attention_impl="cudnn").
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

from rlaif_jax.sharding import mesh as mesh_lib

_MIN_BLOCK = 128  # TPU lane width: the smallest block the kernel takes
_MAX_BLOCK = 512


def block_size(length: int) -> int:
  """The largest of 512, 256, 128 that divides `length` (a multiple of 128)."""
  block = _MAX_BLOCK
  while length % block:
    block //= 2
  return block


@functools.lru_cache(maxsize=32)
def _kernel(heads: int, length: int, interpret: bool):
  """The kernel for `heads` heads of `length` slots. Built eagerly (its mask tables are concrete
  arrays), so the cached kernel holds no tracer of the jit or scan that first asked for it."""
  mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
  b = block_size(length)
  sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                        block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  with jax.ensure_compile_time_eval():
    return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                              interpret=interpret)


def _per_shard(q, k, v, segments, interpret: bool):
  """q [B, H, T, E], k/v [B, K, T, E], segments i32[B, T] (this shard's rows and heads)."""
  kernel = _kernel(q.shape[1], q.shape[2], interpret)
  one = lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(q=s, kv=s))
  return jax.vmap(one)(q, k, v, segments)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_mask: jax.Array) -> jax.Array:
  backend = jax.default_backend()
  if backend == "gpu":
    raise ValueError("attention_impl='splash' is the TPU kernel; on GPU use 'cudnn' (flash "
                     "attention through cuDNN) or 'xla'")
  b, t, h, e = q.shape
  padded = math.ceil(t / _MIN_BLOCK) * _MIN_BLOCK
  segments = kv_mask.astype(jnp.int32)
  q = (q * (1.0 / math.sqrt(e))).astype(q.dtype).transpose(0, 2, 1, 3)  # [B, H, T, E]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  if padded != t:
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, padded - t), (0, 0)))
    q, k, v = pad(q), pad(k), pad(v)
    segments = jnp.pad(segments, ((0, 0), (0, padded - t)))
  run = functools.partial(_per_shard, interpret=backend != "tpu")
  mesh = mesh_lib.active_mesh()
  if mesh is not None:
    # One spec for q and k/v: heads go on `tensor` only if the kv heads divide by it.
    spec = mesh_lib.activation_spec(("batch", "kv_heads", None, None), k.shape, mesh)
    rows = jax.sharding.PartitionSpec(spec[0], None)
    run = jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, rows), out_specs=spec,
                        check_vma=False)
  out = run(q, k, v, segments)
  return out[:, :, :t].transpose(0, 2, 1, 3)
