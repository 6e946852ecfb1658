"""Judges for evaluation: a `scoring.Scorer` (the reward model, the LLM judge, the multi-agent
curator, the length rule) plus a threshold, and `make_judges`, which builds them from the typed
scorer configs (`scoring.config`) or the `--judges` shorthand that parses into them.

Every judge maps (query, response) pairs to binary verdicts (1 = excellent greeting) with a
validity mask: an LLM reply that could not be parsed (after the judge's retries) or a failed
request is *invalid*, excluded from rates and counted, never silently turned into a 0.

Judge shorthand (`--judges`, `scoring.config.parse_judge_specs`): a comma-separated list of

    [NAME=]KIND[:TARGET][?KEY=VALUE&KEY=VALUE...]

  KIND     TARGET                         options (any field of the kind's config dataclass)
  rm       reward-model run directory     threshold=FLOAT (default: calibrated), debias=BOOL,
                                          batch_size=INT
  llm      BACKEND@BASE_URL#MODEL         principles=NAME|PATH (v0), template=NAME (detector),
                                          max_attempts=INT, temperature=FLOAT, max_tokens=INT,
                                          concurrency=INT, timeout_s=FLOAT, api_key_env=NAME
  curator  BACKEND@BASE_URL#MODEL         num_examples=INT (3, retrieved from the labelled set),
                                          retriever, retrieval_model, and the llm backend options
  length   (none)                         threshold=INT (default: fitted)

BACKEND is `openai` (any OpenAI-compatible server: vLLM, SGLang, OpenAI). NAME (letters, digits,
`_`, `.`, `-`) labels the judge in reports; by default `rm_<run dir name>`, `llm_<model>`,
`curator_<model>`, `length`. Paths and URLs may not contain `,` or `?`; quote the whole spec in
a shell (`#`, `?`, `&`). Example:

    rm:/runs/rm,qwen=llm:openai@http://127.0.0.1:8000/v1#Qwen2.5-72B?principles=v1,length

The same judges as typed configs: `make_judges([RewardModelConfig(name="rm", workdir="/runs/rm"),
LLMJudgeConfig(name="qwen", base_url=..., model="Qwen2.5-72B", principles="v1")], labelled)`,
or scorer blocks such as the RL config's `reward.scorers.judge`.

`make_judges` appends the length baseline (`length`, calibrated) when the judges have no
`length` entry and the labelled evaluation set is given, so every evaluation shows it beside the
other judges; `make_judges(..., length_baseline=False)` leaves it out.

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
from typing import Any, Sequence

import numpy as np

from rlaif_jax.data.greetings import LabeledResponse
from rlaif_jax.evaluation import agreement
from rlaif_jax.judging.curator import MultiAgentCurator
from rlaif_jax.judging.judge import PrincipleJudge
from rlaif_jax.judging.reward import CuratorScorer, JudgeScorer
from rlaif_jax.judging.scorers import build_scorer
from rlaif_jax.scoring import config as cfg_lib
from rlaif_jax.scoring.contract import LengthScorer, Rollout, Scorer, Scores, require_scores

INVALID = -1  # label stored for items without a valid verdict
# The --judges shorthand lives with the typed configs it parses into; named here for callers.
JudgeSpecError = cfg_lib.JudgeSpecError
parse_judge_specs = cfg_lib.parse_judge_specs
parse_endpoint = cfg_lib.parse_endpoint


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



def scores_of(scorer: Scorer, queries: Sequence[str], responses: Sequence[str],
              name: str) -> Scores:
  """The scorer's Scores on finished (query, response) texts, checked against the batch."""
  _check_pairs(name, queries, responses)
  return require_scores(name, scorer.score(Rollout.from_texts(queries, responses)),
                        len(responses))


def _errors(got: Scores) -> list[str]:
  errors = got.extras.get("error")
  return [str(errors[i]) if errors is not None and errors[i] else "not scored"
          for i in range(got.size)]


