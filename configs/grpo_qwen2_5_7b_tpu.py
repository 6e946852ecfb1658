r"""GRPO of the 7B SFT policy with the paper's settings, on a TPU v5p slice (or one 80 GB GPU:
`--config.rl.ref_on_host --config.reward.rm.on_host`, bf16 weights and moments; BUILD_NOTES sizes
the step).

  python -m launch.rl --config=configs/grpo_qwen2_5_7b_tpu.py --workdir=/mnt/persist/grpo_qwen7b \
      --data_dir=$RLAIF_DATA_DIR --config.policy.sft_workdir=/mnt/persist/sft_qwen7b \
      --config.reward.rm.workdir=/mnt/persist/rm_qwen7b --auto_detect

The paper (verl): n=4 samples per prompt, lr 3e-7, KL loss coefficient 0.001 with the k3
"low_var_kl" estimator, no KL in the reward, entropy coefficient 0, batch 32 prompts, mini-batch
16 prompts, prompt <= 256 and response <= 512 tokens, 5 epochs over the 3200 prompts (500 steps).
Path B: `--config.reward.use=judge --config.reward.judge.base_url=... --config.reward.judge.model=...`.

Memory per step: policy fp32 params + AdamW (~91 GB) and the frozen bf16 reference (15 GB) and
the reward model (bf16, 15 GB) are sharded over the slice; rollouts are 128 sequences x 768 tokens.
"""
from configs import grpo_tiny_cpu

PROMPTS = 3200
BATCH = 32
EPOCHS = 5


def get_config():
  config = grpo_tiny_cpu.get_config()
  config.model.remat = True
  config.policy.sft_config = "sft_qwen2_5_7b_tpu"
  config.reward.rm.config = "rm_qwen2_5_7b_tpu"
  config.format.max_prompt_len = 256
  config.format.max_response_len = 512
  config.format.min_bucket = 128
  config.loop.total_steps = EPOCHS * PROMPTS // BATCH
  config.rl.prompts_per_step = BATCH
  config.rl.n_samples = 4
  config.rl.mini_batch_size = 64  # 16 prompts x 4 samples
  config.rl.max_new_tokens = 512
  config.loop.checkpoint_every = 50
  config.rl.ref_on_host = False  # True: the frozen reference lives in host memory between uses
  config.rl.grow_cache_from = 64  # KV cache grows 64 -> 512 new tokens; 0: whole from the start
  config.reward.rm.on_host = False  # True: so does the reward model (placed on device to score)
  config.rl.actor.logits_chunk = 128
  config.optim.lr = 3e-7
  config.export.dtype = "bfloat16"
  return config
