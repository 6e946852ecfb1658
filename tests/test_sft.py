"""SFT: the masked cross entropy against NumPy, the held-out split, and a short real run (eval
loss improves, the export loads back as the same model)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import sft_tiny_cpu
from rlaif_jax.models import checkpoint_bridge, config as config_lib
from rlaif_jax.models.decoder import Decoder
from rlaif_jax.tokenizers import load_tokenizer
from rlaif_jax.training import checkpointing, metrics as metrics_lib, sft
from rlaif_jax.training import train_state as ts


def _numpy_masked_ce(logits, tokens, loss_mask):
  logits = logits[:, :-1].astype(np.float64)
  targets, mask = tokens[:, 1:], loss_mask[:, 1:].astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  acc = (logits.argmax(-1) == targets)
  return (nll * mask).sum() / mask.sum(), (acc * mask).sum() / mask.sum(), mask.sum()


def test_token_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
  tokens = rng.integers(0, 11, (3, 7)).astype(np.int32)
  loss_mask = (rng.random((3, 7)) > 0.4).astype(np.int32)
  loss, acc, n = sft.token_cross_entropy(jnp.asarray(logits), jnp.asarray(tokens),
                                         jnp.asarray(loss_mask))
  ref_loss, ref_acc, ref_n = _numpy_masked_ce(logits, tokens, loss_mask)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(acc), ref_acc, rtol=1e-6)
  assert float(n) == ref_n
  # Masked-out targets do not matter at all.
  noisy = logits.copy()
  noisy[:, :-1][loss_mask[:, 1:] == 0] = 1e4
  np.testing.assert_allclose(float(sft.token_cross_entropy(
      jnp.asarray(noisy), jnp.asarray(tokens), jnp.asarray(loss_mask))[0]), ref_loss, rtol=1e-5)


def test_sft_loss_on_a_padded_batch_matches_numpy():
  cfg = config_lib.tiny(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=1,
                        num_heads=2, num_kv_heads=1, head_dim=16)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  from rlaif_jax.data import formatting
  examples = [{"tokens": np.array([5, 6, 7, 8, 9], np.int32),
               "loss_mask": np.array([0, 0, 1, 1, 1], np.int32)},
              {"tokens": np.array([4, 3, 2], np.int32), "loss_mask": np.array([0, 1, 1], np.int32)}]
  batch = formatting.pad_batch(examples, (8,), pad_id=0)
  loss, aux = sft.sft_loss(model, jax.tree.map(jnp.asarray, batch), jax.random.key(0))
  logits, _ = model(jnp.asarray(batch["tokens"]), jnp.asarray(batch["positions"]),
                    jnp.asarray(batch["attention_mask"], bool))
  ref_loss, ref_acc, ref_n = _numpy_masked_ce(np.asarray(logits), batch["tokens"],
                                              batch["loss_mask"])
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(aux["accuracy"]), ref_acc, rtol=1e-6)
  assert float(aux["loss_weight"]) == ref_n == 5  # 3 + 2 response tokens are targets
  # Chunks of 3 (7 targets -> 3 chunks, the last padded) give the same loss and gradient.
  chunked = lambda m: sft.sft_loss(m, jax.tree.map(jnp.asarray, batch), None, logits_chunk=3)
  whole = lambda m: sft.sft_loss(m, jax.tree.map(jnp.asarray, batch), None, logits_chunk=64)
  np.testing.assert_allclose(float(chunked(model)[0]), ref_loss, rtol=1e-5)
  g1 = nnx.grad(lambda m: chunked(m)[0])(model)
  g2 = nnx.grad(lambda m: whole(m)[0])(model)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_split_holdout_is_deterministic_and_disjoint():
  train, held = sft.split_holdout(1000, 0.05, seed=3)
  train2, held2 = sft.split_holdout(1000, 0.05, seed=3)
  np.testing.assert_array_equal(held, held2)
  np.testing.assert_array_equal(train, train2)
  assert len(held) == 50 and not set(train) & set(held)
  assert sorted(set(train) | set(held)) == list(range(1000))
  assert not np.array_equal(sft.split_holdout(1000, 0.05, seed=4)[1], held)
  with pytest.raises(ValueError, match="eval_fraction"):
    sft.split_holdout(10, 0.0, 0)


def _small_config():
  config = sft_tiny_cpu.get_config()
  config.tokenizer.vocab_size = 3200
  config.model.overrides = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                                num_kv_heads=2, head_dim=16)
  config.data.max_train_examples = 256
  config.data.max_eval_examples = 48
  config.batch_size = 16
  config.eval_batch_size = 24
  config.format.max_prompt_len = 32
  config.format.max_response_len = 64
  config.optim.lr = 1e-2
  config.optim.warmup_steps = 3
  config.loop.total_steps = 30
  config.loop.eval_every = 15
  config.loop.checkpoint_every = 15
  config.loop.progress_bar = False
  config.samples.num_prompts = 2
  config.samples.max_new_tokens = 8
  return config


def test_short_sft_run_improves_eval_loss_and_exports(tmp_path, data_dir):
  config = _small_config()
  config.model.scan_layers = True  # stacked layers through training, checkpoint and HF export
  result = sft.run_sft(config, tmp_path, data_dir)
  rows = metrics_lib.read_metrics(tmp_path)
  evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
  assert [r["step"] for r in rows if "eval_loss" in r] == [0, 15, 30]
  assert evals[-1] < evals[0] - 1.0, evals
  assert result["final_eval"]["eval_loss"] == pytest.approx(evals[-1])
  assert len(result["samples"]) == 2 and (tmp_path / "samples.txt").exists()
  export = tmp_path / "export"
  for name in ("config.json", "model.safetensors", "model_config.json", "tokenizer.model"):
    assert (export / name).is_file(), name
  saved_cfg = config_lib.ModelConfig.from_dict(
      json.loads((export / "model_config.json").read_text()))
  assert saved_cfg.hidden_size == 64 and saved_cfg.vocab_size == 3200 and saved_cfg.scan_layers
  assert load_tokenizer(export / "tokenizer.model").vocab_size == 3200
  # The export, the checkpoint and load_model_from_workdir all hold the same weights.
  from_export = ts.host_params(nnx.state(
      checkpoint_bridge.load_hf_checkpoint(export, scan_layers=True), nnx.Param))
  from_ckpt = ts.host_params(nnx.state(checkpointing.load_model_from_workdir(tmp_path), nnx.Param))
  assert from_export.keys() == from_ckpt.keys()
  for k in from_ckpt:
    np.testing.assert_array_equal(from_export[k], from_ckpt[k], err_msg=k)


def test_tpu_config_builds_a_bf16_remat_qwen_7b(tmp_path):
  from configs import sft_qwen2_5_7b_tpu
  from rlaif_jax.training import optim, trainer as trainer_lib
  config = sft_qwen2_5_7b_tpu.get_config()
  hf_dir = tmp_path / "Qwen2.5-7B-Instruct"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps(config_lib.to_hf_config(config_lib.qwen2_5_7b())))
  with pytest.raises(ValueError, match="hf_checkpoint"):
    sft.prepare_tokenizer(config, tmp_path, tmp_path)
  config.model.hf_checkpoint = str(hf_dir)
  cfg = sft.model_config(config, tok=None)
  assert (cfg.param_dtype, cfg.dtype, cfg.remat, cfg.scan_layers) == ("float32", "bfloat16", True,
                                                                      True)
  assert 7.5e9 < cfg.num_params < 7.7e9
  fmt = sft.format_config(config.format)
  assert fmt.max_prompt_len + fmt.max_response_len == 768 and config.batch_size == 32
  loop = trainer_lib.LoopConfig.from_config(config.loop)
  assert loop.total_steps == 3 * 3800 // 32
  _, schedule = optim.optimizer_from_config(config.optim, loop.total_steps)
  assert float(schedule(config.optim.warmup_steps)) == pytest.approx(1e-5)
  assert tuple(config.mesh) == (1, -1, 1)
