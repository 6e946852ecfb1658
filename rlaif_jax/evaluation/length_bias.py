"""Length-bias diagnostics for reward models and judges.

A reward that mostly measures length is easy to hack by padding. These helpers quantify how much
scores follow length and how well a scorer does where length cannot help (chosen not longer).
Lengths are non-whitespace characters (`diversity.char_length`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rlaif_jax.evaluation import diversity, stats


def length_bias_report(
    scores: Sequence[float] | np.ndarray, lengths: Sequence[float] | np.ndarray
) -> dict[str, float]:
  """How strongly scores follow lengths.

  Args:
    scores: f[N] reward/judge score per text.
    lengths: f[N] length per text (e.g. characters).
  Returns:
    {"spearman": rank correlation, "pearson": linear correlation, "slope_per_100_chars":
     least-squares score change per 100 length units, "score_mean_shortest_quartile",
     "score_mean_longest_quartile": mean score of the shortest / longest quarter of texts,
     "n"}. Correlations are NaN for constant inputs; quartile means need N >= 4.
  """
  s = np.asarray(scores, dtype=np.float64).reshape(-1)
  x = np.asarray(lengths, dtype=np.float64).reshape(-1)
  if s.shape != x.shape:
    raise ValueError(f"scores and lengths differ in length: {s.size} vs {x.size}.")
  n = int(s.size)
  spread = float(((x - x.mean()) ** 2).sum()) if n else 0.0
  covariance = float(((x - x.mean()) * (s - s.mean())).sum())
  slope = covariance / spread * 100.0 if spread > 0 else math.nan
  order = np.argsort(x, kind="mergesort")
  quarter = n // 4
  return {
      "spearman": stats.spearman(s, x),
      "pearson": stats.pearson(s, x),
      "slope_per_100_chars": slope,
      "score_mean_shortest_quartile": float(s[order[:quarter]].mean()) if quarter else math.nan,
      "score_mean_longest_quartile": float(s[order[-quarter:]].mean()) if quarter else math.nan,
      "n": n,
  }


def _pair_lengths(
    chosen_texts: Sequence[str], rejected_texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
  """Character lengths i64[N] of the chosen and of the rejected texts."""
  if len(chosen_texts) != len(rejected_texts):
    raise ValueError(f"{len(chosen_texts)} chosen texts but {len(rejected_texts)} rejected texts.")
  chosen = np.array([diversity.char_length(t) for t in chosen_texts], dtype=np.int64)
  rejected = np.array([diversity.char_length(t) for t in rejected_texts], dtype=np.int64)
  return chosen, rejected


def longer_wins_accuracy(
    chosen_texts: Sequence[str], rejected_texts: Sequence[str]
) -> dict[str, float]:
  """Accuracy of the baseline "the longer text is the chosen one" on preference pairs.

  Returns:
    {"accuracy": (pairs with chosen strictly longer + 0.5 * equal-length pairs) / N,
     "ties": share of equal-length pairs, "n": N}; NaN accuracy for N = 0.
  """
  chosen, rejected = _pair_lengths(chosen_texts, rejected_texts)
  n = int(chosen.size)
  if n == 0:
    return {"accuracy": math.nan, "ties": math.nan, "n": 0}
  wins = float((chosen > rejected).sum())
  ties = float((chosen == rejected).sum())
  return {"accuracy": (wins + 0.5 * ties) / n, "ties": ties / n, "n": n}


def accuracy_where_chosen_not_longer(
    chosen_scores: Sequence[float] | np.ndarray,
    rejected_scores: Sequence[float] | np.ndarray,
    chosen_texts: Sequence[str],
    rejected_texts: Sequence[str],
) -> dict[str, float]:
  """Pair accuracy (chosen scored strictly higher) restricted to pairs whose chosen text is not
  longer than the rejected one, where a length-driven scorer gets no help.

  Args:
    chosen_scores, rejected_scores: f[N] scorer outputs per pair.
    chosen_texts, rejected_texts: the N pairs' texts.
  Returns:
    {"accuracy": on the subset (NaN if empty), "n": subset size, "accuracy_all": on all pairs,
     "n_all": N}.
  """
  c_scores = np.asarray(chosen_scores, dtype=np.float64).reshape(-1)
  r_scores = np.asarray(rejected_scores, dtype=np.float64).reshape(-1)
  c_len, r_len = _pair_lengths(chosen_texts, rejected_texts)
  if not c_scores.size == r_scores.size == c_len.size:
    raise ValueError(f"got {c_scores.size} chosen scores, {r_scores.size} rejected scores and "
                     f"{c_len.size} text pairs; they must match.")
  correct = c_scores > r_scores
  subset = c_len <= r_len
  n = int(subset.sum())
  return {
      "accuracy": float(correct[subset].mean()) if n else math.nan,
      "n": n,
      "accuracy_all": float(correct.mean()) if correct.size else math.nan,
      "n_all": int(correct.size),
  }
