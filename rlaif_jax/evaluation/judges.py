"""Judges for evaluation: one interface over the reward model, the LLM judge, the multi-agent
curator and the length rule, and `make_judges`, which builds them from a spec string.

Every judge maps (query, response) pairs to binary verdicts (1 = excellent greeting) with a
validity mask: an LLM reply that could not be parsed (after the judge's retries) or a failed
request is *invalid*, excluded from rates and counted, never silently turned into a 0.

Judge spec (`--judges`): a comma-separated list of entries

    [NAME=]KIND[:TARGET][?KEY=VALUE&KEY=VALUE...]

  KIND     TARGET                         options
  rm       reward-model run directory     threshold=FLOAT (default: calibrated), debias=BOOL,
                                          batch_size=INT
  llm      BACKEND@BASE_URL#MODEL         principles=NAME|PATH (v0), template=NAME (detector),
                                          max_attempts=INT, temperature=FLOAT, max_tokens=INT,
                                          concurrency=INT, timeout_s=FLOAT, api_key_env=NAME,
                                          constrained_json=BOOL (false: see below)
  curator  BACKEND@BASE_URL#MODEL         num_examples=INT (3, retrieved from the labelled set),
                                          max_attempts, temperature, max_tokens, concurrency,
                                          timeout_s, api_key_env, constrained_json
  length   (none)                         threshold=INT (default: fitted)

BACKEND is `openai` (any OpenAI-compatible server: vLLM, SGLang, OpenAI). constrained_json=true:
the server implements `response_format` json_schema; the verdict schemas are then requested.
NAME (letters, digits, `_`, `.`, `-`) labels the judge in reports; by default `rm_<run dir name>`, `llm_<model>`,
`curator_<model>`, `length`. Paths and URLs may not contain `,` or `?`; quote the whole spec in
a shell (`#`, `?`, `&`). Example:

    rm:/runs/rm,qwen=llm:openai@http://127.0.0.1:8000/v1#Qwen2.5-72B?principles=v1,length

`make_judges` appends the length baseline (`length`, calibrated) when the spec has no `length`
entry and the labelled evaluation set is given, so every evaluation shows it beside the other
judges; `make_judges(..., length_baseline=False)` leaves it out.

Calibration: `rm` without `threshold` predicts 1 iff score >= the threshold that maximises
accuracy on the labelled evaluation set; `length` without `threshold` predicts 1 iff
len(response) >= the best such length (`agreement.best_length_threshold_baseline`). That
threshold, fitted on all labelled items, decides the excellence rates. The reliability table
(`harness.judge_reliability`) does not score a fitted threshold on the items it was fitted on: it
cross-fits (`fit_threshold` on the other folds, verdicts on the held-out fold), so its figures
are out-of-fold.
"""
from __future__ import annotations

import abc
import dataclasses
import math
import os
import re
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from rlaif_jax.data.greetings import LabeledResponse
from rlaif_jax.metrics import agreement
from rlaif_jax.judging import backends
from rlaif_jax.judging.curator import MultiAgentCurator
from rlaif_jax.judging.judge import PrincipleJudge
from rlaif_jax.judging.retrieval import ExampleRetriever

INVALID = -1  # label stored for items without a valid verdict


class JudgeSpecError(ValueError):
  """A --judges spec string (or one of its entries) is malformed."""


