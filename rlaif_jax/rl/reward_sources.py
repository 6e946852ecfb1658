"""Reward sources behind one interface: `score(prompts, completions) -> float32[batch]`.

Sources: the trained reward model in-process (`rlaif_jax.training.reward_model.RewardModelScorer`),
the LLM judge (`rlaif_jax.judging.reward.JudgeReward`), an offline batch job exchanging files
(`OfflineFileReward`), and plain Python callables (`CallableReward`, verifiable rewards). Every
call goes through `checked_scores`, which refuses a wrong length or non-finite values (a silent
broadcast here was a real TRL bug).

Per-item validity: a source may set `last_valid_mask` (bool[batch]) in `score`; False marks an
item it could not score (a judge call that failed, an offline `error` line). Such an item's
reward is only a placeholder (`fallback`), not a verdict: the RL trainer reads the mask with
`valid_mask` and masks invalid items out of the update and of the GRPO group statistics.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Callable, Protocol, Sequence

import numpy as np

from rlaif_jax import storage


class RewardError(RuntimeError):
  """A reward source returned something unusable, or an offline scorer did not answer."""


class RewardSource(Protocol):

  def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """f32[batch] rewards for (prompt, completion) pairs. Optionally sets `last_valid_mask`."""


def checked_scores(name: str, scores, n: int) -> np.ndarray:
  """Converts to float32[n] or raises naming the source and what was wrong."""
  arr = np.asarray(scores, dtype=np.float32)
  if arr.shape != (n,):
    raise RewardError(f"reward source {name!r} returned shape {arr.shape} for a batch of {n}; "
                      f"it must return one float per completion")
  if not np.all(np.isfinite(arr)):
    bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
    raise RewardError(f"reward source {name!r} returned non-finite rewards at indices {bad}")
  return arr


def valid_mask(source: RewardSource, n: int) -> np.ndarray:
  """bool[n]: which items of `source`'s latest `score` call were really scored.

  All True when the source keeps no `last_valid_mask` (or it is None); a mask of another length
  (left from an earlier call) raises RewardError.
  """
  mask = getattr(source, "last_valid_mask", None)
  if mask is None:
    return np.ones(n, dtype=bool)
  arr = np.asarray(mask)
  if arr.shape != (n,):
    name = getattr(source, "name", type(source).__name__)
    raise RewardError(f"reward source {name!r} has last_valid_mask of shape {arr.shape} after "
                      f"scoring a batch of {n}; it must mark each completion")
  return arr.astype(bool)


class CallableReward:
  """Wraps `fn(prompts, completions) -> sequence of floats` (e.g. a verifiable reward)."""

  def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]],
               name: str | None = None):
    self.fn = fn
    self.name = name or getattr(fn, "__name__", "callable")

  def score(self, prompts, completions) -> np.ndarray:
    return checked_scores(self.name, self.fn(list(prompts), list(completions)), len(completions))


class WeightedSum:
  """sum_i w_i * source_i, each source's output checked; `last_components` keeps the parts.

  `last_valid_mask`: an item is valid only if every part that keeps a mask marked it valid.
  """

  def __init__(self, sources: Sequence[tuple[str, RewardSource, float]]):
    if not sources:
      raise ValueError("WeightedSum needs at least one (name, source, weight)")
    self.sources = list(sources)
    self.last_components: dict[str, np.ndarray] = {}
    self.last_valid_mask = np.zeros((0,), dtype=bool)

  def set_step(self, step: int) -> None:
    for _, source, _ in self.sources:
      set_step(source, step)

  def score(self, prompts, completions) -> np.ndarray:
    n = len(completions)
    total = np.zeros(n, np.float32)
    valid = np.ones(n, dtype=bool)
    self.last_components = {}
    for name, source, weight in self.sources:
      part = checked_scores(name, source.score(prompts, completions), n)
      valid &= valid_mask(source, n)
      self.last_components[name] = part
      total += np.float32(weight) * part
    self.last_valid_mask = valid
    return total


class OfflineFileReward:
  """Hands each rollout batch to an external batch job through files, and waits for its scores.

  Batch k writes `exchange_dir/rollout_{k:06d}.jsonl` (lines {"id", "query", "response"}),
  atomically, then waits for `rollout_{k:06d}.scored.jsonl` with one line per id carrying
  `reward` (float) or `verdict` (0/1, as `launch.judge` writes). Lines with an `error` field get
  `fallback` and are marked False in `last_valid_mask` (the trainer masks them out, they are
  not scored). A scorer that has not produced every id within `timeout_s` raises RewardError
  naming the file and how many ids are missing.

  k is the RL step when the trainer announces it (`set_step`, called by RLTrainer before every
  scoring call), so a resumed run never reads another step's files; standalone, k counts calls
  from `start_index`. A rollout file that already exists (a step redone after a crash) is reused
  only if it holds exactly this batch; otherwise RewardError names it (its scores belong to
  other completions).
  """

  def __init__(self, exchange_dir: str | os.PathLike, timeout_s: float = 3600.0,
               poll_s: float = 1.0, fallback: float = 0.0, start_index: int = 0):
    self.dir = pathlib.Path(exchange_dir)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.timeout_s, self.poll_s, self.fallback = timeout_s, poll_s, fallback
    self.index = start_index
    self.last_valid_mask = np.zeros((0,), dtype=bool)

  def set_step(self, step: int) -> None:
    """The next call scores RL step `step`: its files are rollout_{step:06d}.*."""
    self.index = int(step)

  def paths(self, index: int) -> tuple[pathlib.Path, pathlib.Path]:
    stem = f"rollout_{index:06d}"
    return self.dir / f"{stem}.jsonl", self.dir / f"{stem}.scored.jsonl"

  def _write(self, path: pathlib.Path, prompts, completions) -> None:
    storage.write_text(str(path), "".join(
        json.dumps({"id": i, "query": p, "response": c}, ensure_ascii=False) + "\n"
        for i, (p, c) in enumerate(zip(prompts, completions))))

  def _check_same_batch(self, path: pathlib.Path, scored_path: pathlib.Path, prompts,
                        completions) -> None:
    """Refuses an existing rollout file that does not hold exactly (prompts, completions)."""
    try:
      recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
              if line.strip()]
      old = [(r["id"], r["query"], r["response"]) for r in recs]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise RewardError(f"offline scorer: {path} exists but is not a rollout file ({e}); move "
                        f"it (and {scored_path.name}) away") from e
    new = [(i, p, c) for i, (p, c) in enumerate(zip(prompts, completions))]
    if old != new:
      diff = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
      raise RewardError(
          f"offline scorer: {path} exists but holds a different batch ({len(old)} rows vs "
          f"{len(new)}; first difference at id {diff}): it is left from another run or a "
          f"different config, and its scores ({scored_path.name}) belong to other completions. "
          f"Move the old exchange files away (or use a new workdir) and rerun")

  def _read(self, path: pathlib.Path, n: int) -> dict[int, float | None]:
    """id -> reward, None for an `error` line."""
    got: dict[int, float | None] = {}
    if not path.exists():
      return got
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line still being written; re-read on the next poll
      rid = rec.get("id")
      if not isinstance(rid, int) or not 0 <= rid < n:
        raise RewardError(f"{path}:{lineno}: id {rid!r} is not one of the rollout's ids 0..{n - 1}")
      if rec.get("error"):
        got[rid] = None
      elif "reward" in rec:
        got[rid] = float(rec["reward"])
      elif "verdict" in rec:
        got[rid] = float(rec["verdict"])
      else:
        raise RewardError(f"{path}:{lineno}: record has neither 'reward' nor 'verdict'")
    return got

  def score(self, prompts, completions) -> np.ndarray:
    n = len(completions)
    out_path, scored_path = self.paths(self.index)
    if out_path.exists():
      self._check_same_batch(out_path, scored_path, prompts, completions)
    else:
      self._write(out_path, prompts, completions)
    deadline = time.monotonic() + self.timeout_s
    while True:
      got = self._read(scored_path, n)
      if len(got) == n:
        break
      if time.monotonic() > deadline:
        raise RewardError(f"offline scorer: {scored_path} has {len(got)} of {n} ids after "
                          f"{self.timeout_s:.0f}s; score {out_path} with e.g. `python -m "
                          f"launch.judge --input={out_path} --output={scored_path} ...`")
      time.sleep(self.poll_s)
    self.index += 1
    values = [got[i] for i in range(n)]
    self.last_valid_mask = np.array([v is not None for v in values], dtype=bool)
    return checked_scores("offline", [self.fallback if v is None else v for v in values], n)


class OnMainProcess:
  """A host-side source (LLM judge, offline job, Python callable) asked by process 0 alone in a
  multi-host run; every process gets process 0's scores and validity mask. One judge call per
  item, not one per host, and all hosts train on the same rewards even when the judge samples.
  Sources that run on the devices (the reward model) must not be wrapped: every process takes
  part in their forward pass. An error on process 0 is raised on every process (no hang)."""

  def __init__(self, source: RewardSource):
    self.source = source
    self.name = getattr(source, "name", type(source).__name__)
    self.last_valid_mask: np.ndarray | None = None

  def set_step(self, step: int) -> None:
    set_step(self.source, step)

  def score(self, prompts, completions) -> np.ndarray:
    from rlaif_jax.sharding import host  # Local: jax only where a trainer runs.
    n = len(completions)
    scores, valid, error = np.zeros(n, np.float32), np.ones(n, bool), None
    if host.is_main():
      try:
        scores = checked_scores(self.name, self.source.score(prompts, completions), n)
        valid = valid_mask(self.source, n)
      except Exception as e:  # re-raised below, after the other processes heard of it
        if not host.is_multiprocess():
          raise
        error = e
    failed, scores, valid = host.broadcast((np.asarray(error is not None), scores, valid))
    if error is not None:
      raise error
    if failed:
      raise RewardError(f"reward source {self.name!r} failed on process 0 (see its log)")
    self.last_valid_mask = np.asarray(valid, bool)
    return np.asarray(scores, np.float32)


def set_step(source: RewardSource, step: int) -> None:
  """Tells `source` (and the parts of a WeightedSum) which RL step it scores next, if it cares."""
  hook = getattr(source, "set_step", None)
  if callable(hook):
    hook(step)
