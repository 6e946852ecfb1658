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

from rlaif_jax.models import length_attention, splash
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.sharding.mesh import shard_activation

_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


@struct.dataclass
class KVCache:
  """Preallocated keys/values for incremental decoding.

  k, v: one [B, K, S, E] buffer per layer (tuples of L); mask: bool[B, S] (slot holds a real
  token); index: int32[] next free slot. Left-padded batches share `index`, so slots line up
  across the batch.

  The decode loop reads the whole cache every step, so its layout avoids copies: one buffer per
  layer is updated in place and read whole by the attention dots (slicing a layer out of a
  stacked [L, ...] buffer made XLA copy it every step: 49 vs 30 ms per step at 320 slots on CPU),
  and slots sit next to the head dim so [B, K, S, E] feeds both contractions untransposed.
  """
  k: jax.Array
  v: jax.Array
  mask: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> "KVCache":
    dtype = dtype or jnp.dtype(cfg.dtype)
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    layers = range(cfg.num_layers)
    return cls(k=tuple(jnp.zeros(shape, dtype) for _ in layers),
               v=tuple(jnp.zeros(shape, dtype) for _ in layers),
               mask=jnp.zeros((batch, length), bool), index=jnp.zeros((), jnp.int32))

  @property
  def length(self) -> int:
    return self.k[0].shape[2]


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

    layer_cache: None (keys are the T new tokens, S == T) or (k_cache, v_cache, index) with this
    layer's [B, K, S, E] buffers. Returns (out [B, T, D], new k_cache, new v_cache) (the latter
    two None without a cache).
    """
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    bias = lambda name: getattr(self, name) if cfg.qkv_bias else None
    q = apply_rope(self._project(x, self.wq, bias("bq"), dt), positions, inv_freq)
    k = apply_rope(self._project(x, self.wk, bias("bk"), dt), positions, inv_freq)
    v = self._project(x, self.wv, bias("bv"), dt)
    rows = rows_axis(x)
    q = shard_activation(q, (rows, "length", "heads", "head_dim"))
    k = shard_activation(k, (rows, "length", "kv_heads", "head_dim"))
    v = shard_activation(v, (rows, "length", "kv_heads", "head_dim"))
    b, t = x.shape[:2]
    wo = self.wo.get_value().astype(dt).reshape(cfg.num_heads * cfg.head_dim, cfg.hidden_size)
    if layer_cache is None and cfg.attention_impl == "splash":
      out = splash.attention(q, k, v, kv_mask).reshape(b, t, cfg.num_heads * cfg.head_dim)
      return jnp.einsum("btf,fd->btd", out, wo), None, None
    if layer_cache is None and cfg.attention_impl == "cudnn":
      # Flash attention on NVIDIA GPUs: padding as sequence lengths (rows rotated so their real
      # tokens come first; cuDNN takes no [B, 1, 1, S] key mask).
      out = length_attention.attention(q, k, v, kv_mask, "cudnn")
      out = out.reshape(b, t, cfg.num_heads * cfg.head_dim)
      return jnp.einsum("btf,fd->btd", out, wo), None, None
    if layer_cache is None and cfg.attention_impl == "xla":
      # Cache-free (training, scoring): jax.nn.dot_product_attention's XLA path; causal by
      # slot, padded keys masked (left padding included).
      out = jax.nn.dot_product_attention(q, k, v, mask=kv_mask[:, None, None, :], is_causal=True,
                                         implementation="xla")
      out = out.reshape(b, t, cfg.num_heads * cfg.head_dim)
      return jnp.einsum("btf,fd->btd", out, wo), None, None
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, E], the cache layout
    new_k = new_v = None
    if layer_cache is not None:
      k_cache, v_cache, index = layer_cache
      new_k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, index, 0))
      new_v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0))
      k, v = new_k.astype(dt), new_v.astype(dt)
    s = k.shape[2]
    g = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(b, t, cfg.num_kv_heads, g, cfg.head_dim)
    logits = jnp.einsum("btkge,bkse->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(cfg.head_dim)
    causal = jnp.arange(s)[None, :] <= q_slots[:, None]  # [T, S]
    mask = causal[None, None, None] & kv_mask[:, None, None, None, :]
    probs = jax.nn.softmax(jnp.where(mask, logits, _NEG_INF), axis=-1).astype(dt)
    # The dot writes its natural [B, K, G, T, E] order; asking it for [B, T, K, G, E] directly
    # ran 15x slower on CPU at 320 slots. The transpose after it touches only T rows.
    out = jnp.einsum("bkgts,bkse->bkgte", probs, v).transpose(0, 3, 1, 2, 4)
    out = out.reshape(b, t, cfg.num_heads * cfg.head_dim)
    # One [B*T, H*E] x [H*E, D] matmul: contracting (heads, head_dim) as two axes lets XLA pick
    # a transposed copy of the weight instead (seen on CPU: a [D, D] copy per layer per step).
    out = jnp.einsum("btf,fd->btd", out, wo)
    return out, new_k, new_v


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
    h = shard_activation(jax.nn.silu(gate) * up, (rows_axis(x), "length", "mlp"))
    return jnp.einsum("btf,fd->btd", h, self.w_down.get_value().astype(dt))


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    self.attn = Attention(cfg, rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions, inv_freq, kv_mask, q_slots, layer_cache):
    h, k_cache, v_cache = self.attn(self.input_norm(x), positions, inv_freq, kv_mask, q_slots,
                                    layer_cache)
    x = x + h
    x = x + self.mlp(self.post_attn_norm(x))
    return shard_activation(x, (rows_axis(x), "length", "embed")), k_cache, v_cache


def rows_axis(x: jax.Array) -> str:
  """The logical name of the rows of an activation [B, T, ...]: "decode_batch" for one token
  per row (a decode step; sharding/mesh.py splits those rows over `data` only, so every FSDP
  shard multiplies all rows by its own slice of the weights and the partial sums are reduced,
  instead of all-gathering every weight each step), "batch" otherwise."""
  return "decode_batch" if x.shape[1] == 1 else "batch"


def _after(layer: nnx.Module, gate: jax.Array) -> nnx.Module:
  """`layer` whose weights XLA may read only once `gate` is computed (an optimization barrier
  over both): orders the layers' weight fetches after the activations they follow."""
  graphdef, state = nnx.split(layer)
  state, _ = jax.lax.optimization_barrier((state, gate))
  return nnx.merge(graphdef, state)


