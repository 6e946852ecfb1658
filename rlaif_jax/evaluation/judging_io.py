"""The evaluation's judging step, resumable: `judge_records` (every judge's verdicts on items,
appended chunk by chunk to JSONL) and `judge_reliability` (each judge against the human labels,
fitted thresholds cross-fitted), the reliability table."""
from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import numpy as np

from rlaif_jax import jsonl_jobs, storage
from rlaif_jax.data import greetings
from rlaif_jax.evaluation import processes, report
from rlaif_jax.metrics import agreement
from rlaif_jax.evaluation.judges import EvalJudge
from rlaif_jax.evaluation.stale import StaleOutputError, _check_on_stale, _fresh_if_stale
from rlaif_jax.evaluation.tables import RELIABILITY_COLUMNS, _check_names
from rlaif_jax.judging.judge_report import json_safe

RELIABILITY_FOLDS = 5  # cross-fitting folds of a fitted threshold in the reliability table
CROSSFIT_DIR = "crossfit"  # reliability/crossfit/<judge>.jsonl: the out-of-fold verdicts


def _backend_failure(record: dict[str, Any]) -> bool:
  """An invalid judgement caused by the LLM backend (not by the judge's own reply)."""
  return not record.get("valid") and "backend error" in str(record.get("error", ""))


