"""Agreement between binary judgements and human labels, and the length-threshold baseline.

Pure NumPy. Labels and predictions are 0/1 arrays of shape [n]. Conventions (as scikit-learn
with ``zero_division=0``): precision is 0 when nothing is predicted positive, recall is 0 when
there are no positives, F1 is 0 when precision + recall is 0. Cohen's kappa is NaN when it is
undefined (both raters constant and equal: expected agreement 1).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _binary_array(values: Any, name: str) -> np.ndarray:
  arr = np.asarray(values)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
  if arr.size and not np.isin(arr, (0, 1)).all():
    bad = arr[~np.isin(arr, (0, 1))][:5]
    raise ValueError(f"{name} must hold only 0/1, found {bad.tolist()}")
  return arr.astype(np.int64)


def confusion_counts(y_true: Any, y_pred: Any) -> dict[str, int]:
  """``{"tp", "fp", "fn", "tn"}`` for positive class 1."""
  t, p = _binary_array(y_true, "y_true"), _binary_array(y_pred, "y_pred")
  if t.shape != p.shape:
    raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
  return {"tp": int(np.sum((t == 1) & (p == 1))), "fp": int(np.sum((t == 0) & (p == 1))),
          "fn": int(np.sum((t == 1) & (p == 0))), "tn": int(np.sum((t == 0) & (p == 0)))}


def _metrics_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                         tn: np.ndarray) -> dict[str, np.ndarray]:
  """Vectorised metrics over arrays of confusion counts (one entry per threshold)."""
  tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn, tn))
  n = tp + fp + fn + tn
  with np.errstate(divide="ignore", invalid="ignore"):
    accuracy = (tp + tn) / n
    precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # Expected chance agreement from the two raters' marginals.
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    kappa = np.where(expected < 1.0, (accuracy - expected) / (1.0 - expected), np.nan)
  return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
          "cohen_kappa": kappa}


def cohen_kappa(y_true: Any, y_pred: Any) -> float:
  """Cohen's kappa of two binary raters (NaN when undefined)."""
  return binary_agreement(y_true, y_pred)["cohen_kappa"]


def binary_agreement(y_true: Any, y_pred: Any) -> dict[str, float | int]:
  """Accuracy, precision, recall, F1, Cohen's kappa and the confusion counts.

  Args:
    y_true: int[n] human labels (1 = good).
    y_pred: int[n] judge verdicts (1 = good).
  Returns:
    dict with n, accuracy, precision, recall, f1, cohen_kappa, tp, fp, fn, tn,
    positive_rate_true, positive_rate_pred.
  """
  counts = confusion_counts(y_true, y_pred)
  n = sum(counts.values())
  if n == 0:
    raise ValueError("binary_agreement needs at least one item")
  metrics = _metrics_from_counts(**{k: np.array([v]) for k, v in counts.items()})
  out: dict[str, float | int] = {"n": n}
  out.update({k: float(v[0]) for k, v in metrics.items()})
  out.update(counts)
  out["positive_rate_true"] = (counts["tp"] + counts["fn"]) / n
  out["positive_rate_pred"] = (counts["tp"] + counts["fp"]) / n
  return out


def best_length_threshold_baseline(lengths: Any, labels: Any) -> dict[str, float | int]:
  """The best "predict 1 iff length >= t" rule on these items, with its agreement metrics.

  Every distinct length and ``max + 1`` (predict all 0) are tried; the threshold with the
  highest accuracy wins, ties going to the smallest t. Note t is fitted on the same items it is
  scored on, so this is an optimistic (upper-bound) baseline.

  Args:
    lengths: int[n] response lengths (characters).
    labels: int[n] human labels.
  Returns:
    ``binary_agreement`` of the best rule plus ``threshold``.
  """
  lengths_arr = np.asarray(lengths)
  y = _binary_array(labels, "labels")
  if lengths_arr.ndim != 1 or lengths_arr.shape != y.shape:
    raise ValueError(f"lengths shape {lengths_arr.shape} must match labels shape {y.shape}")
  if y.size == 0:
    raise ValueError("best_length_threshold_baseline needs at least one item")
  lengths_arr = lengths_arr.astype(np.int64)
  candidates = np.unique(np.concatenate([lengths_arr, [lengths_arr.max() + 1]]))
  pos, neg = np.sort(lengths_arr[y == 1]), np.sort(lengths_arr[y == 0])
  tp = pos.size - np.searchsorted(pos, candidates, side="left")  # positives with len >= t
  fp = neg.size - np.searchsorted(neg, candidates, side="left")
  fn, tn = pos.size - tp, neg.size - fp
  accuracy = _metrics_from_counts(tp, fp, fn, tn)["accuracy"]
  best = int(np.argmax(accuracy))
  threshold = int(candidates[best])
  out = binary_agreement(y, (lengths_arr >= threshold).astype(np.int64))
  out["threshold"] = threshold
  return out
