"""Flags and start-up shared by the training entry points (config file, workdir, data dir)."""
from __future__ import annotations

import importlib
import sys
from typing import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from rlaif_jax import distributed, storage
from rlaif_jax.data import fetch, greetings, paths

# A user's mistake, said in one line by the entry points (`run`): the messages name the file,
# record and field, the URL, or the other writer's pid.
USER_ERRORS = (greetings.DataFormatError, fetch.FetchError, paths.DataDirNotFoundError,
               storage.InputError, storage.OutputLockedError)


def define_run_flags(workdir_help: str = "Run directory (checkpoints, metrics, export).",
                     lock_config: bool = True):
  """--config (Python file, `--config.a.b=v` overrides), --workdir, --data_dir and the
  multi-host flags. Returns the (config, workdir, data_dir) flag holders."""
  config = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                           lock_config=lock_config)
  workdir = flags.DEFINE_string("workdir", None, workdir_help, required=True)
  # The trainer's checkpoints and metrics take gs:// (storage.as_path), but a stage also writes
  # its export, reports and samples through local paths, where `gs://b/x` would silently become
  # the local folder `./gs:/b/x`: refused by name until every stage output goes through epath.
  flags.register_validator(
      "workdir", lambda v: v is None or not storage.is_gcs(v),
      message="--workdir=gs://... is not supported for a whole stage yet (its export, reports "
              "and samples are written locally); use a local or gcsfuse-mounted directory")
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


def run(main: Callable[[list[str]], int | None]) -> None:
  """`app.run(main)` for every entry point: a user's mistake (`USER_ERRORS`: malformed data,
  unreachable download, missing data dir, malformed input line, output locked by another job)
  prints `error: <message>` on stderr and exits 1 instead of a traceback; `--verbosity=1` keeps
  the traceback. `main`'s return value is the exit status."""
  def guarded(argv: list[str]) -> int | None:
    try:
      status = main(argv)
      distributed.shutdown()  # every process leaves together, before interpreter exit
      return status
    except USER_ERRORS as e:
      if flags.FLAGS.verbosity >= 1:
        raise
      print(f"error: {e} (--verbosity=1 shows the traceback)", file=sys.stderr)
      return 1
  app.run(guarded)
