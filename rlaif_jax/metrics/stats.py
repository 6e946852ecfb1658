"""Summary statistics for evaluations: excellence rate with a Wilson interval, Spearman's rho."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z_95 = 1.959963984540054  # Two-sided 95% standard-normal quantile.


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion.

  Args:
    successes: number of positive outcomes, 0 <= successes <= n.
    n: number of trials, > 0.
    z: normal quantile (1.96 for 95%).
  Returns:
    (low, high), within [0, 1].
  """
  if n <= 0 or not 0 <= successes <= n:
    raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}.")
  p = successes / n
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  # Clamp to [0, p] and [p, 1]: rounding can put a bound a hair past the rate (6e-17 at p = 0).
  return min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)


def excellence_rate(labels: Sequence[int] | np.ndarray, z: float = Z_95) -> dict[str, float]:
  """Share of outputs judged excellent, with a Wilson confidence interval.

  Args:
    labels: int/bool[N], 1 = excellent, 0 = not.
    z: normal quantile of the interval (95% by default).
  Returns:
    {"rate", "ci_low", "ci_high", "n"}; NaN rate and bounds when N = 0.
  """
  values = np.asarray(labels).reshape(-1)
  if values.size and not np.isin(values, (0, 1)).all():
    bad = values[~np.isin(values, (0, 1))][:5].tolist()
    raise ValueError(f"excellence labels must be 0/1, got e.g. {bad}.")
  n = int(values.size)
  if n == 0:
    return {"rate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
  successes = int(values.astype(np.int64).sum())
  low, high = wilson_interval(successes, n, z)
  return {"rate": successes / n, "ci_low": low, "ci_high": high, "n": n}


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
  """Ranks starting at 1, tied values sharing the mean of their ranks.

  Args:
    values: f[N].
  Returns:
    f64[N], e.g. [10, 20, 20, 5] -> [2, 3.5, 3.5, 1].
  """
  x = np.asarray(values, dtype=np.float64).reshape(-1)
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(x.size, dtype=np.float64)
  start = 0
  while start < x.size:
    end = start
    while end + 1 < x.size and x[order[end + 1]] == x[order[start]]:
      end += 1
    ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
    start = end + 1
  return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
  """Pearson correlation of two equal-length vectors; NaN when either is constant or N < 2."""
  a = np.asarray(x, dtype=np.float64).reshape(-1)
  b = np.asarray(y, dtype=np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"x and y differ in length: {a.size} vs {b.size}.")
  if a.size < 2:
    return math.nan
  a = a - a.mean()
  b = b - b.mean()
  denom = math.sqrt(float(a @ a) * float(b @ b))
  return float(a @ b) / denom if denom > 0 else math.nan


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
  """Spearman's rho: Pearson correlation of average ranks (ties handled as scipy does).

  Args:
    x, y: f[N] paired observations.
  Returns:
    rho in [-1, 1]; NaN when either input is constant or N < 2.
  """
  a = np.asarray(x, dtype=np.float64).reshape(-1)
  b = np.asarray(y, dtype=np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"x and y differ in length: {a.size} vs {b.size}.")
  return pearson(average_ranks(a), average_ranks(b))
