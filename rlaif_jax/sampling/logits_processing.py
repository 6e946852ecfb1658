"""Per-row sampling parameters and the pure logits -> token step (penalties, grammar mask,
greedy, temperature, min-p, top-k, top-p).

Every parameter is a traced per-row array, so one compiled decode loop serves any mix of greedy
and sampled rows (the server batches requests with different settings) and RL steps that change
the temperature or a penalty never recompile.

Order of operations (vLLM's): repetition penalty (tokens seen in prompt + output: a positive
logit is divided by it, a negative one multiplied), frequency and presence penalties (output
tokens: logit -= frequency * count + presence * [count > 0]), the grammar mask (disallowed
tokens -> -inf); greedy rows take the argmax of these logits. Sampled rows then divide by the
temperature and filter: min-p (keep p >= min_p * p_max), top-k on what is left, top-p on the
min-p/top-k-filtered distribution. The filters are computed on the sorted row and turned into
one logit threshold; every token whose logit reaches the threshold is kept, so tokens tied with
the last kept token are all kept and the result does not depend on how the sort orders ties.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

_NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How one prompt is sampled (host-side description).

  temperature: 0 means greedy (argmax of the raw logits); > 0 divides the logits.
  top_k: keep the k most likely tokens (ties at the k-th logit included); 0 = off.
  top_p: nucleus mass in (0, 1]; 1 = off.
  max_tokens: this row's own limit on new tokens (None = the call's `max_new_tokens`).
  stop: strings that end the text; checked on the host after decoding (the text is cut before
    the first occurrence and finish_reason becomes "stop").
  repetition_penalty: > 0, 1 = off (HF / vLLM semantics, over prompt + output tokens).
  presence_penalty / frequency_penalty: in [-2, 2], 0 = off (OpenAI / vLLM, output tokens).
  min_p: in [0, 1], 0 = off.
  seed: this prompt's samples depend only on it (and the sample index), not on its batch.
  stop_token_ids: ids that end this row, besides the sampler's (eos, end of turn).
  top_logprobs: record the log-probabilities of this many most likely tokens per step (0 = off).
  response_format: None, or ("json_object", "") or ("json_schema", schema as JSON text): the
    tokens are constrained to that grammar (`rlaif_jax.sampling.grammar`).
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_tokens: int | None = None
  stop: tuple[str, ...] = ()
  repetition_penalty: float = 1.0
  presence_penalty: float = 0.0
  frequency_penalty: float = 0.0
  min_p: float = 0.0
  seed: int | None = None
  stop_token_ids: tuple[int, ...] = ()
  top_logprobs: int = 0
  response_format: tuple[str, str] | None = None

  def __post_init__(self):
    if not (np.isfinite(self.temperature) and self.temperature >= 0):
      raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
    if int(self.top_k) != self.top_k or self.top_k < 0:
      raise ValueError(f"SamplingParams.top_k must be an integer >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
    if self.max_tokens is not None and (int(self.max_tokens) != self.max_tokens
                                        or self.max_tokens < 1):
      raise ValueError(f"SamplingParams.max_tokens must be a positive integer, got "
                       f"{self.max_tokens}")
    if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
      raise ValueError(f"SamplingParams.stop must be a sequence of non-empty strings, got "
                       f"{self.stop!r}")
    object.__setattr__(self, "stop", tuple(self.stop))
    if not (np.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
      raise ValueError(f"SamplingParams.repetition_penalty must be > 0, got "
                       f"{self.repetition_penalty}")
    for name in ("presence_penalty", "frequency_penalty"):
      if not -2 <= getattr(self, name) <= 2:
        raise ValueError(f"SamplingParams.{name} must be in [-2, 2], got {getattr(self, name)}")
    if not 0 <= self.min_p <= 1:
      raise ValueError(f"SamplingParams.min_p must be in [0, 1], got {self.min_p}")
    if not all(int(i) == i and i >= 0 for i in self.stop_token_ids):
      raise ValueError(f"SamplingParams.stop_token_ids must be ids >= 0, got "
                       f"{self.stop_token_ids!r}")
    object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in self.stop_token_ids))
    if int(self.top_logprobs) != self.top_logprobs or self.top_logprobs < 0:
      raise ValueError(f"SamplingParams.top_logprobs must be an integer >= 0, got "
                       f"{self.top_logprobs}")
    if self.response_format is not None and self.response_format[0] not in ("json_object",
                                                                            "json_schema"):
      raise ValueError(f"SamplingParams.response_format must be None, ('json_object', '') or "
                       f"('json_schema', schema), got {self.response_format!r:.80}")

  @property
  def penalized(self) -> bool:
    """Whether any penalty is on (the decode loop then keeps token counts)."""
    return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0)

  @classmethod
  def greedy(cls, **kwargs) -> "SamplingParams":
    return cls(temperature=0.0, **kwargs)


@struct.dataclass
class SamplingArrays:
  """Device form of per-row SamplingParams: temperature f32[B], top_k i32[B], top_p f32[B],
  max_tokens i32[B] (each row stops with finish_reason "length" after max_tokens new tokens),
  repetition_penalty / presence_penalty / frequency_penalty / min_p f32[B], stop_token_ids
  i32[B, S] (row's own stop ids, -1 = unused slot; S a multiple of 8). The last five may be
  None (built by hand: no penalties, min-p or own stop ids); `from_params` sets them all."""
  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array
  max_tokens: jax.Array
  repetition_penalty: jax.Array | None = None
  presence_penalty: jax.Array | None = None
  frequency_penalty: jax.Array | None = None
  min_p: jax.Array | None = None
  stop_token_ids: jax.Array | None = None

  @classmethod
  def from_params(cls, params: Sequence[SamplingParams], max_new_tokens: int) -> "SamplingArrays":
    """Stacks one SamplingParams per row; max_tokens is capped at `max_new_tokens`."""
    limit = [min(p.max_tokens or max_new_tokens, max_new_tokens) for p in params]
    slots = -(-max([len(p.stop_token_ids) for p in params] + [1]) // 8) * 8
    stop = np.full((len(params), slots), -1, np.int32)
    for r, p in enumerate(params):
      stop[r, :len(p.stop_token_ids)] = p.stop_token_ids
    row = lambda name, dtype: np.asarray([getattr(p, name) for p in params], dtype)
    return cls(temperature=row("temperature", np.float32), top_k=row("top_k", np.int32),
               top_p=row("top_p", np.float32), max_tokens=np.asarray(limit, np.int32),
               repetition_penalty=row("repetition_penalty", np.float32),
               presence_penalty=row("presence_penalty", np.float32),
               frequency_penalty=row("frequency_penalty", np.float32),
               min_p=row("min_p", np.float32), stop_token_ids=stop)


def apply_penalties(logits: jax.Array, counts: jax.Array, prompt_seen: jax.Array,
                    params: SamplingArrays) -> jax.Array:
  """Repetition, frequency and presence penalties (vLLM semantics, see the module docstring).

  Args:
    logits: f32[B, V]. counts: i32[B, V] how often each token was generated so far in the row.
    prompt_seen: bool[B, V] tokens of the row's prompt.
  Returns:
    f32[B, V]; rows with every penalty off are unchanged.
  """
  rep = params.repetition_penalty[:, None]
  seen = prompt_seen | (counts > 0)
  logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
  return (logits - params.frequency_penalty[:, None] * counts.astype(jnp.float32)
          - params.presence_penalty[:, None] * (counts > 0).astype(jnp.float32))


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array, min_p: jax.Array | None = None) -> jax.Array:
  """The processed logits: logits / temperature with tokens outside min-p / top-k / top-p set
  to -inf.

  Args:
    logits: f32[B, V] (raw, or penalized and masked).
    temperature: f32[B] (> 0; greedy rows are handled by `sample_step`, any value works here).
    top_k: i32[B], 0 = off. top_p: f32[B] in (0, 1], 1 = off. min_p: f32[B] in [0, 1], 0 = off.
  Returns:
    f32[B, V]; at least the most likely token of each row stays finite.
  """
  min_p = jnp.zeros_like(top_p) if min_p is None else min_p
  safe_t = jnp.where(temperature > 0, temperature, 1.0)
  scaled = logits.astype(jnp.float32) / safe_t[:, None]

  def with_filters(x):
    v = x.shape[-1]
    sorted_desc = -jnp.sort(-x, axis=-1)  # [B, V]
    k = jnp.clip(top_k, 1, v)
    kth = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)  # [B, 1]
    t_k = jnp.where((top_k > 0)[:, None], kth, _NEG_INF)
    # min-p: p >= min_p * p_max  <=>  logit >= max logit + log(min_p).
    t_min = jnp.where((min_p > 0)[:, None], sorted_desc[:, :1] + jnp.log(
        jnp.maximum(min_p, 1e-30))[:, None], _NEG_INF)
    t_k = jnp.maximum(t_k, t_min)
    # Top-p on the top-k-filtered distribution: keep a sorted prefix whose mass before each
    # token is < top_p (the first token is always kept).
    masked_sorted = jnp.where(sorted_desc >= t_k, sorted_desc, _NEG_INF)
    probs = jax.nn.softmax(masked_sorted, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = (mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0)
    keep = keep.at[:, 0].set(True)
    n_keep = jnp.sum(keep, axis=-1)  # keep is a prefix of the sorted row
    t_p = jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)
    threshold = jnp.maximum(t_k, t_p)
    return jnp.where(x >= threshold, x, _NEG_INF)

  # A full-vocabulary sort per step is skipped when no row filters.
  needs_sort = jnp.any((top_k > 0) | (top_p < 1.0) | (min_p > 0))
  return jax.lax.cond(needs_sort, with_filters, lambda x: x, scaled)


def sample_step(keys: jax.Array, logits: jax.Array, params: SamplingArrays,
                counts: jax.Array | None = None, prompt_seen: jax.Array | None = None,
                allowed: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws one token per row.

  Args:
    keys: one PRNG key per row, [B].
    logits: f32[B, V] raw logits of the next token.
    params: per-row SamplingArrays.
    counts, prompt_seen: i32[B, V] / bool[B, V] for the penalties (`apply_penalties`); None:
      no penalties.
    allowed: bool[B, V] the grammar mask; None: every token allowed.
  Returns:
    tokens i32[B];
    logprobs f32[B]: log pi(token) = log_softmax(raw logits)[token], the policy's own
      probability at temperature 1 with no filtering (what RL losses need);
    processed_logprobs f32[B]: the log-probability under the distribution actually sampled
      from (penalties + mask + temperature + min-p + top-k + top-p); 0 for greedy rows, whose
      choice is deterministic.
  """
  raw = logits = logits.astype(jnp.float32)
  if counts is not None:
    logits = apply_penalties(logits, counts, prompt_seen, params)
  if allowed is not None:
    logits = jnp.where(allowed, logits, _NEG_INF)
  greedy = params.temperature <= 0
  best = first_argmax(logits)

  def draw():
    processed = filter_logits(logits, params.temperature, params.top_k, params.top_p,
                              params.min_p)
    tok = jnp.where(greedy, best, jax.vmap(jax.random.categorical)(keys, processed))
    tok = tok.astype(jnp.int32)
    return tok, _token_logprob(processed, tok)

  # Filtering, B x V Gumbel noise and a second log-softmax are skipped when every row is greedy
  # (evaluation, benchmarks): the step then costs one argmax and one logsumexp over the vocab.
  tokens, proc_lp = jax.lax.cond(jnp.all(greedy), lambda: (best, jnp.zeros(best.shape)), draw)
  return tokens, _token_logprob(raw, tokens), jnp.where(greedy, 0.0, proc_lp)


def first_argmax(logits: jax.Array) -> jax.Array:
  """i32[B]: the first index of each row's maximum, as `jnp.argmax` (NaN rows give 0).

  A max followed by a min over matching indices: two plain reductions, which XLA:CPU runs ~3x
  faster than argmax's variadic (value, index) reduction over a 32k-152k vocabulary.
  """
  v = logits.shape[-1]
  top = jnp.max(logits, axis=-1, keepdims=True)
  idx = jnp.min(jnp.where(logits == top, jnp.arange(v, dtype=jnp.int32), v), axis=-1)
  return jnp.where(idx == v, 0, idx)


def _token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log_softmax(logits)[b, tokens[b]] without writing the [B, V] log-softmax."""
  picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)
