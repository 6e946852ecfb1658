"""Metric writers: WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard events.

Only process 0 writes (`jax.process_index() == 0`); on other processes the writer is a no-op, so
callers never branch on the process.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

from rlaif_jax import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def to_python_scalars(metrics: Mapping[str, Any]) -> dict[str, float | int]:
  """Device/NumPy scalars -> Python numbers (ints stay ints); non-scalars are an error."""
  out: dict[str, float | int] = {}
  for key, value in metrics.items():
    arr = np.asarray(jax.device_get(value))
    if arr.size != 1:
      raise ValueError(f"metric {key!r} must be a scalar, got shape {arr.shape}")
    item = arr.reshape(()).item()
    out[key] = item if isinstance(item, int) and not isinstance(item, bool) else float(item)
  return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All rows of a metrics.jsonl, in file order: `path` is the file or the run directory that
  holds it (local or gs://; empty list when it does not exist). The one reader of these files
  (trainer resume, plots, the pipeline's summary); a malformed line is a `storage.InputError`
  naming file:line."""
  path = storage.as_path(path)
  if not path.suffix or path.is_dir():
    path = path / METRICS_FILE
  if not path.exists():
    return []
  return [record for _, record in storage.parse_jsonl(path.read_text(), str(path))]


class MetricWriter:
  """Appends `{"step": s, **scalars}` lines to metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True,
               enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = storage.as_path(workdir) / METRICS_FILE
    self._tb = None
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if tensorboard:
      from tensorboardX import SummaryWriter  # Local: only process 0 needs it.
      self._tb = SummaryWriter(logdir=str(storage.as_path(workdir) / TENSORBOARD_DIR))

  def truncate_after(self, step: int) -> None:
    """Drops rows with step > `step` (logged by a run killed after its last checkpoint), so a
    resumed run does not leave duplicate steps behind."""
    if not self.enabled or not self.path.exists():
      return
    keep = [row for row in read_metrics(self.path.parent) if row.get("step", 0) <= step]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in keep)
    if isinstance(self.path, pathlib.Path):
      storage.write_text(str(self.path), text)  # atomic: temp file, fsync, rename
    else:  # gs://: an object write is atomic
      self.path.write_text(text)

  def write(self, step: int, scalars: Mapping[str, Any]) -> dict[str, float | int]:
    """Writes one row; returns it as Python numbers. Non-finite values are written as NaN/Infinity
    (JSON5 literals that Python's json reads back)."""
    row = {"step": int(step), **to_python_scalars(scalars)}
    if not self.enabled:
      return row
    line = json.dumps(row, ensure_ascii=False) + "\n"
    if isinstance(self.path, pathlib.Path):
      with self.path.open("a") as f:
        f.write(line)
    else:  # gs:// objects cannot be appended to: rewrite it (a few KB per thousand steps)
      self.path.write_text((self.path.read_text() if self.path.exists() else "") + line)
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and math.isfinite(value):
          self._tb.add_scalar(key, value, global_step=step)
      self._tb.flush()
    return row

  def write_text(self, tag: str, text: str, step: int) -> None:
    """A text summary (e.g. generated samples) in TensorBoard."""
    if self.enabled and self._tb is not None:
      self._tb.add_text(tag, text, global_step=step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
