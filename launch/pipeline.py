r"""The main job, the paper's experiment: tokenizer -> SFT -> reward model -> GRPO with the RM
reward (path A); adversarial principle optimisation -> GRPO with the optimised principle judge's
verdict as the reward (path B); evaluation, with a results table.

  python -m launch.pipeline --config=configs/tiny_cpu.py --workdir=runs/tiny --data_dir=$RLAIF_DATA_DIR

Each stage is skipped when its output exists, so rerunning a killed job resumes it. A rerun whose
config differs from the one a finished stage ran under is refused (exit status 1, naming the
stage and the keys): use a new --workdir or delete that stage's folder. --config.eval.* may
change freely (the evaluation is redone). Ends with WORKDIR/results.md (initial / SFT /
SFT+GRPO(A) / SFT+GRPO(B) under Signal-1, Signal-2, the reward model and the length baseline;
training efficiency per path; judges on the controls beside their agreement with humans) and
WORKDIR/plots/*.png. `--config.reward_path=A|B|AB` (default AB). The LLM judge:
`--config.judge.base_url=URL --config.judge.model=NAME` (vLLM, SGLang, OpenAI, launch.serve);
without them the pipeline serves its SFT checkpoint as a stand-in judge on 127.0.0.1 for the
run (see rlaif_jax/pipeline/local_judge.py).
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
