"""`build_scorer`: any scorer kind from its typed config (`scoring.config`), for RL rewards and
evaluation judges alike. Here, above `judging` and `training`, because it builds the LLM judge,
the curator and the reward model; the contract itself lives low in `rlaif_jax.scoring`."""
from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
from typing import Any, Callable, Sequence

from rlaif_jax.judging import backends
from rlaif_jax.judging.curator import MultiAgentCurator
from rlaif_jax.judging.judge import PrincipleJudge
from rlaif_jax.judging.retrieval import ExampleRetriever
from rlaif_jax.judging.reward import CuratorScorer, JudgeScorer
from rlaif_jax.scoring import config as cfg_lib
from rlaif_jax.scoring.contract import (CallableScorer, LengthScorer, OnMainProcess, Scorer,
                                        WeightedSum)
from rlaif_jax.scoring.offline import OfflineFileScorer

HOST_SIDE = ("llm", "curator", "offline", "callable")  # asked by process 0 in multi-host runs


def import_callable(path: str, where: str) -> Callable:
  """'package.module:function' -> the function (ScorerConfigError naming `where` otherwise)."""
  module, _, name = path.partition(":")
  if not name:
    raise cfg_lib.ScorerConfigError(f"{where}: fn={path!r} must look like "
                                     "'package.module:function'")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise cfg_lib.ScorerConfigError(f"{where}: fn={path!r} cannot be imported: {e}") from e


def _backend(c: cfg_lib.EndpointConfig) -> backends.LLMBackend:
  # constrained_json: ask the server for the verdict's JSON schema (structured output).
  return backends.make_backend(c.backend, base_url=c.base_url, model=c.model,
                               api_key_env=c.api_key_env, concurrency=c.concurrency,
                               timeout_s=c.timeout_s,
                               **({"structured_output": True} if c.constrained_json else {}))


def _sampling(c: cfg_lib.EndpointConfig) -> backends.SamplingParams:
  return backends.SamplingParams(temperature=c.temperature, max_tokens=c.max_tokens)


def _curator(c: cfg_lib.CuratorConfig, pool: Sequence[dict[str, Any]] | None) -> CuratorScorer:
  retriever = None
  if pool and c.num_examples > 0:
    try:
      retriever = ExampleRetriever(pool, backend=c.retriever, model=c.retrieval_model)
    except (ValueError, ImportError) as e:
      raise cfg_lib.ScorerConfigError(f"{c.where}: {e}") from e
  curator = MultiAgentCurator(_backend(c), retriever, num_examples=c.num_examples,
                              sampling=_sampling(c), max_attempts=c.max_attempts)
  return CuratorScorer(curator, name=c.name, fallback=c.fallback)


def build_scorer(c: cfg_lib.ScorerConfig, *, mesh: Any = None,
                 workdir: str | os.PathLike | None = None,
                 retrieval_pool: Sequence[dict[str, Any]] | None = None,
                 keep_loop: bool = True) -> Scorer:
  """The scorer of config `c`.

  mesh: device mesh of a reward model. workdir: where an offline scorer without exchange_dir
  exchanges files (WORKDIR/exchange). retrieval_pool: the curator's labelled examples.
  keep_loop: the LLM judge keeps one event loop and HTTP session across calls (RL).
  Raises ScorerConfigError for a required field left unset or a missing RM run directory.
  """
  cfg_lib.check_required(c)
  if isinstance(c, cfg_lib.LengthConfig):
    return LengthScorer(c.name)
  if isinstance(c, cfg_lib.RewardModelConfig):
    from rlaif_jax.training.reward_model import load_reward_model  # Local: pulls in training.
    if not c.workdir or not os.path.isdir(c.workdir):
      raise cfg_lib.ScorerConfigError(f"{c.where}: reward-model run directory {c.workdir!r} does "
                                      "not exist")
    return load_reward_model(c.workdir, mesh=mesh, batch_size=c.batch_size, debias=c.debias,
                             on_host=c.on_host, name=c.name)
  if isinstance(c, cfg_lib.LLMJudgeConfig):
    judge = PrincipleJudge(_backend(c), c.principles, template=c.template,
                           sampling=_sampling(c), max_attempts=c.max_attempts)
    return JudgeScorer(judge, fallback=c.fallback, name=c.name, keep_loop=keep_loop)
  if isinstance(c, cfg_lib.CuratorConfig):
    return _curator(c, retrieval_pool)
  if isinstance(c, cfg_lib.OfflineConfig):
    if c.exchange_dir is None and workdir is None:
      raise cfg_lib.ScorerConfigError(f"{c.where}: set exchange_dir (no workdir to default to)")
    where = c.exchange_dir or pathlib.Path(workdir) / "exchange"
    return OfflineFileScorer(where, timeout_s=c.timeout_s, poll_s=c.poll_s, fallback=c.fallback,
                             name=c.name)
  if isinstance(c, cfg_lib.CallableConfig):
    return CallableScorer(import_callable(c.fn, c.where), name=c.name)
  raise cfg_lib.ScorerConfigError(f"{c.where}: no scorer for kind {c.kind!r}")


def build_reward(reward: cfg_lib.RewardConfig, *, mesh: Any = None,
                 workdir: str | os.PathLike | None = None) -> Scorer:
  """The RL reward: the weighted sum of its scorers (a lone scorer of weight 1 as it is);
  host-side scorers wrapped in `OnMainProcess` (asked once, by process 0)."""
  parts = []
  for c in reward.scorers:
    if getattr(c, "threshold", None) is not None:
      raise cfg_lib.ScorerConfigError(f"{c.where}.threshold={c.threshold!r}: a threshold turns "
                                      "scores into evaluation verdicts; an RL reward has none")
    if isinstance(c, cfg_lib.CuratorConfig) and c.num_examples > 0:
      raise cfg_lib.ScorerConfigError(f"{c.where}.num_examples={c.num_examples}: an RL reward "
                                      "has no labelled pool to retrieve examples from; set 0")
    scorer = build_scorer(c, mesh=mesh, workdir=workdir)
    parts.append((OnMainProcess(scorer) if c.kind in HOST_SIDE else scorer, c.weight))
  if len(parts) == 1 and parts[0][1] == 1.0:
    return parts[0][0]
  return WeightedSum(parts)


def with_workdir(c: cfg_lib.ScorerConfig, workdir: str) -> cfg_lib.ScorerConfig:
  """`c` with its reward-model run directory set (RL trains the RM there first if missing)."""
  return dataclasses.replace(c, workdir=workdir)
