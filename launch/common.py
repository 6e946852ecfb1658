"""Flags and start-up shared by the training entry points (config file, workdir, data dir)."""
from __future__ import annotations

import importlib

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from rlaif_jax import distributed


def define_run_flags(workdir_help: str = "Run directory (checkpoints, metrics, export).",
                     lock_config: bool = True):
  """--config (Python file, `--config.a.b=v` overrides), --workdir, --data_dir and the
  multi-host flags. Returns the (config, workdir, data_dir) flag holders."""
  config = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                           lock_config=lock_config)
  workdir = flags.DEFINE_string("workdir", None, workdir_help, required=True)
  data_dir = flags.DEFINE_string("data_dir", None, "Greetings dataset (else env RLAIF_DATA_DIR).")
  flags.mark_flag_as_required("config")
  distributed.define_flags()
  return config, workdir, data_dir


def start(argv: list[str]) -> None:
  """Refuses stray arguments, quiets orbax's per-file INFO logs, joins a multi-process run."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()


def stage_config(name: str) -> ml_collections.ConfigDict:
  """A stage config named in another config (e.g. `policy.sft_config = "sft_tiny_cpu"`): the
  `get_config()` of configs/<name>.py. Resolved here, so `rlaif_jax` never imports `configs`."""
  return importlib.import_module(f"configs.{name}").get_config()
