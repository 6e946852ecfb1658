"""`OfflineFileScorer`: a scorer that runs elsewhere (another cluster, a batch API), reached
through files in an exchange directory."""
from __future__ import annotations

import json
import os
import pathlib
import time

from rlaif_jax import storage
from rlaif_jax.scoring.contract import Rollout, Scores, ScoringError, checked


class OfflineFileScorer:
  """Hands each rollout batch to an external batch job through files, and waits for its scores.

  Batch k writes `exchange_dir/rollout_{k:06d}.jsonl` (lines {"id", "query", "response"}),
  atomically, then waits for `rollout_{k:06d}.scored.jsonl` with one line per id carrying
  `reward` (float) or `verdict` (0/1, as `launch.judge` writes). Lines with an `error` field get
  `fallback` and are not valid (the trainer masks them out, they are not scored). A scorer that
  has not produced every id within `timeout_s` raises ScoringError naming the file and how many
  ids are missing. A cut completion is sent as it is, with `"stopped": false` on its line.

  k is the rollout's RL step (`Rollout.step`), so a resumed run never reads another step's
  files; a rollout without a step (standalone use) takes k from a call counter started at
  `start_index`. A rollout file that already exists (a step redone after a crash) is reused
  only if it holds exactly this batch; otherwise ScoringError names it (its scores belong to
  other completions).
  """

  def __init__(self, exchange_dir: str | os.PathLike, timeout_s: float = 3600.0,
               poll_s: float = 1.0, fallback: float = 0.0, start_index: int = 0,
               name: str = "offline"):
    self.dir = pathlib.Path(exchange_dir)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.timeout_s, self.poll_s, self.fallback = timeout_s, poll_s, fallback
    self.index, self.name = start_index, name

  def paths(self, index: int) -> tuple[pathlib.Path, pathlib.Path]:
    stem = f"rollout_{index:06d}"
    return self.dir / f"{stem}.jsonl", self.dir / f"{stem}.scored.jsonl"

  def _write(self, path: pathlib.Path, prompts, completions, stopped) -> None:
    storage.write_text(str(path), "".join(
        json.dumps({"id": i, "query": p, "response": c, **({} if s else {"stopped": False})},
                   ensure_ascii=False) + "\n"
        for i, (p, c, s) in enumerate(zip(prompts, completions, stopped))))

  def _check_same_batch(self, path: pathlib.Path, scored_path: pathlib.Path, prompts,
                        completions) -> None:
    """Refuses an existing rollout file that does not hold exactly (prompts, completions)."""
    try:
      recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
              if line.strip()]
      old = [(r["id"], r["query"], r["response"]) for r in recs]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ScoringError(f"offline scorer: {path} exists but is not a rollout file ({e}); move "
                        f"it (and {scored_path.name}) away") from e
    new = [(i, p, c) for i, (p, c) in enumerate(zip(prompts, completions))]
    if old != new:
      diff = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
      raise ScoringError(
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
        raise ScoringError(f"{path}:{lineno}: id {rid!r} is not one of the rollout's ids 0..{n - 1}")
      if rec.get("error"):
        got[rid] = None
      elif "reward" in rec:
        got[rid] = float(rec["reward"])
      elif "verdict" in rec:
        got[rid] = float(rec["verdict"])
      else:
        raise ScoringError(f"{path}:{lineno}: record has neither 'reward' nor 'verdict'")
    return got

  def score(self, rollout: Rollout) -> Scores:
    n, prompts, completions = rollout.size, list(rollout.prompts), list(rollout.completions)
    index = self.index if rollout.step is None else int(rollout.step)
    out_path, scored_path = self.paths(index)
    if out_path.exists():
      self._check_same_batch(out_path, scored_path, prompts, completions)
    else:
      self._write(out_path, prompts, completions, rollout.stopped)
    deadline = time.monotonic() + self.timeout_s
    while True:
      got = self._read(scored_path, n)
      if len(got) == n:
        break
      if time.monotonic() > deadline:
        raise ScoringError(f"offline scorer: {scored_path} has {len(got)} of {n} ids after "
                           f"{self.timeout_s:.0f}s; score {out_path} with e.g. `python -m "
                           f"launch.judge --input={out_path} --output={scored_path} ...`")
      time.sleep(self.poll_s)
    self.index = index + 1
    values = [got[i] for i in range(n)]
    valid = [v is not None for v in values]
    return checked(self.name, [self.fallback if v is None else v for v in values], n, valid)
