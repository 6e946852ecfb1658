"""Presets have the real parameter counts; shapes are evaluated without allocating. HF configs
with features we do not implement are refused."""
import json
import re

import jax
import pytest
from flax import nnx

from rlaif_jax.models import Decoder, config as config_lib

EXPECTED_BILLIONS = {"qwen2_5_0_5b": 0.494, "qwen2_5_1_5b": 1.544, "qwen2_5_7b": 7.616,
                     "llama3_1_8b": 8.030}


@pytest.mark.parametrize("name", sorted(EXPECTED_BILLIONS))
def test_preset_parameter_count_without_allocating(name):
  cfg = config_lib.preset(name)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  count = sum(x.size for x in leaves)
  assert count == cfg.num_params
  assert round(count / 1e9, 3) == EXPECTED_BILLIONS[name]


def test_headline_counts():
  assert round(config_lib.qwen2_5_7b().num_params / 1e9, 2) == 7.62
  assert round(config_lib.llama3_1_8b().num_params / 1e9, 2) == 8.03


def test_bad_configs_are_rejected():
  with pytest.raises(ValueError, match="num_kv_heads"):
    config_lib.tiny(num_heads=6, num_kv_heads=4)
  with pytest.raises(KeyError, match="unknown model preset"):
    config_lib.preset("gpt5")
  with pytest.raises(config_lib.UnsupportedArchitectureError, match="MistralForCausalLM"):
    config_lib.from_hf_config({"architectures": ["MistralForCausalLM"]})


def _qwen2_hf(**fields):
  """A Qwen2.5-0.5B-shaped HF config dict (sliding-window fields as Qwen ships them)."""
  hf = dict(architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
            intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, hidden_act="silu", rope_theta=1e6, tie_word_embeddings=True,
            use_sliding_window=False, sliding_window=32768, max_window_layers=21)
  hf.update(fields)
  return hf


def test_standard_qwen2_5_config_loads():
  assert config_lib.from_hf_config(_qwen2_hf()) == config_lib.qwen2_5_0_5b()
  # Sliding window requested but every layer below max_window_layers: all layers attend fully.
  config_lib.from_hf_config(_qwen2_hf(use_sliding_window=True, max_window_layers=24))
  config_lib.from_hf_config(_qwen2_hf(layer_types=["full_attention"] * 24))


@pytest.mark.parametrize("fields, match", [
    (dict(use_sliding_window=True, sliding_window=4096, max_window_layers=21),
     r"use_sliding_window=true with sliding_window=4096 and max_window_layers=21"),
    (dict(use_sliding_window=True, max_window_layers=0), r"sliding_window=32768"),
    (dict(layer_types=["full_attention"] * 21 + ["sliding_attention"] * 3),
     r"layer_types contains \['sliding_attention'\]"),
])
def test_sliding_window_attention_is_refused(fields, match):
  with pytest.raises(config_lib.UnsupportedArchitectureError, match=match):
    config_lib.from_hf_config(_qwen2_hf(**fields))


def test_sliding_window_error_names_the_config_file(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(_qwen2_hf(use_sliding_window=True,
                                                              max_window_layers=0)))
  with pytest.raises(config_lib.UnsupportedArchitectureError,
                     match=re.escape(f"{tmp_path / 'config.json'}: use_sliding_window")):
    config_lib.from_hf_config(tmp_path)


def test_hidden_act_must_be_silu():
  assert config_lib.from_hf_config(_qwen2_hf(hidden_act="swish")) == config_lib.qwen2_5_0_5b()
  hf = _qwen2_hf()
  del hf["hidden_act"]  # absent means silu
  assert config_lib.from_hf_config(hf) == config_lib.qwen2_5_0_5b()
  with pytest.raises(config_lib.UnsupportedArchitectureError,
                     match=r"hidden_act='gelu_pytorch_tanh' is not supported"):
    config_lib.from_hf_config(_qwen2_hf(hidden_act="gelu_pytorch_tanh"))


def test_llama_attention_bias_is_refused_both_ways():
  hf = config_lib.to_hf_config(config_lib.llama3_1_8b())
  assert hf["attention_bias"] is False
  assert config_lib.from_hf_config(hf) == config_lib.llama3_1_8b()
  with pytest.raises(config_lib.UnsupportedArchitectureError, match=r"attention_bias=true"):
    config_lib.from_hf_config(dict(hf, attention_bias=True))
  with pytest.raises(config_lib.UnsupportedArchitectureError, match=r"llama model with qkv_bias"):
    config_lib.to_hf_config(config_lib.llama3_1_8b(qkv_bias=True))


def test_to_hf_config_writes_special_token_ids():
  hf = config_lib.to_hf_config(config_lib.llama3_1_8b())
  # Unknown ids are explicit nulls, not transformers' Llama defaults (bos=1, eos=2).
  assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (None, None, None)
  hf = config_lib.to_hf_config(config_lib.llama3_1_8b(), bos_token_id=5, eos_token_id=7,
                               pad_token_id=7)
  assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (5, 7, 7)
