"""Downloads the authors' greetings dataset and validates every file with the strict readers.

Source: GitHub weixiaolong94-hub/Igniting-Creative-Writing-in-Small-Language-Models, branch
`main`, folder `dataset/`, through raw.githubusercontent.com. Each file is downloaded to a
temporary file next to its target, parsed, and only then moved into place (os.replace), so an
interrupted or corrupt download never leaves a half-written file under its real name. Files that
are already present and parse are skipped.
"""
from __future__ import annotations

import os
import pathlib
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterable

from rlaif_jax import storage
from rlaif_jax.data import greetings, paths

REPO = "weixiaolong94-hub/Igniting-Creative-Writing-in-Small-Language-Models"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{REPO}/main/dataset"
_CHUNK = 1 << 16


class FetchError(RuntimeError):
  """A dataset file could not be downloaded."""


def file_url(base_url: str, relative_path: str) -> str:
  """URL of `relative_path` (e.g. "sft/sft_data.json") under `base_url`."""
  return base_url.rstrip("/") + "/" + urllib.parse.quote(relative_path)


def count_rows(name: str, path: str | os.PathLike) -> int:
  """Parses dataset file `name` (a key of paths.DATASET_FILES) with its strict reader and returns
  its number of records; raises greetings.DataFormatError when it is malformed."""
  return len(greetings.READERS[name](path))


def _download(url: str, target: pathlib.Path, timeout: float, retries: int) -> None:
  """Writes the body of `url` to `target` (overwriting); retries transient failures."""
  for attempt in range(1, retries + 1):
    try:
      with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
      return
    except urllib.error.HTTPError as e:
      if e.code < 500 or attempt == retries:  # 4xx will not get better by retrying.
        raise FetchError(f"GET {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
      if attempt == retries:
        raise FetchError(f"GET {url} failed after {retries} attempts: {e}") from e
    time.sleep(min(2.0 ** attempt, 10.0))


def fetch_file(name: str, data_dir: pathlib.Path, base_url: str, force: bool = False,
               timeout: float = 60.0, retries: int = 3,
               log: Callable[[str], None] = print) -> int:
  """Makes `data_dir/DATASET_FILES[name]` present and valid; returns its row count.

  An existing file that parses is kept unless `force`; otherwise the file is downloaded into a
  temporary file in the same folder, parsed, and atomically renamed into place.

  Raises:
    FetchError: the download failed.
    greetings.DataFormatError: the downloaded file is malformed (nothing is written then).
  """
  relative = paths.DATASET_FILES[name]
  target = data_dir / relative
  if target.is_file() and not force:
    try:
      rows = count_rows(name, target)
      log(f"{relative}: present, {rows} rows")
      return rows
    except greetings.DataFormatError as e:
      log(f"{relative}: present but invalid ({e}); downloading again")
  target.parent.mkdir(parents=True, exist_ok=True)
  url = file_url(base_url, relative)
  with storage.atomic_path(target) as tmp:
    _download(url, pathlib.Path(tmp), timeout, retries)
    rows = count_rows(name, pathlib.Path(tmp))
  log(f"{relative}: downloaded from {url}, {rows} rows")
  return rows


def fetch_dataset(data_dir: str | os.PathLike, base_url: str = DEFAULT_BASE_URL,
                  names: Iterable[str] | None = None, force: bool = False,
                  timeout: float = 60.0, retries: int = 3,
                  log: Callable[[str], None] = print) -> dict[str, int]:
  """Downloads (or keeps) every dataset file under `data_dir`, then re-validates them all.

  Args:
    data_dir: destination; created if missing.
    base_url: URL of the `dataset/` folder (a local http.server in tests).
    names: subset of paths.DATASET_FILES keys; all by default.
    force: download again even when a valid file is present.
    timeout, retries: per-request timeout in seconds and attempts for transient failures.
    log: where progress lines go.

  Returns:
    {name: row count} after validating every file with its reader.
  """
  names = list(paths.DATASET_FILES if names is None else names)
  unknown = [n for n in names if n not in paths.DATASET_FILES]
  if unknown:
    raise KeyError(f"unknown dataset files {unknown}; known: {sorted(paths.DATASET_FILES)}")
  root = pathlib.Path(data_dir).expanduser()
  root.mkdir(parents=True, exist_ok=True)
  for name in names:
    fetch_file(name, root, base_url, force=force, timeout=timeout, retries=retries, log=log)
  counts = {name: count_rows(name, root / paths.DATASET_FILES[name]) for name in names}
  for name, rows in counts.items():
    log(f"validated {paths.DATASET_FILES[name]}: {rows} rows")
  return counts
