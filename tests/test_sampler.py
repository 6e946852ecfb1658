"""The sampler against `transformers` (greedy), a full forward pass (log-probs), HF's top-k/top-p
warpers (allowed sets), and itself (determinism, n samples, stops, mesh vs one device)."""
import asyncio
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from rlaif_jax.judging.backends.local import LocalSamplerBackend
from rlaif_jax.models import checkpoint_bridge, positions_from_mask
from rlaif_jax.sampling import sampler as sampler_lib
from rlaif_jax.sampling.logits_processing import (SamplingArrays, SamplingParams, filter_logits,
                                                  first_argmax, sample_step)
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.tokenizers import load_tokenizer
from tests import tiny_hf

VARIANTS = {
    "qwen2_tied": dict(arch="qwen2", tie=True),
    "qwen2_untied": dict(arch="qwen2", tie=False, num_key_value_heads=1),
    "llama3_scaled": dict(arch="llama", tie=False, rope_scaling=tiny_hf.LLAMA3_ROPE_SCALING),
}
PROMPT_LENGTHS = (3, 11, 7)  # mixed lengths in one left-padded batch
MAX_NEW = 10


def random_prompts(seed: int, lengths=PROMPT_LENGTHS) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.RandomState(seed)
  p = max(lengths)
  tokens = np.full((len(lengths), p), tiny_hf.EOS_ID, np.int32)
  mask = np.zeros((len(lengths), p), bool)
  for r, n in enumerate(lengths):
    tokens[r, p - n:] = rng.randint(0, 256, n)
    mask[r, p - n:] = True
  return tokens, mask


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
  return tiny_hf.make_tiny_hf_checkpoint(tmp_path_factory.mktemp("ckpt"), **VARIANTS["qwen2_tied"])


@pytest.fixture(scope="module")
def qwen_sampler(qwen_dir):
  return Sampler(checkpoint_bridge.load_hf_checkpoint(qwen_dir), load_tokenizer(qwen_dir))


def full_forward_log_softmax(model, prompt, mask, response, length):
  """log_softmax of one full (un-cached) forward pass over prompt + response[:length].
  Returns f32[length, V]: row t is the distribution that produced response[t]."""
  tokens = np.concatenate([prompt, response[:length]])[None]
  full_mask = np.concatenate([mask, np.ones(length, bool)])[None]
  logits, _ = model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(full_mask)),
                    jnp.asarray(full_mask))
  p = prompt.shape[0]
  return np.asarray(jax.nn.log_softmax(logits[0, p - 1:p - 1 + length], axis=-1))


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_matches_transformers_and_logprobs_match_forward(variant, scan_layers, tmp_path):
  d = tiny_hf.make_tiny_hf_checkpoint(tmp_path, **VARIANTS[variant])
  model = checkpoint_bridge.load_hf_checkpoint(d, scan_layers=scan_layers)
  # Scanned models: the per-step layer slicing path (no unstacked copy) must agree too; scanned
  # runs also grow the KV cache by segments (spans 3, 6, 10 new tokens), unrolled ones do not.
  sampler = Sampler(model, load_tokenizer(d), unstack_layers=variant != "qwen2_untied",
                    grow_cache_from=3 if scan_layers else None)
  tokens, mask = random_prompts(1)
  out = sampler.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy()).to_numpy()

  hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                      max_new_tokens=MAX_NEW, eos_token_id=tiny_hf.EOS_ID,
                      pad_token_id=tiny_hf.EOS_ID)[:, tokens.shape[1]:].numpy()
  for r in range(len(PROMPT_LENGTHS)):
    want = list(ref[r])
    if tiny_hf.EOS_ID in want:  # HF pads after EOS; compare up to and including it
      want = want[:want.index(tiny_hf.EOS_ID) + 1]
    n = int(out.lengths[r])
    assert list(out.tokens[r, :n]) == want, f"row {r}"
    assert bool(out.stopped[r]) == (want[-1] == tiny_hf.EOS_ID)
    lsm = full_forward_log_softmax(model, tokens[r], mask[r], out.tokens[r], n)
    np.testing.assert_allclose(out.logprobs[r, :n], lsm[np.arange(n), out.tokens[r, :n]],
                               atol=1e-4, rtol=0)
    assert np.all(out.processed_logprobs[r] == 0)  # greedy: a deterministic choice


