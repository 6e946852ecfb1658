"""Path B's offline stage: the judge's principles refined by the adversarial game
(`judging/adversarial.py`, Generator / Detector / Reflector / Strategy Optimizer) on the
`principle_examples` split of `judging/splits.make_splits` (disjoint from the reliability
examples the evaluation scores judges on, and from the curator's retrieval corpus).

Writes WORKDIR/principles/: the game's files (`iter_k/`, `final_principles.json`, ...,
`judging/adversarial_run.py`), `splits/`, and `usage.json` (labelled examples used, LLM calls,
wall time), which the efficiency table of results.md reads.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from rlaif_jax import storage
from rlaif_jax.judging import backends
from rlaif_jax.judging.adversarial import AdversarialGame, GameConfig
from rlaif_jax.judging.adversarial_run import run_optimization
from rlaif_jax.judging.backends.base import run_sync
from rlaif_jax.judging.principles import load_principles
from rlaif_jax.judging.splits import make_splits
from rlaif_jax.pipeline.local_judge import JudgeEndpoint

USAGE_FILE = "usage.json"
FINAL_FILE = "final_principles.json"


class CountingBackend(backends.LLMBackend):
  """Delegates to `inner` and counts the conversations sent (`calls`), re-asks included; its
  schema views (`with_response_schema`) count into it too."""

  def __init__(self, inner: backends.LLMBackend, counter: "CountingBackend | None" = None):
    self.inner, self.calls, self._counter = inner, 0, counter or self

  def __repr__(self) -> str:
    return repr(self.inner)

  def with_response_schema(self, name: str, schema: dict[str, Any]) -> backends.LLMBackend:
    return CountingBackend(self.inner.with_response_schema(name, schema), self._counter)

  async def generate(self, messages_batch, **sampling):
    self._counter.calls += len(messages_batch)
    return await self.inner.generate(messages_batch, **sampling)

  async def generate_settled(self, messages_batch, **sampling):
    self._counter.calls += len(messages_batch)
    return await self.inner.generate_settled(messages_batch, **sampling)

  async def aclose(self) -> None:
    await self.inner.aclose()


def _game_config(p: Any) -> GameConfig:
  sampling = lambda t: backends.SamplingParams(temperature=t, max_tokens=p.max_tokens)
  return GameConfig(adversarial_batch=p.adversarial_batch, reflect_batch=p.reflect_batch,
                    max_attempts=p.max_attempts, judge_sampling=sampling(0.0),
                    generator_sampling=sampling(0.9), optimizer_sampling=sampling(0.3))


def optimise_principles(config: Any, out_dir: pathlib.Path, data_dir: pathlib.Path,
                        endpoint: JudgeEndpoint) -> dict[str, Any]:
  """Plays `config.principles.iterations` rounds against `endpoint` on the first
  `config.principles.max_examples` principle examples (0 = all); returns the usage record."""
  p, start = config.principles, time.perf_counter()
  splits = make_splits(data_dir, p.split_seed, output_dir=str(out_dir))
  labelled = splits.principle_examples[:p.max_examples or None]
  queries = list(dict.fromkeys(r["query"] for r in labelled))
  backend = CountingBackend(backends.make_backend(
      "openai", base_url=endpoint.base_url, model=endpoint.model,
      api_key_env=endpoint.api_key_env, concurrency=config.judge.concurrency,
      structured_output=bool(config.judge.get("constrained_json", False))))
  game = AdversarialGame(backend, _game_config(p))
  run_config = {"labeled": "principle_examples", "split_seed": p.split_seed, "queries":
                "principle_examples queries", "seed": p.seed, "holdout_size": p.holdout_size,
                "initial_principles": config.judge.principles, "iterations": p.iterations,
                "max_examples": p.max_examples}

  async def run() -> list[dict[str, Any]]:
    try:
      return await run_optimization(
          game, initial=load_principles(config.judge.principles), labelled=labelled,
          queries=queries, output_dir=str(out_dir), iterations=p.iterations,
          holdout_size=p.holdout_size, seed=p.seed, run_config=run_config)
    finally:
      await backend.aclose()

  metrics = run_sync(run())  # a notebook's kernel already runs a loop
  usage = {"labelled_examples": len(labelled), "llm_calls": backend.calls,
           "iterations": len(metrics), "wall_s": round(time.perf_counter() - start, 1),
           "heldout_accuracy": [m["accuracy_after"] for m in metrics],
           "judge": "local stand-in (SFT checkpoint)" if endpoint.local else endpoint.model}
  storage.write_text(str(out_dir / USAGE_FILE), json.dumps(usage, indent=2) + "\n")
  return usage


def read_usage(out_dir: pathlib.Path) -> dict[str, Any] | None:
  try:
    return json.loads((out_dir / USAGE_FILE).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
