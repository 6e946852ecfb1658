"""Outputs written under other settings: `StaleOutputError` (a generations or judgements file
made for other prompts, settings, checkpoint weights or judge), and the "restart" mode that
moves such a file to OUTPUT_DIR/stale/<time>/ and writes it afresh."""
from __future__ import annotations

import os
import pathlib
import time
from typing import Sequence

from rlaif_jax import storage

STALE_MODES = ("refuse", "restart")
STALE_DIR = "stale"


class StaleOutputError(storage.InputError):
  """An output file written for other prompts, settings, checkpoint weights or judge.

  `path` is the file, `reason` a short account of the mismatch."""

  def __init__(self, message: str, path: pathlib.Path, reason: str):
    super().__init__(message)
    self.path, self.reason = pathlib.Path(path), reason


def _check_on_stale(on_stale: str) -> None:
  if on_stale not in STALE_MODES:
    raise ValueError(f"on_stale must be one of {STALE_MODES}, got {on_stale!r}")


def set_aside(output_dir: pathlib.Path, paths: Sequence[pathlib.Path], reason: str) -> list[str]:
  """Moves the existing `paths` (under output_dir) to output_dir/stale/<time>/<same relative
  path>, printing a note; returns the new locations."""
  root = output_dir / STALE_DIR / time.strftime("%Y%m%d-%H%M%S")
  moved, names = [], []
  for p in paths:
    if not p.exists():
      continue
    dest, n = root / p.relative_to(output_dir), 1
    while dest.exists():
      dest, n = dest.with_name(f"{p.name}.{n}"), n + 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(p, dest)
    moved.append(str(dest))
    names.append(str(p.relative_to(output_dir)))
  if moved:
    print(f"note: {paths[0]} was {reason}; moved {' and '.join(names)} to {root}, starting "
          "afresh", flush=True)
  return moved


def _fresh_if_stale(output_dir: pathlib.Path, on_stale: str, fn, also: Sequence = ()):
  """fn(); on a StaleOutputError with on_stale="restart", sets its file (and `also`) aside and
  calls fn() once more. Multi-host: every process gets the error (`processes.on_main`); process
  0 moves the files."""
  from rlaif_jax.evaluation import processes  # Local: processes imports this module.
  try:
    return fn()
  except StaleOutputError as e:
    if on_stale != "restart":
      raise
    if processes.is_main():
      set_aside(output_dir, [e.path, *also], e.reason)
    return fn()