def _call_layer(layer, x, positions, inv_freq, kv_mask, q_slots):
  return layer(x, positions, inv_freq, kv_mask, q_slots, None)


def remat_policy(cfg: ModelConfig):
  """The jax.checkpoint policy of ModelConfig.remat_policy (None: save nothing but the input)."""
  if cfg.remat_policy == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return None


def stacked_layers(cfg: ModelConfig, rngs: nnx.Rngs) -> DecoderLayer:
  """One DecoderLayer whose every parameter has a leading [num_layers] axis named "layers".

  Layer i holds exactly what `DecoderLayer(cfg, rngs)` would draw as the i-th layer of the
  unrolled model, so both layouts initialise the same weights for a seed.
  """
  layers = [DecoderLayer(cfg, rngs) for _ in range(cfg.num_layers)]
  graphdef = nnx.graphdef(layers[0])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(l) for l in layers])
  for _, var in nnx.to_flat_state(stacked):
    var.set_metadata(axes=("layers",) + tuple(var.get_metadata()["axes"]))
  return nnx.merge(graphdef, stacked)


def layer_slice(layers: DecoderLayer, i: int) -> DecoderLayer:
  """Layer i of a stacked DecoderLayer (`stacked_layers`)."""
  graphdef, state = nnx.split(layers)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


