"""Agreement between binary judgements and human labels, and the length-threshold baseline.

Pure NumPy. Labels and predictions are 0/1 arrays of shape [n]. Conventions (as scikit-learn
with ``zero_division=0``): precision is 0 when nothing is predicted positive, recall is 0 when
there are no positives, F1 is 0 when precision + recall is 0. Cohen's kappa is NaN when it is
undefined (both raters constant and equal: expected agreement 1).
"""
from __future__ import annotations

from typing import Any, Callable

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


def stratified_folds(labels: Any, k: int, seed: int = 0) -> np.ndarray:
  """int64[n] fold ids in [0, k): each class shuffled with `seed` and dealt round-robin, so every
  fold holds about n / k items and both classes in proportion.

  Args:
    labels: int[n] 0/1 labels; k: number of folds, 2 <= k <= n.
  """
  y = _binary_array(labels, "labels")
  if not 2 <= k <= y.size:
    raise ValueError(f"stratified_folds needs 2 <= k <= n, got k={k}, n={y.size}")
  rng = np.random.default_rng(seed)
  folds = np.empty(y.size, np.int64)
  dealt = 0
  for cls in (0, 1):
    idx = rng.permutation(np.flatnonzero(y == cls))
    folds[idx] = (dealt + np.arange(idx.size)) % k
    dealt += idx.size
  return folds


def cross_fit_threshold(scores: Any, labels: Any, fit: Callable[[np.ndarray, np.ndarray], float],
                        k: int = 5, seed: int = 0) -> dict[str, Any]:
  """Out-of-fold verdicts of the rule "1 iff score >= t", t fitted by `fit` on the other folds.

  Items are split into k stratified folds (`stratified_folds`); for each fold, t_f =
  fit(scores of the other folds, their labels), and the fold's items get score >= t_f. No item's
  verdict depends on its own label, so agreement metrics of these verdicts are honest
  (held-out) estimates of how the fitted rule does on new items.

  Args:
    scores: f[n] finite scores; labels: int[n] 0/1 labels; fit: (scores, labels) -> threshold;
    k: number of folds (2 <= k <= n); seed: shuffles the folds.
  Returns:
    {"predictions": int64[n], "folds": int64[n], "thresholds": [t_0, ..., t_{k-1}], "k": k}.
  """
  s = np.asarray(scores, dtype=np.float64).reshape(-1)
  y = _binary_array(labels, "labels")
  if s.shape != y.shape:
    raise ValueError(f"cross_fit_threshold: {s.size} scores but {y.size} labels")
  folds = stratified_folds(y, k, seed)
  predictions = np.zeros(y.size, np.int64)
  thresholds = []
  for f in range(k):
    held_out = folds == f
    t = fit(s[~held_out], y[~held_out])
    thresholds.append(t)
    predictions[held_out] = (s[held_out] >= t).astype(np.int64)
  return {"predictions": predictions, "folds": folds, "thresholds": thresholds, "k": k}
