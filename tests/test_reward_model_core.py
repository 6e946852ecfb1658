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
