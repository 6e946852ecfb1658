r"""python -m launch.fetch_data --data_dir=$HOME/data/greetings

Downloads and validates the paper's greetings dataset: fetches the authors' `dataset/` folder
(GitHub weixiaolong94-hub/Igniting-Creative-Writing-in-Small-Language-Models, branch main) file by
file, skips files already present and valid, parses every file with the strict readers and prints
its row count. Then point the other entry points at it with --data_dir or env RLAIF_DATA_DIR.
"""
from absl import app, flags

from launch import common
from rlaif_jax.data import fetch, paths

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Destination directory.", required=True)
_BASE_URL = flags.DEFINE_string("base_url", fetch.DEFAULT_BASE_URL,
                                "URL of the authors' dataset/ folder (or a mirror).")
_FILES = flags.DEFINE_list("files", list(paths.DATASET_FILES),
                           f"Subset of: {', '.join(paths.DATASET_FILES)}.")
_FORCE = flags.DEFINE_bool("force", False, "Download again even when a valid file is present.")
_TIMEOUT = flags.DEFINE_float("timeout", 60.0, "Per-request timeout in seconds.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  counts = fetch.fetch_dataset(_DATA_DIR.value, base_url=_BASE_URL.value, names=_FILES.value,
                               force=_FORCE.value, timeout=_TIMEOUT.value)
  print(f"{len(counts)} files ready in {_DATA_DIR.value}: "
        + ", ".join(f"{name}={rows}" for name, rows in counts.items()))


if __name__ == "__main__":
  common.run(main)
