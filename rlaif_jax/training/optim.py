"""The optimizer: AdamW with warmup + decay, global-norm clipping, a weight-decay mask, and exact
gradient accumulation over microbatches.

Gradient accumulation is an explicit `lax.scan` over microbatches rather than optax.MultiSteps:
MultiSteps averages per-microbatch mean gradients, which is not the big-batch gradient when the
loss is a mean over a varying number of tokens per microbatch. Here each microbatch gradient is
weighted by the loss's own normaliser (`aux["loss_weight"]`, e.g. its number of response tokens),
so the accumulated gradient is that of the loss over the whole batch.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlaif_jax.sharding import mesh as mesh_lib

DECAY_KINDS = ("cosine", "linear", "constant")
# Parameters whose path matches this are not weight-decayed: norm scales and biases (`bias`,
# `*_bias` such as the scalar head's `head_bias`, and the attention biases `bq`/`bk`/`bv`).
DEFAULT_NO_DECAY = r"(^|/)(scale|([a-z0-9_]*_)?bias|b[qkv]|[a-z_]*norm[a-z_]*)(/|$)"
LOSS_WEIGHT_KEY = "loss_weight"

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def lr_schedule(peak_lr: float, total_steps: int, warmup_steps: int = 0, decay: str = "cosine",
                end_lr_ratio: float = 0.0) -> optax.Schedule:
  """Learning rate at optimizer step s (0-based, the s-th update).

  Warmup: peak * (s + 1) / warmup_steps for s < warmup_steps (the first update is not wasted at
  lr 0). Then, with p = (s - warmup) / (total_steps - warmup) clipped to [0, 1] and
  end = peak * end_lr_ratio: cosine end + (peak - end) (1 + cos(pi p)) / 2, linear
  peak + (end - peak) p, or constant peak.
  """
  if decay not in DECAY_KINDS:
    raise ValueError(f"optim.decay={decay!r} is not one of {DECAY_KINDS}")
  if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
    raise ValueError(f"optim: need 0 <= warmup_steps ({warmup_steps}) <= total_steps "
                     f"({total_steps}) and total_steps >= 1")
  end = peak_lr * end_lr_ratio
  decay_len = max(total_steps - warmup_steps, 1)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32)
    warm = peak_lr * (s + 1.0) / max(warmup_steps, 1)
    p = jnp.clip((s - warmup_steps) / decay_len, 0.0, 1.0)
    if decay == "cosine":
      after = end + (peak_lr - end) * 0.5 * (1.0 + jnp.cos(math.pi * p))
    elif decay == "linear":
      after = peak_lr + (end - peak_lr) * p
    else:
      after = jnp.asarray(peak_lr, jnp.float32)
    return jnp.where(s < warmup_steps, warm, after)

  return schedule


def path_name(path: tuple) -> str:
  """'layers/0/attn/bq' for a key path (the trailing `.value` of nnx Variables is dropped)."""
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
    parts.append(str(name))
  if parts and parts[-1] == "value":
    parts.pop()
  return "/".join(parts)


def weight_decay_mask(params: Any, no_decay_regex: str = DEFAULT_NO_DECAY) -> Any:
  """Bool tree like `params`: True where weight decay applies (not norms, not biases)."""
  pattern = re.compile(no_decay_regex)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: pattern.search(path_name(path)) is None, params)


def make_optimizer(peak_lr: float, total_steps: int, *, warmup_steps: int = 0,
                   decay: str = "cosine", end_lr_ratio: float = 0.0, b1: float = 0.9,
                   b2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.0,
                   max_grad_norm: float = 1.0, no_decay_regex: str = DEFAULT_NO_DECAY
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (clip-by-global-norm -> AdamW with a decay mask, its learning-rate schedule).

  max_grad_norm <= 0 disables clipping. Moments are kept in the parameters' dtype (fp32 master
  weights when ModelConfig.param_dtype is float32).
  """
  schedule = lr_schedule(peak_lr, total_steps, warmup_steps, decay, end_lr_ratio)
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=lambda p: weight_decay_mask(p, no_decay_regex))
  clip = optax.clip_by_global_norm(max_grad_norm) if max_grad_norm > 0 else optax.identity()
  return optax.chain(clip, adamw), schedule


