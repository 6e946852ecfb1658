"""Each bad checkpoint gives an error naming the tensor (and both shapes where they differ)."""
import json

import numpy as np
import pytest
import torch
import transformers

from rlaif_jax.models import checkpoint_bridge, config as config_lib, safetensors_io
from tests import tiny_hf


@pytest.fixture()
def good_dir(tmp_path):
  cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
  torch.manual_seed(0)
  transformers.Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
  return tmp_path


def rewrite(directory, edit):
  path = directory / "model.safetensors"
  tensors = {k: np.array(v) for k, v in safetensors_io.open_tensors(path).items()}
  edit(tensors)
  safetensors_io.write_file(path, [(k, v.shape, v.dtype) for k, v in tensors.items()],
                            lambda k: tensors[k])


def test_missing_tensor_is_named(good_dir):
  rewrite(good_dir, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
  with pytest.raises(checkpoint_bridge.CheckpointMismatchError,
                     match=r"missing tensors \['model\.layers\.0\.mlp\.up_proj\.weight'\]"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)


def test_unexpected_tensor_is_named(good_dir):
  rewrite(good_dir, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros((3, 3),
                                                                                      np.float32)}))
  with pytest.raises(checkpoint_bridge.CheckpointMismatchError,
                     match=r"unexpected tensor 'model\.layers\.0\.mlp\.extra\.weight' shape \(3, 3\)"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)


def test_extra_layer_is_unexpected(good_dir):
  def add_layer(t):
    t["model.layers.1.input_layernorm.weight"] = np.ones((32,), np.float32)
  rewrite(good_dir, add_layer)
  with pytest.raises(checkpoint_bridge.CheckpointMismatchError,
                     match=r"model\.layers\.1\.input_layernorm\.weight"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)


def test_wrong_shape_names_both_shapes(good_dir):
  def shrink(t):
    t["model.layers.0.mlp.down_proj.weight"] = np.zeros((32, 40), np.float32)
  rewrite(good_dir, shrink)
  with pytest.raises(checkpoint_bridge.CheckpointMismatchError,
                     match=r"'model\.layers\.0\.mlp\.down_proj\.weight' has shape \(32, 40\).*"
                           r"expects \(48, 32\)"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)


def test_unsupported_architecture(good_dir):
  cfg = json.loads((good_dir / "config.json").read_text())
  cfg["architectures"] = ["GPTNeoXForCausalLM"]
  (good_dir / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(config_lib.UnsupportedArchitectureError, match="GPTNeoXForCausalLM"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)


def test_pickle_checkpoints_are_refused(good_dir):
  (good_dir / "model.safetensors").rename(good_dir / "pytorch_model.bin")
  with pytest.raises(safetensors_io.SafetensorsError, match="pickled checkpoints are never loaded"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)


def test_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    checkpoint_bridge.load_hf_checkpoint(tmp_path)


def test_truncated_safetensors(good_dir):
  path = good_dir / "model.safetensors"
  path.write_bytes(path.read_bytes()[:4])
  with pytest.raises(safetensors_io.SafetensorsError, match="too short"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)


def test_truncated_data_section_names_file_and_tensor(good_dir):
  path = good_dir / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])  # an interrupted download: header whole, data cut
  with pytest.raises(safetensors_io.SafetensorsError,
                     match=r"model\.safetensors: tensor '[\w.]+' needs bytes .*\(file truncated\?"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)
  path.write_bytes(data[:20])  # cut inside the header
  with pytest.raises(safetensors_io.SafetensorsError, match=r"header needs .*\(file truncated\?"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)


def test_scalar_and_empty_tensors_are_read(tmp_path):
  tensors = {"scale": np.array(3.5, np.float32), "empty": np.zeros((0, 3), np.float32),
             "v": np.arange(3, dtype=np.float32)}
  path = tmp_path / "t.safetensors"
  safetensors_io.write_file(path, [(k, v.shape, v.dtype) for k, v in tensors.items()],
                            lambda k: tensors[k])
  got = safetensors_io.open_tensors(path)
  assert got["scale"].shape == () and float(got["scale"]) == 3.5
  assert got["empty"].shape == (0, 3)
  np.testing.assert_array_equal(got["v"], tensors["v"])


def test_transposed_tensor_of_the_same_size_is_refused(good_dir):
  # k_proj is [kv_heads * head_dim, hidden] = (16, 32); its transpose reshapes without error.
  def transpose(t):
    t["model.layers.0.self_attn.k_proj.weight"] = np.ascontiguousarray(
        t["model.layers.0.self_attn.k_proj.weight"].T)
  rewrite(good_dir, transpose)
  with pytest.raises(checkpoint_bridge.CheckpointMismatchError,
                     match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\."
                           r"weight' has shape \(32, 16\); the HF layout is \(16, 32\)"):
    checkpoint_bridge.load_hf_checkpoint(good_dir)
  with pytest.raises(checkpoint_bridge.CheckpointMismatchError, match=r"k_proj.*\(32, 16\)"):
    checkpoint_bridge.load_hf_checkpoint(good_dir, scan_layers=True)


def test_sliding_window_checkpoint_is_refused(tmp_path):
  d = tiny_hf.make_tiny_hf_checkpoint(tmp_path, use_sliding_window=True, sliding_window=4,
                                      max_window_layers=0)
  with pytest.raises(config_lib.UnsupportedArchitectureError,
                     match=r"config\.json: .*sliding_attention"):
    checkpoint_bridge.load_hf_checkpoint(d)


def test_llama_attention_bias_checkpoint_is_refused(tmp_path):
  d = tiny_hf.make_tiny_hf_checkpoint(tmp_path, arch="llama", tie=False, attention_bias=True)
  with pytest.raises(config_lib.UnsupportedArchitectureError,
                     match=r"config\.json: attention_bias=true is not supported for Llama"):
    checkpoint_bridge.load_hf_checkpoint(d)


def test_non_silu_activation_checkpoint_is_refused(tmp_path):
  d = tiny_hf.make_tiny_hf_checkpoint(tmp_path, arch="llama", tie=False, hidden_act="gelu")
  with pytest.raises(config_lib.UnsupportedArchitectureError, match=r"hidden_act='gelu'"):
    checkpoint_bridge.load_hf_checkpoint(d)


def test_tensors_are_read_slice_by_slice_through_the_safetensors_package(tmp_path):
  import ml_dtypes
  tensors = {"w": np.arange(24, dtype=np.float32).reshape(4, 6),
             "b": np.arange(4).astype(ml_dtypes.bfloat16)}
  path = tmp_path / "t.safetensors"
  safetensors_io.write_file(path, [(k, v.shape, v.dtype) for k, v in tensors.items()],
                            lambda k: tensors[k])
  import safetensors.numpy
  assert set(safetensors.numpy.load_file(str(path))) == {"w", "b"}  # a standard file
  got = safetensors_io.open_tensors(path)
  assert isinstance(got["w"], safetensors_io.LazyTensor) and got["w"].shape == (4, 6)
  np.testing.assert_array_equal(got["w"][1:3, 2:4], tensors["w"][1:3, 2:4])
  np.testing.assert_array_equal(got["w"].T, tensors["w"].T)
  assert got["b"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(np.asarray(got["b"]), tensors["b"])