def test_top_k_top_p_stay_in_hf_allowed_set(qwen_sampler):
  sampler = qwen_sampler
  model = nnx_model(sampler)
  tokens, mask = random_prompts(2)
  params = SamplingParams(temperature=0.7, top_k=12, top_p=0.5)
  out = sampler.generate_ids(None, tokens, mask, MAX_NEW, params, key=3, n=2,
                             stop_ids=()).to_numpy()
  warp_k, warp_p = TopKLogitsWarper(12), TopPLogitsWarper(0.5)
  sizes = []
  for r in range(out.tokens.shape[0]):
    i = r // 2
    n = int(out.lengths[r])
    assert n == MAX_NEW
    lsm = full_forward_log_softmax(model, tokens[i], mask[i], out.tokens[r], n)
    np.testing.assert_allclose(out.logprobs[r, :n], lsm[np.arange(n), out.tokens[r, :n]],
                               atol=1e-4, rtol=0)
    scores = torch.tensor(lsm / 0.7)
    warped = warp_p(None, warp_k(None, scores)).numpy()
    for t in range(n):
      allowed = np.isfinite(warped[t])
      sizes.append(allowed.sum())
      assert allowed[out.tokens[r, t]], f"row {r} step {t}: token outside the top-k/top-p set"
      ref_lp = warped[t] - np.logaddexp.reduce(warped[t][allowed])
      np.testing.assert_allclose(out.processed_logprobs[r, t], ref_lp[out.tokens[r, t]],
                                 atol=1e-4)
  assert max(sizes) <= 12 and min(sizes) < 12  # both filters were active


def nnx_model(sampler):
  from flax import nnx
  return nnx.merge(sampler.graphdef, sampler.params)


def test_filter_logits_ties_and_boundaries():
  logits = jnp.asarray([[3.0, 1.0, 3.0, 2.0, 0.0],     # top_k=1: both 3.0s are kept (tie)
                        [0.0, 1.0, 2.0, 3.0, 4.0],     # top_k=3
                        np.log([0.4, 0.3, 0.2, 0.1, 1e-9]),  # top_p=0.5 -> 0.4, 0.3
                        np.log([0.25, 0.25, 0.25, 0.25, 1e-9]),  # top_p=0.3 -> ties: all 0.25s
                        [5.0, 4.0, 3.0, 2.0, 1.0]])    # off: unchanged
  top_k = jnp.asarray([1, 3, 0, 0, 0])
  top_p = jnp.asarray([1.0, 1.0, 0.5, 0.3, 1.0])
  out = np.asarray(filter_logits(logits, jnp.ones(5), top_k, top_p))
  keep = np.isfinite(out)
  np.testing.assert_array_equal(keep, [[1, 0, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0],
                                       [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
  np.testing.assert_allclose(out[keep], np.asarray(logits)[keep])
  # Temperature divides before filtering; top-p then sees the top-k-renormalised distribution.
  out = np.asarray(filter_logits(jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]])),
                                 jnp.asarray([0.5]), jnp.asarray([3]), jnp.asarray([0.7])))
  np.testing.assert_allclose(out[0, :2], np.log([0.5, 0.3]) / 0.5, rtol=1e-6)
  assert np.isneginf(out[0, 2:]).all()


