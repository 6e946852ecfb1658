"""Our decoder computes what `transformers` computes, on tiny random HF checkpoints (fp32)."""
import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlaif_jax.models import KVCache, checkpoint_bridge, config as config_lib, positions_from_mask
from rlaif_jax.models import length_attention

TOL = 1e-4

VARIANTS = {
    # kv heads < heads, tied head, QKV bias (Qwen2).
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_untied": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=3)),
    # Llama-3 rope scaling, untied, no bias.
    "llama3_scaled": ("llama", dict(tie_word_embeddings=False, rope_theta=500000.0,
                                    max_position_embeddings=256,
                                    rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                      low_freq_factor=1.0, high_freq_factor=4.0,
                                                      original_max_position_embeddings=16))),
}


def make_hf_model(arch: str, **overrides):
  base = dict(vocab_size=131, hidden_size=48, intermediate_size=76, num_hidden_layers=2,
              num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-6)
  base.update(overrides)
  cls_cfg, cls_model = ((transformers.Qwen2Config, transformers.Qwen2ForCausalLM) if arch == "qwen2"
                        else (transformers.LlamaConfig, transformers.LlamaForCausalLM))
  torch.manual_seed(0)
  model = cls_model(cls_cfg(**base)).eval()
  with torch.no_grad():  # random biases/norm scales so that every tensor matters
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
  return model


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_dir(request, tmp_path_factory):
  arch, overrides = VARIANTS[request.param]
  model = make_hf_model(arch, **overrides)
  d = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(d)
  return d, model


@pytest.fixture(params=[False, True], ids=["unrolled", "scanned"])
def scan_layers(request):
  """Both parameter layouts: a list of layers, and stacked layers run by lax.scan."""
  return request.param


def hf_logits(model, tokens, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)))
  return out.logits.float().numpy()


def ours_logits(model, tokens, mask):
  mask = jnp.asarray(mask)
  logits, _ = model(jnp.asarray(tokens), positions_from_mask(mask), mask)
  return np.asarray(logits)


def test_logits_match_transformers(hf_dir, scan_layers):
  d, hf = hf_dir
  ours = checkpoint_bridge.load_hf_checkpoint(d, scan_layers=scan_layers)
  tokens = np.random.RandomState(1).randint(0, 131, (2, 11))
  mask = np.ones_like(tokens, dtype=bool)
  np.testing.assert_allclose(ours_logits(ours, tokens, mask), hf_logits(hf, tokens, mask), atol=TOL,
                             rtol=0)


def test_left_padded_batch_matches_transformers(hf_dir):
  d, hf = hf_dir
  ours = checkpoint_bridge.load_hf_checkpoint(d)
  tokens = np.random.RandomState(2).randint(0, 131, (3, 9))
  mask = np.ones_like(tokens, dtype=bool)
  mask[0, :4] = False
  mask[2, :1] = False
  ref = hf_logits(hf, tokens, mask)
  got = ours_logits(ours, tokens, mask)
  np.testing.assert_allclose(got[mask], ref[mask], atol=TOL, rtol=0)
  # Each padded row equals the same row run alone without padding.
  alone = ours_logits(ours, tokens[:1, 4:], np.ones((1, 5), bool))
  np.testing.assert_allclose(got[0, 4:], alone[0], atol=TOL, rtol=0)


def test_kv_cache_incremental_equals_full_sequence(hf_dir, scan_layers):
  d, _ = hf_dir
  ours = checkpoint_bridge.load_hf_checkpoint(d, scan_layers=scan_layers)
  cfg = ours.cfg
  tokens = np.random.RandomState(3).randint(0, 131, (2, 10))
  mask = np.ones_like(tokens, dtype=bool)
  mask[1, :3] = False  # left padding inside the prompt
  full = ours_logits(ours, tokens, mask)
  positions = np.asarray(positions_from_mask(jnp.asarray(mask)))
  cache = KVCache.zeros(cfg, batch=2, length=16)
  prompt = 6
  step = jax.jit(lambda m, t, p, a, c: m(t, p, a, c))
  logits, cache = step(ours, jnp.asarray(tokens[:, :prompt]), jnp.asarray(positions[:, :prompt]),
                       jnp.asarray(mask[:, :prompt]), cache)
  pieces = [np.asarray(logits)]
  for t in range(prompt, tokens.shape[1]):
    logits, cache = step(ours, jnp.asarray(tokens[:, t:t + 1]), jnp.asarray(positions[:, t:t + 1]),
                         jnp.asarray(mask[:, t:t + 1]), cache)
    pieces.append(np.asarray(logits))
  incremental = np.concatenate(pieces, axis=1)
  assert int(cache.index) == tokens.shape[1]
  np.testing.assert_allclose(incremental[mask], full[mask], atol=TOL, rtol=0)


