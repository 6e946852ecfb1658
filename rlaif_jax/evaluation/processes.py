"""The evaluation in a multi-host run (one JAX process per host): every process runs the
sampler and the reward model (collectives: `sharding.host`); process 0 alone reads and writes
the output files and asks the LLM judges (network calls made once), and what it read or was
told reaches the others through `on_main` (a JSON broadcast), stale-output errors included, so
every process takes the same path and raises the same errors.

Without JAX imported (an evaluation with LLM judges only) there is one process: no JAX is
loaded for it.
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from rlaif_jax import jsonl_jobs
from rlaif_jax.evaluation.judges import EvalJudge, Judgement
from rlaif_jax.evaluation.stale import StaleOutputError

# Judges run by every process: the reward model is a collective; the length rule is local.
EVERY_PROCESS_KINDS = ("rm", "length")

_host = jsonl_jobs.loaded_host
is_main = jsonl_jobs.is_main  # whether this process writes the files (always, in one process)


def multiprocess() -> bool:
  h = _host()
  return h is not None and h.is_multiprocess()


def on_main(fn: Callable[[], Any]) -> Any:
  """fn() run by process 0 alone; its JSON-ready result on every process. A StaleOutputError
  it raises is raised on every process; another error is raised on process 0 and reported as
  a RuntimeError on the others (so none waits forever)."""
  if not multiprocess():
    return fn()
  host, payload = _host(), None
  error: BaseException | None = None
  if host.is_main():
    try:
      payload = {"ok": fn()}
    except StaleOutputError as e:
      error, payload = e, {"stale": [str(e), str(e.path), e.reason]}
    except Exception as e:  # pylint: disable=broad-except
      error, payload = e, {"error": f"{type(e).__name__}: {e}"}
  payload = host.broadcast_json(payload)
  if error is not None:
    raise error
  if "stale" in payload:
    message, path, reason = payload["stale"]
    raise StaleOutputError(message, pathlib.Path(path), reason)
  if "error" in payload:
    raise RuntimeError(f"process 0 failed: {payload['error']}")
  return payload["ok"]


def judge(j: EvalJudge, queries: Sequence[str], responses: Sequence[str]) -> Judgement:
  """`j.judge(queries, responses)`, on every process for the reward model and the length rule,
  else asked by process 0 and broadcast."""
  if j.kind in EVERY_PROCESS_KINDS or not multiprocess():
    return j.judge(queries, responses)

  def ask() -> dict[str, Any]:
    v = j.judge(queries, responses)
    return {"labels": v.labels.tolist(), "valid": v.valid.tolist(),
            "scores": v.scores.tolist(), "details": v.details}
  v = on_main(ask)
  return Judgement(np.asarray(v["labels"], np.int64), np.asarray(v["valid"], bool),
                   np.asarray(v["scores"], np.float64), v["details"])
