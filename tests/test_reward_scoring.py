"""Reward-model data layout, batch scoring and the length debiaser."""
import jax
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.data import formatting
from rlaif_jax.data.greetings import PreferencePair
from rlaif_jax.models import Decoder, config as config_lib, positions_from_mask
from rlaif_jax.models.scalar_head import ScalarHeadModel
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
  scores = scorer.score(queries, responses)
  assert scores.shape == (7,) and scores.dtype == np.float32
  for i in (0, 6):
    toks = formatting.encode_sft_example(tok, queries[i], responses[i], fmt)["tokens"][None]
    mask = np.ones_like(toks, bool)
    direct = float(model(toks, positions_from_mask(mask), mask)[0])
    np.testing.assert_allclose(scores[i], direct, atol=1e-5)
  alone = scorer.score(queries[3:4], responses[3:4])
  np.testing.assert_allclose(alone[0], scores[3], atol=1e-5)
  # Weights kept in host memory between calls: same scores, and no device array is held.
  hosted = RewardModelScorer(model, tok, fmt, batch_size=4, on_host=True)
  kept = jax.tree.leaves(hosted.state)  # this process's shards, as numpy arrays
  assert kept and all(isinstance(x, host.HostShards) for x in kept)
  assert all(isinstance(d, np.ndarray) for x in kept for _, d in x.shards)
  np.testing.assert_allclose(hosted.score(queries, responses), scores, atol=1e-6)


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
