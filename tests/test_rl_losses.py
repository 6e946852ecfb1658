"""Chunked per-token log-probs/entropy equal a full log-softmax; rollout sequence assembly."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax.models import Decoder, config as config_lib
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.rl import losses, rollout_buffer


def tiny():
  cfg = config_lib.tiny(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8)
  return Decoder(cfg, rngs=nnx.Rngs(0))


def batch():
  prompt = np.array([[0, 0, 5, 6], [7, 8, 9, 10]], np.int32)
  pmask = prompt != 0
  resp = np.array([[11, 12, 13, 0, 0], [14, 15, 0, 0, 0]], np.int32)
  rmask = resp != 0
  return rollout_buffer.assemble_sequences(prompt, pmask, resp, rmask)


def test_assemble_sequences():
  b = batch()
  np.testing.assert_array_equal(b["positions"][0], [0, 0, 0, 1, 2, 3, 4, 4, 4])
  np.testing.assert_array_equal(b["response_mask"][1], [0, 0, 0, 0, 1, 1, 0, 0, 0])


def test_chunked_log_probs_match_full_log_softmax():
  model = tiny()
  b = {k: jnp.asarray(v) for k, v in batch().items()}
  lp, ent = losses.token_log_probs_and_entropy(model, b["tokens"], b["positions"],
                                               b["attention_mask"], chunk=3)
  logits, _ = model(b["tokens"], b["positions"], b["attention_mask"])
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
  tokens = np.asarray(b["tokens"])
  for r in range(2):
    for t in range(1, tokens.shape[1]):
      np.testing.assert_allclose(lp[r, t], logp[r, t - 1, tokens[r, t]], atol=1e-5)
      p = np.exp(logp[r, t - 1])
      np.testing.assert_allclose(ent[r, t], -(p * logp[r, t - 1]).sum(), atol=1e-5)
  assert float(lp[0, 0]) == 0.0


def test_critic_values_are_shifted_head_outputs():
  critic = ScalarHeadModel(tiny(), rngs=nnx.Rngs(3))
  b = {k: jnp.asarray(v) for k, v in batch().items()}
  v = losses.critic_values(critic, b["tokens"], b["positions"], b["attention_mask"])
  raw = critic.token_values(b["tokens"], b["positions"], b["attention_mask"])
  np.testing.assert_allclose(np.asarray(v[:, 1:]), np.asarray(raw[:, :-1]), atol=1e-6)