class Scorer(Protocol):
  """The reward-source interface: `score(queries, responses) -> f32[n]`."""

  def score(self, queries: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    ...


@dataclasses.dataclass
class Judgement:
  """Verdicts of one judge on n items.

  labels: int64[n], 1 = excellent, 0 = not, INVALID (-1) where `valid` is False.
  valid: bool[n], False where the judge gave no usable verdict.
  scores: float64[n], the judge's continuous score (reward, length) or the label; NaN if invalid.
  details: n JSON-ready dicts (reason, error, ...).
  """
  labels: np.ndarray
  valid: np.ndarray
  scores: np.ndarray
  details: list[dict[str, Any]]

  def __post_init__(self):
    n = len(self.details)
    for field in ("labels", "valid", "scores"):
      shape = np.shape(getattr(self, field))
      if shape != (n,):
        raise ValueError(f"Judgement.{field} has shape {shape}, expected ({n},)")

  @property
  def n_invalid(self) -> int:
    return int((~self.valid).sum())


class EvalJudge(abc.ABC):
  """A judge used in evaluation. `name` labels it in reports (and in file names)."""

  name: str
  kind: str

  @property
  def needs_calibration(self) -> bool:
    """True when `calibrate` must run before `judge` (a threshold was not given)."""
    return False

  @property
  def threshold(self) -> float | None:
    """The decision threshold of a thresholded judge, None for the others."""
    return None

  @property
  def threshold_fitted(self) -> bool:
    """True when the threshold was fitted on labelled items by `calibrate` (not given)."""
    return False

  def calibrate(self, queries: Sequence[str], responses: Sequence[str],
                labels: Sequence[int]) -> None:
    """Fits the judge's free parameters on labelled items (no-op for LLM judges)."""
    del queries, responses, labels

  def fit_threshold(self, scores: Sequence[float], labels: Sequence[int]) -> float:
    """The threshold `calibrate` would fit from these judge scores (`Judgement.scores`) and
    human labels, without changing the judge: what cross-fitting refits on each fold."""
    raise NotImplementedError(f"judge {self.name!r} ({self.kind}) has no threshold to fit")

  @property
  def signature(self) -> str:
    """What decides the verdicts; saved with each judgement so a resumed run can detect a
    changed judge."""
    t = self.threshold
    return self.kind if t is None else f"{self.kind} threshold={t!r}"

  @abc.abstractmethod
  def judge(self, queries: Sequence[str], responses: Sequence[str]) -> Judgement:
    """Verdicts on the pairs (queries[i], responses[i])."""


def _check_pairs(name: str, queries: Sequence[str], responses: Sequence[str]) -> None:
  if len(queries) != len(responses):
    raise ValueError(f"judge {name!r}: {len(queries)} queries but {len(responses)} responses")


def best_score_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
  """The t for which "predict 1 iff score >= t" is most accurate on these items.

  Candidates are the smallest score (all 1), the midpoints between consecutive distinct scores
  and +inf (all 0); ties go to the smallest t.

  Args:
    scores: f[n] finite scores. labels: int[n] 0/1 human labels.
  """
  s = np.asarray(scores, dtype=np.float64).reshape(-1)
  y = np.asarray(labels).reshape(-1)
  if s.shape != y.shape or s.size == 0:
    raise ValueError(f"best_score_threshold: need equal, non-empty scores and labels, got "
                     f"{s.size} and {y.size}")
  if not np.isfinite(s).all():
    raise ValueError("best_score_threshold: scores must be finite")
  distinct = np.unique(s)
  candidates = np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2, [np.inf]])
  pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
  tp = pos.size - np.searchsorted(pos, candidates, side="left")
  tn = np.searchsorted(neg, candidates, side="left")
  return float(candidates[int(np.argmax(tp + tn))])


def _thresholded(scores: np.ndarray, threshold: float,
                 details: list[dict[str, Any]] | None = None) -> Judgement:
  scores = np.asarray(scores, dtype=np.float64)
  valid = np.isfinite(scores)
  labels = np.where(valid, (scores >= threshold).astype(np.int64), INVALID)
  if details is None:
    details = [{} if ok else {"error": "non-finite score"} for ok in valid]
  return Judgement(labels, valid, np.where(valid, scores, np.nan), details)