def test_first_argmax_and_greedy_step_match_numpy():
  rng = np.random.RandomState(0)
  logits = rng.randn(6, 1000).astype(np.float32)
  logits[1, [7, 300, 999]] = 50.0  # ties: the first index wins, as np.argmax
  logits[2, :] = -np.inf
  logits[2, 5] = 0.0
  logits[3, :] = 3.0  # all tied
  np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(logits))),
                                np.argmax(logits, axis=-1))
  b = logits.shape[0]
  params = SamplingArrays(temperature=jnp.zeros(b), top_k=jnp.zeros(b, jnp.int32),
                          top_p=jnp.ones(b), max_tokens=jnp.full(b, 1))
  tok, lp, plp = sample_step(jax.random.split(jax.random.key(0), b), jnp.asarray(logits), params)
  ref = np.argmax(logits, axis=-1)
  lse = np.log(np.sum(np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True)), -1))
  np.testing.assert_array_equal(np.asarray(tok), ref)
  np.testing.assert_allclose(np.asarray(lp), logits[np.arange(b), ref] - logits.max(-1) - lse,
                             atol=1e-5)
  np.testing.assert_array_equal(np.asarray(plp), 0.0)


def test_sample_step_frequencies_follow_filtered_distribution():
  probs = np.asarray([0.5, 0.3, 0.15, 0.05], np.float32)
  b = 4000
  params = SamplingArrays(temperature=jnp.ones(b), top_k=jnp.full(b, 3), top_p=jnp.full(b, 0.7),
                          max_tokens=jnp.full(b, 1))
  keys = jax.random.split(jax.random.key(0), b)
  tok, lp, plp = sample_step(keys, jnp.log(jnp.tile(probs, (b, 1))), params)
  tok = np.asarray(tok)
  assert set(tok.tolist()) == {0, 1}  # top-k 3 then top-p 0.7 keeps {0.5, 0.3}
  assert abs((tok == 0).mean() - 0.5 / 0.8) < 0.03
  np.testing.assert_allclose(np.asarray(lp), np.log(probs[tok]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(plp), np.log(probs[tok] / 0.8), rtol=1e-5)


def test_determinism_n_samples_and_seed(qwen_sampler):
  tokens, mask = random_prompts(3)
  params = SamplingParams(temperature=1.0)
  a = qwen_sampler.generate_ids(None, tokens, mask, MAX_NEW, params, key=7, n=2).to_numpy()
  b = qwen_sampler.generate_ids(None, tokens, mask, MAX_NEW, params, key=7, n=2).to_numpy()
  c = qwen_sampler.generate_ids(None, tokens, mask, MAX_NEW, params, key=8, n=2).to_numpy()
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert not np.array_equal(a.tokens, c.tokens)
  assert not np.array_equal(a.tokens[0], a.tokens[1])  # two samples of prompt 0 differ
  # Greedy with n=2: both rows of a prompt equal the n=1 row.
  g1 = qwen_sampler.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy()).to_numpy()
  g2 = qwen_sampler.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy(),
                                 n=2).to_numpy()
  np.testing.assert_array_equal(g2.tokens[::2], g1.tokens)
  np.testing.assert_array_equal(g2.tokens[1::2], g1.tokens)
  # n=2 prefills each prompt once and shares its cache: the same samples and log-probs as n=1
  # on the prompts repeated by hand (row r draws with key r either way).
  rep = qwen_sampler.generate_ids(None, np.repeat(tokens, 2, 0), np.repeat(mask, 2, 0), MAX_NEW,
                                  params, key=7).to_numpy()
  np.testing.assert_array_equal(a.tokens, rep.tokens)
  np.testing.assert_allclose(a.logprobs, rep.logprobs, atol=1e-5)
  np.testing.assert_array_equal(a.lengths, rep.lengths)


