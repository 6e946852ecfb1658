"""Config blocks shared by the training configs (each returns an `ml_collections.ConfigDict`).

Field names match the code that reads them: `optim_config` -> training.optim.optimizer_from_config,
`loop_config` -> training.trainer.LoopConfig, `format_config` -> data.formatting.FormatConfig.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def optim_config(lr: float, warmup_steps: int = 0, decay: str = "cosine",
                 end_lr_ratio: float = 0.1, weight_decay: float = 0.0,
                 max_grad_norm: float = 1.0, b1: float = 0.9, b2: float = 0.95,
                 eps: float = 1e-8) -> ml_collections.ConfigDict:
  """AdamW + warmup + cosine/linear/constant decay + global-norm clipping."""
  return ml_collections.ConfigDict(dict(
      lr=lr, warmup_steps=warmup_steps, decay=decay, end_lr_ratio=end_lr_ratio, b1=b1, b2=b2,
      eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm))


def loop_config(total_steps: int, log_every: int = 10, eval_every: int = 100,
                checkpoint_every: int = 100, keep_checkpoints: int = 3,
                num_microbatches: int = 1) -> ml_collections.ConfigDict:
  """The trainer loop: when to log / evaluate / checkpoint, gradient accumulation."""
  return ml_collections.ConfigDict(dict(
      total_steps=total_steps, log_every=log_every, eval_every=eval_every, eval_at_start=True,
      checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
      async_checkpointing=True, num_microbatches=num_microbatches, progress_bar=True))


def format_config(max_prompt_len: int, max_response_len: int, use_chat_template: bool = True,
                  min_bucket: int = 32) -> ml_collections.ConfigDict:
  """Prompt formatting: chat template around the bare request (the SFT data's prompt)."""
  return ml_collections.ConfigDict(dict(
      max_prompt_len=max_prompt_len, max_response_len=max_response_len,
      use_chat_template=use_chat_template, prompt_template="{query}",
      system_prompt=config_dict.placeholder(str), add_bos=False, min_bucket=min_bucket))


def model_config(preset: str = "tiny", hf_checkpoint: str | None = None,
                 param_dtype: str = "float32", dtype: str = "float32",
                 remat: bool = False, scan_layers: bool = False, remat_policy: str = "full",
                 attention_impl: str = "einsum") -> ml_collections.ConfigDict:
  """A preset (vocab from the tokenizer) or a HF checkpoint (hf_checkpoint wins): a local
  directory or a hub id such as `Qwen/Qwen2.5-7B-Instruct` (rlaif_jax.hub; HF_HUB_OFFLINE=1 uses
  the local hub cache only).

  `scan_layers` picks the stacked-layer layout (`ModelConfig.scan_layers`); it is saved with the
  SFT checkpoint, and the reward model and RL runs started from that checkpoint inherit it.
  `remat`, `remat_policy` ("full" | "dots") and `attention_impl` ("einsum" | "xla" | "cudnn" on
  NVIDIA GPUs | "splash" on TPU) change only how the model runs; every run sets them afresh."""
  return ml_collections.ConfigDict(dict(
      preset=preset,
      hf_checkpoint=hf_checkpoint if hf_checkpoint else config_dict.placeholder(str),
      overrides=ml_collections.ConfigDict(), param_dtype=param_dtype, dtype=dtype, remat=remat,
      scan_layers=scan_layers, remat_policy=remat_policy, attention_impl=attention_impl))
