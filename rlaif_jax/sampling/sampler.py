"""Batched autoregressive sampling: a jitted prefill and a jitted `lax.while_loop` decode over a
preallocated KV cache.

Design:
  * The parameters are an argument of the jitted functions (`nnx.split` graphdef + state), never
    closed over, so the RL trainer passes new weights every step without recompiling. Compiles
    happen once per (batch, prompt length, max_new_tokens, stop-id slots) shape; `generate`
    pads to buckets to keep that number small.
  * Prompts are left-padded so all rows share the cache index; RoPE positions come from the mask.
  * The decode state (`SamplerState`, KV cache included) is donated to the decode call, so XLA
    updates the cache in place.
  * Every sampling setting is a per-row traced array: greedy and sampled rows, different
    temperatures and per-row max_tokens mix in one batch.
  * Randomness: row b at step t draws with fold_in(split(key, B)[b], t), which does not depend on
    device count or sharding (threefry is partitionable), so a mesh run reproduces a 1-device run.
  * The loop exits as soon as every row has ended.

Under a mesh (`with jax.set_mesh(mesh):` and parameters sharded with `state_shardings`), rows are
split over the `data`/`fsdp` axes and the KV cache's kv heads over `tensor`, through the logical
axis rules of `rlaif_jax.sharding.mesh`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax.models.decoder import Decoder, KVCache, positions_from_mask
from rlaif_jax.sampling import completions as comp
from rlaif_jax.sampling import decode_step
from rlaif_jax.sampling.decode_step import StepHook, record
from rlaif_jax.sampling.logits_processing import SamplingArrays, SamplingParams
from rlaif_jax.sampling.state import GenerationOutput, SamplerState
from rlaif_jax.sharding import host
from rlaif_jax.sharding.mesh import shard_activation
from rlaif_jax.tokenizers.base import Tokenizer

_KV_AXES = ("batch", "kv_heads", "cache_length", "head_dim")  # one buffer per layer
_STOP_SLOTS = 8  # stop-id arrays are padded to a multiple of this, so their count rarely recompiles


def _shard_rows(x: jax.Array) -> jax.Array:
  return shard_activation(x, ("batch",) + (None,) * (x.ndim - 1))


def _shard_cache(cache: KVCache) -> KVCache:
  return cache.replace(k=tuple(shard_activation(k, _KV_AXES) for k in cache.k),
                       v=tuple(shard_activation(v, _KV_AXES) for v in cache.v),
                       mask=_shard_rows(cache.mask))


def cache_spans(max_new_tokens: int, grow_from: int | None) -> tuple[int, ...]:
  """The decode loop's segments, as the number of new tokens each one ends at.

  The KV cache of segment j has P + spans[j] - 1 slots, so early steps attend over fewer slots
  than the last ones: spans start at `grow_from` and double up to max_new_tokens (64, 128, 256,
  300 for 300 tokens). None or 0, or a start >= max_new_tokens: one segment over the whole
  cache.
  """
  if grow_from is not None and grow_from < 0:
    raise ValueError(f"grow_cache_from must be >= 1, or 0 / None for the whole cache, got "
                     f"{grow_from}")
  if not grow_from or grow_from >= max_new_tokens:
    return (max_new_tokens,)
  spans = [grow_from]
  while spans[-1] < max_new_tokens:
    spans.append(min(2 * spans[-1], max_new_tokens))
  return tuple(spans)


def _grow_cache(cache: KVCache, slots: int) -> KVCache:
  """The cache with empty (masked) slots appended up to `slots`."""
  extra = slots - cache.length
  if extra <= 0:
    return cache
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0)))
  return _shard_cache(cache.replace(k=tuple(map(pad, cache.k)), v=tuple(map(pad, cache.v)),
                                    mask=jnp.pad(cache.mask, ((0, 0), (0, extra)))))


def _row_keys(key: jax.Array, rows: int, n: int) -> jax.Array:
  """One key per output row: `split(key, rows)` for a single key; for one key per prompt
  (key[B]), row i*n + j gets fold_in(key[i], j), so a prompt's samples do not depend on which
  batch (or row) it lands in."""
  if key.ndim == 0:
    return jax.random.split(key, rows)
  per_sample = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(n)))
  return per_sample(key).reshape(rows)


def _prefill(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, mask: jax.Array,
             sampling: SamplingArrays, stop_ids: jax.Array, pad_id: jax.Array, key: jax.Array,
             max_new_tokens: int, n: int = 1, unstack: bool = True,
             first_span: int | None = None, penalties: bool = False, top_logprobs: int = 0,
             hook: jax.Array | None = None) -> SamplerState:
  """Runs the prompts i32[B, P] (left-padded, mask bool[B, P]) through the model into a fresh
  cache of P + first_span - 1 slots (first_span defaults to max_new_tokens; `_decode` grows the
  cache to P + max_new_tokens - 1) and samples the first new token of every row.

  With n > 1 each prompt is prefilled once and its cache rows and last logits are repeated n
  times (rows [i*n, (i+1)*n) share prompt i): the n samples of a GRPO group cost one prefill.
  `sampling` already has B * n rows. `unstack`: see `_decode`. `penalties`: keep the token
  counts [B, V] the penalties need; `top_logprobs`: record that many top log-probs per step;
  `hook`: i32[1] step-hook handle (`decode_step`) or None.
  """
  model = nnx.merge(graphdef, params)
  model = model.unstacked() if unstack else model
  b, p = tokens.shape
  tokens, mask = _shard_rows(tokens), _shard_rows(mask)
  positions = positions_from_mask(mask)
  span = max_new_tokens if first_span is None else min(first_span, max_new_tokens)
  cache = _shard_cache(KVCache.zeros(model.cfg, b, p + span - 1))
  hidden, cache = model.hidden_states(tokens, positions, mask, cache)
  logits = model.logits_from_hidden(hidden[:, -1:])[:, 0]  # only the last position is needed
  vocab = logits.shape[-1]
  seen = jnp.zeros((b, vocab if penalties else 0), bool)
  if penalties:
    seen = seen.at[jnp.arange(b)[:, None], tokens].max(mask)
  if n > 1:
    rep = lambda x: jnp.repeat(x, n, axis=0)
    cache = cache.replace(k=tuple(map(rep, cache.k)), v=tuple(map(rep, cache.v)),
                          mask=rep(cache.mask))
    logits, positions, mask, seen = rep(logits), rep(positions), rep(mask), rep(seen)
    b *= n
  cache, logits = _shard_cache(cache), _shard_rows(logits)
  empty = ~jnp.any(mask, axis=-1)  # padding rows added by bucketing: finished from the start
  zeros_f = _shard_rows(jnp.zeros((b, max_new_tokens), jnp.float32))
  state = SamplerState(
      cache=cache, tokens=_shard_rows(jnp.full((b, max_new_tokens), pad_id, jnp.int32)),
      logprobs=zeros_f, processed_logprobs=zeros_f, next_token=jnp.zeros((b,), jnp.int32),
      next_position=positions[:, -1] + 1, lengths=jnp.zeros((b,), jnp.int32), done=empty,
      stopped=jnp.zeros((b,), bool), step=jnp.zeros((), jnp.int32),
      keys=_row_keys(key, b, n), params=sampling, stop_ids=stop_ids, pad_id=pad_id,
      counts=_shard_rows(jnp.zeros(seen.shape, jnp.int32)), prompt_seen=_shard_rows(seen),
      top_ids=jnp.zeros((b, max_new_tokens, top_logprobs), jnp.int32),
      top_logprobs=jnp.zeros((b, max_new_tokens, top_logprobs), jnp.float32),
      hook=jnp.zeros((0,), jnp.int32) if hook is None else jnp.asarray(hook, jnp.int32))
  return record(state, logits)


def _decode(graphdef: nnx.GraphDef, params: nnx.State, state: SamplerState,
            unstack: bool = True, spans: tuple[int, ...] = (),
            prompt_len: int | None = None) -> SamplerState:
  """Feeds each row's last token and samples the next until every row is done or the buffers
  are full.

  `spans` (`cache_spans`; default one segment): segment j runs the steps up to spans[j] new
  tokens over a cache grown to P + spans[j] - 1 slots, so a step attends over the slots its
  segment can have filled rather than over the whole cache (a while_loop per segment; a row
  that ends early skips the later ones).

  Stacked (scanned) layers: with `unstack` they are sliced once here, outside the loop (one
  transient copy of the layer weights); without, each step slices them (no copy held; XLA:CPU
  then copies every layer's weights every step: 35 vs 26 ms per step at batch 32).

  `prompt_len` (the padded prompt width P) is needed when the state does not come straight
  from the prefill, i.e. when the caller runs the segments one call at a time.
  """
  model = nnx.merge(graphdef, params)
  if model.cfg.scan_layers and unstack:
    g, p = nnx.split(model.unstacked())
    model = nnx.merge(g, jax.lax.optimization_barrier(p))
  n = state.max_new_tokens
  ones = jnp.ones((state.tokens.shape[0], 1), bool)
  if prompt_len is None:
    prompt_len = state.cache.length - (spans[0] if spans else n) + 1

  def body(s: SamplerState) -> SamplerState:
    logits, cache = model(s.next_token[:, None], s.next_position[:, None], ones, s.cache)
    s = s.replace(cache=cache, next_position=s.next_position + 1)
    return record(s, logits[:, 0])

  for end in spans or (n,):
    state = state.replace(cache=_grow_cache(state.cache, prompt_len + end - 1))
    cond = lambda s, end=end: (s.step < end) & ~jnp.all(s.done)
    state = jax.lax.while_loop(cond, body, state)
  return state


def _output(state: SamplerState) -> GenerationOutput:
  return GenerationOutput(tokens=state.tokens, logprobs=state.logprobs,
                          processed_logprobs=state.processed_logprobs, lengths=state.lengths,
                          stopped=state.stopped, steps=state.step, top_ids=state.top_ids,
                          top_logprobs=state.top_logprobs)


# Module-level jits: the compile cache is shared by every Sampler with the same graphdef.
_prefill_jit = jax.jit(_prefill, static_argnums=(0,),
                       static_argnames=("max_new_tokens", "n", "unstack", "first_span",
                                        "penalties", "top_logprobs"))
_decode_jit = jax.jit(_decode, static_argnums=(0, 3, 4), donate_argnums=(2,))


def _decode_growing(graphdef: nnx.GraphDef, params: nnx.State, state: SamplerState,
                    cache: KVCache, unstack: bool, spans: tuple[int, ...],
                    prompt_len: int | None = None) -> SamplerState:
  """`_decode` with the first segment's cache passed apart from the (donated) rest of the
  state: the grown caches have other shapes, so donating the first one could not be used."""
  return _decode(graphdef, params, state.replace(cache=cache), unstack, spans, prompt_len)


_decode_growing_jit = jax.jit(_decode_growing, static_argnums=(0, 4, 5, 6), donate_argnums=(2,))

# A host check between decode segments: (tokens i32[R, N], lengths i32[R], done bool[R]) on the
# host -> bool[R], the rows to end now (e.g. their text holds a stop string).
StopCheck = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _decode_checked(graphdef: nnx.GraphDef, params: nnx.State, state: SamplerState,
                    unstack: bool, spans: tuple[int, ...], prompt_len: int,
                    stop_check: StopCheck) -> SamplerState:
  """Runs the segments one jitted call each and, between them, ends the rows `stop_check`
  names, so a row whose text reached a stop string stops decoding at the next segment boundary
  instead of running to its token limit (and a batch whose rows all ended stops)."""
  state = _decode_growing_jit(graphdef, params, state.replace(cache=None), state.cache, unstack,
                              spans[:1], prompt_len)
  for end in spans[1:]:
    tokens, lengths, done = host.to_host((state.tokens, state.lengths, state.done))
    if done.all():
      break
    end_now = np.asarray(stop_check(tokens, lengths, done), bool) & ~done
    if end_now.any():
      state = state.replace(done=jax.device_put(done | end_now, state.done.sharding))
    state = _decode_growing_jit(graphdef, params, state.replace(cache=None), state.cache, unstack,
                                (end,), prompt_len)
  return state


def decode_call(graphdef: nnx.GraphDef, params: nnx.State, state: SamplerState, unstack: bool,
                spans: tuple[int, ...]) -> tuple[Callable, tuple]:
  """(jitted decode function, its arguments) for a prefilled state; `fn(*args)` runs the loop
  and `fn.lower(*args)` compiles it (benchmarks)."""
  if len(spans) == 1:
    return _decode_jit, (graphdef, params, state, unstack, spans)
  return _decode_growing_jit, (graphdef, params, state.replace(cache=None), state.cache, unstack,
                               spans)
_output_jit = jax.jit(_output, donate_argnums=(0,))


def _prompt_keys(seed: int, rows: int, per_prompt: Sequence[SamplingParams],
                 prompt_seeds: Sequence[int] | None) -> jax.Array | int:
  """The key argument of `generate_ids` for `generate_encoded` (see there): `seed`, or one key
  per prompt row (`rows` of them, bucket rows included)."""
  if prompt_seeds is None and all(p.seed is None for p in per_prompt):
    return seed
  if prompt_seeds is not None and len(prompt_seeds) != len(per_prompt):
    raise ValueError(f"got {len(prompt_seeds)} prompt_seeds for {len(per_prompt)} prompts")
  # Bucket rows (no prompt) take seeds no real prompt uses; they produce nothing anyway.
  seeds = [int(x) for x in prompt_seeds] if prompt_seeds is not None else list(
      range(len(per_prompt)))
  seeds += [-1 - r for r in range(rows - len(per_prompt))]
  as_u32 = lambda xs: jnp.asarray(np.asarray(xs, np.int64) % (1 << 32), jnp.uint32)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), as_u32(seeds))
  own = [i for i, p in enumerate(per_prompt) if p.seed is not None]
  if own:  # a request's own seed: key(seed), whatever batch or row it lands in
    own_keys = jax.vmap(jax.random.key)(as_u32([per_prompt[i].seed for i in own]))
    keys = keys.at[np.asarray(own)].set(own_keys)
  return keys


def _check_left_padded(mask: np.ndarray) -> None:
  bad = np.nonzero(np.any(np.diff(mask.astype(np.int8), axis=1) < 0, axis=1))[0]
  if bad.size:
    raise ValueError(f"prompt_mask rows {bad[:8].tolist()} are not left-padded (a real token is "
                     "followed by padding); the sampler needs padding on the left")


def _as_key(key: jax.Array | int) -> jax.Array:
  if isinstance(key, (int, np.integer)):
    return jax.random.key(int(key))
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(key)
  return key


class Sampler:
  """Generates from a `Decoder`.

  Token level (RL rollouts): `generate_ids(model_or_params, prompt_tokens, prompt_mask, ...)`.
  Text level (CLI, server, judges): `generate(prompts, ...)`, needs a tokenizer.

  Args:
    model: the Decoder (its graphdef is kept; its current parameters are the default ones).
    tokenizer: needed by `generate`; its eos and stop_ids are the default stop ids.
    mesh: when given, every call runs under `jax.set_mesh(mesh)`; otherwise the caller's mesh
      context (if any) applies.
    prompt_bucket: `generate` pads prompt lengths to a multiple of this.
    unstack_layers: a scanned model's layers are sliced out of the stacked weights once per
      call (faster decode, one transient copy of the layer weights) rather than every step.
    grow_cache_from: the KV cache starts with room for this many new tokens and doubles up to
      max_new_tokens (`cache_spans`), so early decode steps attend over fewer slots; each growth
      copies the cache once (old and new buffers coexist for that copy) and each segment is its
      own compiled loop. None or 0: the whole cache from the start, one loop.
  """

  def __init__(self, model: Decoder, tokenizer: Tokenizer | None = None, *,
               mesh: jax.sharding.Mesh | None = None, prompt_bucket: int = 32,
               unstack_layers: bool = True, grow_cache_from: int | None = 64):
    self.unstack_layers = unstack_layers
    cache_spans(2, grow_cache_from)  # validates
    self.grow_cache_from = grow_cache_from
    self.graphdef, self.params = nnx.split(model)
    self.cfg = model.cfg
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.prompt_bucket = prompt_bucket
    self.stop_ids: tuple[int, ...] = ()
    if tokenizer is not None:
      self.stop_ids = tuple(dict.fromkeys([tokenizer.eos_id, *tokenizer.stop_ids]))
    self._seed_counter = itertools.count()

  def _mesh_context(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def _split(self, model_or_params) -> tuple[nnx.GraphDef, nnx.State]:
    if model_or_params is None:
      return self.graphdef, self.params
    if isinstance(model_or_params, nnx.Module):
      return nnx.split(model_or_params)
    return self.graphdef, model_or_params

  def generate_ids(self, model_or_params: Decoder | nnx.State | None, prompt_tokens,
                   prompt_mask, max_new_tokens: int,
                   sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
                   key: jax.Array | int = 0, *, n: int = 1,
                   stop_ids: Sequence[int] | None = None,
                   stop_check: StopCheck | None = None, top_logprobs: int = 0,
                   step_hook: np.ndarray | None = None) -> GenerationOutput:
    """Samples up to `max_new_tokens` per row.

    Args:
      model_or_params: a Decoder, or an `nnx.State` for this sampler's graphdef (e.g. the
        trainer's current parameters), or None for the parameters given at construction.
      prompt_tokens: int32[B, P], left-padded. prompt_mask: bool[B, P] (True on real tokens); a
        row with no real token produces nothing (length 0).
      max_new_tokens: static buffer size N (one compile per (B*n, P, N)).
      sampling: one SamplingParams for all rows, or one per prompt (stop strings are ignored
        here; they apply to text in `generate`).
      key: PRNG key or int seed; the same key gives the same tokens. Or one key per prompt
        (a key array [B]): then a prompt's samples depend only on its own key, not on the
        batch it is in (`generate_encoded(prompt_seeds=...)`).
      n: samples per prompt; output rows [i*n, (i+1)*n) belong to prompt i.
      stop_ids: ids that end a row; default the tokenizer's eos + stop_ids; () never stops early.
      stop_check: optional host check run between the growing cache's segments (`StopCheck`);
        the rows it returns end there. Only segment boundaries are checked, so it needs
        `grow_cache_from` (with one segment it never runs). `generate` passes one for stop
        strings.
      top_logprobs: K > 0 records each step's K most likely tokens and their log-probabilities
        (`GenerationOutput.top_ids / top_logprobs`; one compile per K).
      step_hook: a handle from `decode_step.register_hook`: that host function runs every step
        (grammar masks, cancelled rows). None: no host callback in the loop.
    Penalties (`SamplingParams.repetition_penalty` etc.) keep token counts [B*n, V] in the loop
    when any row uses one (one more compile for that case; the values are traced).
    Returns:
      GenerationOutput with device arrays of B*n rows.
    """
    graphdef, params = self._split(model_or_params)
    if isinstance(prompt_mask, np.ndarray):
      _check_left_padded(prompt_mask)
    if prompt_tokens.ndim != 2 or prompt_tokens.shape != prompt_mask.shape:
      raise ValueError(f"prompt_tokens {prompt_tokens.shape} and prompt_mask {prompt_mask.shape} "
                       "must both be [batch, prompt_len]")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if n < 1:
      raise ValueError(f"n must be >= 1, got {n}")
    b = prompt_tokens.shape[0]
    per_prompt = [sampling] * b if isinstance(sampling, SamplingParams) else list(sampling)
    if len(per_prompt) != b:
      raise ValueError(f"got {len(per_prompt)} SamplingParams for {b} prompts")
    arrays = SamplingArrays.from_params([p for p in per_prompt for _ in range(n)], max_new_tokens)
    ids = list(self.stop_ids if stop_ids is None else stop_ids)
    stop = np.full(comp.round_up(max(len(ids), 1), _STOP_SLOTS), -1, np.int32)
    stop[:len(ids)] = ids
    pad_id = np.int32(self.tokenizer.pad_id if self.tokenizer is not None else 0)
    tokens, mask = jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_mask, bool)
    spans = cache_spans(int(max_new_tokens), self.grow_cache_from)
    with self._mesh_context():
      state = _prefill_jit(graphdef, params, tokens, mask, arrays, stop, pad_id, _as_key(key),
                           max_new_tokens=int(max_new_tokens), n=int(n),
                           unstack=self.unstack_layers, first_span=spans[0],
                           penalties=any(p.penalized for p in per_prompt),
                           top_logprobs=int(top_logprobs), hook=step_hook)
      if stop_check is not None and len(spans) > 1:
        state = _decode_checked(graphdef, params, state, self.unstack_layers, spans,
                                int(tokens.shape[1]), stop_check)
      else:
        decode, args = decode_call(graphdef, params, state, self.unstack_layers, spans)
        state = decode(*args)
      return _output_jit(state)

  def generate(self, prompts: Sequence[comp.Prompt], max_new_tokens: int = 256,
               sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
               n: int = 1, seed: int | None = None, use_chat_template: bool = True,
               add_bos: bool = False, params: nnx.State | None = None,
               stop_ids: Sequence[int] | None = None) -> list[comp.Completion]:
    """Text in, `Completion`s out: len(prompts) * n of them, prompt-major.

    A str prompt is wrapped as one user message of the chat template (`use_chat_template`) or
    used verbatim; a message list always goes through the chat template. Stop strings
    (`SamplingParams.stop`) cut the decoded text, and a row whose text holds one stops decoding
    at the next segment boundary of the growing cache (`stop_check` of `generate_ids`). `seed` None draws a fresh seed
    from a per-sampler counter (0, 1, 2, ...), so repeated calls differ but a run is repeatable.
    The static sizes are bucketed (prompt count -> power of two, prompt length -> multiple of
    `prompt_bucket`, max_new_tokens -> power of two; each row still stops at its own limit).
    """
    if self.tokenizer is None:
      raise ValueError("Sampler.generate needs a tokenizer; pass tokenizer= to Sampler(...)")
    ids = comp.encode_prompts(self.tokenizer, prompts, use_chat_template, add_bos)
    return self.generate_encoded(ids, max_new_tokens, sampling, n=n, seed=seed, params=params,
                                 stop_ids=stop_ids)

  def generate_encoded(self, ids: Sequence[Sequence[int]], max_new_tokens: int = 256,
                       sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
                       *, n: int = 1, seed: int | None = None, params: nnx.State | None = None,
                       stop_ids: Sequence[int] | None = None,
                       prompt_seeds: Sequence[int] | None = None,
                       step_hook: StepHook | None = None) -> list[comp.Completion]:
    """`generate` for prompts already encoded (lists of ids, e.g. from `encode_prompts`).

    `prompt_seeds`: one int per prompt; prompt i then draws with fold_in(key(seed),
    prompt_seeds[i]) whatever batch it is in (a resumed batch job regenerates what an
    uninterrupted one wrote). Default: the batch's rows split one key, except prompts whose
    SamplingParams has a `seed`: they draw with key(that seed) whatever their batch.
    Rows with a `response_format` are constrained by a grammar (`grammar.GrammarHook`, a host
    step hook); `step_hook` (`decode_step.StepHook`) is another one to run every step (the
    server's streaming), after the grammar's. Completions carry `top_logprobs` when a prompt
    asked for them.
    """
    if self.tokenizer is None:
      raise ValueError("Sampler.generate needs a tokenizer; pass tokenizer= to Sampler(...)")
    if not ids:
      return []
    if not all(len(x) for x in ids):
      raise ValueError("every prompt needs at least one token")
    per_prompt = ([sampling] * len(ids) if isinstance(sampling, SamplingParams)
                  else list(sampling))
    if len(per_prompt) != len(ids):
      raise ValueError(f"got {len(per_prompt)} SamplingParams for {len(ids)} prompts")
    rows = comp.next_power_of_two(len(ids))
    length = comp.round_up(max(len(x) for x in ids), self.prompt_bucket)
    tokens, mask = comp.left_pad(ids, self.tokenizer.pad_id, length, rows)
    limits = [dataclasses.replace(p, max_tokens=min(p.max_tokens or max_new_tokens,
                                                    max_new_tokens)) for p in per_prompt]
    limits += [SamplingParams.greedy()] * (rows - len(ids))
    seed = next(self._seed_counter) if seed is None else seed
    key = _prompt_keys(seed, rows, per_prompt, prompt_seeds)
    row_stops = [p.stop for p in per_prompt for _ in range(n)]
    stop_check = None
    if any(row_stops):
      def stop_check(tokens: np.ndarray, lengths: np.ndarray, done: np.ndarray) -> np.ndarray:
        end = np.zeros(done.shape, bool)
        for r, stop in enumerate(row_stops):
          if stop and not done[r]:
            end[r] = comp.first_stop(self.tokenizer.decode(tokens[r, :lengths[r]]), stop) >= 0
        return end
    hooks = [] if step_hook is None else [step_hook]
    if any(p.response_format for p in per_prompt):
      from rlaif_jax.sampling import grammar  # the grammar library is an optional dependency
      hooks.insert(0, grammar.GrammarHook(self.tokenizer, [p.response_format for p in per_prompt
                                                           for _ in range(n)],
                                          self.cfg.vocab_size, self.stop_ids))
    handle = decode_step.register_hook(decode_step.chain(hooks)) if hooks else None
    try:
      out = self.generate_ids(
          params, tokens, mask, comp.next_power_of_two(max_new_tokens), limits, key, n=n,
          stop_ids=stop_ids, stop_check=stop_check, step_hook=handle,
          top_logprobs=max(p.top_logprobs for p in per_prompt)).to_numpy()
    finally:
      if handle is not None:
        decode_step.unregister_hook(handle)
    return [comp.completion_from_row(self.tokenizer, out, i * n + j, i, j, len(prompt_ids), p)
            for i, (prompt_ids, p) in enumerate(zip(ids, per_prompt)) for j in range(n)]

  def make_generate_fn(self, *, use_chat_template: bool = True
                       ) -> Callable[[list[list[dict]], int, float], list[str]]:
    """`generate_fn(conversations, max_tokens, temperature) -> texts` for
    `rlaif_jax.judging.backends.local.LocalSamplerBackend`."""
    def generate_fn(conversations: list[list[dict]], max_tokens: int,
                    temperature: float) -> list[str]:
      outs = self.generate(conversations, max_tokens, SamplingParams(temperature=temperature),
                           use_chat_template=use_chat_template)
      return [c.text for c in outs]
    return generate_fn
