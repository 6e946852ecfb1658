r"""Trains the Bradley–Terry reward model of path A.

  python -m launch.train_rm --config=configs/rm_tiny_cpu.py --workdir=/tmp/rm_run --data_dir=$RLAIF_DATA_DIR

Rerunning resumes from the newest checkpoint. Writes WORKDIR/{metrics.jsonl, tensorboard/,
checkpoints/, rm_report.json, length_debiaser.json}.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from rlaif_jax import distributed
from rlaif_jax.data import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                          lock_config=True)
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
  from rlaif_jax.training import reward_model
  reward_model.run_train_rm(_CONFIG.value, _WORKDIR.value, paths.resolve_data_dir(_DATA_DIR.value))


if __name__ == "__main__":
  app.run(main)
