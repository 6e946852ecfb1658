r"""GRPO / PPO training of the policy against a reward model, an LLM judge or an offline scorer.

  python -m launch.rl --config=configs/grpo_tiny_cpu.py --workdir=/tmp/grpo_run --data_dir=$RLAIF_DATA_DIR

Missing prerequisites (SFT run, reward model) are trained first into WORKDIR/sft and WORKDIR/rm
unless `--config.policy.sft_workdir` / `--config.reward.rm.workdir` point at existing runs.
Rerunning resumes. Writes WORKDIR/{metrics.jsonl, tensorboard/, checkpoints/, export/, samples.txt}.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from rlaif_jax import distributed
from rlaif_jax.data import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Greetings dataset (else env RLAIF_DATA_DIR).")
flags.mark_flag_as_required("config")
distributed.define_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()
  from rlaif_jax.rl import run
  config = _CONFIG.value
  workdir = _WORKDIR.value
  if not config.policy.get("sft_workdir"):
    config.policy.sft_workdir = os.path.join(workdir, "sft")
  if not config.reward.rm.get("workdir"):
    config.reward.rm.workdir = os.path.join(workdir, "rm")
  run.run_rl(config, workdir,
             paths.resolve_data_dir(_DATA_DIR.value))


if __name__ == "__main__":
  app.run(main)
