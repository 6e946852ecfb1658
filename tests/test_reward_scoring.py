"""Reward-model data layout, batch scoring and the length debiaser."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.data import formatting
from rlaif_jax.data.greetings import PreferencePair
from rlaif_jax.models import Decoder, config as config_lib, positions_from_mask
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.scoring.contract import Rollout
from rlaif_jax.sharding import host
from rlaif_jax.tokenizers.load import load_tokenizer
from rlaif_jax.tokenizers.train import train_sentencepiece
from rlaif_jax.training import reward_data
from rlaif_jax.training.reward_scoring import LengthDebiaser, RewardModelScorer

TEXTS = ["新年快乐，万事如意！", "祝你生日快乐，天天开心。", "蛇年大吉，身体健康，阖家幸福。",
         "愿你前程似锦，心想事成。", "恭喜发财，红包拿来！"] * 40


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  prefix = tmp_path_factory.mktemp("sp") / "sp"
  return load_tokenizer(train_sentencepiece(TEXTS, prefix, vocab_size=320))


def test_pair_batch_layout_and_length_balance(tok):
  pairs = [PreferencePair("新年祝福", "新年快乐，万事如意！", "新年好"),
           PreferencePair("生日祝福", "生日快乐", "祝你生日快乐，天天开心。")]
  fmt = formatting.FormatConfig(max_prompt_len=32, max_response_len=32)
  enc = reward_data.encode_pairs(tok, pairs, fmt)
  batch = reward_data.pair_batch(enc, (16, 32, 64), tok.pad_id)
  assert batch["tokens"].shape[0] == 4
  np.testing.assert_array_equal(batch["tokens"][0, :len(enc[0]["chosen"])], enc[0]["chosen"])
  np.testing.assert_array_equal(batch["tokens"][3, :len(enc[1]["rejected"])], enc[1]["rejected"])
  many = pairs * 10 + [PreferencePair("q", "长长长长", "短")] * 30
  balanced = reward_data.length_balanced(many, seed=0)
  longer = sum(len(p.chosen) > len(p.rejected) for p in balanced)
  assert longer == len(balanced) - longer == 10


def test_scorer_equals_direct_forward_and_ignores_batch_companions(tok):
  cfg = config_lib.tiny(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48,
                        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
  model = ScalarHeadModel(Decoder(cfg, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  fmt = formatting.FormatConfig(max_prompt_len=32, max_response_len=32)
  scorer = RewardModelScorer(model, tok, fmt, batch_size=4)
  queries = ["新年祝福"] * 5 + ["生日祝福"] * 2
  responses = TEXTS[:7]
  scores = scorer.score_texts(queries, responses)
  assert scores.shape == (7,) and scores.dtype == np.float32
  for i in (0, 6):
    toks = formatting.encode_sft_example(tok, queries[i], responses[i], fmt)["tokens"][None]
    mask = np.ones_like(toks, bool)
    direct = float(model(toks, positions_from_mask(mask), mask)[0])
    np.testing.assert_allclose(scores[i], direct, atol=1e-5)
  alone = scorer.score_texts(queries[3:4], responses[3:4])
  np.testing.assert_allclose(alone[0], scores[3], atol=1e-5)
  # Weights kept in host memory between calls: same scores, and no device array is held.
  hosted = RewardModelScorer(model, tok, fmt, batch_size=4, on_host=True)
  kept = jax.tree.leaves(hosted.state)  # this process's shards, as numpy arrays
  assert kept and all(isinstance(x, host.HostShards) for x in kept)
  assert all(isinstance(d, np.ndarray) for x in kept for _, d in x.shards)
  np.testing.assert_allclose(hosted.score_texts(queries, responses), scores, atol=1e-6)


def _tiny_scorer(tok, max_response_len=32, batch_size=4):
  cfg = config_lib.tiny(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48,
                        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
  model = ScalarHeadModel(Decoder(cfg, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  fmt = formatting.FormatConfig(max_prompt_len=32, max_response_len=max_response_len)
  return RewardModelScorer(model, tok, fmt, batch_size=batch_size), model, fmt


def test_cut_completion_is_scored_unfinished(tok):
  """A completion cut at the token limit gets no end id: its score is that of the text without
  the end id, not the finished greeting's."""
  scorer, model, fmt = _tiny_scorer(tok)
  query, text = "新年祝福", TEXTS[0]
  rollout = Rollout.from_texts([query, query], [text, text], stopped=[True, False])
  got = scorer.score(rollout)
  assert got.valid.all() and got.values.shape == (2,)
  finished = formatting.encode_sft_example(tok, query, text, fmt)["tokens"]
  assert finished[-1] == tok.eot_id
  for ids, want_row in ((finished, 0), (finished[:-1], 1)):
    mask = np.ones_like(ids[None], bool)
    direct = float(model(ids[None], positions_from_mask(mask), mask)[0])
    np.testing.assert_allclose(got.values[want_row], direct, atol=1e-5)
  assert abs(got.values[0] - got.values[1]) > 1e-4