def judge_records(judge: EvalJudge, items: Sequence[dict[str, Any]], path: str | os.PathLike,
                  chunk_size: int = 64, progress: bool = True) -> list[dict[str, Any]]:
  """Judges items {id, query, response, [human_label]} into `path` (JSONL), `chunk_size` per
  judge call; ids already in the file are kept, except those a backend failure left invalid
  (an LLM server that was down), which are judged again. Returns one record per item, in
  order. Raises StaleOutputError when the file holds verdicts on other responses or by another
  judge. Multi-host: process 0 reads and writes the file (`processes`)."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  path = pathlib.Path(path)
  config = jsonl_jobs.JobConfig(
      output_path=str(path), chunk_size=chunk_size, chunks_in_flight=1, progress=progress,
      progress_desc=f"judge {path.parent.name}/{judge.name}", progress_unit="item",
      keep=_judgement_check(judge, items, path), collective=True, agree=processes.on_main)
  with jsonl_jobs.open_job(config, [{**it, "_line": n} for n, it in enumerate(items)],
                           keep_existing=True) as job:
    if job.summary.retried_errors and processes.is_main():
      print(f"{path}: judging {job.summary.retried_errors} record(s) again that failed on a "
            "backend error", flush=True)
    done = {r["id"]: r for r in job.existing}
    for start in range(0, len(job.todo), chunk_size):
      chunk = job.todo[start:start + chunk_size]
      result = processes.judge(judge, [c["query"] for c in chunk],
                               [c["response"] for c in chunk])
      for k, c in enumerate(chunk):
        valid = bool(result.valid[k])
        done[c["id"]] = {"id": c["id"], "query": c["query"], "response": c["response"],
                         "label": int(result.labels[k]) if valid else None, "valid": valid,
                         "score": float(result.scores[k]) if valid else None,
                         "judge": judge.signature, **result.details[k]}
        if "human_label" in c:
          done[c["id"]]["human_label"] = c["human_label"]
      job.write(chunk, [done[c["id"]] for c in chunk])
  return [done[it["id"]] for it in items]


def _judgement_check(judge: EvalJudge, items: Sequence[dict[str, Any]], path: pathlib.Path):
  """keep(line, line_no) of a judgements file: False for a verdict a backend failure left
  invalid (judged again); raises StaleOutputError for one on another response or by another
  judge."""
  by_id = {it["id"]: it for it in items}

  def keep(r: dict[str, Any], n: int) -> bool:
    item = by_id.get(r.get("id"))
    if item is None or r.get("response") != item["response"] or r.get("judge") != judge.signature:
      raise StaleOutputError(
          f"{path}: record {n} (id {r.get('id')!r}) was judged on another response or with "
          f"other settings ({r.get('judge')!r}, now {judge.signature!r}); delete the file to "
          "judge again", path,
          "judged on other responses" if r.get("judge") == judge.signature else
          f"judged with other settings ({r.get('judge')!r:.60}, now {judge.signature!r:.60})")
    return not _backend_failure(r)
  return keep


def _crossfit_row(name: str, kind: str, ids: Sequence[Any], scores: np.ndarray,
                  human: np.ndarray, fit, threshold: Any, in_sample: np.ndarray,
                  folds: int, fold_seed: int, out: pathlib.Path) -> dict[str, Any]:
  """Agreement of out-of-fold verdicts "score >= t", t refitted by `fit` without the item's
  fold (`agreement.cross_fit_threshold`); the verdicts go to reliability/crossfit/<name>.jsonl.
  `threshold` (fitted on all items) and the in-sample accuracy of `in_sample` verdicts are only
  reported beside them."""
  row: dict[str, Any] = {"judge": name, "kind": kind, "n": int(human.size),
                         "threshold": threshold, "folds": None}
  k = min(folds, int(human.size))
  if k < 2:
    row["notes"] = (f"threshold fitted on all {human.size} labelled item(s) and scored on them "
                    "(too few valid items to cross-fit; in-sample)")
    if human.size:
      row.update(agreement.binary_agreement(human, in_sample))
    return row
  cv = agreement.cross_fit_threshold(scores, human, fit, k=k, seed=fold_seed)
  row.update(agreement.binary_agreement(human, cv["predictions"]))
  row["folds"] = k
  fold_t = [float(t) for t in cv["thresholds"]]
  row["notes"] = (
      f"threshold cross-fitted, {k} folds (stratified, seed {fold_seed}): out-of-fold "
      f"verdicts; fold thresholds {min(fold_t):.4g}..{max(fold_t):.4g}; in-sample accuracy "
      f"{np.mean(in_sample == human):.4f} with the threshold column's threshold, fitted on all "
      f"{human.size} labelled items (used for the excellence rates)")
  lines = [{"id": i, "fold": int(f), "threshold": fold_t[int(f)], "score": float(s),
            "label": int(p), "human_label": int(y)}
           for i, f, s, p, y in zip(ids, cv["folds"], scores, cv["predictions"], human)]
  if processes.is_main():
    storage.write_text(str(out / "reliability" / CROSSFIT_DIR / f"{name}.jsonl"),
                       "".join(storage.dumps_line(json_safe(r)).decode("utf-8") for r in lines))
  return row


def judge_reliability(judges: Sequence[EvalJudge], labelled: Sequence[greetings.LabeledResponse],
                      output_dir: str | os.PathLike, chunk_size: int = 64,
                      on_stale: str = "refuse", progress: bool = True,
                      folds: int = RELIABILITY_FOLDS, fold_seed: int = 0
                      ) -> list[dict[str, Any]]:
  """Agreement of every judge with the human labels (the paper's Table 1, extended).

  Per judge: accuracy, precision, recall, F1 and Cohen's kappa over its valid verdicts, and the
  invalid count; then the best length-threshold baseline. A judge whose threshold was fitted on
  labelled items (`rm`, `length` without ?threshold=), and the length baseline, are not scored
  on the items their threshold was fitted on: their rows are cross-fitted (`folds` stratified
  folds shuffled with `fold_seed`; each item's verdict comes from the threshold refitted on the
  other folds), so they are honest held-out figures. The `threshold` column is still the one
  fitted on all labelled items (what the excellence rates use), and `notes` says how each row
  was computed. Writes reliability.{md,csv}, the judges' verdicts to reliability/<judge>.jsonl
  (resumed; a file by another judge is refused or, with on_stale="restart", moved aside and
  judged afresh) and the out-of-fold verdicts to reliability/crossfit/<judge>.jsonl.
  """
  if not labelled:
    raise ValueError("judge_reliability needs labelled records")
  if folds < 2:
    raise ValueError(f"judge_reliability: folds must be >= 2, got {folds}")
  _check_names("judge", [j.name for j in judges])
  _check_on_stale(on_stale)
  out = pathlib.Path(output_dir)
  items = [{"id": i, "query": r.query, "response": r.response, "human_label": r.label}
           for i, r in enumerate(labelled)]
  rows = []
  for judge in judges:
    path = out / "reliability" / f"{judge.name}.jsonl"
    records = _fresh_if_stale(out, on_stale, lambda: judge_records(judge, items, path, chunk_size,
                                                                   progress))
    valid = [r for r in records if r["valid"]]
    human = np.array([r["human_label"] for r in valid], dtype=np.int64)
    if judge.threshold_fitted:
      row = _crossfit_row(judge.name, judge.kind, [r["id"] for r in valid],
                          np.array([r["score"] for r in valid], dtype=np.float64), human,
                          judge.fit_threshold, judge.threshold,
                          np.array([r["label"] for r in valid], dtype=np.int64), folds,
                          fold_seed, out)
    else:
      row = {"judge": judge.name, "kind": judge.kind, "n": 0, "threshold": judge.threshold,
             "notes": ("no fitted parameters" if judge.threshold is None else
                       "threshold given, not fitted on these labels")}
      if valid:
        row.update(agreement.binary_agreement(human, [r["label"] for r in valid]))
    row["n_invalid"] = len(records) - len(valid)
    rows.append(row)
  lengths = np.array([len(r.response) for r in labelled], dtype=np.float64)
  human = np.array([r.label for r in labelled], dtype=np.int64)
  fit_length = lambda s, y: int(agreement.best_length_threshold_baseline(
      s.astype(np.int64), y)["threshold"])
  threshold = fit_length(lengths, human)
  row = _crossfit_row("length_baseline", "baseline", list(range(len(labelled))), lengths, human,
                      fit_length, threshold, (lengths >= threshold).astype(np.int64), folds,
                      fold_seed, out)
  rows.append({**row, "n_invalid": 0})
  report.write_table(rows, RELIABILITY_COLUMNS, out / "reliability.md", out / "reliability.csv")
  return rows
