r"""Draws a run's training curves as PNGs.

  python -m launch.plot --workdir=/tmp/runs/grpo_qwen0p5b

Reads WORKDIR/metrics.jsonl and every WORKDIR/<run>/metrics.jsonl, writes one PNG per metric group
present (loss, reward, kl, response_len, ...) to WORKDIR/plots/ (WORKDIR/plots/<run>/ for sub-runs)
and prints their paths.
"""
from absl import app, flags

from launch import common
from rlaif_jax.evaluation import plots

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder holding metrics.jsonl.", required=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for path in plots.plot_workdir(_WORKDIR.value):
    print(path)


if __name__ == "__main__":
  common.run(main)
