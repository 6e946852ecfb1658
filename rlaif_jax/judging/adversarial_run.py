"""Resumable driver of the adversarial game: per-iteration folders under an output directory.

``output_dir/iter_{k}/`` (k = 1..K) holds ``principles.json`` (a full principle set, loadable
with ``load_principles(path)``), ``strategy.json`` (S_G), ``update_log.jsonl`` (samples,
reflections and every optimiser rewrite), ``metrics.json`` (held-out accuracy before/after)
and finally ``DONE``. A finished iteration is never redone; an unfinished one is replayed from
the previous iteration's principles with the same seeded sampling.
"""
from __future__ import annotations

import json
import logging
import random
from typing import Any, Sequence

from rlaif_jax import storage
from rlaif_jax.judging import parsing
from rlaif_jax.judging.adversarial import AdversarialGame
from rlaif_jax.judging.judge_report import json_safe
from rlaif_jax.judging.principles import PrincipleSet, load_principles, save_principles

logger = logging.getLogger(__name__)

_RUN_CONFIG = "run_config.json"
_CHECKED_KEYS = ("labeled", "queries", "seed", "holdout_size", "initial_principles")


def load_labelled(path: str) -> list[dict[str, Any]]:
  """JSON Lines of {query, response, label} (label 0/1 or Good/Bad); errors name file:line."""
  out = []
  for index, record in storage.read_jsonl(path):
    for field in ("query", "response"):
      if not isinstance(record.get(field), str):
        raise storage.InputError(f"{path}:{index + 1}: field {field!r} must be a string")
    try:
      label = parsing.normalise_binary(record.get("label"), "label")
    except parsing.ParseError as e:
      raise storage.InputError(f"{path}:{index + 1}: {e}") from None
    out.append({"query": record["query"], "response": record["response"], "label": label})
  if not out:
    raise storage.InputError(f"{path}: no labelled records")
  return out


def load_queries(path: str) -> list[str]:
  """Queries from a text file (one per line) or JSON Lines with a ``query`` field."""
  if path.endswith((".jsonl", ".json")):
    queries = []
    for index, record in storage.read_jsonl(path):
      if not isinstance(record.get("query"), str):
        raise storage.InputError(f"{path}:{index + 1}: field 'query' must be a string")
      queries.append(record["query"])
  else:
    queries = [line.strip() for line in storage.read_text(path).splitlines() if line.strip()]
  if not queries:
    raise storage.InputError(f"{path}: no queries")
  return queries


def split_labelled(records: Sequence[dict[str, Any]], holdout_size: int,
                   seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """Seeded (train, held-out) split; the held-out part is never shown to the Reflector."""
  if not 0 < holdout_size < len(records):
    raise ValueError(f"holdout_size must be in (0, {len(records)}), got {holdout_size}")
  order = list(range(len(records)))
  random.Random(seed).shuffle(order)
  heldout = [records[i] for i in sorted(order[:holdout_size])]
  train = [records[i] for i in sorted(order[holdout_size:])]
  return train, heldout


def check_run_config(output_dir: str, run_config: dict[str, Any]) -> None:
  """Records the run's inputs; resuming with different inputs is a ValueError."""
  path = storage.join(output_dir, _RUN_CONFIG)
  if storage.exists(path):
    previous = json.loads(storage.read_text(path))
    for key in _CHECKED_KEYS:
      if previous.get(key) != run_config.get(key):
        raise ValueError(f"{path}: this output_dir was started with {key}={previous.get(key)!r}, "
                         f"now {run_config.get(key)!r}; use a new --output_dir")
  storage.write_text(path, json.dumps(run_config, ensure_ascii=False, indent=2) + "\n")


async def run_optimization(game: AdversarialGame, *, initial: PrincipleSet,
                           labelled: Sequence[dict[str, Any]], queries: Sequence[str],
                           output_dir: str, iterations: int, holdout_size: int, seed: int,
                           run_config: dict[str, Any]) -> list[dict[str, Any]]:
  """Plays ``iterations`` rounds (skipping finished ones); returns every iteration's metrics."""
  storage.makedirs(output_dir)
  check_run_config(output_dir, run_config)
  train, heldout = split_labelled(labelled, holdout_size, seed)
  ps, before, all_metrics = initial, None, []
  for k in range(1, iterations + 1):
    iter_dir = storage.join(output_dir, f"iter_{k}")
    if storage.exists(storage.join(iter_dir, "DONE")):
      ps = load_principles(storage.join(iter_dir, "principles.json"))
      metrics = json.loads(storage.read_text(storage.join(iter_dir, "metrics.json")))
      before = metrics["after"]
      all_metrics.append(metrics)
      logger.info("iteration %d already done (accuracy %s -> %s)", k,
                  metrics["accuracy_before"], metrics["accuracy_after"])
      continue
    result = await game.play_iteration(ps, iteration=k, queries=queries, train=train,
                                       heldout=heldout, rng=random.Random(f"{seed}:{k}"),
                                       before=before)
    storage.makedirs(iter_dir)
    storage.write_text(storage.join(iter_dir, "update_log.jsonl"),
                       "".join(storage.dumps_line(e).decode("utf-8") for e in result.log))
    save_principles(result.principles, storage.join(iter_dir, "principles.json"))
    storage.write_text(storage.join(iter_dir, "strategy.json"), json.dumps(
        {"version": result.principles.version,
         "bad_strategies": list(result.principles.bad_strategies)},
        ensure_ascii=False, indent=2) + "\n")
    storage.write_text(storage.join(iter_dir, "metrics.json"),
                       json.dumps(json_safe(result.metrics), ensure_ascii=False, indent=2) + "\n")
    storage.write_text(storage.join(iter_dir, "DONE"), "")
    ps, before = result.principles, result.metrics["after"]
    all_metrics.append(result.metrics)
    logger.info("iteration %d: held-out accuracy %s -> %s", k, result.metrics["accuracy_before"],
                result.metrics["accuracy_after"])
  save_principles(ps, storage.join(output_dir, "final_principles.json"))
  return all_metrics
