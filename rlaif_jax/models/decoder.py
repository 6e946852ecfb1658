"""A Qwen2/Llama-family decoder as a pure Flax NNX module.

Shapes: B batch, T new tokens, S cache slots, D hidden, H heads, K kv heads, G = H // K, E head dim,
F MLP width, V vocab. Every parameter carries logical axis names (`axes` metadata) that
`rlaif_jax.sharding.mesh` maps to the device mesh.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from rlaif_jax.models.config import ModelConfig
from rlaif_jax.sharding.mesh import shard_activation

_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


@struct.dataclass
class KVCache:
  """Preallocated keys/values for incremental decoding.

  k, v: [L, B, S, K, E]; mask: bool[B, S] (slot holds a real token); index: int32[] next free slot.
  Left-padded batches share `index`, so slots line up across the batch.
  """
  k: jax.Array
  v: jax.Array
  mask: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> "KVCache":
    dtype = dtype or jnp.dtype(cfg.dtype)
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               mask=jnp.zeros((batch, length), bool), index=jnp.zeros((), jnp.int32))

  @property
  def length(self) -> int:
    return self.k.shape[2]


def _param(rngs: nnx.Rngs, shape, axes, dtype, std: float) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype), axes=axes)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), dtype), axes=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale.get_value().astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """Inverse RoPE frequencies f32[E/2], with Llama-3 frequency-dependent scaling when configured."""
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
  rs = cfg.rope_scaling
  if rs is None:
    return inv
  low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
  high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
  wavelen = 2 * math.pi / inv
  smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
      rs.high_freq_factor - rs.low_freq_factor)
  smoothed = (1 - smooth) * inv / rs.factor + smooth * inv
  out = jnp.where(wavelen > low_wavelen, inv / rs.factor, inv)
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, out)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates x[B, T, N, E] by positions int[B, T] (HF "rotate_half" layout)."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, E/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    std = 1.0 / math.sqrt(d)
    self.wq = _param(rngs, (d, h, e), ("embed", "heads", "head_dim"), pd, std)
    self.wk = _param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"), pd, std)
    self.wv = _param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"), pd, std)
    self.wo = _param(rngs, (h, e, d), ("heads", "head_dim", "embed"), pd, 1.0 / math.sqrt(h * e))
    if cfg.qkv_bias:
      self.bq = nnx.Param(jnp.zeros((h, e), pd), axes=("heads", "head_dim"))
      self.bk = nnx.Param(jnp.zeros((k, e), pd), axes=("kv_heads", "head_dim"))
      self.bv = nnx.Param(jnp.zeros((k, e), pd), axes=("kv_heads", "head_dim"))

  def _project(self, x, w, b, dt):
    y = jnp.einsum("btd,dne->btne", x, w.get_value().astype(dt))
    return y + b.get_value().astype(dt) if b is not None else y

  def __call__(self, x, positions, inv_freq, kv_mask, q_slots, layer_cache):
    """x: [B, T, D]; kv_mask: bool[B, S]; q_slots: int[T] slot of each query.

    layer_cache: None (keys are the T new tokens, S == T) or (k_all, v_all, layer, index) where
    k_all/v_all are the stacked [L, B, S, K, E] cache buffers. Returns (out [B, T, D], new k_all,
    new v_all) (the latter two None without a cache).
    """
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    bias = lambda name: getattr(self, name) if cfg.qkv_bias else None
    q = apply_rope(self._project(x, self.wq, bias("bq"), dt), positions, inv_freq)
    k = apply_rope(self._project(x, self.wk, bias("bk"), dt), positions, inv_freq)
    v = self._project(x, self.wv, bias("bv"), dt)
    q = shard_activation(q, ("batch", "length", "heads", "head_dim"))
    k = shard_activation(k, ("batch", "length", "kv_heads", "head_dim"))
    v = shard_activation(v, ("batch", "length", "kv_heads", "head_dim"))
    new_k_all = new_v_all = None
    if layer_cache is not None:
      k_all, v_all, layer, index = layer_cache
      start = (layer, 0, index, 0, 0)
      new_k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
      new_v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
      k, v = new_k_all[layer].astype(dt), new_v_all[layer].astype(dt)
    b, t = x.shape[:2]
    s = k.shape[1]
    g = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(b, t, cfg.num_kv_heads, g, cfg.head_dim)
    logits = jnp.einsum("btkge,bske->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(cfg.head_dim)
    causal = jnp.arange(s)[None, :] <= q_slots[:, None]  # [T, S]
    mask = causal[None, None, None] & kv_mask[:, None, None, None, :]
    probs = jax.nn.softmax(jnp.where(mask, logits, _NEG_INF), axis=-1).astype(dt)
    out = jnp.einsum("bkgts,bske->btkge", probs, v).reshape(b, t, cfg.num_heads, cfg.head_dim)
    out = jnp.einsum("btne,ned->btd", out, self.wo.get_value().astype(dt))
    return out, new_k_all, new_v_all


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), pd, 1.0 / math.sqrt(d))
    self.w_up = _param(rngs, (d, f), ("embed", "mlp"), pd, 1.0 / math.sqrt(d))
    self.w_down = _param(rngs, (f, d), ("mlp", "embed"), pd, 1.0 / math.sqrt(f))

  def __call__(self, x):
    dt = jnp.dtype(self.cfg.dtype)
    gate = jnp.einsum("btd,df->btf", x, self.w_gate.get_value().astype(dt))
    up = jnp.einsum("btd,df->btf", x, self.w_up.get_value().astype(dt))
    h = shard_activation(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
    return jnp.einsum("btf,fd->btd", h, self.w_down.get_value().astype(dt))


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    self.attn = Attention(cfg, rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions, inv_freq, kv_mask, q_slots, layer_cache):
    h, k_all, v_all = self.attn(self.input_norm(x), positions, inv_freq, kv_mask, q_slots,
                                layer_cache)
    x = x + h
    x = x + self.mlp(self.post_attn_norm(x))
    return shard_activation(x, ("batch", "length", "embed")), k_all, v_all


def _call_layer(layer, x, positions, inv_freq, kv_mask, q_slots):
  return layer(x, positions, inv_freq, kv_mask, q_slots, None)


class Decoder(nnx.Module):
  """Token ids -> next-token logits, with an optional KV cache."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd, 0.02)
    self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd,
                            1.0 / math.sqrt(cfg.hidden_size))

  def hidden_states(self, tokens: jax.Array, positions: jax.Array, attention_mask: jax.Array,
                    cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """tokens, positions int32[B, T]; attention_mask bool[B, T] -> (normed hidden [B, T, D], cache)."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    attention_mask = attention_mask.astype(bool)
    x = jnp.take(self.embed.get_value(), tokens, axis=0).astype(dt)
    x = shard_activation(x, ("batch", "length", "embed"))
    inv_freq = rope_inv_freq(cfg)
    t = tokens.shape[1]
    if cache is None:
      kv_mask, q_slots = attention_mask, jnp.arange(t)
    else:
      kv_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, cache.index))
      q_slots = cache.index + jnp.arange(t)
    k_all = v_all = None
    if cache is not None:
      k_all, v_all = cache.k, cache.v
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else (k_all, v_all, i, cache.index)
      if cfg.remat and cache is None:
        # Training: keep only each layer's input; recompute the rest in the backward pass.
        x, nk, nv = nnx.remat(_call_layer)(layer, x, positions, inv_freq, kv_mask, q_slots)
      else:
        x, nk, nv = layer(x, positions, inv_freq, kv_mask, q_slots, layer_cache)
      if cache is not None:
        k_all, v_all = nk, nv
    x = self.final_norm(x)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(k=k_all, v=v_all, mask=kv_mask, index=cache.index + t)
    return x, new_cache

  def logits_from_hidden(self, h: jax.Array) -> jax.Array:
    """h [..., D] -> fp32 logits [..., V]."""
    dt = jnp.dtype(self.cfg.dtype)
    if self.cfg.tie_embeddings:
      w = self.embed.get_value().astype(dt)
      logits = jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)
    else:
      w = self.lm_head.get_value().astype(dt)
      logits = jnp.einsum("...d,dv->...v", h, w, preferred_element_type=jnp.float32)
    return shard_activation(logits, ("batch", "length", "vocab"))

  def __call__(self, tokens, positions, attention_mask, cache: KVCache | None = None):
    """Returns (logits f32[B, T, V], updated cache or None)."""
    h, cache = self.hidden_states(tokens, positions, attention_mask, cache)
    return self.logits_from_hidden(h), cache


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """RoPE positions int32[B, T] for a (left- or right-) padded batch: 0 at the first real token."""
  m = attention_mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)
