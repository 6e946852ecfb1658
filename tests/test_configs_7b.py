"""The 7B GRPO and RM configs carry the paper's settings and parse into the library's types;
every shipped config's batches divide over 8 data-parallel shards."""
import importlib
import pathlib

import ml_collections
import pytest

import configs
from rlaif_jax.rl import run as rl_run
from rlaif_jax.training import sft


def test_grpo_7b_config_has_the_papers_settings():
  from configs import grpo_qwen2_5_7b_tpu
  config = grpo_qwen2_5_7b_tpu.get_config()
  cfg = rl_run.rl_config(config)
  assert (cfg.algorithm, cfg.n_samples, cfg.prompts_per_step) == ("grpo", 4, 32)
  assert cfg.mini_batch_size == 64 and cfg.updates_per_step == 2  # 16 prompts x 4 per update
  assert (cfg.actor.kl_coef, cfg.actor.kl_kind, cfg.actor.entropy_coef) == (0.001, "low_var_kl",
                                                                           0.0)
  assert cfg.max_new_tokens == 512 and config.format.max_prompt_len == 256
  assert config.optim.lr == pytest.approx(3e-7)
  assert cfg.total_steps == 5 * 3200 // 32
  # The one-GPU switches exist (README recipe) and default to device-resident.
  assert (cfg.ref_on_host, config.reward.rm.on_host, cfg.unstack_layers_for_decode) == (
      False, False, True)
  assert sft.compute_options(config.model)["remat"] is True


def test_rm_7b_config_scans_and_remats():
  from configs import rm_qwen2_5_7b_tpu
  config = rm_qwen2_5_7b_tpu.get_config()
  assert config.model.scan_layers and config.model.remat
  assert sft.compute_options(config.model) == dict(remat=True, remat_policy="dots",
                                                   attention_impl="einsum")


# Every shipped config must run unchanged on a host of 8 devices (a TPU v2-8 / v3-8, the Colab
# notebook, --xla_force_host_platform_device_count=8): each batch that is sharded over the
# data-parallel axes has to divide by the number of shards.
_SHARDS = 8
_CONFIG_MODULES = sorted(p.stem for p in pathlib.Path(configs.__file__).parent.glob("*.py")
                         if p.stem not in ("__init__", "common"))


def _batch_sizes(node, prefix=""):
  """(dotted name, size) of every batch in a config: the `*batch_size` fields (train, eval, RL
  mini-batch, reward scoring) and the RL rollout rows (prompts_per_step * n_samples)."""
  out = []
  items = dict(node.items())
  for key, value in items.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out += _batch_sizes(value, name + ".")
    elif key.endswith("batch_size") and isinstance(value, int):
      out.append((name, value))
  if "prompts_per_step" in items and "n_samples" in items:
    out.append((f"{prefix}prompts_per_step*n_samples",
                items["prompts_per_step"] * items["n_samples"]))
  return out


def test_config_modules_are_found():
  assert {"sft_tiny_cpu", "rm_tiny_cpu", "grpo_tiny_cpu", "ppo_tiny_cpu", "tiny_cpu",
          "sft_qwen2_5_7b_tpu"} <= set(_CONFIG_MODULES)


@pytest.mark.parametrize("name", _CONFIG_MODULES)
def test_config_batches_divide_over_8_data_shards(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  sizes = _batch_sizes(config)
  assert sizes, f"configs/{name}.py: no batch size found"
  bad = {k: v for k, v in sizes if v <= 0 or v % _SHARDS}
  assert not bad, f"configs/{name}.py: batch sizes not divisible by {_SHARDS} shards: {bad}"


def test_tiny_sft_eval_batch_divides_over_8_shards():
  from configs import sft_tiny_cpu, tiny_cpu
  assert sft_tiny_cpu.get_config().eval_batch_size % _SHARDS == 0
  assert tiny_cpu.get_config().sft.eval_batch_size % _SHARDS == 0