def test_stop_ids_per_row_limits_and_empty_rows(qwen_sampler):
  tokens, mask = random_prompts(4, lengths=(5, 9, 4, 6))
  mask[3] = False  # an empty row (as added by bucketing) produces nothing
  greedy = qwen_sampler.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy(),
                                     stop_ids=()).to_numpy()
  assert greedy.lengths.tolist() == [MAX_NEW, MAX_NEW, MAX_NEW, 0]
  stop = int(greedy.tokens[0, 3])
  first = {r: list(greedy.tokens[r]).index(stop) if stop in greedy.tokens[r] else None
           for r in range(3)}
  per_row = [SamplingParams.greedy(), SamplingParams.greedy(max_tokens=4),
             SamplingParams.greedy(max_tokens=6), SamplingParams.greedy()]
  out = qwen_sampler.generate_ids(None, tokens, mask, MAX_NEW, per_row,
                                  stop_ids=[stop]).to_numpy()
  assert out.steps == max(out.lengths) < MAX_NEW  # the loop exited once every row was done
  assert out.lengths[0] == first[0] + 1 and out.stopped[0]
  assert out.tokens[0, out.lengths[0] - 1] == stop
  limit1 = 4 if first[1] is None or first[1] >= 4 else first[1] + 1
  assert out.lengths[1] == limit1 and out.stopped[1] == (limit1 != 4 or first[1] == 3)
  assert out.lengths[2] == (6 if first[2] is None or first[2] >= 6 else first[2] + 1)
  for r in range(3):
    n = int(out.lengths[r])
    np.testing.assert_array_equal(out.tokens[r, :n], greedy.tokens[r, :n])
    assert (out.tokens[r, n:] == tiny_hf.EOS_ID).all() and (out.logprobs[r, n:] == 0).all()
  assert out.lengths[3] == 0 and (out.tokens[3] == tiny_hf.EOS_ID).all()


def test_text_generate_stop_strings_and_chat_template(qwen_sampler):
  prompts = ["你好，新年快乐", "Write a greeting"]
  full = qwen_sampler.generate(prompts, 16, SamplingParams.greedy(), stop_ids=())
  assert [c.finish_reason for c in full] == ["length", "length"]
  text = full[0].text
  stop = text[4:6]
  assert stop, f"greedy text too short to pick a stop string: {text!r}"
  cut = qwen_sampler.generate(prompts, 16, [SamplingParams.greedy(stop=(stop,)),
                                            SamplingParams.greedy()], stop_ids=())
  assert cut[0].text == text[:text.find(stop)] and cut[0].finish_reason == "stop"
  m = len(cut[0].token_ids)
  assert cut[0].token_ids == full[0].token_ids[:m] and len(cut[0].logprobs) == m
  assert stop in qwen_sampler.tokenizer.decode(cut[0].token_ids)
  assert stop not in qwen_sampler.tokenizer.decode(cut[0].token_ids[:-1])
  assert cut[1].text == full[1].text
  tok = qwen_sampler.tokenizer
  chat = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompts[0]}]))
  assert full[0].prompt_tokens == len(chat)
  raw = qwen_sampler.generate(prompts, 16, SamplingParams.greedy(), use_chat_template=False)
  assert [c.prompt_tokens for c in raw] == [len(tok.encode(p)) for p in prompts]
  # The judges' local backend runs on the same sampler.
  backend = LocalSamplerBackend(qwen_sampler.make_generate_fn())
  conversations = [[{"role": "user", "content": p}] for p in prompts]
  texts = asyncio.run(backend.generate(conversations, temperature=0.0, max_tokens=16))
  greedy_eos = qwen_sampler.generate(prompts, 16, SamplingParams.greedy())
  assert texts == [c.text for c in greedy_eos]


def test_new_params_do_not_recompile(qwen_sampler):
  tokens, mask = random_prompts(5)
  a = qwen_sampler.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy()).to_numpy()
  sizes = (sampler_lib._prefill_jit._cache_size(), sampler_lib._decode_jit._cache_size())
  scaled = jax.tree.map(lambda x: x * 1.5, qwen_sampler.params)
  b = qwen_sampler.generate_ids(scaled, tokens, mask, MAX_NEW,
                                SamplingParams(temperature=0.5, top_p=0.9), key=1).to_numpy()
  assert (sampler_lib._prefill_jit._cache_size(), sampler_lib._decode_jit._cache_size()) == sizes
  assert not np.array_equal(a.tokens, b.tokens)
  # The growing-cache loop (spans 4, 8, 10) compiles once too.
  growing = Sampler(nnx_model(qwen_sampler), grow_cache_from=4)
  growing.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy())
  size = sampler_lib._decode_growing_jit._cache_size()
  growing.generate_ids(scaled, tokens, mask, MAX_NEW, SamplingParams(temperature=0.5), key=2)
  assert sampler_lib._decode_growing_jit._cache_size() == size


