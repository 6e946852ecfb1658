"""Resumable driver of the adversarial game: per-iteration folders under an output directory.

``output_dir/iter_{k}/`` (k = 1..K) holds ``principles.json`` (a full principle set, loadable
with ``load_principles(path)``), ``strategy.json`` (S_G), ``update_log.jsonl`` (samples,
reflections and every optimiser rewrite), ``metrics.json`` (held-out accuracy before/after)
and finally ``DONE``. ``output_dir/final_principles.json`` is the set with the best held-out
accuracy (the initial set included; ``best.json`` says which), ``last_principles.json`` the
last iteration's set. A finished iteration is never redone; an unfinished one is replayed from
the previous iteration's principles with the same seeded sampling.
"""
from __future__ import annotations

import json
import logging
import random
from typing import Any, Callable, Sequence

from rlaif_jax import storage
from rlaif_jax.judging import parsing
from rlaif_jax.judging.adversarial import AdversarialGame
from rlaif_jax.judging.judge_report import json_safe
from rlaif_jax.judging.principles import PrincipleSet, load_principles, save_principles

logger = logging.getLogger(__name__)

_RUN_CONFIG = "run_config.json"
_CHECKED_KEYS = ("labeled", "split_seed", "queries", "seed", "holdout_size", "initial_principles")


def load_labelled(path: str) -> list[dict[str, Any]]:
  """JSON Lines of {query, response, label[, click_num]} (label 0/1 or Good/Bad); errors name
  file:line."""
  out = []
  for index, record in storage.read_jsonl(path):
    for field in ("query", "response"):
      if not isinstance(record.get(field), str):
        raise storage.InputError(f"{path}:{index + 1}: field {field!r} must be a string")
    try:
      label = parsing.normalise_binary(record.get("label"), "label")
    except parsing.ParseError as e:
      raise storage.InputError(f"{path}:{index + 1}: {e}") from None
    row = {"query": record["query"], "response": record["response"], "label": label}
    if "click_num" in record:  # kept for the retriever's click rerank
      clicks = record["click_num"]
      if isinstance(clicks, bool) or not isinstance(clicks, (int, float)):
        raise storage.InputError(f"{path}:{index + 1}: field 'click_num' must be a number")
      row["click_num"] = clicks
    out.append(row)
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
  """Seeded (train, held-out) split; the held-out part is never shown to the Reflector.

  The split is by unique (query, response): ``holdout_size`` distinct items are held out, and
  every copy of a duplicated item lands on the same side (so the held-out split may hold a few
  more than ``holdout_size`` records). Without duplicates this is a plain seeded shuffle.
  """
  groups: dict[tuple[str, str], list[int]] = {}
  for i, record in enumerate(records):
    groups.setdefault((record["query"], record["response"]), []).append(i)
  keys = list(groups)
  if not 0 < holdout_size < len(keys):
    raise ValueError(f"holdout_size must be in (0, {len(keys)}) (distinct query/response "
                     f"pairs), got {holdout_size}")
  random.Random(seed).shuffle(keys)
  held = sorted(i for key in keys[:holdout_size] for i in groups[key])
  rest = sorted(i for key in keys[holdout_size:] for i in groups[key])
  return [records[i] for i in rest], [records[i] for i in held]


def count_distinct(records: Sequence[dict[str, Any]]) -> int:
  """Distinct (query, response) pairs: the upper bound (exclusive) of ``holdout_size``."""
  return len({(r["query"], r["response"]) for r in records})


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


def _better(accuracy: float | None, best: float | None) -> bool:
  """Whether ``accuracy`` is at least as good as ``best`` (ties go to the later set)."""
  if accuracy is None:
    return best is None
  return best is None or accuracy >= best


async def run_optimization(game: AdversarialGame, *, initial: PrincipleSet,
                           labelled: Sequence[dict[str, Any]], queries: Sequence[str],
                           output_dir: str, iterations: int, holdout_size: int, seed: int,
                           run_config: dict[str, Any],
                           on_iteration: Callable[[list[dict[str, Any]]], None] | None = None
                           ) -> list[dict[str, Any]]:
  """Plays ``iterations`` rounds (skipping finished ones); returns every iteration's metrics.

  ``final_principles.json`` is the set with the best held-out accuracy (the initial set, as
  iteration 0, included; ties go to the later set), ``last_principles.json`` the last one, and
  ``best.json`` says which was chosen. ``on_iteration(metrics so far)`` runs after each
  iteration (finished ones included).
  """
  storage.makedirs(output_dir)
  check_run_config(output_dir, run_config)
  train, heldout = split_labelled(labelled, holdout_size, seed)
  ps, before, all_metrics = initial, None, []
  best: tuple[int, PrincipleSet, float | None] | None = None
  for k in range(1, iterations + 1):
    iter_dir = storage.join(output_dir, f"iter_{k}")
    if storage.exists(storage.join(iter_dir, "DONE")):
      next_ps = load_principles(storage.join(iter_dir, "principles.json"))
      metrics = json.loads(storage.read_text(storage.join(iter_dir, "metrics.json")))
      logger.info("iteration %d already done (accuracy %s -> %s)", k,
                  metrics["accuracy_before"], metrics["accuracy_after"])
    else:
      result = await game.play_iteration(ps, iteration=k, queries=queries, train=train,
                                         heldout=heldout, rng=random.Random(f"{seed}:{k}"),
                                         before=before)
      next_ps, metrics = result.principles, result.metrics
      storage.makedirs(iter_dir)
      storage.write_text(storage.join(iter_dir, "update_log.jsonl"),
                         "".join(storage.dumps_line(e).decode("utf-8") for e in result.log))
      save_principles(next_ps, storage.join(iter_dir, "principles.json"))
      storage.write_text(storage.join(iter_dir, "strategy.json"), json.dumps(
          {"version": next_ps.version, "bad_strategies": list(next_ps.bad_strategies)},
          ensure_ascii=False, indent=2) + "\n")
      storage.write_text(storage.join(iter_dir, "metrics.json"),
                         json.dumps(json_safe(metrics), ensure_ascii=False, indent=2) + "\n")
      storage.write_text(storage.join(iter_dir, "DONE"), "")
      logger.info("iteration %d: held-out accuracy %s -> %s", k, metrics["accuracy_before"],
                  metrics["accuracy_after"])
    if best is None:  # the set this run started from, measured before iteration 1
      best = (k - 1, ps, metrics["accuracy_before"])
    if _better(metrics["accuracy_after"], best[2]):
      best = (k, next_ps, metrics["accuracy_after"])
    ps, before = next_ps, metrics["after"]
    all_metrics.append(metrics)
    if on_iteration is not None:
      on_iteration(list(all_metrics))
  if best is None:
    best = (0, ps, None)
  best_iteration, best_ps, best_accuracy = best
  save_principles(best_ps, storage.join(output_dir, "final_principles.json"))
  save_principles(ps, storage.join(output_dir, "last_principles.json"))
  storage.write_text(storage.join(output_dir, "best.json"), json.dumps(json_safe({
      "best_iteration": best_iteration, "best_accuracy": best_accuracy,
      "best_version": best_ps.version, "last_iteration": iterations,
      "last_accuracy": all_metrics[-1]["accuracy_after"] if all_metrics else None,
      "last_version": ps.version}), ensure_ascii=False, indent=2) + "\n")
  logger.info("final principles: iteration %d (%s, held-out accuracy %s)", best_iteration,
              best_ps.version, best_accuracy)
  return all_metrics
