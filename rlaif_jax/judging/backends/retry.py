"""Retry policy: exponential backoff with jitter, honouring the server's Retry-After."""
from __future__ import annotations

import dataclasses
import email.utils
import random
import time


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """How often and how patiently a request is retried.

  Attributes:
    max_attempts: total tries per request (first try included); >= 1.
    base_delay_s: backoff before the 2nd try; doubles per try.
    max_delay_s: cap of the exponential backoff.
    max_retry_after_s: cap on a server's Retry-After (a broken server must not stall a job).
    jitter: fraction of the backoff that is randomised (0 = none, 1 = full jitter).
  """
  max_attempts: int = 6
  base_delay_s: float = 1.0
  max_delay_s: float = 60.0
  max_retry_after_s: float = 300.0
  jitter: float = 0.5

  def __post_init__(self):
    if self.max_attempts < 1:
      raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
    if self.base_delay_s < 0 or self.max_delay_s < 0:
      raise ValueError("RetryPolicy delays must be >= 0")
    if not 0.0 <= self.jitter <= 1.0:
      raise ValueError(f"RetryPolicy.jitter must be in [0, 1], got {self.jitter}")

  def backoff_s(self, retry_index: int, rng: random.Random | None = None) -> float:
    """Delay before retry number ``retry_index`` (0 = first retry), without Retry-After."""
    rng = rng or random
    cap = min(self.max_delay_s, self.base_delay_s * (2.0 ** retry_index))
    return cap * (1.0 - self.jitter) + cap * self.jitter * rng.random()

  def delay_s(self, retry_index: int, retry_after_s: float | None,
              rng: random.Random | None = None) -> float:
    """Backoff, but never shorter than the (capped) Retry-After the server asked for."""
    delay = self.backoff_s(retry_index, rng)
    if retry_after_s is not None:
      delay = max(delay, min(retry_after_s, self.max_retry_after_s))
    return delay


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
  """Seconds to wait from a Retry-After header: delta-seconds (int or float) or an HTTP date."""
  if not value:
    return None
  value = value.strip()
  try:
    seconds = float(value)
  except ValueError:
    try:
      when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
      return None
    if when is None:
      return None
    seconds = when.timestamp() - (time.time() if now is None else now)
  if seconds != seconds:  # NaN
    return None
  return max(0.0, seconds)
