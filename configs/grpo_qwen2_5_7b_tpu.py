r"""GRPO of the 7B SFT policy with the paper's settings, on a TPU v5p slice (or one 80 GB GPU:
bf16 weights and moments, `--config.reward.rm.on_host`, `--config.rl.mini_batch_size=8`,
`--config.model.remat_policy=full`; `launch.aot_compile --topology=h100-1` sizes it).

  python -m launch.rl --config=configs/grpo_qwen2_5_7b_tpu.py --workdir=/mnt/persist/grpo_qwen7b \
      --data_dir=$RLAIF_DATA_DIR --config.policy.sft_workdir=/mnt/persist/sft_qwen7b \
      --config.reward.rm.workdir=/mnt/persist/rm_qwen7b --auto_detect

The paper (verl): n=4 samples per prompt, lr 3e-7, KL loss coefficient 0.001 with the k3
"low_var_kl" estimator, no KL in the reward, entropy coefficient 0, batch 32 prompts, mini-batch
16 prompts, prompt <= 256 and response <= 512 tokens, 5 epochs over the 3200 prompts (500 steps).
Path B: `--config.reward.use=judge --config.reward.judge.base_url=... --config.reward.judge.model=...`.

Target slice: `config.target_topology` = v5p-8 (4 chips). `python -m launch.aot_compile
--config=configs/grpo_qwen2_5_7b_tpu.py` compiles every function of an RL step for it: the actor
update (64 rows x 768 tokens, `remat_policy="dots"`: 13% fewer compiled FLOPs than "full") needs
88.71 GiB per chip of 95.74 with the fp32 reference (7.09) and the fp32 reward model (6.59, the
SFT trunk's dtype) resident; the rollout's decode 42.36. On a multi-host v5litepod-32
(`--topology=v5litepod-32`; the mesh takes all 32 chips) every function fits at the defaults
(peak: the actor update, 15.49 of 15.75 GiB). A v5litepod-4 cannot hold it (`fits=no`, exit 1);
a v5litepod-8 needs bf16 state (`--config.policy.sft_config.model.param_dtype=bfloat16`, i.e. an
SFT run in bf16), `--config.reward.rm.on_host` and `--config.model.remat_policy=full` (then every
function fits, peak 15.15). BUILD_NOTES "Ahead-of-time compiles" has the table and commands.
"""
from ml_collections import config_dict

from configs import grpo_tiny_cpu, rm_qwen2_5_7b_tpu, sft_qwen2_5_7b_tpu

TARGET_TOPOLOGY = "v5p-8"
PROMPTS = 3200
BATCH = 32
EPOCHS = 5


def get_config():
  config = grpo_tiny_cpu.get_config()
  config.model.remat = True
  # Remat keeping the matmul outputs: 13% fewer FLOPs in the actor update than "full" and it
  # still fits a v5p-8 (launch.aot_compile; BUILD_NOTES "Ahead-of-time compiles").
  config.model.remat_policy = "dots"
  # The stage configs themselves (not their names), so `--config.policy.sft_config.model.
  # param_dtype=bfloat16` reaches the SFT run launch.rl trains when none exists (and the AOT
  # compile); an existing sft_workdir's checkpoint decides the policy's dtype.
  with config.ignore_type():  # the tiny config names its stage configs by module
    config.policy.sft_config = sft_qwen2_5_7b_tpu.get_config()
    config.reward.rm.config = rm_qwen2_5_7b_tpu.get_config()
  config.target_topology = TARGET_TOPOLOGY
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
  # Multi-slice: config.mesh is one slice's mesh; dcn_mesh how slices multiply it (default:
  # data-parallel across slices), e.g. --config.dcn_mesh="(2, 1, 1)".
  config.dcn_mesh = config_dict.placeholder(tuple)
  return config
