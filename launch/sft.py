r"""Supervised fine-tuning (cold start) of a decoder on the greetings SFT data.

  python -m launch.sft --config=configs/sft_tiny_cpu.py --workdir=/tmp/sft_run \
      --data_dir=$RLAIF_DATA_DIR

Rerunning the same command resumes from the newest checkpoint in WORKDIR. Override config
fields with `--config.loop.total_steps=100`, `--config.optim.lr=1e-4`, ... Writes
WORKDIR/{metrics.jsonl, tensorboard/, checkpoints/, export/, samples.txt}.

Several processes (multi-host; on a TPU VM pod pass --auto_detect instead of the variables):
  JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python -m launch.sft ...
"""

from launch import common
from rlaif_jax.data import paths

_CONFIG, _WORKDIR, _DATA_DIR = common.define_run_flags()


def main(argv: list[str]) -> None:
  common.start(argv)
  from rlaif_jax.training import sft  # Local: import jax work only after distributed init.
  data_dir = paths.resolve_data_dir(_DATA_DIR.value)
  sft.run_sft(_CONFIG.value, _WORKDIR.value, data_dir)


if __name__ == "__main__":
  common.run(main)