def _rollout_with_ids(tok, queries, texts, stopped, width):
  """Response-only ids as the sampler writes them: text ids, then the stop id where stopped."""
  ids = np.full((len(texts), width), tok.pad_id, np.int32)
  mask = np.zeros((len(texts), width), bool)
  for i, (t, s) in enumerate(zip(texts, stopped)):
    row = tok.encode(t)[:width - 1 if s else width] + ([tok.eos_id] if s else [])
    ids[i, :len(row)], mask[i, :len(row)] = row, True
  return ids, mask


def test_token_ids_path_equals_text_path(tok):
  """Same tokenizer: the ids are scored on device without decode/re-encode, equal to the texts
  (finished, cut, and longer than the RM's response budget)."""
  scorer, _, _ = _tiny_scorer(tok, max_response_len=12, batch_size=4)
  queries = ["新年祝福", "生日祝福", "新年祝福", "祝福", "生日祝福"]
  texts = [TEXTS[0], TEXTS[1], TEXTS[2] * 2, "", TEXTS[3]]
  stopped = [True, False, True, True, False]
  ids, mask = _rollout_with_ids(tok, queries, texts, stopped, width=24)
  decoded = [tok.decode(ids[i][mask[i]]) for i in range(len(texts))]
  by_text = scorer.score(Rollout.from_texts(queries, decoded, stopped))
  by_ids = scorer.score(Rollout.from_texts(
      queries, decoded, stopped, completion_ids=jnp.asarray(ids),
      completion_mask=jnp.asarray(mask), token_space=scorer.token_space))
  np.testing.assert_allclose(by_ids.values, by_text.values, atol=1e-5)
  np.testing.assert_allclose(scorer.id_scores(queries, ids, mask, stopped), by_text.values,
                             atol=1e-5)
  other = Rollout.from_texts(queries, decoded, stopped, completion_ids=ids, completion_mask=mask,
                             token_space="another tokenizer")  # falls back to the texts
  np.testing.assert_allclose(scorer.score(other).values, by_text.values, atol=1e-6)


def test_response_id_sequences_against_numpy():
  from rlaif_jax.training.reward_scoring import response_id_sequences
  pad, end, budget = 0, 9, 4
  ids = np.array([[5, 6, 2, 0, 0], [5, 6, 7, 8, 2], [5, 6, 7, 0, 0], [2, 0, 0, 0, 0]], np.int32)
  mask = ids != 0
  stopped = np.array([True, True, False, True])
  p_tok = np.array([[0, 3], [3, 3], [0, 3], [3, 3]], np.int32)
  p_mask = p_tok != 0
  tokens, positions, attn = (np.asarray(x) for x in response_id_sequences(
      p_tok, p_mask, ids, mask, stopped, end, budget, pad))
  want_resp = [[5, 6, 9, 0], [5, 6, 7, 8], [5, 6, 7, 0], [9, 0, 0, 0]]
  np.testing.assert_array_equal(tokens, np.concatenate([p_tok, want_resp], 1))
  np.testing.assert_array_equal(attn, np.concatenate([p_mask, np.array(want_resp) != 0], 1))
  np.testing.assert_array_equal(positions, np.maximum(np.cumsum(attn, 1) - 1, 0))


def test_length_debiaser_removes_linear_trend(tmp_path):
  rng = np.random.RandomState(0)
  lengths = rng.randint(5, 80, 200)
  quality = rng.randn(200)
  scores = 0.05 * lengths + quality
  deb = LengthDebiaser.fit(scores, lengths)
  np.testing.assert_allclose(deb.slope, np.polyfit(lengths, scores, 1)[0], rtol=1e-6)
  fixed = deb.apply(scores, lengths)
  assert abs(np.corrcoef(fixed, lengths)[0, 1]) < 1e-4
  deb.save(tmp_path / "d.json")
  assert LengthDebiaser.load(tmp_path / "d.json") == deb
  with pytest.raises(ValueError, match="different lengths"):
    LengthDebiaser.fit([1.0, 2.0], [3, 3])
