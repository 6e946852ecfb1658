r"""GRPO / PPO training of the policy against a reward model, an LLM judge or an offline scorer.

  python -m launch.rl --config=configs/grpo_tiny_cpu.py --workdir=/tmp/grpo_run --data_dir=$RLAIF_DATA_DIR

Missing prerequisites (SFT run, reward model) are trained first into WORKDIR/sft and WORKDIR/rm
unless `--config.policy.sft_workdir` / `--config.reward.rm.workdir` point at existing runs.
Rerunning resumes. Writes WORKDIR/{metrics.jsonl, tensorboard/, checkpoints/, export/, samples.txt}.
"""
import os

from launch import common
from rlaif_jax.data import paths

_CONFIG, _WORKDIR, _DATA_DIR = common.define_run_flags(lock_config=False)


def main(argv: list[str]) -> None:
  common.start(argv)
  from rlaif_jax.rl import run
  config = _CONFIG.value
  workdir = _WORKDIR.value
  if not config.policy.get("sft_workdir"):
    config.policy.sft_workdir = os.path.join(workdir, "sft")
  if not config.reward.rm.get("workdir"):
    config.reward.rm.workdir = os.path.join(workdir, "rm")
  run.run_rl(config, workdir, paths.resolve_data_dir(_DATA_DIR.value),
             resolve_config=common.stage_config)


if __name__ == "__main__":
  common.run(main)
