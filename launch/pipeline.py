r"""The main job: tokenizer -> SFT -> reward model -> GRPO -> evaluation, with a results table.

  python -m launch.pipeline --config=configs/tiny_cpu.py --workdir=runs/tiny --data_dir=$RLAIF_DATA_DIR

Each stage is skipped when its output exists, so rerunning a killed job resumes it. Ends with
WORKDIR/results.md (initial vs SFT vs SFT+GRPO) and WORKDIR/plots/*.png.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from rlaif_jax import distributed
from rlaif_jax.data import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the whole pipeline.",
                               required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Greetings dataset (else env RLAIF_DATA_DIR).")
flags.mark_flag_as_required("config")
distributed.define_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()
  from rlaif_jax import pipeline
  pipeline.run_pipeline(_CONFIG.value, _WORKDIR.value, paths.resolve_data_dir(_DATA_DIR.value))


if __name__ == "__main__":
  app.run(main)
