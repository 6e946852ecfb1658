"""Agreement between several human raters: pairwise Cohen's kappa, Fleiss' kappa and
Krippendorff's alpha (nominal, ordinal, interval). Pure NumPy.

Ratings are a float matrix ``[raters, items]`` with NaN for a missing rating. Every statistic
is NaN when it is undefined (no variation to agree on, or too few pairable ratings).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np

from rlaif_jax.metrics.agreement import cohen_kappa

LEVELS = ("nominal", "ordinal", "interval")


def _matrix(ratings: Any) -> np.ndarray:
  r = np.asarray(ratings, dtype=np.float64)
  if r.ndim != 2:
    raise ValueError(f"ratings must be [raters, items], got shape {r.shape}")
  return r


def fleiss_kappa(ratings: Any) -> float:
  """Fleiss' kappa of ``[raters, items]`` categorical ratings (no missing values).

  Every item has the same m >= 2 raters. P_i = (sum_j n_ij^2 - m) / (m (m - 1)),
  p_j = category share over all ratings, kappa = (mean P_i - sum p_j^2) / (1 - sum p_j^2).
  """
  r = _matrix(ratings)
  if np.isnan(r).any():
    raise ValueError("fleiss_kappa needs complete ratings (no NaN)")
  m, n = r.shape
  if m < 2 or n == 0:
    return math.nan
  categories = np.unique(r)
  counts = (r[:, :, None] == categories[None, None, :]).sum(axis=0)  # [items, categories]
  p_item = ((counts * counts).sum(axis=1) - m) / (m * (m - 1))
  p_cat = counts.sum(axis=0) / (n * m)
  expected = float((p_cat * p_cat).sum())
  if expected >= 1.0:
    return math.nan
  return (float(p_item.mean()) - expected) / (1.0 - expected)


def krippendorff_alpha(ratings: Any, level: str = "nominal") -> float:
  """Krippendorff's alpha of ``[raters, items]`` ratings, NaN = missing.

  Built from the coincidence matrix o_ck of pairable values (items with >= 2 ratings, each
  ordered pair weighted 1 / (m_u - 1)): alpha = 1 - (n - 1) sum o_ck d_ck / sum n_c n_k d_ck
  with d the squared distance of ``level`` (nominal: 0/1, interval: (c - k)^2, ordinal: the
  squared count of values between c and k, Krippendorff 2011).
  """
  if level not in LEVELS:
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
  r = _matrix(ratings)
  values = np.unique(r[~np.isnan(r)])
  index = {v: i for i, v in enumerate(values.tolist())}
  o = np.zeros((values.size, values.size))
  for u in range(r.shape[1]):
    column = [index[v] for v in r[:, u][~np.isnan(r[:, u])].tolist()]
    if len(column) < 2:
      continue
    for a, b in itertools.permutations(range(len(column)), 2):
      o[column[a], column[b]] += 1.0 / (len(column) - 1)
  n_c = o.sum(axis=1)
  n = float(n_c.sum())
  if n < 2:
    return math.nan
  if level == "nominal":
    d = 1.0 - np.eye(values.size)
  elif level == "interval":
    d = (values[:, None] - values[None, :]) ** 2
  else:
    cum = np.concatenate([[0.0], np.cumsum(n_c)])
    lo = np.minimum.outer(np.arange(values.size), np.arange(values.size))
    hi = np.maximum.outer(np.arange(values.size), np.arange(values.size))
    d = (cum[hi + 1] - cum[lo] - (n_c[lo] + n_c[hi]) / 2.0) ** 2
  expected = float((np.outer(n_c, n_c) * d).sum())
  if expected == 0.0:
    return math.nan
  return 1.0 - (n - 1.0) * float((o * d).sum()) / expected


def pairwise_cohen(ratings: Any, names: Sequence[str]) -> list[dict[str, Any]]:
  """Cohen's kappa and raw agreement of every pair of binary raters (items both rated)."""
  r = _matrix(ratings)
  if len(names) != r.shape[0]:
    raise ValueError(f"{len(names)} names for {r.shape[0]} raters")
  out = []
  for a, b in itertools.combinations(range(r.shape[0]), 2):
    both = ~np.isnan(r[a]) & ~np.isnan(r[b])
    x, y = r[a][both].astype(np.int64), r[b][both].astype(np.int64)
    out.append({"a": names[a], "b": names[b], "n": int(both.sum()),
                "agreement": float((x == y).mean()) if both.any() else math.nan,
                "cohen_kappa": cohen_kappa(x, y) if both.any() else math.nan})
  return out


def exact_and_adjacent(ratings: Any) -> tuple[float, float]:
  """Share of rater pairs (over items) giving the same score, and scores at most 1 apart."""
  r = _matrix(ratings)
  same, near, total = 0, 0, 0
  for a, b in itertools.combinations(range(r.shape[0]), 2):
    both = ~np.isnan(r[a]) & ~np.isnan(r[b])
    diff = np.abs(r[a][both] - r[b][both])
    same, near, total = same + int((diff == 0).sum()), near + int((diff <= 1).sum()), \
        total + int(both.sum())
  return (same / total, near / total) if total else (math.nan, math.nan)
