"""Micro configs for the multi-host stage tests (`tests/test_multihost.py`): the tiny CPU configs
shrunk to a 2-layer, 32-wide decoder and a few steps, so every stage runs in seconds.

  python -m launch.sft --config=tests/multihost_configs.py:sft --workdir=W --data_dir=D \
      --config.tokenizer.path=TOK
Stages: sft, rm, grpo, ppo.
"""
import ml_collections

from configs import grpo_tiny_cpu, ppo_tiny_cpu, rm_tiny_cpu, sft_tiny_cpu

MODEL = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
             head_dim=16)


def _sft() -> ml_collections.ConfigDict:
  config = sft_tiny_cpu.get_config()
  config.model.overrides = dict(MODEL)
  config.data.update(max_train_examples=64, max_eval_examples=8)
  config.batch_size, config.eval_batch_size = 8, 8
  config.format.update(max_prompt_len=32, max_response_len=32)
  config.optim.update(lr=1e-2, warmup_steps=1)
  config.loop.update(total_steps=4, log_every=1, eval_every=2, checkpoint_every=2,
                     progress_bar=False)
  config.samples.update(num_prompts=2, max_new_tokens=8)
  return config


def _rm() -> ml_collections.ConfigDict:
  config = rm_tiny_cpu.get_config()
  config.data.update(max_train_pairs=64, max_eval_pairs=16)
  config.batch_size, config.eval_batch_size = 4, 16
  config.optim.warmup_steps = 1
  config.format.update(max_prompt_len=32, max_response_len=32)
  config.loop.update(total_steps=4, log_every=1, eval_every=2, checkpoint_every=2,
                     progress_bar=False)
  return config


def _rl(base) -> ml_collections.ConfigDict:
  config = base.get_config()
  config.format.update(max_prompt_len=32, max_response_len=16)
  config.data.max_prompts = 16
  config.rl.update(prompts_per_step=2, mini_batch_size=4, max_new_tokens=8, grow_cache_from=0)
  config.loop.update(total_steps=2, checkpoint_every=1)
  config.reward.rm.batch_size = 8
  if config.rl.algorithm == "ppo":  # one sample per prompt
    config.rl.prompts_per_step = 4
  return config


def get_config(stage: str) -> ml_collections.ConfigDict:
  return {"sft": _sft, "rm": _rm, "grpo": lambda: _rl(grpo_tiny_cpu),
          "ppo": lambda: _rl(ppo_tiny_cpu)}[stage]()