class RewardModelJudge(EvalJudge):
  """Reward-model scores thresholded into verdicts: 1 iff score >= threshold."""

  kind = "rm"

  def __init__(self, scorer: Scorer, threshold: float | None = None, name: str = "rm"):
    self.scorer, self.name, self._threshold = scorer, name, threshold
    self._fitted = False

  @property
  def needs_calibration(self) -> bool:
    return self._threshold is None

  @property
  def threshold(self) -> float | None:
    return self._threshold

  @property
  def threshold_fitted(self) -> bool:
    return self._fitted

  def fit_threshold(self, scores: Sequence[float], labels: Sequence[int]) -> float:
    return best_score_threshold(scores, labels)

  def scores(self, queries: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """f64[n] reward-model scores; raises when the scorer returns the wrong shape."""
    _check_pairs(self.name, queries, responses)
    scores = np.asarray(self.scorer.score(list(queries), list(responses)), dtype=np.float64)
    if scores.shape != (len(responses),):
      raise RuntimeError(f"judge {self.name!r}: scorer returned shape {scores.shape} for "
                         f"{len(responses)} responses")
    return scores

  def calibrate(self, queries: Sequence[str], responses: Sequence[str],
                labels: Sequence[int]) -> None:
    scores = self.scores(queries, responses)
    keep = np.isfinite(scores)
    self._threshold = self.fit_threshold(scores[keep], np.asarray(labels)[keep])
    self._fitted = True

  def judge(self, queries: Sequence[str], responses: Sequence[str]) -> Judgement:
    if self._threshold is None:
      raise RuntimeError(f"judge {self.name!r} has no threshold: give one or calibrate it")
    return _thresholded(self.scores(queries, responses), self._threshold)


class LengthJudge(EvalJudge):
  """The length baseline as a judge: 1 iff len(response) >= threshold characters."""

  kind = "length"

  def __init__(self, threshold: int | None = None, name: str = "length"):
    self.name, self._threshold = name, threshold
    self._fitted = False

  @property
  def needs_calibration(self) -> bool:
    return self._threshold is None

  @property
  def threshold(self) -> float | None:
    return self._threshold

  @property
  def threshold_fitted(self) -> bool:
    return self._fitted

  def fit_threshold(self, scores: Sequence[float], labels: Sequence[int]) -> int:
    return int(agreement.best_length_threshold_baseline(
        np.asarray(scores, np.float64).astype(np.int64), labels)["threshold"])

  def calibrate(self, queries: Sequence[str], responses: Sequence[str],
                labels: Sequence[int]) -> None:
    _check_pairs(self.name, queries, responses)
    self._threshold = self.fit_threshold([len(r) for r in responses], labels)
    self._fitted = True

  def judge(self, queries: Sequence[str], responses: Sequence[str]) -> Judgement:
    _check_pairs(self.name, queries, responses)
    if self._threshold is None:
      raise RuntimeError(f"judge {self.name!r} has no threshold: give one or calibrate it")
    return _thresholded(np.array([len(r) for r in responses], np.float64), self._threshold)


def _binary_judgement(labels: list[int | None], details: list[dict[str, Any]]) -> Judgement:
  valid = np.array([v in (0, 1) for v in labels], dtype=bool)
  arr = np.array([v if v in (0, 1) else INVALID for v in labels], dtype=np.int64)
  return Judgement(arr, valid, np.where(valid, arr.astype(np.float64), np.nan), details)


class LLMJudge(EvalJudge):
  """The principle-guided LLM judge (path B): Good -> 1, Bad -> 0, unparseable -> invalid."""

  kind = "llm"

  def __init__(self, judge: PrincipleJudge, name: str = "llm"):
    self._judge, self.name = judge, name

  @property
  def signature(self) -> str:
    return f"llm {self._judge.fingerprint}"

  def judge(self, queries: Sequence[str], responses: Sequence[str]) -> Judgement:
    _check_pairs(self.name, queries, responses)
    verdicts = self._judge.judge_sync(list(queries), list(responses))
    details = [{"reason": v.reason} if v.error is None else {"error": v.error} for v in verdicts]
    return _binary_judgement([v.verdict for v in verdicts], details)


class CuratorJudge(EvalJudge):
  """The multi-agent curator (Retrieval -> Positive/Negative -> Judge -> Reflect); the Reflect
  agent's label is the verdict, a failed agent chain makes the item invalid."""

  kind = "curator"

  def __init__(self, curator: MultiAgentCurator, name: str = "curator"):
    self.curator, self.name = curator, name

  @property
  def signature(self) -> str:
    return f"curator settings={self.curator.fingerprint}"

  def judge(self, queries: Sequence[str], responses: Sequence[str]) -> Judgement:
    _check_pairs(self.name, queries, responses)
    records = [{"query": q, "response": r} for q, r in zip(queries, responses)]

    async def run() -> list[dict[str, Any]]:
      try:
        return await self.curator.curate(records)
      finally:
        await self.curator.judge.backend.aclose()

    outs = backends.run_sync(run())
    details = []
    for o in outs:
      if o.get("error") is not None:
        details.append({"error": o["error"]})
      else:
        details.append({"reason": (o.get("reflect") or {}).get("reason", ""),
                        "overturned": o.get("overturned")})
    return _binary_judgement([o.get("label") for o in outs], details)


# ---------------------------------------------------------------------------------------------
# Spec parsing.

_ENTRY = re.compile(r"^(?:(?P<name>[A-Za-z0-9_.\-]+)=)?(?P<kind>[a-z]+)"
                    r"(?::(?P<target>[^?]*))?(?:\?(?P<options>.*))?$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def _bool(value: str) -> bool:
  table = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
  if value.lower() not in table:
    raise ValueError(value)
  return table[value.lower()]


_TYPE_NAMES = {int: "integer", float: "number", str: "string", _bool: "boolean (true/false)"}
_BACKEND_OPTIONS = {"max_attempts": int, "temperature": float, "max_tokens": int,
                    "concurrency": int, "timeout_s": float, "api_key_env": str}
OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "rm": {"threshold": float, "debias": _bool, "batch_size": int},
    "llm": {"principles": str, "template": str, "constrained_json": _bool, **_BACKEND_OPTIONS},
    "curator": {"num_examples": int, "retriever": str, "retrieval_model": str,
                "constrained_json": _bool, **_BACKEND_OPTIONS},
    "length": {"threshold": int},
}
NEEDS_TARGET = {"rm": "a reward-model run directory", "llm": "BACKEND@BASE_URL#MODEL",
                "curator": "BACKEND@BASE_URL#MODEL"}


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
  """One parsed entry of a judge spec; `where` names it in error messages."""
  name: str
  kind: str
  target: str
  options: dict[str, Any]
  where: str


def _parse_options(text: str | None, kind: str, where: str) -> dict[str, Any]:
  options: dict[str, Any] = {}
  for item in (text or "").split("&"):
    if not item:
      continue
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise JudgeSpecError(f"{where}: option {item!r} must be KEY=VALUE")
    if key not in OPTIONS[kind]:
      raise JudgeSpecError(f"{where}: unknown option {key!r} for {kind}; known: "
                           f"{sorted(OPTIONS[kind])}")
    try:
      options[key] = OPTIONS[kind][key](value)
    except ValueError:
      raise JudgeSpecError(f"{where}: option {key}={value!r} is not a valid "
                           f"{_TYPE_NAMES[OPTIONS[kind][key]]}") from None
    if isinstance(options[key], float) and not math.isfinite(options[key]):
      raise JudgeSpecError(f"{where}: option {key}={value!r} must be finite")
  return options


def parse_endpoint(target: str, where: str) -> tuple[str, str, str]:
  """`BACKEND@BASE_URL#MODEL` -> (backend, base_url, model)."""
  backend, at, rest = target.partition("@")
  url, hash_, model = rest.rpartition("#")
  if not at or not hash_ or not backend or not url or not model:
    raise JudgeSpecError(f"{where}: target {target!r} must be BACKEND@BASE_URL#MODEL, e.g. "
                         "openai@http://127.0.0.1:8000/v1#Qwen2.5-72B-Instruct")
  if backend != "openai":
    raise JudgeSpecError(f"{where}: unknown backend {backend!r}; supported: openai")
  return backend, url, model


def _default_name(kind: str, target: str, where: str) -> str:
  if kind == "rm":
    base = os.path.basename(os.path.normpath(target))
  elif kind in ("llm", "curator"):
    base = parse_endpoint(target, where)[2]
  else:
    return kind
  return f"{kind}_{_NAME_CHARS.sub('_', base).strip('_') or kind}"


def parse_judge_specs(spec: str) -> list[JudgeSpec]:
  """Parses a comma-separated judge spec (module docstring); raises JudgeSpecError."""
  entries = [e.strip() for e in spec.split(",")]
  if not spec.strip() or any(not e for e in entries):
    raise JudgeSpecError(f"judge spec {spec!r} has an empty entry; expected e.g. "
                         "'rm:/runs/rm,llm:openai@http://127.0.0.1:8000/v1#MODEL,length'")
  parsed, names = [], {}
  for i, entry in enumerate(entries):
    where = f"judge entry {i + 1} {entry!r}"
    m = _ENTRY.match(entry)
    if m is None or m["kind"] not in OPTIONS:
      raise JudgeSpecError(f"{where}: expected [NAME=]KIND[:TARGET][?OPTIONS] with KIND one "
                           f"of {sorted(OPTIONS)}")
    kind, target = m["kind"], m["target"] or ""
    if kind in NEEDS_TARGET and not target:
      raise JudgeSpecError(f"{where}: {kind} needs :TARGET ({NEEDS_TARGET[kind]})")
    if kind not in NEEDS_TARGET and target:
      raise JudgeSpecError(f"{where}: {kind} takes no target, got {target!r}")
    if kind in ("llm", "curator"):
      parse_endpoint(target, where)
    name = m["name"] or _default_name(kind, target, where)
    if name in names:
      raise JudgeSpecError(f"{where}: judge name {name!r} is already used by entry "
                           f"{names[name]}; prefix one entry with NAME=")
    names[name] = i + 1
    parsed.append(JudgeSpec(name, kind, target, _parse_options(m["options"], kind, where), where))
  return parsed


# ---------------------------------------------------------------------------------------------
# Construction.


def _backend(spec: JudgeSpec) -> backends.LLMBackend:
  backend, url, model = parse_endpoint(spec.target, spec.where)
  keys = ("concurrency", "timeout_s", "api_key_env")
  # constrained_json: the server implements response_format json_schema; the agents' verdict
  # schemas (judging/parsing.py) are then sent with their requests.
  return backends.make_backend(backend, base_url=url, model=model,
                               structured_output=spec.options.get("constrained_json", False),
                               **{k: spec.options[k] for k in keys if k in spec.options})


def _sampling(spec: JudgeSpec, default_max_tokens: int) -> backends.SamplingParams:
  return backends.SamplingParams(temperature=spec.options.get("temperature", 0.0),
                                 max_tokens=spec.options.get("max_tokens", default_max_tokens))


def _build(spec: JudgeSpec, labelled: Sequence[LabeledResponse] | None, mesh: Any,
           retrieval_examples: Sequence[dict[str, Any]] | None = None) -> EvalJudge:
  o = spec.options
  if spec.kind == "length":
    return LengthJudge(o.get("threshold"), name=spec.name)
  if spec.kind == "rm":
    from rlaif_jax.training.reward_model import load_reward_model  # Local: pulls in training.
    if not os.path.isdir(spec.target):
      raise JudgeSpecError(f"{spec.where}: reward-model run directory {spec.target!r} does not "
                           "exist")
    scorer = load_reward_model(spec.target, mesh=mesh, batch_size=o.get("batch_size", 32),
                               debias=o.get("debias", False))
    return RewardModelJudge(scorer, o.get("threshold"), name=spec.name)
  attempts = o.get("max_attempts", 3)
  if spec.kind == "llm":
    judge = PrincipleJudge(_backend(spec), o.get("principles", "v0"),
                           template=o.get("template", "detector"),
                           sampling=_sampling(spec, 512), max_attempts=attempts)
    return LLMJudge(judge, name=spec.name)
  num_examples = o.get("num_examples", 3)
  retriever = None
  pool = (retrieval_examples if retrieval_examples is not None
          else [dataclasses.asdict(r) for r in labelled or ()])
  if pool and num_examples > 0:
    try:
      retriever = ExampleRetriever(pool, backend=o.get("retriever", "bm25"),
                                   model=o.get("retrieval_model"))
    except (ValueError, ImportError) as e:
      raise JudgeSpecError(f"{spec.where}: {e}") from e
  curator = MultiAgentCurator(_backend(spec), retriever, num_examples=num_examples,
                              sampling=_sampling(spec, 1024), max_attempts=attempts)
  return CuratorJudge(curator, name=spec.name)


def make_judges(spec: str, labelled: Sequence[LabeledResponse] | None = None, *,
                mesh: Any = None, length_baseline: bool = True,
                retrieval_examples: Sequence[dict[str, Any]] | None = None) -> list[EvalJudge]:
  """Builds (and calibrates) the judges of a spec string (module docstring).

  Args:
    spec: e.g. "rm:/runs/rm,llm:openai@http://127.0.0.1:8000/v1#m,length".
    labelled: the human-labelled evaluation set; calibrates thresholds not given in the spec
      and is the curator's retrieval pool unless ``retrieval_examples`` is given. Required
      when a threshold must be calibrated.
    mesh: device mesh for reward models (default: all devices on the fsdp axis).
    length_baseline: when the spec has no `length` entry, append the length baseline judge
      (threshold calibrated on `labelled`, named `length`, or `length_rule` if that name is
      taken), so every evaluation shows it beside the other judges. Needs `labelled`; without
      it nothing is appended (give `length?threshold=N` in the spec instead).
  Raises:
    JudgeSpecError: malformed spec, or calibration needed without `labelled`.
  """
  specs = parse_judge_specs(spec)
  if length_baseline and labelled and not any(s.kind == "length" for s in specs):
    taken = {s.name for s in specs}
    name, k = "length", 1
    while name in taken:
      name, k = f"length_rule{'' if k == 1 else k}", k + 1
    specs.append(JudgeSpec(name, "length", "", {}, f"the added length baseline {name!r}"))
  uncalibrated = [s for s in specs if s.kind in ("rm", "length") and "threshold" not in s.options]
  if uncalibrated and not labelled:
    raise JudgeSpecError(f"{uncalibrated[0].where}: needs ?threshold=... or the labelled "
                         "evaluation set to calibrate it (pass --data_dir)")
  judges = [_build(s, labelled, mesh, retrieval_examples) for s in specs]
  for j in judges:
    if j.needs_calibration:
      j.calibrate([r.query for r in labelled], [r.response for r in labelled],
                  [r.label for r in labelled])
  return judges
