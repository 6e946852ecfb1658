r"""Trains the Bradley–Terry reward model of path A.

  python -m launch.train_rm --config=configs/rm_tiny_cpu.py --workdir=/tmp/rm_run --data_dir=$RLAIF_DATA_DIR

Rerunning resumes from the newest checkpoint. Writes WORKDIR/{metrics.jsonl, tensorboard/,
checkpoints/, rm_report.json, length_debiaser.json}.
"""

from launch import common
from rlaif_jax.data import paths

_CONFIG, _WORKDIR, _DATA_DIR = common.define_run_flags()


def main(argv: list[str]) -> None:
  common.start(argv)
  from rlaif_jax.training import reward_model
  reward_model.run_train_rm(_CONFIG.value, _WORKDIR.value, paths.resolve_data_dir(_DATA_DIR.value))


if __name__ == "__main__":
  common.run(main)
