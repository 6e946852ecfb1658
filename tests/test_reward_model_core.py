"""Bradley–Terry loss and last-token pooling against NumPy references."""
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax.models import Decoder, config as config_lib, positions_from_mask
from rlaif_jax.models.scalar_head import ScalarHeadModel, last_token_index
from rlaif_jax.training.reward_losses import bradley_terry_loss


def np_bt(chosen, rejected, margin=None, center=0.0):
  losses = []
  for c, r, m in zip(chosen, rejected, margin if margin is not None else [0.0] * len(chosen)):
    losses.append(np.log1p(np.exp(-(c - r - m))))  # -log sigmoid(x) = log(1 + e^-x)
  loss = np.mean(losses) + center * np.mean((chosen + rejected) ** 2)
  acc = np.mean([1.0 if c > r else 0.0 for c, r in zip(chosen, rejected)])
  return loss, acc


def test_bradley_terry_matches_numpy():
  rng = np.random.RandomState(0)
  c, r, m = rng.randn(16) * 3, rng.randn(16) * 3, np.abs(rng.randn(16))
  for margin, center in [(None, 0.0), (m, 0.0), (None, 0.01), (m, 0.05)]:
    loss, metrics = bradley_terry_loss(jnp.asarray(c), jnp.asarray(r),
                                       None if margin is None else jnp.asarray(margin), center)
    ref_loss, ref_acc = np_bt(c, r, margin, center)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["pair_accuracy"]), ref_acc)
    np.testing.assert_allclose(float(metrics["reward_gap"]), np.mean(c - r), rtol=1e-5)


def test_bradley_terry_is_stable_for_large_gaps():
  loss, _ = bradley_terry_loss(jnp.array([-200.0]), jnp.array([200.0]))
  np.testing.assert_allclose(float(loss), 400.0, rtol=1e-6)


def test_last_token_index_left_and_right_padding():
  mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(np.asarray(last_token_index(jnp.asarray(mask))), [2, 4, 4])


def test_scalar_head_pools_same_value_under_both_paddings():
  cfg = config_lib.tiny(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8)
  model = ScalarHeadModel(Decoder(cfg, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  seq = np.array([5, 9, 13, 2, 7], np.int32)
  right = np.zeros((1, 8), np.int32)
  right[0, :5] = seq
  left = np.zeros((1, 8), np.int32)
  left[0, 3:] = seq
  outs = []
  for toks in (right, left):
    mask = jnp.asarray(toks != 0)
    outs.append(float(model(jnp.asarray(toks), positions_from_mask(mask), mask)[0]))
  alone = float(model(jnp.asarray(seq[None]), positions_from_mask(jnp.ones((1, 5), bool)),
                      jnp.ones((1, 5), bool))[0])
  np.testing.assert_allclose(outs, [alone, alone], atol=1e-5)


def test_scalar_head_drops_the_unused_lm_head():
  cfg = config_lib.tiny(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=1,
                        num_heads=4, num_kv_heads=2, head_dim=8, tie_embeddings=False)
  model = ScalarHeadModel(Decoder(cfg, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert "backbone.lm_head" not in names and "backbone.embed" in names
  mask = jnp.ones((1, 4), bool)
  assert model(jnp.ones((1, 4), jnp.int32), positions_from_mask(mask), mask).shape == (1,)


def _pair_score_model(w):
  """A stand-in reward model: the score of a row is w * its first token."""
  return lambda tokens, positions, mask: w * tokens[:, 0].astype(jnp.float32)


def test_rm_microbatches_keep_pairs_or_are_refused():
  """Strided microbatches of the chosen-first [2B] layout keep (chosen, rejected) together only
  when B % M == 0: those counts give the big-batch loss, the others are a config error."""
  import jax
  import pytest
  from rlaif_jax.training import optim, reward_model
  b = 12
  rng = np.random.default_rng(0)
  chosen = rng.integers(1, 9, (b, 3)).astype(np.int32)
  rejected = rng.integers(1, 9, (b, 3)).astype(np.int32)
  batch = {"tokens": jnp.asarray(np.concatenate([chosen, rejected])),
           "positions": jnp.zeros((2 * b, 3), jnp.int32),
           "attention_mask": jnp.ones((2 * b, 3), jnp.int32)}
  loss_fn = lambda w, bt, r: reward_model.rm_loss(_pair_score_model(w), bt, r)
  want, want_acc = np_bt(0.3 * chosen[:, 0], 0.3 * rejected[:, 0])
  for m in (1, 2, 3, 4, 6, 12):
    reward_model.check_pair_microbatches(b, m)
    loss, aux, _ = optim.accumulated_value_and_grad(loss_fn, jnp.float32(0.3), batch,
                                                    jax.random.key(0), m)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(aux["pair_accuracy"]), want_acc, rtol=1e-6)
  for m in (8, 24, 5):
    with pytest.raises(ValueError, match=f"batch_size=12 pairs is not a multiple of "
                                         f"loop.num_microbatches={m}"):
      reward_model.check_pair_microbatches(b, m)


def test_rm_eval_batches_cover_every_pair_exactly_once():
  """The last partial batch (and an eval set smaller than one batch) is padded with zero-weight
  filler pairs: the weighted eval means equal those over the real pairs alone."""
  from rlaif_jax.training import reward_model
  rng = np.random.default_rng(1)
  enc = [{"chosen": rng.integers(1, 9, rng.integers(2, 6)).astype(np.int32),
          "rejected": rng.integers(1, 9, rng.integers(2, 6)).astype(np.int32)}
         for _ in range(23)]
  model = _pair_score_model(0.5)
  for n, bs in ((23, 8), (5, 8), (16, 8)):
    batches = list(reward_model._eval_batches(enc[:n], bs, (8,), 0)())
    assert len(batches) == -(-n // bs)
    assert all(bt["tokens"].shape[0] == 2 * bs for bt in batches)
    total_w, sums = 0.0, {}
    for bt in batches:
      loss, aux = reward_model.rm_loss(model, {k: jnp.asarray(v) for k, v in bt.items()}, None)
      w = float(aux.pop("loss_weight"))
      total_w += w
      for k, v in {"loss": loss, **aux}.items():
        sums[k] = sums.get(k, 0.0) + w * float(v)
    assert total_w == n
    c = 0.5 * np.array([e["chosen"][0] for e in enc[:n]], np.float64)
    r = 0.5 * np.array([e["rejected"][0] for e in enc[:n]], np.float64)
    want_loss, want_acc = np_bt(c, r)
    np.testing.assert_allclose(sums["loss"] / total_w, want_loss, rtol=1e-5)
    np.testing.assert_allclose(sums["pair_accuracy"] / total_w, want_acc, rtol=1e-6)
    np.testing.assert_allclose(sums["reward_gap"] / total_w, np.mean(c - r), rtol=1e-5, atol=1e-6)