def test_export_roundtrip_through_transformers(hf_dir, scan_layers, tmp_path):
  d, hf = hf_dir
  ours = checkpoint_bridge.load_hf_checkpoint(d, scan_layers=scan_layers)
  out = checkpoint_bridge.export_hf_checkpoint(ours, tmp_path / "export", max_shard_bytes=40_000)
  assert (out / "model.safetensors.index.json").exists()  # small shards force the sharded layout
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  tokens = np.random.RandomState(4).randint(0, 131, (2, 7))
  mask = np.ones_like(tokens, dtype=bool)
  np.testing.assert_allclose(hf_logits(reloaded, tokens, mask), hf_logits(hf, tokens, mask),
                             atol=TOL, rtol=0)
  again = checkpoint_bridge.load_hf_checkpoint(out, scan_layers=scan_layers)
  np.testing.assert_allclose(ours_logits(again, tokens, mask), ours_logits(ours, tokens, mask),
                             atol=0, rtol=0)


def test_scanned_layers_match_unrolled_in_value_and_gradient(hf_dir):
  d, _ = hf_dir
  unrolled = checkpoint_bridge.load_hf_checkpoint(d, remat=True)
  scanned = checkpoint_bridge.load_hf_checkpoint(d, remat=True, scan_layers=True)
  assert scanned.layers.mlp.w_up.get_value().shape[0] == unrolled.cfg.num_layers
  tokens = jnp.asarray(np.random.RandomState(6).randint(0, 131, (2, 9)))
  mask = jnp.asarray(np.arange(9)[None, :] >= np.asarray([[0], [3]]))

  def loss(model):
    logits, _ = model(tokens, positions_from_mask(mask), mask)
    return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0) ** 2) * 1e-3

  lu, gu = jax.value_and_grad(loss)(unrolled)
  ls, gs = jax.value_and_grad(loss)(scanned)
  np.testing.assert_allclose(float(ls), float(lu), rtol=1e-5)
  dots = checkpoint_bridge.load_hf_checkpoint(d, remat=True, scan_layers=True, remat_policy="dots")
  _, gd = jax.value_and_grad(loss)(dots)  # saving matmul outputs changes memory, not values
  np.testing.assert_allclose(gd.layers.mlp.w_up.get_value(), gs.layers.mlp.w_up.get_value(),
                             atol=1e-6)
  np.testing.assert_allclose(gs.embed.get_value(), gu.embed.get_value(), atol=1e-5)
  for i in range(unrolled.cfg.num_layers):
    np.testing.assert_allclose(gs.layers.attn.wq.get_value()[i],
                               gu.layers[i].attn.wq.get_value(), atol=1e-5)
    np.testing.assert_allclose(gs.layers.mlp.w_down.get_value()[i],
                               gu.layers[i].mlp.w_down.get_value(), atol=1e-5)


