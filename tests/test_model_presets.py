"""Presets have the real parameter counts; shapes are evaluated without allocating."""
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
