"""The sampler's device state (carried through the decode `while_loop`) and its result."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from rlaif_jax.models.decoder import KVCache
from rlaif_jax.sampling.logits_processing import SamplingArrays
from rlaif_jax.sharding import host


@struct.dataclass
class SamplerState:
  """Everything the decode loop reads and writes. B rows, N = max_new_tokens.

  cache: the KV cache, prompt already written; P + N - 1 slots once `_decode` has grown it
    (fewer before, see `cache_spans`).
  tokens: i32[B, N] sampled ids, `pad_id` after a row ends.
  logprobs / processed_logprobs: f32[B, N] (see `sample_step`), 0 after a row ends.
  next_token: i32[B] the last sampled token, fed to the model in the next step.
  next_position: i32[B] its RoPE position.
  lengths: i32[B] tokens generated so far per row (the stop token included).
  done: bool[B] row has ended (stop id, its own max_tokens, or an empty prompt).
  stopped: bool[B] row ended on a stop id.
  step: i32[] number of decode steps taken (== max(lengths) while any row is running).
  keys: [B] one PRNG key per row; step t uses fold_in(keys[b], t).
  params: per-row SamplingArrays.
  stop_ids: i32[S] ids that end a row (-1 = unused slot).
  pad_id: i32[] written into `tokens` after a row ends.
  counts: i32[B, V] how often each token was sampled per row, prompt_seen: bool[B, V] the row's
    prompt tokens; both [B, 0] when no row has a penalty (then they are not maintained).
  top_ids / top_logprobs: i32 / f32[B, N, K] the K most likely tokens of each step and their
    log-probabilities (raw logits); K = 0 when not requested.
  hook: i32[1] handle of the host step hook (`decode_step`), or i32[0] for none.
  """
  cache: KVCache
  tokens: jax.Array
  logprobs: jax.Array
  processed_logprobs: jax.Array
  next_token: jax.Array
  next_position: jax.Array
  lengths: jax.Array
  done: jax.Array
  stopped: jax.Array
  step: jax.Array
  keys: jax.Array
  params: SamplingArrays
  stop_ids: jax.Array
  pad_id: jax.Array
  counts: jax.Array
  prompt_seen: jax.Array
  top_ids: jax.Array
  top_logprobs: jax.Array
  hook: jax.Array

  @property
  def max_new_tokens(self) -> int:
    return self.tokens.shape[1]


@struct.dataclass
class GenerationOutput:
  """What `Sampler.generate_ids` returns (device arrays; rows in input order, with n samples
  per prompt the rows of prompt i are [i * n, (i + 1) * n)).

  tokens: i32[B, N] response ids only; the first `lengths[b]` are real (a stop id that ended
    the row is included as the last real token), the rest are `pad_id`.
  logprobs: f32[B, N] log pi(token) under the unmodified model (log_softmax of the raw logits,
    temperature 1, no top-k/top-p), 0 on padding: the policy log-probability RL needs.
  processed_logprobs: f32[B, N] log-probability under the distribution sampled from
    (temperature/top-k/top-p applied; 0 for greedy rows and on padding).
  lengths: i32[B]; stopped: bool[B] (True: ended on a stop id -> finish_reason "stop").
  steps: i32[] tokens sampled per row before the loop exited (== max(lengths) unless every row
    was empty): the decode loop stops as soon as all rows are done.
  top_ids / top_logprobs: i32 / f32[B, N, K]: each step's K most likely tokens under the raw
    logits and their log-probabilities (K = 0 unless `generate_ids(top_logprobs=K)`).
  """
  tokens: jax.Array
  logprobs: jax.Array
  processed_logprobs: jax.Array
  lengths: jax.Array
  stopped: jax.Array
  steps: jax.Array
  top_ids: jax.Array
  top_logprobs: jax.Array

  @property
  def response_mask(self) -> jax.Array:
    """bool[B, N]: True on real response tokens."""
    return jnp.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]

  def to_numpy(self) -> "GenerationOutput":
    """The whole output on the host (gathered from every process in a multi-host run)."""
    return host.to_host(self)