def test_scanned_load_names_a_missing_layer_tensor(hf_dir, tmp_path):
  d, _ = hf_dir
  from rlaif_jax.models import safetensors_io
  tensors = [(n, t) for n, t in safetensors_io.iter_checkpoint(d)
             if n != "model.layers.1.mlp.up_proj.weight"]
  out = tmp_path / "broken"
  out.mkdir()
  (out / "config.json").write_text((d / "config.json").read_text())
  lookup = dict(tensors)
  safetensors_io.write_file(out / "model.safetensors",
                            [(n, tuple(t.shape), t.dtype) for n, t in tensors],
                            lambda n: np.asarray(lookup[n]))
  with pytest.raises(checkpoint_bridge.CheckpointMismatchError,
                     match=r"missing tensors \['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
    checkpoint_bridge.load_hf_checkpoint(out, scan_layers=True)


def test_bf16_compute_stays_close(hf_dir):
  d, hf = hf_dir
  ours = checkpoint_bridge.load_hf_checkpoint(d, param_dtype="bfloat16", dtype="bfloat16")
  assert ours.layers[0].mlp.w_up.get_value().dtype == jnp.bfloat16
  tokens = np.random.RandomState(5).randint(0, 131, (2, 8))
  mask = np.ones_like(tokens, dtype=bool)
  got, ref = ours_logits(ours, tokens, mask), hf_logits(hf, tokens, mask)
  # The yardstick is transformers' own bf16 error on the same weights and tokens: measured over
  # the three variants and token seeds 5-7, ours was 0.0030-0.0039 (0.37-0.76% of the largest
  # |logit|) and torch's 0.0028-0.0040, a ratio of 0.84-1.21. Allow 2x torch's error, and 2% of
  # the largest |logit| (bf16 keeps 8 mantissa bits: 0.39% per rounding, over 2 layers).
  torch_bf16 = hf_logits(copy.deepcopy(hf).to(torch.bfloat16), tokens, mask)
  err = np.abs(got - ref).max()
  assert err <= 2 * np.abs(torch_bf16 - ref).max(), (err, np.abs(torch_bf16 - ref).max())
  assert err < 0.02 * np.abs(ref).max()


def test_config_roundtrip(hf_dir):
  d, _ = hf_dir
  cfg = config_lib.from_hf_config(d)
  again = config_lib.from_hf_config(config_lib.to_hf_config(cfg))
  assert again == cfg
  assert config_lib.ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("impl", ["xla", "splash", "cudnn"])
def test_fused_attention_matches_transformers_and_einsum_gradient(hf_dir, impl, monkeypatch):
  """attention_impl="xla" (jax.nn.dot_product_attention with a key mask), "splash" (the TPU
  kernel, run here in Pallas interpret mode; T=9 is padded to its 128-slot block) and "cudnn"
  (padding as sequence lengths on rotated rows, `models/length_attention.py`; here through the
  same call with implementation="xla", since cuDNN needs an NVIDIA GPU) on a batch padded on
  the left, on both sides (an RL sequence) and not at all: the logits of transformers, the
  gradients of our einsum attention."""
  if impl == "cudnn":
    original = length_attention.attention
    monkeypatch.setattr(length_attention, "attention",
                        lambda q, k, v, mask, implementation: original(q, k, v, mask, "xla"))
  d, hf = hf_dir
  einsum = checkpoint_bridge.load_hf_checkpoint(d)
  fused = checkpoint_bridge.load_hf_checkpoint(d, attention_impl=impl, scan_layers=True)
  tokens = np.random.RandomState(7).randint(0, 131, (4, 9))
  mask = np.ones_like(tokens, dtype=bool)
  mask[1, :5] = False
  mask[2, :8] = False  # one real token: every earlier query sees only padding
  mask[3, :2] = mask[3, 7:] = False  # prompt padding on the left, response padding on the right
  got = ours_logits(fused, tokens, mask)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got[mask], hf_logits(hf, tokens, mask)[mask], atol=TOL, rtol=0)

  def loss(model):
    m = jnp.asarray(mask)
    logits, _ = model(jnp.asarray(tokens), positions_from_mask(m), m)
    return jnp.sum(jnp.where(m[..., None], jax.nn.log_softmax(logits), 0.0) ** 2) * 1e-3

  ge, gf = jax.grad(loss)(einsum), jax.grad(loss)(fused)
  for i in range(einsum.cfg.num_layers):
    np.testing.assert_allclose(gf.layers.attn.wk.get_value()[i],
                               ge.layers[i].attn.wk.get_value(), atol=1e-5)


def _tiny_cfg(**overrides):
  base = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
              num_kv_heads=2, head_dim=16)
  return config_lib.tiny(**dict(base, **overrides))