class ThresholdJudge(EvalJudge):
  """A scorer's value thresholded into verdicts: 1 iff value >= threshold (given, or fitted on
  labelled items by `calibrate`). Rows the scorer did not score are invalid."""

  def __init__(self, scorer: Scorer, kind: str, threshold: float | None = None,
               name: str | None = None):
    self.scorer, self.kind, self._threshold = scorer, kind, threshold
    self.name = name or scorer.name
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
    """f64[n] scorer values, NaN where not valid."""
    got = scores_of(self.scorer, queries, responses, self.name)
    return np.where(got.valid, got.values.astype(np.float64), np.nan)

  def calibrate(self, queries: Sequence[str], responses: Sequence[str],
                labels: Sequence[int]) -> None:
    scores = self.scores(queries, responses)
    keep = np.isfinite(scores)
    self._threshold = self.fit_threshold(scores[keep], np.asarray(labels)[keep])
    self._fitted = True

  def judge(self, queries: Sequence[str], responses: Sequence[str]) -> Judgement:
    if self._threshold is None:
      raise RuntimeError(f"judge {self.name!r} has no threshold: give one or calibrate it")
    got = scores_of(self.scorer, queries, responses, self.name)
    scores = np.where(got.valid, got.values.astype(np.float64), np.nan)
    labels = np.where(got.valid, (scores >= self._threshold).astype(np.int64), INVALID)
    details = [{} if ok else {"error": e} for ok, e in zip(got.valid, _errors(got))]
    return Judgement(labels, got.valid.copy(), scores, details)


class RewardModelJudge(ThresholdJudge):
  """Reward-model scores thresholded into verdicts: 1 iff score >= threshold."""

  def __init__(self, scorer: Scorer, threshold: float | None = None, name: str = "rm"):
    super().__init__(scorer, "rm", threshold, name)


class LengthJudge(ThresholdJudge):
  """The length baseline as a judge: 1 iff len(response) >= threshold characters."""

  def __init__(self, threshold: int | None = None, name: str = "length"):
    super().__init__(LengthScorer(name), "length", threshold, name)

  def fit_threshold(self, scores: Sequence[float], labels: Sequence[int]) -> int:
    return int(agreement.best_length_threshold_baseline(
        np.asarray(scores, np.float64).astype(np.int64), labels)["threshold"])


class VerdictJudge(EvalJudge):
  """A scorer whose value is already the verdict (1/0): the LLM judge, the curator."""

  def __init__(self, scorer: Scorer, kind: str, name: str | None = None):
    self.scorer, self.kind, self.name = scorer, kind, name or scorer.name

  @property
  def signature(self) -> str:
    return getattr(self.scorer, "signature", self.kind)

  def judge(self, queries: Sequence[str], responses: Sequence[str]) -> Judgement:
    got = scores_of(self.scorer, queries, responses, self.name)
    valid = got.valid & np.isin(got.values, (0.0, 1.0))
    labels = np.where(valid, got.values.astype(np.int64), INVALID)
    reasons, overturned = got.extras.get("reason"), got.extras.get("overturned")
    details = []
    for i, error in enumerate(_errors(got)):
      if not valid[i]:
        details.append({"error": error})
        continue
      d = {"reason": str(reasons[i]) if reasons is not None else ""}
      if overturned is not None:
        d["overturned"] = bool(overturned[i])
      details.append(d)
    return Judgement(labels, valid, np.where(valid, labels.astype(np.float64), np.nan), details)


class LLMJudge(VerdictJudge):
  """The principle-guided LLM judge (path B): Good -> 1, Bad -> 0, unparseable -> invalid."""

  def __init__(self, judge: PrincipleJudge | JudgeScorer, name: str = "llm"):
    if isinstance(judge, PrincipleJudge):
      judge = JudgeScorer(judge, name=name, keep_loop=False)
    super().__init__(judge, "llm", name)