class Decoder(nnx.Module):
  """Token ids -> next-token logits, with an optional KV cache."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd, 0.02)
    if cfg.scan_layers:
      self.layers = stacked_layers(cfg, rngs)
    else:
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
    x = shard_activation(x, (rows_axis(x), "length", "embed"))
    inv_freq = rope_inv_freq(cfg)
    t = tokens.shape[1]
    if cache is None:
      kv_mask, q_slots = attention_mask, jnp.arange(t)
    else:
      kv_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, cache.index))
      q_slots = cache.index + jnp.arange(t)
    if cfg.scan_layers and cache is None:
      x = self._scan_layers(x, positions, inv_freq, kv_mask, q_slots)
      return self.final_norm(x), None
    new_k, new_v = [], []
    layers = (self.layers if not cfg.scan_layers
              else [layer_slice(self.layers, i) for i in range(cfg.num_layers)])
    gate = x
    for i, layer in enumerate(layers):
      layer_cache = None if cache is None else (cache.k[i], cache.v[i], cache.index)
      if cache is not None:
        # Inference: layer i's weights pass a barrier with layer i-1's input, so XLA fetches
        # (FSDP: all-gathers) them at most one layer ahead instead of every layer's at once.
        layer, gate = _after(layer, gate), x
      if cfg.remat and cache is None:
        # Training: keep only each layer's input; recompute the rest in the backward pass.
        x, nk, nv = nnx.remat(_call_layer, policy=remat_policy(cfg))(
            layer, x, positions, inv_freq, kv_mask, q_slots)
      else:
        x, nk, nv = layer(x, positions, inv_freq, kv_mask, q_slots, layer_cache)
      new_k.append(nk)
      new_v.append(nv)
    x = self.final_norm(x)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), mask=kv_mask, index=cache.index + t)
    return x, new_cache

  def unstacked(self) -> "Decoder":
    """The same model with a list of layers (self if it already has one).

    Decoding reads every weight each step; a scanned model would slice each layer out of the
    stacked parameters inside the decode loop, which XLA copies every step (CPU: 35 vs 26 ms per
    step at batch 32). The sampler calls this once per generate call, outside its loop, at the
    cost of one transient copy of the layer weights.
    """
    if not self.cfg.scan_layers:
      return self
    cfg = self.cfg.replace(scan_layers=False)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    own = {path: var for path, var in nnx.to_flat_state(nnx.state(self))}
    flat = []
    for path, var in nnx.to_flat_state(abstract):
      if path[0] == "layers":
        value = own[("layers",) + tuple(path[2:])].get_value()[int(path[1])]
      else:
        value = own[path].get_value()
      flat.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))

  def _scan_layers(self, x, positions, inv_freq, kv_mask, q_slots):
    """The cache-free forward (training, scoring) as a `lax.scan` over the stacked layers."""
    graphdef, state = nnx.split(self.layers)

    def body(h, layer_state):
      h, _, _ = nnx.merge(graphdef, layer_state)(h, positions, inv_freq, kv_mask, q_slots, None)
      return h, None

    if self.cfg.remat:  # keep only each layer's input; recompute the rest in the backward pass
      body = jax.checkpoint(body, prevent_cse=False, policy=remat_policy(self.cfg))
    x, _ = jax.lax.scan(body, x, state)
    return x

  def logits_from_hidden(self, h: jax.Array) -> jax.Array:
    """h [..., D] -> fp32 logits [..., V]."""
    dt = jnp.dtype(self.cfg.dtype)
    if self.cfg.tie_embeddings:
      w = self.embed.get_value().astype(dt)
      logits = jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)
    else:
      w = self.lm_head.get_value().astype(dt)
      logits = jnp.einsum("...d,dv->...v", h, w, preferred_element_type=jnp.float32)
    return shard_activation(logits, (rows_axis(logits), "length", "vocab"))

  def __call__(self, tokens, positions, attention_mask, cache: KVCache | None = None):
    """Returns (logits f32[B, T, V], updated cache or None)."""
    h, cache = self.hidden_states(tokens, positions, attention_mask, cache)
    return self.logits_from_hidden(h), cache


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """RoPE positions int32[B, T] for a (left- or right-) padded batch: 0 at the first real token."""
  m = attention_mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)
