"""One sampling step of the decode loop (`record`) and the host hook it may call every step.

A *step hook* is a host function that runs inside the jitted decode loop (through
`jax.experimental.io_callback`) once per step, before the step's token is drawn. It sees the
token drawn at the previous step and returns, for the step about to run, a packed bitmask of the
allowed tokens per row (grammar-constrained decoding) and the rows to end now (clients that went
away). The server uses it for streaming, disconnects and structured output. Hooks are
registered in a module-level table and the loop carries only an integer handle, so changing the
hook never recompiles; a batch without a hook (handle array of shape [0]) has no callback at
all. Cost: one device -> host -> device round trip per step (on CPU ~tens of microseconds; on an
accelerator it also serializes the loop with the host).
"""
from __future__ import annotations

import functools
import itertools
import threading
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from rlaif_jax.sampling.logits_processing import sample_step
from rlaif_jax.sampling.state import SamplerState

# hook(step, prev_tokens i32[B], lengths i32[B], done bool[B], bitmask i32[B, W] (all ones, to
# fill in place), cancel bool[B] (all False, to fill), prev: PrevLogprobs) -> None.
# `prev_tokens[r]` is row r's latest token when lengths[r] > 0 (it is token number
# lengths[r] - 1 of the row); `prev` holds that token's recorded log-probs.
StepHook = Callable[..., None]


class PrevLogprobs(NamedTuple):
  """The log-probs the loop recorded for each row's latest token (`prev_tokens`): `chosen`
  f32[B] (of the raw model distribution) and its top-k, `top_ids` i32[B, K] / `top_logprobs`
  f32[B, K] (K = 0 when no row asked for top log-probs)."""
  chosen: np.ndarray
  top_ids: np.ndarray
  top_logprobs: np.ndarray

_HOOKS: dict[int, StepHook] = {}
_HOOKS_LOCK = threading.Lock()
_NEXT_HANDLE = itertools.count(1)


def register_hook(hook: StepHook) -> np.ndarray:
  """Registers `hook`; returns the handle array (i32[1]) to pass as `generate_ids(step_hook=)`.
  Call `unregister_hook` with it when the generation is over."""
  with _HOOKS_LOCK:
    handle = next(_NEXT_HANDLE) % (1 << 31)
    _HOOKS[handle] = hook
  return np.asarray([handle], np.int32)


def unregister_hook(handle: np.ndarray) -> None:
  with _HOOKS_LOCK:
    _HOOKS.pop(int(np.asarray(handle).reshape(-1)[0]), None)


def chain(hooks: list[StepHook]) -> StepHook:
  """One hook running `hooks` in order on the same bitmask and cancel arrays."""
  if len(hooks) == 1:
    return hooks[0]

  def run(step, prev_tokens, lengths, done, bitmask, cancel, prev):
    for hook in hooks:
      hook(step, prev_tokens, lengths, done, bitmask, cancel, prev)
  return run


def bitmask_words(vocab_size: int) -> int:
  return (vocab_size + 31) // 32


def _dispatch(words: int, handle, step, prev_tokens, lengths, done, chosen, top_ids, top_lps):
  """Host side of the io_callback: runs the registered hook on numpy copies."""
  rows = prev_tokens.shape[0]
  bitmask = np.full((rows, words), -1, np.int32)
  cancel = np.zeros((rows,), bool)
  hook = _HOOKS.get(int(handle))
  if hook is not None:  # a hook removed mid-run (its request failed): nothing constrained
    hook(int(step), np.asarray(prev_tokens), np.asarray(lengths), np.asarray(done), bitmask,
         cancel, PrevLogprobs(np.asarray(chosen), np.asarray(top_ids), np.asarray(top_lps)))
  return bitmask, cancel


def _call_hook(state: SamplerState, vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """(allowed bool[B, V], cancel bool[B]) from the state's hook."""
  b = state.next_token.shape[0]
  words = bitmask_words(vocab_size)
  shapes = (jax.ShapeDtypeStruct((b, words), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.bool_))

  col = jnp.maximum(state.step - 1, 0)  # the step that drew next_token
  chosen = jax.lax.dynamic_index_in_dim(state.logprobs, col, axis=1, keepdims=False)
  top_ids = jax.lax.dynamic_index_in_dim(state.top_ids, col, axis=1, keepdims=False)
  top_lps = jax.lax.dynamic_index_in_dim(state.top_logprobs, col, axis=1, keepdims=False)
  bitmask, cancel = io_callback(functools.partial(_dispatch, words), shapes, state.hook[0],
                                state.step, state.next_token, state.lengths, state.done,
                                chosen, top_ids, top_lps, ordered=False)
  return unpack_bitmask(bitmask, vocab_size), cancel


def unpack_bitmask(bitmask: jax.Array, vocab_size: int) -> jax.Array:
  """i32[B, ceil(V / 32)] (bit j of word w = token 32 w + j, as xgrammar packs it) ->
  bool[B, V]."""
  v = jnp.arange(vocab_size, dtype=jnp.int32)
  words = jnp.take(bitmask, v // 32, axis=1)
  return ((words >> (v % 32)) & 1).astype(bool)


def record(state: SamplerState, logits: jax.Array) -> SamplerState:
  """Samples token number `state.step` from logits f32[B, V] and updates the bookkeeping
  (tokens, log-probs, top log-probs, token counts, stop ids, the step hook)."""
  step = state.step
  keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys, step)
  logits = logits.astype(jnp.float32)
  b, vocab = logits.shape
  done = state.done
  allowed = None
  if state.hook.shape[0]:
    allowed, cancel = _call_hook(state, vocab)
    done = done | cancel
  penalized = state.counts.shape[1] > 0
  tok, lp, plp = sample_step(keys, logits, state.params,
                             state.counts if penalized else None,
                             state.prompt_seen if penalized else None, allowed)
  running = ~done
  tok = jnp.where(running, tok, state.pad_id)
  lp, plp = jnp.where(running, lp, 0.0), jnp.where(running, plp, 0.0)

  def put(buf: jax.Array, col: jax.Array) -> jax.Array:
    col = col[:, None].astype(buf.dtype)
    return jax.lax.dynamic_update_slice(buf, col, (0, step) + (0,) * (buf.ndim - 2))

  counts, top_ids, top_lps = state.counts, state.top_ids, state.top_logprobs
  if penalized:
    counts = counts.at[jnp.arange(b), tok].add(running.astype(counts.dtype))
  if top_ids.shape[2]:
    values, ids = jax.lax.top_k(logits, top_ids.shape[2])
    values = values - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    top_ids = put(top_ids, jnp.where(running[:, None], ids, 0))
    top_lps = put(top_lps, jnp.where(running[:, None], values, 0.0))
  lengths = state.lengths + running.astype(jnp.int32)
  hit_stop = running & jnp.any(tok[:, None] == state.stop_ids[None, :], axis=-1)
  if state.params.stop_token_ids is not None:
    hit_stop |= running & jnp.any(tok[:, None] == state.params.stop_token_ids, axis=-1)
  done = done | hit_stop | (lengths >= state.params.max_tokens)
  return state.replace(tokens=put(state.tokens, tok), logprobs=put(state.logprobs, lp),
                       processed_logprobs=put(state.processed_logprobs, plp), next_token=tok,
                       lengths=lengths, done=done, stopped=state.stopped | hit_stop,
                       step=step + 1, counts=counts, top_ids=top_ids, top_logprobs=top_lps)