def test_export_over_an_earlier_export_replaces_its_weight_files(tmp_path):
  """A stale index (read before model.safetensors) or stale shards never survive a re-export."""
  cfg = _tiny_cfg()
  old, new = (checkpoint_bridge.init_sharded(cfg, seed=s) for s in (0, 1))
  out = tmp_path / "export"
  embed = lambda m: np.asarray(m.embed.get_value())  # noqa: E731
  checkpoint_bridge.export_hf_checkpoint(old, out, max_shard_bytes=50_000)
  shards = sorted(p.name for p in out.glob("model-*.safetensors"))
  assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
  (out / "README.md").write_text("not a weight file")
  checkpoint_bridge.export_hf_checkpoint(new, out)
  assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
  np.testing.assert_array_equal(embed(checkpoint_bridge.load_hf_checkpoint(out)), embed(new))
  hf = transformers.AutoModelForCausalLM.from_pretrained(out)
  np.testing.assert_array_equal(hf.model.embed_tokens.weight.detach().numpy(), embed(new))
  checkpoint_bridge.export_hf_checkpoint(old, out, max_shard_bytes=50_000)  # and back
  assert not (out / "model.safetensors").exists()
  assert sorted(p.name for p in out.glob("model-*.safetensors")) == shards
  np.testing.assert_array_equal(embed(checkpoint_bridge.load_hf_checkpoint(out)), embed(old))


def test_export_tells_transformers_the_tokenizer_special_ids(tmp_path):
  from tests import tiny_hf
  ids = tiny_hf.LLAMA3_IDS
  model = checkpoint_bridge.init_sharded(_tiny_cfg(architecture="llama", qkv_bias=False))
  # A tokenizer directory without generation_config.json: one is written from the tokenizer.
  tok_dir = tiny_hf.save_tiny_llama3_tokenizer(tmp_path / "tok")
  out = checkpoint_bridge.export_hf_checkpoint(model, tmp_path / "export", tokenizer_dir=tok_dir)
  cfg = transformers.AutoConfig.from_pretrained(out)
  eot = ids["<|eot_id|>"]
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
      ids["<|begin_of_text|>"], eot, eot)  # no pad token: pad = eos
  gen = transformers.GenerationConfig.from_pretrained(out)
  assert gen.eos_token_id[0] == eot
  assert set(gen.eos_token_id) == {eot, ids["<|eom_id|>"], ids["<|end_of_text|>"]}
  assert gen.bos_token_id == ids["<|begin_of_text|>"]
  # The source's own generation_config.json is copied, not replaced.
  src = tiny_hf.make_tiny_hf_checkpoint(tmp_path, arch="llama", tie=False, vocab_size=300,
                                        eos_token_id=[tiny_hf.EOS_ID, tiny_hf.IM_END_ID])
  source_gen = (src / "generation_config.json").read_text()
  out = checkpoint_bridge.export_hf_checkpoint(model, tmp_path / "export2", tokenizer_dir=src)
  assert (out / "generation_config.json").read_text() == source_gen
  cfg = transformers.AutoConfig.from_pretrained(out)
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (None, tiny_hf.EOS_ID,
                                                                    tiny_hf.EOS_ID)
  # Without a tokenizer the ids are unknown: null, not transformers' Llama defaults (1, 2).
  out = checkpoint_bridge.export_hf_checkpoint(model, tmp_path / "export3")
  cfg = transformers.AutoConfig.from_pretrained(out)
  assert (cfg.bos_token_id, cfg.eos_token_id) == (None, None)
  assert not (out / "generation_config.json").exists()


def test_export_refuses_a_llama_model_with_qkv_bias(tmp_path):
  model = checkpoint_bridge.init_sharded(_tiny_cfg(architecture="llama", qkv_bias=True))
  with pytest.raises(config_lib.UnsupportedArchitectureError, match="qkv_bias"):
    checkpoint_bridge.export_hf_checkpoint(model, tmp_path / "export")
  assert not (tmp_path / "export").exists()


def test_export_for_inference_writes_sentencepiece_special_ids(tmp_path):
  from rlaif_jax.tokenizers import load_tokenizer, train
  from rlaif_jax.training import checkpointing
  texts = [f"新年快乐，万事如意！Happy new year {i}!" for i in range(200)]
  sp_path = train.train_sentencepiece(texts, tmp_path / "sp", vocab_size=300)
  tok = load_tokenizer(sp_path)
  model = checkpoint_bridge.init_sharded(_tiny_cfg(vocab_size=tok.vocab_size))
  out = checkpointing.export_for_inference(tmp_path / "run", model=model, tokenizer_path=sp_path)
  cfg = transformers.AutoConfig.from_pretrained(out)
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (tok.bos_id, tok.eos_id,
                                                                    tok.pad_id)
  gen = transformers.GenerationConfig.from_pretrained(out)
  assert gen.eos_token_id == list(tok.stop_ids) and tok.stop_ids[0] == tok.eos_id
