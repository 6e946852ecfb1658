"""The trainer skeleton: schedule values, decay mask, exact gradient accumulation, the NaN guard,
metrics.jsonl / TensorBoard output."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlaif_jax.models import config as config_lib
from rlaif_jax.models.decoder import Decoder
from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.training import checkpointing, loop as loop_lib, metrics as metrics_lib, optim, sft
from rlaif_jax.training import train_state as ts
from rlaif_jax.training import trainer as trainer_lib

TINY = config_lib.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                       num_heads=2, num_kv_heads=1, head_dim=16)


def _reference_lr(s, peak, total, warmup, decay, ratio):
  if s < warmup:
    return peak * (s + 1) / warmup
  p = min(max((s - warmup) / (total - warmup), 0.0), 1.0)
  end = peak * ratio
  if decay == "cosine":
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * p))
  if decay == "linear":
    return peak + (end - peak) * p
  return peak


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_schedule_values(decay):
  sched = optim.lr_schedule(2.0, total_steps=10, warmup_steps=4, decay=decay, end_lr_ratio=0.1)
  for s in range(0, 13):
    np.testing.assert_allclose(float(sched(s)), _reference_lr(s, 2.0, 10, 4, decay, 0.1),
                               rtol=1e-6, err_msg=f"step {s}")
  assert float(sched(0)) == pytest.approx(0.5)  # warmup does not waste the first update
  if decay == "cosine":
    assert float(sched(7)) == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert float(sched(10)) == pytest.approx(0.2)


def test_schedule_rejects_bad_config():
  with pytest.raises(ValueError, match="optim.decay"):
    optim.lr_schedule(1.0, 10, decay="step")
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.lr_schedule(1.0, 10, warmup_steps=11)


def test_optimizer_applies_schedule_and_decay_mask():
  params = {"w": jnp.ones((2, 2)), "norm": {"scale": jnp.ones((2,))}, "bias": jnp.ones((2,))}
  tx, sched = optim.make_optimizer(0.1, 10, warmup_steps=2, weight_decay=0.5, max_grad_norm=0.0,
                                   eps=1e-12)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  # Zero gradient: only decoupled weight decay moves parameters, by lr(0) * wd * p on decayed ones.
  np.testing.assert_allclose(updates["w"], -float(sched(0)) * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["norm"]["scale"], 0.0)
  np.testing.assert_array_equal(updates["bias"], 0.0)
  grads = jax.tree.map(lambda p: jnp.full_like(p, -3.0), params)
  updates, _ = tx.update(grads, state, params)  # Adam's first step moves by lr * sign(g)
  np.testing.assert_allclose(updates["bias"], float(sched(0)) * np.ones(2), rtol=1e-5)


def test_weight_decay_mask_on_decoder():
  params = nnx.state(Decoder(TINY, rngs=nnx.Rngs(0)), nnx.Param)
  mask = {optim.path_name(p): m for p, m in jax.tree_util.tree_flatten_with_path(
      optim.weight_decay_mask(params))[0]}
  assert mask["embed"] and mask["layers/0/attn/wq"] and mask["layers/0/mlp/w_up"]
  assert not mask["layers/0/attn/bq"] and not mask["layers/0/input_norm/scale"]
  assert not mask["final_norm/scale"]


def test_weight_decay_mask_excludes_named_biases():
  """`*_bias` (the scalar head's head_bias) is a bias too; the head's weight is decayed."""
  from rlaif_jax.models.scalar_head import ScalarHeadModel
  model = ScalarHeadModel(Decoder(TINY, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  mask = {optim.path_name(p): m for p, m in jax.tree_util.tree_flatten_with_path(
      optim.weight_decay_mask(nnx.state(model, nnx.Param)))[0]}
  assert not mask["head_bias"] and mask["head"] and mask["backbone/layers/0/attn/wq"]
  assert not mask["backbone/layers/0/attn/bq"]
  names = {"out_bias": 1.0, "bias": 1.0, "b": {"bias": 1.0}, "unbiased": 1.0, "biasing": 1.0}
  assert optim.weight_decay_mask(names) == {"out_bias": False, "bias": False, "b": {"bias": False},
                                            "unbiased": True, "biasing": True}


def _token_batch(rng, b=8, t=12, vocab=64):
  tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
  lengths = rng.integers(4, t + 1, b)
  attention = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  starts = rng.integers(1, 4, b)
  loss_mask = attention * (np.arange(t)[None] >= starts[:, None])
  positions = np.maximum(np.cumsum(attention, 1) - 1, 0).astype(np.int32)
  return {"tokens": tokens, "loss_mask": loss_mask.astype(np.int32),
          "attention_mask": attention, "positions": positions}


def test_grad_accumulation_equals_big_batch():
  model = Decoder(TINY, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(model, nnx.Param)
  batch = jax.tree.map(jnp.asarray, _token_batch(np.random.default_rng(0)))
  loss_fn = lambda p, b, r: sft.sft_loss(nnx.merge(graphdef, p), b, r)
  key = jax.random.key(0)
  big_loss, big_aux, big_g = jax.jit(
      lambda p, b: optim.accumulated_value_and_grad(loss_fn, p, b, key, 1))(params, batch)
  acc_loss, acc_aux, acc_g = jax.jit(
      lambda p, b: optim.accumulated_value_and_grad(loss_fn, p, b, key, 4))(params, batch)
  np.testing.assert_allclose(acc_loss, big_loss, rtol=1e-6)
  np.testing.assert_allclose(acc_aux["accuracy"], big_aux["accuracy"], rtol=1e-6)
  assert float(acc_aux["loss_weight"]) == float(big_aux["loss_weight"])
  for a, b in zip(jax.tree.leaves(acc_g), jax.tree.leaves(big_g)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
  # Plain averaging of microbatch means (what optax.MultiSteps does) is measurably different.
  micro = optim.split_microbatches(batch, 4)
  grad_fn = jax.jit(jax.grad(lambda p, mb: loss_fn(p, mb, key)[0]))
  naive = [grad_fn(params, jax.tree.map(lambda x: x[i], micro)) for i in range(4)]
  naive_embed = np.mean([np.asarray(g["embed"].get_value()) for g in naive], axis=0)
  assert np.abs(naive_embed - np.asarray(big_g["embed"].get_value())).max() > 1e-5


def test_train_step_with_microbatches_matches_single_step():
  mesh = mesh_lib.make_mesh((1, -1, 1))
  tx, sched = optim.make_optimizer(1e-2, 10)
  batch = _token_batch(np.random.default_rng(3))
  finals = []
  for m in (1, 2):
    state = ts.create_train_state(Decoder(TINY, rngs=nnx.Rngs(2)), tx, mesh, seed=0)
    step = trainer_lib.make_train_step(sft.sft_loss, tx, sched, num_microbatches=m, mesh=mesh,
                                       shardings=ts.state_shardings(state, mesh, tx))
    state, out = step(state, trainer_lib.put_batch(batch, mesh))
    assert int(state.step) == 1 and float(out["lr"]) == pytest.approx(float(sched(0)))
    finals.append(ts.host_params(state))
  for k in finals[0]:
    # One Adam step: g / sqrt(v) amplifies the summation-order rounding of small gradients.
    np.testing.assert_allclose(finals[1][k], finals[0][k], rtol=1e-5, atol=3e-6, err_msg=k)


class _Linear(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.ones((3, 1)))


def _mse_loss(model, batch, rng):
  del rng
  pred = batch["x"] @ model.w.get_value()
  loss = jnp.mean((pred[:, 0] - batch["y"]) ** 2)
  loss = jnp.where(jnp.any(batch["poison"] > 0), jnp.nan, loss)
  return loss, {"abs_w": jnp.abs(model.w.get_value()).sum()}


def _linear_batches(poison_from: int | None):
  def make(start):
    step = start
    while True:
      rng = np.random.default_rng([7, step])
      x = rng.normal(size=(4, 3)).astype(np.float32)
      poison = np.full((4,), poison_from is not None and step >= poison_from, np.int32)
      yield {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32), "poison": poison}
      step += 1
  return make


def _linear_trainer(workdir, total, **loop):
  tx, sched = optim.make_optimizer(0.1, total, warmup_steps=1, max_grad_norm=10.0)
  cfg = trainer_lib.LoopConfig(total_steps=total, progress_bar=False, **loop)
  return trainer_lib.Trainer(_mse_loss, tx, sched, mesh_lib.make_mesh((1, -1, 1)), workdir, cfg,
                             meta={"purpose": "test"})


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
  trainer = _linear_trainer(tmp_path, 12, log_every=1, eval_every=0, checkpoint_every=3,
                            keep_checkpoints=5)
  state = trainer.init_state(_Linear)
  # Batch index 6 is the 7th update: steps 1..6 are fine, checkpoints 3 and 6 are written.
  with pytest.raises(loop_lib.NonFiniteLossError) as err:
    trainer.fit(state, _linear_batches(poison_from=6))
  msg = str(err.value)
  assert "training step 7" in msg and "loss=nan" in msg and "step 6" in msg, msg
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [3, 6]
  abstract = ts.abstract_train_state(nnx.eval_shape(_Linear), optax.identity(),
                                     mesh_lib.make_mesh((1, -1, 1)))
  params = ckpt.restore_params(abstract.params)
  ckpt.close()
  assert np.all(np.isfinite(np.asarray(params["w"].get_value())))
  assert [r["step"] for r in metrics_lib.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_nan_guard_with_metrics_read_one_step_late(tmp_path):
  """log_every=4: metrics are fetched a step late, yet the NaN at step 8 is named and the
  checkpoint due at step 9 (after it) is never written."""
  trainer = _linear_trainer(tmp_path, 12, log_every=4, eval_every=0, checkpoint_every=3,
                            keep_checkpoints=5)
  state = trainer.init_state(_Linear)
  with pytest.raises(loop_lib.NonFiniteLossError, match="training step 8: loss=nan"):
    trainer.fit(state, _linear_batches(poison_from=7))
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [3, 6]
  ckpt.close()
  assert [r["step"] for r in metrics_lib.read_metrics(tmp_path)] == [4]


def test_metrics_jsonl_and_tensorboard(tmp_path):
  trainer = _linear_trainer(tmp_path, 6, log_every=2, eval_every=3, checkpoint_every=0)
  state = trainer.init_state(_Linear)
  evals = lambda: iter(next(_linear_batches(None)(100)) for _ in range(2))
  state = trainer.fit(state, _linear_batches(None), evals)
  trainer.close()
  rows = metrics_lib.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [0, 2, 3, 4, 6]
  assert set(rows[0]) == {"step", "eval_loss", "eval_abs_w"}
  for r in rows[1:]:
    if r["step"] % 2 == 0:
      assert {"loss", "lr", "grad_norm", "tokens_per_sec", "abs_w"} <= set(r), r
      assert r["tokens_per_sec"] > 0 and math.isfinite(r["loss"])
  assert "eval_loss" in rows[2] and "loss" not in rows[2]  # step 3: eval only
  assert "eval_loss" in rows[4] and "loss" in rows[4]  # final step: both
  assert rows[4]["eval_loss"] < rows[0]["eval_loss"]
  np.testing.assert_allclose(rows[1]["lr"], 0.1, rtol=1e-6)  # step 2 logs lr of update 2
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert checkpointing.Checkpointer(tmp_path / "checkpoints").all_steps() == [6]
