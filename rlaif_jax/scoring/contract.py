"""The scoring contract: `Scorer.score(rollout: Rollout) -> Scores`.

A `Rollout` is what a policy generated for a batch of n rows: the texts every scorer reads, the
response-only token ids (as verl keeps them, `[n, response_length]`) for scorers that can use
them, whether each completion *stopped* on an end id or was *cut* at the token limit, the RL
step, and the dataset row's columns. `Scores` carries the values, which rows were really scored
(`valid`) and per-row extras (a judge's reasons): validity and step travel in these two
dataclasses, never as attributes set before a call or read back after it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np


class ScoringError(RuntimeError):
  """A scorer returned something unusable, or an external scorer did not answer."""


@dataclasses.dataclass(frozen=True)
class Rollout:
  """n generated completions and what they were generated from.

  prompts: n request texts as the scorers read them (the bare query: no GRPO prefix, no chat
    template; what the judge prompts and the RM training pairs contain).
  completions: n decoded completion texts (special tokens skipped).
  stopped: bool[n], True where the completion ended with an end id, False where it was cut at
    the token limit (an unfinished text: the reward model must not close it).
  step: the RL step being scored (None outside RL): the offline exchange names its files by it.
  columns: the dataset row's columns, each a length-n sequence (e.g. "query", "group" = the
    GRPO group index); a Python-callable scorer receives them as keyword arguments.
  prompt_ids / prompt_mask: int32/bool[n, P] the policy's left-padded prompt ids (optional).
  completion_ids / completion_mask: int32/bool[n, R] response-only ids, right-padded, the end id
    included where `stopped` (optional; device arrays in RL).
  token_space: identifies the tokenizer the ids belong to (`token_space_id`); a scorer with the
    same tokenizer may score the ids without decoding and re-encoding.
  """
  prompts: Sequence[str]
  completions: Sequence[str]
  stopped: np.ndarray
  step: int | None = None
  columns: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  prompt_ids: Any = None
  prompt_mask: Any = None
  completion_ids: Any = None
  completion_mask: Any = None
  token_space: str | None = None

  def __post_init__(self):
    n = len(self.completions)
    object.__setattr__(self, "stopped", np.asarray(self.stopped, bool).reshape(-1))
    if len(self.prompts) != n or self.stopped.shape != (n,):
      raise ValueError(f"Rollout: {len(self.prompts)} prompts, {n} completions and "
                       f"{self.stopped.shape[0]} stopped flags; they must be equal")
    for name, col in self.columns.items():
      if len(col) != n:
        raise ValueError(f"Rollout: column {name!r} has {len(col)} rows, expected {n}")
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
      arr = getattr(self, name)
      if arr is not None and (np.ndim(arr) != 2 or np.shape(arr)[0] != n):
        raise ValueError(f"Rollout.{name} has shape {np.shape(arr)}, expected [{n}, length]")

  @property
  def size(self) -> int:
    return len(self.completions)

  @classmethod
  def from_texts(cls, prompts: Sequence[str], completions: Sequence[str],
                 stopped: Sequence[bool] | None = None, **kwargs: Any) -> "Rollout":
    """Finished texts (evaluation, offline files): every completion stopped unless told."""
    if stopped is None:
      stopped = np.ones(len(completions), bool)
    return cls(list(prompts), list(completions), np.asarray(stopped, bool), **kwargs)


@dataclasses.dataclass(frozen=True)
class Scores:
  """values: f32[n], finite (a placeholder where not valid); valid: bool[n], False where the
  scorer gave no usable score (a failed judge call); extras: per-row arrays of length n (a
  judge's reasons and errors, the parts of a sum)."""
  values: np.ndarray
  valid: np.ndarray
  extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def size(self) -> int:
    return self.values.shape[0]


class Scorer(Protocol):
  """Anything with `score(rollout) -> Scores`; `name` labels it in errors and metrics."""
  name: str

  def score(self, rollout: Rollout) -> Scores:
    ...


def checked(name: str, values: Any, n: int, valid: Any = None,
            extras: Mapping[str, Any] | None = None) -> Scores:
  """Scores from raw outputs, or ScoringError naming the scorer: values must be n finite floats
  (a silent broadcast of a shorter list was a real TRL bug); valid None means all valid."""
  arr = np.asarray(values, dtype=np.float32)
  if arr.shape != (n,):
    raise ScoringError(f"scorer {name!r} returned shape {arr.shape} for a batch of {n}; it "
                       f"must return one float per completion")
  if not np.all(np.isfinite(arr)):
    bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
    raise ScoringError(f"scorer {name!r} returned non-finite values at indices {bad}")
  ok = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
  if ok.shape != (n,):
    raise ScoringError(f"scorer {name!r} returned a validity mask of shape {ok.shape} for a "
                       f"batch of {n}")
  out_extras = {}
  for key, value in (extras or {}).items():
    col = np.asarray(value) if not isinstance(value, list) else _object_array(value)
    if col.shape[:1] != (n,):
      raise ScoringError(f"scorer {name!r}: extra {key!r} has {col.shape[:1]} rows, expected {n}")
    out_extras[key] = col
  return Scores(arr, ok, out_extras)


def _object_array(items: list) -> np.ndarray:
  out = np.empty(len(items), dtype=object)
  out[:] = items
  return out


def require_scores(name: str, scores: Any, n: int) -> Scores:
  """The Scores a scorer returned, checked against the batch size (ScoringError otherwise)."""
  if not isinstance(scores, Scores):
    raise ScoringError(f"scorer {name!r} returned {type(scores).__name__}, not Scores")
  return checked(name, scores.values, n, scores.valid, scores.extras)


class CallableScorer:
  """A plain Python reward `fn(prompts, completions, **columns) -> n floats` (TRL style): the
  rollout's dataset columns (and `stopped`) are passed as keyword arguments when `fn` accepts
  them (a `**kwargs` parameter, or parameters of those names)."""

  def __init__(self, fn: Callable[..., Sequence[float]], name: str | None = None):
    self.fn = fn
    self.name = name or getattr(fn, "__name__", "callable")

  def _kwargs(self, rollout: Rollout) -> dict[str, Any]:
    available = {**{k: list(v) for k, v in rollout.columns.items()},
                 "stopped": rollout.stopped.tolist()}
    try:
      params = inspect.signature(self.fn).parameters.values()
    except (TypeError, ValueError):
      return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
      return available
    names = {p.name for p in params}
    return {k: v for k, v in available.items() if k in names}

  def score(self, rollout: Rollout) -> Scores:
    out = self.fn(list(rollout.prompts), list(rollout.completions), **self._kwargs(rollout))
    return checked(self.name, out, rollout.size)


class LengthScorer:
  """The length baseline: len(completion) in characters."""

  def __init__(self, name: str = "length"):
    self.name = name

  def score(self, rollout: Rollout) -> Scores:
    return checked(self.name, [len(c) for c in rollout.completions], rollout.size)


class WeightedSum:
  """sum_i w_i * scorer_i. A row is valid only if every part marked it valid (an unscored part
  leaves no reward to train on); its value is then the weighted sum of the parts' placeholders.
  Extras: each part's values as `"<name>"` and its validity as `"<name>_valid"`, plus the parts'
  own extras as `"<name>.<key>"`."""

  def __init__(self, parts: Sequence[tuple[Scorer, float]], name: str = "reward"):
    if not parts:
      raise ValueError("WeightedSum needs at least one (scorer, weight)")
    names = [s.name for s, _ in parts]
    if len(set(names)) != len(names):
      raise ValueError(f"WeightedSum: scorer names {names} must be distinct")
    self.parts, self.name = list(parts), name

  def score(self, rollout: Rollout) -> Scores:
    n = rollout.size
    total, valid, extras = np.zeros(n, np.float32), np.ones(n, bool), {}
    for scorer, weight in self.parts:
      part = require_scores(scorer.name, scorer.score(rollout), n)
      total += np.float32(weight) * part.values
      valid &= part.valid
      extras[scorer.name], extras[f"{scorer.name}_valid"] = part.values, part.valid
      extras.update({f"{scorer.name}.{k}": v for k, v in part.extras.items()})
    return Scores(total, valid, extras)


class OnMainProcess:
  """A host-side scorer (LLM judge, curator, offline job, Python callable) asked by process 0
  alone in a multi-host run; every process gets process 0's values and validity (extras stay on
  process 0). One judge call per item, not one per host, and all hosts train on the same rewards
  even when the judge samples. Scorers that run on the devices (the reward model) must not be
  wrapped: every process takes part in their forward pass. An error on process 0 is raised on
  every process (no hang)."""

  def __init__(self, scorer: Scorer):
    self.scorer, self.name = scorer, scorer.name

  def score(self, rollout: Rollout) -> Scores:
    from rlaif_jax.sharding import host  # Local: jax only where a trainer runs.
    n = rollout.size
    values, valid, extras, error = np.zeros(n, np.float32), np.ones(n, bool), {}, None
    if host.is_main():
      try:
        got = require_scores(self.name, self.scorer.score(rollout), n)
        values, valid, extras = got.values, got.valid, dict(got.extras)
      except Exception as e:  # re-raised below, after the other processes heard of it
        if not host.is_multiprocess():
          raise
        error = e
    failed, values, valid = host.broadcast((np.asarray(error is not None), values, valid))
    if error is not None:
      raise error
    if failed:
      raise ScoringError(f"scorer {self.name!r} failed on process 0 (see its log)")
    return Scores(np.asarray(values, np.float32), np.asarray(valid, bool), extras)


def token_space_id(tok: Any) -> str:
  """A fingerprint of a tokenizer's id -> text map and special ids: two tokenizers with equal
  fingerprints give the same ids the same meaning (so a scorer may reuse the policy's ids)."""
  h = hashlib.sha256()
  h.update(repr((tok.vocab_size, tok.eos_id, tok.pad_id, tok.bos_id, tok.eot_id,
                 tuple(tok.stop_ids))).encode())
  for i in range(tok.vocab_size):
    h.update(tok.decode([i], skip_special_tokens=False).encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
  return h.hexdigest()[:16]
