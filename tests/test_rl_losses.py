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


def _padded_rollout(model, extra_pad: int, adv: np.ndarray):
  """The batch() rollout with its prompts left-padded by `extra_pad` more columns."""
  prompt = np.array([[0, 0, 5, 6], [7, 8, 9, 10]], np.int32)
  prompt = np.pad(prompt, ((0, 0), (extra_pad, 0)))
  resp = np.array([[11, 12, 13, 0, 0], [14, 15, 0, 0, 0]], np.int32)
  seq = {k: jnp.asarray(v) for k, v in rollout_buffer.assemble_sequences(
      prompt, prompt != 0, resp, resp != 0).items()}
  old, _ = losses.token_log_probs_and_entropy(model, seq["tokens"], seq["positions"],
                                              seq["attention_mask"])
  zeros = jnp.zeros_like(old)
  return rollout_buffer.RolloutBatch(
      **seq, old_log_probs=old, ref_log_probs=old, values=zeros, token_rewards=zeros,
      advantages=jnp.asarray(adv)[:, None] * seq["response_mask"], returns=zeros,
      sequence_rewards=jnp.asarray(adv))


def test_dr_grpo_loss_is_independent_of_prompt_padding():
  """seq-mean-token-sum-norm divides by the constant response width R (verl's response
  length), not by the [B, P+R] row width, which changes with each step's prompt padding."""
  import pytest
  model = tiny()
  adv = np.array([0.7, -1.3], np.float32)
  r_width = 5
  cfg = losses.ActorLossConfig(kl_coef=0.0, agg_mode="seq-mean-token-sum-norm",
                               loss_scale_factor=r_width)
  # On-policy (ratio 1): each response token contributes -A; NumPy reference sum / R.
  want = float(-(adv[0] * 3 + adv[1] * 2)) / r_width
  got = [float(losses.actor_loss(model, _padded_rollout(model, pad, adv), cfg)[0])
         for pad in (0, 8, 28)]
  np.testing.assert_allclose(got, [want] * 3, rtol=1e-5)
  with pytest.raises(ValueError, match="loss_scale_factor"):
    losses.actor_loss(model, _padded_rollout(model, 0, adv),
                      losses.ActorLossConfig(kl_coef=0.0, agg_mode="seq-mean-token-sum-norm"))
