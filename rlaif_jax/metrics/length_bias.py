"""Length-bias diagnostics for reward models and judges.

A reward that mostly measures length is easy to hack by padding. These helpers quantify how much
scores follow length and how well a scorer does where length cannot help (chosen not longer).
Lengths are non-whitespace characters (`diversity.char_length`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rlaif_jax.metrics import diversity, stats


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

  An equal-length pair is a coin flip for this baseline: credited 0.5.

  Returns:
    {"accuracy": (pairs with chosen strictly longer + 0.5 * equal-length pairs) / N,
     "ties": share of equal-length pairs, "n": N,
     "accuracy_chosen_not_longer": its accuracy on the pairs whose chosen text is not longer
       (0.5 * ties / that subset's size), "n_chosen_not_longer",
     "accuracy_chosen_shorter": 0 on the pairs whose chosen text is strictly shorter,
       "n_chosen_shorter", "accuracy_equal_length": 0.5 on the equal-length pairs,
       "n_equal_length"}; NaN accuracies on empty subsets.
  """
  chosen, rejected = _pair_lengths(chosen_texts, rejected_texts)
  n = int(chosen.size)
  n_ties, n_shorter = int((chosen == rejected).sum()), int((chosen < rejected).sum())
  split = {
      "accuracy_chosen_not_longer": (0.5 * n_ties / (n_ties + n_shorter) if n_ties + n_shorter
                                     else math.nan),
      "n_chosen_not_longer": n_ties + n_shorter,
      "accuracy_chosen_shorter": 0.0 if n_shorter else math.nan, "n_chosen_shorter": n_shorter,
      "accuracy_equal_length": 0.5 if n_ties else math.nan, "n_equal_length": n_ties}
  if n == 0:
    return {"accuracy": math.nan, "ties": math.nan, "n": 0, **split}
  wins = float((chosen > rejected).sum())
  return {"accuracy": (wins + 0.5 * n_ties) / n, "ties": n_ties / n, "n": n, **split}


def accuracy_where_chosen_not_longer(
    chosen_scores: Sequence[float] | np.ndarray,
    rejected_scores: Sequence[float] | np.ndarray,
    chosen_texts: Sequence[str],
    rejected_texts: Sequence[str],
) -> dict[str, float]:
  """Pair accuracy (chosen scored strictly higher) restricted to pairs whose chosen text is not
  longer than the rejected one, where a length-driven scorer gets no help; also split into the
  pairs whose chosen text is strictly shorter and the equal-length pairs.

  Args:
    chosen_scores, rejected_scores: f[N] scorer outputs per pair.
    chosen_texts, rejected_texts: the N pairs' texts.
  Returns:
    {"accuracy": on the subset (NaN if empty), "n": subset size, "accuracy_all": on all pairs,
     "n_all": N, "accuracy_shorter", "n_shorter": on the chosen-strictly-shorter pairs,
     "accuracy_ties", "n_ties": on the equal-length pairs}.
  """
  c_scores = np.asarray(chosen_scores, dtype=np.float64).reshape(-1)
  r_scores = np.asarray(rejected_scores, dtype=np.float64).reshape(-1)
  c_len, r_len = _pair_lengths(chosen_texts, rejected_texts)
  if not c_scores.size == r_scores.size == c_len.size:
    raise ValueError(f"got {c_scores.size} chosen scores, {r_scores.size} rejected scores and "
                     f"{c_len.size} text pairs; they must match.")
  correct = c_scores > r_scores

  def on(subset: np.ndarray) -> tuple[float, int]:
    n = int(subset.sum())
    return (float(correct[subset].mean()) if n else math.nan), n

  accuracy, n = on(c_len <= r_len)
  accuracy_shorter, n_shorter = on(c_len < r_len)
  accuracy_ties, n_ties = on(c_len == r_len)
  return {
      "accuracy": accuracy,
      "n": n,
      "accuracy_all": float(correct.mean()) if correct.size else math.nan,
      "n_all": int(correct.size),
      "accuracy_shorter": accuracy_shorter, "n_shorter": n_shorter,
      "accuracy_ties": accuracy_ties, "n_ties": n_ties,
  }