def test_cache_spans():
  assert sampler_lib.cache_spans(300, 64) == (64, 128, 256, 300)
  assert sampler_lib.cache_spans(256, 64) == (64, 128, 256)
  assert sampler_lib.cache_spans(64, 64) == (64,) and sampler_lib.cache_spans(10, None) == (10,)
  assert sampler_lib.cache_spans(5, 1) == (1, 2, 4, 5)
  assert sampler_lib.cache_spans(10, 0) == (10,)
  with pytest.raises(ValueError, match="grow_cache_from must be >= 1"):
    sampler_lib.cache_spans(10, -2)


def test_growing_cache_equals_whole_cache(qwen_dir):
  """Segments over a growing cache (spans 2, 4, 8, 10) sample exactly what one loop over the
  whole cache samples: sampled and greedy rows, n=2, per-row limits, a stop id, an empty row."""
  model = checkpoint_bridge.load_hf_checkpoint(qwen_dir)
  whole = Sampler(model, grow_cache_from=None)
  growing = Sampler(model, grow_cache_from=2)
  tokens, mask = random_prompts(9, lengths=(5, 9, 4, 6))
  mask[3] = False
  per_row = [SamplingParams(temperature=1.0), SamplingParams.greedy(max_tokens=7),
             SamplingParams(temperature=0.8, top_p=0.9), SamplingParams.greedy()]
  greedy = whole.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy(),
                              stop_ids=()).to_numpy()
  stop = [int(greedy.tokens[1, 5])]
  a = whole.generate_ids(None, tokens, mask, MAX_NEW, per_row, key=4, n=2,
                         stop_ids=stop).to_numpy()
  b = growing.generate_ids(None, tokens, mask, MAX_NEW, per_row, key=4, n=2,
                           stop_ids=stop).to_numpy()
  np.testing.assert_array_equal(b.tokens, a.tokens)
  np.testing.assert_array_equal(b.lengths, a.lengths)
  np.testing.assert_array_equal(b.stopped, a.stopped)
  np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-5, rtol=0)
  np.testing.assert_allclose(b.processed_logprobs, a.processed_logprobs, atol=1e-5, rtol=0)
  assert a.lengths.max() == MAX_NEW and a.lengths.min() == 0 and a.stopped.any()
  # A batch that ends inside the first segment skips the later ones.
  short = growing.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy(max_tokens=2),
                               stop_ids=()).to_numpy()
  assert int(short.steps) == 2
  np.testing.assert_array_equal(short.tokens[:, :2], greedy.tokens[:, :2])


def test_rejects_right_padding(qwen_sampler):
  tokens, mask = random_prompts(6)
  with pytest.raises(ValueError, match="left-padded"):
    qwen_sampler.generate_ids(None, tokens, mask[:, ::-1].copy(), 4)


_MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from rlaif_jax.models import checkpoint_bridge
    from rlaif_jax.sampling.logits_processing import SamplingParams
    from rlaif_jax.sampling.sampler import Sampler
    from rlaif_jax.sharding import mesh as mesh_lib
    d = sys.argv[1]
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, 256, (4, 9)).astype(np.int32)
    mask = np.ones((4, 9), bool); mask[0, :5] = False; mask[2, :2] = False
    # Rows 0 and 2 greedy, rows 1 and 3 sampled with top-p, all in one batch.
    params = [SamplingParams.greedy(), SamplingParams(1.0, top_p=0.9)] * 2
    result = {}
    for name, mesh in [("one", mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])),
                       ("data2_tensor4", mesh_lib.make_mesh((2, 1, 4))),
                       ("fsdp2_tensor4", mesh_lib.make_mesh((1, 2, 4)))]:
      # data2_tensor4 also grows the KV cache by segments (spans 3, 6, 8), sharded.
      sampler = Sampler(checkpoint_bridge.load_hf_checkpoint(d, mesh), mesh=mesh,
                        grow_cache_from=3 if name == "data2_tensor4" else None)
      out = sampler.generate_ids(None, tokens, mask, 8, params, key=11, n=2, stop_ids=())
      result[name] = dict(tokens=np.asarray(out.tokens).tolist(),
                          logprobs=np.asarray(out.logprobs).tolist(),
                          devices=len(out.tokens.sharding.device_set),
                          spec=str(out.tokens.sharding.spec))
    print("RESULT" + json.dumps(result))
    """)


def test_mesh_of_8_devices_matches_one_device(tmp_path):
  d = tiny_hf.make_tiny_hf_checkpoint(tmp_path, "qwen2", tie=False, vocab_size=260,
                                      num_attention_heads=8, num_key_value_heads=4, head_dim=8)
  script = tmp_path / "mesh_run.py"
  script.write_text(_MESH_SCRIPT)
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
  proc = subprocess.run([sys.executable, str(script), str(d)], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
  result = json.loads(line[len("RESULT"):])
  one = result["one"]
  assert one["devices"] == 1
  assert one["tokens"][2] != one["tokens"][3]  # the two samples of a sampled prompt differ
  for name, axis in (("data2_tensor4", "data"), ("fsdp2_tensor4", "fsdp")):
    mesh = result[name]
    assert mesh["devices"] == 8 and axis in mesh["spec"], mesh  # rows are split over the mesh
    np.testing.assert_array_equal(mesh["tokens"], one["tokens"])
    np.testing.assert_allclose(mesh["logprobs"], one["logprobs"], atol=1e-4)


def test_stop_check_ends_rows_at_segment_boundaries(qwen_dir):
  """A host `stop_check` between segments (spans 2, 4, 8, 10) ends the rows it names there and
  leaves every other row exactly as without it; text-level stop strings use it."""
  model = checkpoint_bridge.load_hf_checkpoint(qwen_dir)
  sampler = Sampler(model, load_tokenizer(qwen_dir), grow_cache_from=2)
  tokens, mask = random_prompts(12)
  ref = sampler.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy(),
                             stop_ids=()).to_numpy()
  seen = []

  def end_row_0(toks, lengths, done):
    seen.append(lengths.copy())
    return np.arange(len(done)) == 0
  out = sampler.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy(), stop_ids=(),
                             stop_check=end_row_0).to_numpy()
  assert [list(l) for l in seen] == [[2, 2, 2], [2, 4, 4], [2, 8, 8]]
  assert out.lengths[0] == 2 and (out.tokens[0, 2:] == sampler.tokenizer.pad_id).all()
  np.testing.assert_array_equal(out.tokens[0, :2], ref.tokens[0, :2])
  np.testing.assert_array_equal(out.tokens[1:], ref.tokens[1:])
  np.testing.assert_array_equal(out.lengths[1:], ref.lengths[1:])
  everyone = sampler.generate_ids(None, tokens, mask, MAX_NEW, SamplingParams.greedy(),
                                  stop_ids=(), stop_check=lambda t, l, d: np.ones_like(d))
  assert int(everyone.steps) == 2  # all rows ended: the later segments never run
  # Text level: the same texts as the whole-cache sampler, which only cuts after the loop.
  whole = Sampler(model, load_tokenizer(qwen_dir), grow_cache_from=0)
  prompts = ["你好，新年快乐", "Write a greeting"]
  full = whole.generate(prompts, 16, SamplingParams.greedy(), stop_ids=())
  stop = full[0].text[1:3]
  assert stop, full[0].text
  per_row = [SamplingParams.greedy(stop=(stop,)), SamplingParams.greedy()]
  want = whole.generate(prompts, 16, per_row, stop_ids=())
  got = sampler.generate(prompts, 16, per_row, stop_ids=())
  assert [(c.text, c.token_ids, c.finish_reason) for c in got] == [
      (c.text, c.token_ids, c.finish_reason) for c in want]
  assert got[0].finish_reason == "stop"
