r"""PPO with a critic (initialised from the SFT trunk) on the tiny decoder, RM reward, CPU.

  python -m launch.rl --config=configs/ppo_tiny_cpu.py --workdir=/tmp/ppo_run --data_dir=$RLAIF_DATA_DIR

Same prerequisites as configs/grpo_tiny_cpu.py. GAE (γ=1, λ=0.95) on the reward placed on the
last response token; no KL in the reward, KL loss 0.001 (k3) as in the GRPO runs.
"""
from configs import grpo_tiny_cpu


def get_config():
  config = grpo_tiny_cpu.get_config()
  config.rl.algorithm = "ppo"
  config.rl.n_samples = 1
  config.rl.prompts_per_step = 16
  config.rl.epochs = 2
  config.rl.advantage.estimator = "gae"
  config.rl.advantage.lam = 0.95
  return config
