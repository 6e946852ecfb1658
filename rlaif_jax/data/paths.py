"""Where the greetings dataset lives: the data-dir flag, then env RLAIF_DATA_DIR.

The dataset keeps the authors' repository layout (folder `dataset/` of
weixiaolong94-hub/Igniting-Creative-Writing-in-Small-Language-Models); `DATASET_FILES` names every
file relative to the data directory.
"""
from __future__ import annotations

import os
import pathlib

DATA_DIR_ENV = "RLAIF_DATA_DIR"

# Short name -> path relative to the data directory (same layout as the authors' `dataset/`).
DATASET_FILES: dict[str, str] = {
  "sft": "sft/sft_data.json",
  "reward_train": "reward_model/reward_data_train.json",
  "reward_test": "reward_model/reward_data_test.json",
  "evaluation": "evaluation_set/evaluate_data.json",
  "grpo_train": "grpo_data/train.parquet",
  "grpo_test": "grpo_data/test.parquet",
  "random_query": "random_query.txt",
}

FETCH_HINT = "python -m launch.fetch_data --data_dir=D"


class DataDirNotFoundError(FileNotFoundError):
  """The greetings data directory is not given or does not exist."""


def resolve_data_dir(flag_value: str | os.PathLike | None) -> pathlib.Path:
  """Returns the dataset directory: `flag_value` if given, else env RLAIF_DATA_DIR.

  Raises:
    DataDirNotFoundError: neither is set, or the chosen directory does not exist; the message says
      which source was used and how to download the data.
  """
  if flag_value:
    path, source = pathlib.Path(flag_value), "--data_dir"
  elif os.environ.get(DATA_DIR_ENV):
    path, source = pathlib.Path(os.environ[DATA_DIR_ENV]), f"env {DATA_DIR_ENV}"
  else:
    raise DataDirNotFoundError(
      f"no data directory given: pass --data_dir=D or set {DATA_DIR_ENV}=D; "
      f"to download the greetings dataset into D run `{FETCH_HINT}`")
  path = path.expanduser()
  if not path.is_dir():
    raise DataDirNotFoundError(
      f"data directory {path} (from {source}) does not exist or is not a directory; "
      f"download the greetings dataset there with `{FETCH_HINT.replace('=D', '=' + str(path))}`")
  return path


def dataset_file(data_dir: str | os.PathLike, name: str) -> pathlib.Path:
  """Returns the path of dataset file `name` (a key of DATASET_FILES) inside `data_dir`.

  Raises:
    KeyError: `name` is not a known dataset file.
    DataDirNotFoundError: the file is missing (the message says how to fetch it).
  """
  if name not in DATASET_FILES:
    raise KeyError(f"unknown dataset file {name!r}; known: {sorted(DATASET_FILES)}")
  path = pathlib.Path(data_dir) / DATASET_FILES[name]
  if not path.is_file():
    raise DataDirNotFoundError(
      f"dataset file {path} is missing; fetch it with "
      f"`{FETCH_HINT.replace('=D', '=' + str(data_dir))}`")
  return path
