"""The logits processors against a NumPy reference (vLLM semantics), per-row values with no
recompiles when they change, and the grammar bitmask unpacking."""
import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.sampling import decode_step, sampler as sampler_lib
from rlaif_jax.sampling.logits_processing import (SamplingArrays, SamplingParams, apply_penalties,
                                                  filter_logits)


def np_penalties(logits, counts, prompt_seen, rep, presence, frequency):
  """vLLM's apply_penalties: repetition over prompt + output tokens, then frequency/presence
  over output tokens."""
  out = logits.astype(np.float64).copy()
  for b in range(out.shape[0]):
    seen = prompt_seen[b] | (counts[b] > 0)
    row = out[b]
    row[seen] = np.where(row[seen] > 0, row[seen] / rep[b], row[seen] * rep[b])
    row -= frequency[b] * counts[b] + presence[b] * (counts[b] > 0)
  return out


def np_filter(logits, temperature, top_k, top_p, min_p):
  """Temperature, min-p, top-k, then top-p on what is left (ties at a threshold kept)."""
  out = []
  for b, row in enumerate(logits.astype(np.float64) / temperature[:, None]):
    keep = np.ones(row.shape, bool)
    if min_p[b] > 0:
      p = np.exp(row - row.max())
      keep &= p >= min_p[b] * p.max() * (1 - 1e-6)
    if top_k[b] > 0:
      keep &= row >= np.sort(row[keep])[::-1][min(top_k[b], keep.sum()) - 1]
    if top_p[b] < 1:
      p = np.where(keep, np.exp(row - row.max()), 0)
      p /= p.sum()
      order = np.argsort(-p, kind="stable")
      before = np.cumsum(p[order]) - p[order]
      kept = order[(before < top_p[b]) | (np.arange(len(order)) == 0)]
      keep &= row >= row[kept].min()
    out.append(np.where(keep, row, -np.inf))
  return np.stack(out)


def test_penalties_and_filters_match_numpy():
  rng = np.random.RandomState(0)
  b, v = 5, 300
  logits = (rng.randn(b, v) * 3).astype(np.float32)
  counts = rng.poisson(0.3, (b, v)).astype(np.int32)
  prompt_seen = rng.rand(b, v) < 0.05
  params = SamplingArrays.from_params([
      SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.2,
                     top_k=20, top_p=0.9, min_p=0.05, temperature=0.7),
      SamplingParams(repetition_penalty=0.8, frequency_penalty=-1.0, min_p=0.2),
      SamplingParams(),
      SamplingParams(repetition_penalty=50.0, top_k=3),
      SamplingParams(presence_penalty=2.0, top_p=0.5, temperature=1.5)], 8)
  got = np.asarray(apply_penalties(jnp.asarray(logits), jnp.asarray(counts),
                                   jnp.asarray(prompt_seen), params))
  ref = np_penalties(logits, counts, prompt_seen, params.repetition_penalty,
                     params.presence_penalty, params.frequency_penalty)
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(got[2], logits[2])  # every penalty off: unchanged
  filtered = np.asarray(filter_logits(jnp.asarray(got), params.temperature, params.top_k,
                                      params.top_p, params.min_p))
  ref_filtered = np_filter(ref, params.temperature, params.top_k, params.top_p, params.min_p)
  np.testing.assert_array_equal(np.isfinite(filtered), np.isfinite(ref_filtered))
  finite = np.isfinite(ref_filtered)
  np.testing.assert_allclose(filtered[finite], ref_filtered[finite], rtol=1e-5, atol=1e-5)


def test_unpack_bitmask_matches_bits():
  rng = np.random.RandomState(1)
  v = 75
  allowed = rng.rand(3, v) < 0.4
  words = np.zeros((3, decode_step.bitmask_words(v)), np.uint32)
  for b, t in zip(*np.nonzero(allowed)):
    words[b, t // 32] |= np.uint32(1) << np.uint32(t % 32)
  got = np.asarray(decode_step.unpack_bitmask(jnp.asarray(words.view(np.int32)), v))
  np.testing.assert_array_equal(got, allowed)


def test_changing_penalty_values_does_not_recompile():
  from tests import tiny_hf
  import tempfile
  from rlaif_jax.sampling.loading import load_policy
  policy = load_policy(hf_dir=tiny_hf.make_tiny_hf_checkpoint(tempfile.mkdtemp()))
  s = sampler_lib.Sampler(policy.model, policy.tokenizer, grow_cache_from=0)
  run = lambda **kw: s.generate(["hi"], 4, SamplingParams(**kw), seed=0)[0].text
  run(repetition_penalty=1.2, presence_penalty=0.1, min_p=0.1, temperature=0.5)
  sizes = (sampler_lib._prefill_jit._cache_size(), sampler_lib._decode_jit._cache_size())
  texts = {run(repetition_penalty=r, frequency_penalty=f, min_p=m, temperature=t)
           for r, f, m, t in ((2.0, 0.0, 0.0, 0.0), (0.5, 1.5, 0.3, 1.0), (9.0, -1.0, 0.0, 2.0))}
  assert (sampler_lib._prefill_jit._cache_size(), sampler_lib._decode_jit._cache_size()) == sizes
  assert len(texts) > 1
