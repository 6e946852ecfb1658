r"""The main job: tokenizer -> SFT -> reward model -> GRPO -> evaluation, with a results table.

  python -m launch.pipeline --config=configs/tiny_cpu.py --workdir=runs/tiny --data_dir=$RLAIF_DATA_DIR

Each stage is skipped when its output exists, so rerunning a killed job resumes it. A rerun whose
config differs from the one a finished stage ran under is refused (exit status 1, naming the
stage and the keys): use a new --workdir or delete that stage's folder. --config.eval.* may
change freely (the evaluation is redone). Ends with WORKDIR/results.md (initial vs SFT vs
SFT+GRPO) and WORKDIR/plots/*.png.
"""
import sys

from launch import common
from rlaif_jax.data import paths

_CONFIG, _WORKDIR, _DATA_DIR = common.define_run_flags(lock_config=False)


def main(argv: list[str]) -> int:
  common.start(argv)
  from rlaif_jax import pipeline
  try:
    pipeline.run_pipeline(_CONFIG.value, _WORKDIR.value,
                          paths.resolve_data_dir(_DATA_DIR.value))
  except pipeline.StageConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  common.run(main)