def optimizer_from_config(optim_cfg: Any, total_steps: int
                          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """make_optimizer from a ConfigDict with the fields of configs/common.optim_config()."""
  return make_optimizer(
      optim_cfg.lr, total_steps, warmup_steps=optim_cfg.warmup_steps, decay=optim_cfg.decay,
      end_lr_ratio=optim_cfg.end_lr_ratio, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
      weight_decay=optim_cfg.weight_decay, max_grad_norm=optim_cfg.max_grad_norm,
      no_decay_regex=optim_cfg.get("no_decay_regex", DEFAULT_NO_DECAY))


def split_microbatches(batch: dict[str, jax.Array], num_microbatches: int,
                       mesh: Mesh | None = None) -> dict[str, jax.Array]:
  """[B, ...] leaves -> [M, B / M, ...]; microbatch j holds rows j, M + j, 2M + j, ...

  Strided rows keep every microbatch spread over the devices that hold the batch (a contiguous
  split would put whole microbatches on single devices).
  """
  def split(x):
    b = x.shape[0]
    if b % num_microbatches:
      raise ValueError(f"batch size {b} is not divisible by num_microbatches={num_microbatches}")
    y = jnp.swapaxes(x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:]), 0, 1)
    if mesh is not None:
      spec = PartitionSpec(None, *mesh_lib.logical_to_spec(("batch",)))
      y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
    return y
  return jax.tree.map(split, batch)


def accumulated_value_and_grad(loss_fn: LossFn, params: Any, batch: dict[str, jax.Array],
                               rng: jax.Array, num_microbatches: int = 1,
                               mesh: Mesh | None = None
                               ) -> tuple[jax.Array, dict[str, jax.Array], Any]:
  """Loss, aux and gradient of `loss_fn(params, batch, rng)` over the whole batch.

  loss_fn returns (scalar loss, aux dict of scalars). With M > 1 microbatches, microbatch i gets
  rng fold_in(rng, i) and weight w_i = aux["loss_weight"] (1 when absent); the results are
  loss = sum w_i L_i / sum w_i, grad = sum w_i g_i / sum w_i, aux = w-weighted means. This equals
  the big-batch loss when the loss is a mean over the units counted by loss_weight.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_microbatches == 1:
    (loss, aux), grads = grad_fn(params, batch, rng)
    return loss, aux, grads
  micro = split_microbatches(batch, num_microbatches, mesh)

  def body(carry, xs):
    i, mb = xs
    (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    w = jax.lax.stop_gradient(jnp.asarray(aux.get(LOSS_WEIGHT_KEY, 1.0), jnp.float32))
    g_sum, l_sum, a_sum, w_sum = carry
    g_sum = jax.tree.map(lambda acc, g: acc + w * g.astype(acc.dtype), g_sum, grads)
    a_sum = {k: a_sum[k] + w * jnp.asarray(v, jnp.float32) for k, v in aux.items()}
    return (g_sum, l_sum + w * loss, a_sum, w_sum + w), None

  aux_shape = jax.eval_shape(lambda: loss_fn(params, jax.tree.map(lambda x: x[0], micro), rng)[1])
  zeros_aux = {k: jnp.zeros((), jnp.float32) for k in aux_shape}
  zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  init = (zeros_g, jnp.zeros((), jnp.float32), zeros_aux, jnp.zeros((), jnp.float32))
  (g_sum, l_sum, a_sum, w_sum), _ = jax.lax.scan(
      body, init, (jnp.arange(num_microbatches), micro))
  grads = jax.tree.map(lambda g, p: (g / w_sum).astype(p.dtype), g_sum, params)
  aux = {k: v / w_sum for k, v in a_sum.items()}
  if LOSS_WEIGHT_KEY in aux:
    aux[LOSS_WEIGHT_KEY] = w_sum  # the batch's total weight, as a single step would report it
  return l_sum / w_sum, aux, grads