class CuratorJudge(VerdictJudge):
  """The multi-agent curator; the Reflect agent's label is the verdict, a failed agent chain
  makes the item invalid."""

  def __init__(self, curator: MultiAgentCurator | CuratorScorer, name: str = "curator"):
    if isinstance(curator, MultiAgentCurator):
      curator = CuratorScorer(curator, name=name)
    super().__init__(curator, "curator", name)


def judge_from_config(c: cfg_lib.ScorerConfig, *, mesh: Any = None,
                      retrieval_pool: Sequence[dict[str, Any]] | None = None) -> EvalJudge:
  """The evaluation judge of a scorer config: thresholded (rm, length) or a verdict (llm,
  curator); other kinds are refused."""
  if c.kind not in cfg_lib.JUDGE_KINDS:
    raise JudgeSpecError(f"{c.where}: kind {c.kind!r} cannot judge an evaluation; one of "
                         f"{list(cfg_lib.JUDGE_KINDS)}")
  if c.weight != 1.0 or getattr(c, "config", None) is not None:
    raise JudgeSpecError(f"{c.where}: weight and config (train the RM first) are RL reward "
                         "settings; an evaluation judge takes neither")
  if c.kind == "length":
    return LengthJudge(c.threshold, name=c.name)
  try:
    scorer = build_scorer(c, mesh=mesh, retrieval_pool=retrieval_pool, keep_loop=False)
  except cfg_lib.ScorerConfigError as e:
    if isinstance(e, JudgeSpecError):
      raise
    raise JudgeSpecError(str(e)) from e
  if c.kind == "rm":
    return RewardModelJudge(scorer, c.threshold, name=c.name)
  return VerdictJudge(scorer, c.kind, c.name)


def make_judges(spec: str | Sequence[Any], labelled: Sequence[LabeledResponse] | None = None,
                *, mesh: Any = None, length_baseline: bool = True,
                retrieval_examples: Sequence[dict[str, Any]] | None = None) -> list[EvalJudge]:
  """Builds (and calibrates) evaluation judges.

  Args:
    spec: the shorthand string (module docstring), e.g. "rm:/runs/rm,llm:openai@URL#m,length",
      or scorer configs (`scoring.config` dataclasses, or blocks with `kind`, such as the RL
      config's `reward.scorers.judge`).
    labelled: the human-labelled evaluation set; calibrates thresholds not given and is the
      curator's retrieval pool unless ``retrieval_examples`` is given. Required when a
      threshold must be calibrated.
    mesh: device mesh for reward models (default: all devices on the fsdp axis).
    length_baseline: when there is no `length` judge, append the length baseline judge
      (threshold calibrated on `labelled`, named `length`, or `length_rule` if that name is
      taken), so every evaluation shows it beside the other judges. Needs `labelled`; without
      it nothing is appended (give `length?threshold=N` instead).
  Raises:
    JudgeSpecError / ScorerConfigError: malformed judges, or calibration needed without
      `labelled`.
  """
  configs = cfg_lib.judge_configs(spec)
  if length_baseline and labelled and not any(c.kind == "length" for c in configs):
    taken = {c.name for c in configs}
    name, k = "length", 1
    while name in taken:
      name, k = f"length_rule{'' if k == 1 else k}", k + 1
    configs.append(cfg_lib.LengthConfig(name=name, where=f"the added length baseline {name!r}"))
  uncalibrated = [c for c in configs if c.kind in ("rm", "length") and c.threshold is None]
  if uncalibrated and not labelled:
    raise JudgeSpecError(f"{uncalibrated[0].where}: needs ?threshold=... or the labelled "
                         "evaluation set to calibrate it (pass --data_dir)")
  pool = (retrieval_examples if retrieval_examples is not None
          else [dataclasses.asdict(r) for r in labelled or ()])
  judges = [judge_from_config(c, mesh=mesh, retrieval_pool=pool) for c in configs]
  for j in judges:
    if j.needs_calibration:
      j.calibrate([r.query for r in labelled], [r.response for r in labelled],
                  [r.label for r in labelled])
  return judges
