"""The 7B GRPO and RM configs carry the paper's settings and parse into the library's types."""
import pytest

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
  assert sft.compute_options(config.model) == dict(remat=True, remat_policy="full",
                                                   attention_impl="einsum")
