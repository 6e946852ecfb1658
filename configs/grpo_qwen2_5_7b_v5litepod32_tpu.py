r"""The paper's GRPO setting (configs/grpo_qwen2_5_7b_tpu.py) on a multi-host v5litepod-32 (8 hosts
x 4 v5e chips, 16 GiB HBM each): the frozen reference policy waits in host memory between uses
(`rl.ref_on_host`), which is what lets the rollout decode fit beside the fp32 policy, AdamW state
and reward model (BUILD_NOTES, "Ahead-of-time compiles": 15.62 of 15.75 GiB per chip; 16.51
with the reference on the device). The mesh (1, -1, 1) adapts to the 32 chips.

  python -m launch.aot_compile --config=configs/grpo_qwen2_5_7b_v5litepod32_tpu.py
  python -m launch.rl --config=configs/grpo_qwen2_5_7b_v5litepod32_tpu.py --workdir=/mnt/persist/grpo_qwen7b \
      --data_dir=$RLAIF_DATA_DIR --config.policy.sft_workdir=/mnt/persist/sft_qwen7b --auto_detect
"""
from configs import grpo_qwen2_5_7b_tpu


def get_config():
  config = grpo_qwen2_5_7b_tpu.get_config()
  config.target_topology = "v5litepod-32"
  config.rl.ref_on_host = True
  return config
