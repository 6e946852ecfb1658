"""The adversarial game that refines the judge's principles S_D (and the attacker's S_G).

One iteration, as in the paper:
1. Adversarial phase: the Generator writes subtly bad greetings for sampled queries following
   the bad strategies S_G; the Detector judges them under S_D. Caught (Bad) -> its suggestion
   sharpens S_G; fooled (Good) -> the Generator's flaw explanation sharpens S_D.
2. Reflection phase: the Detector judges human-labelled examples; on every mistake the
   Reflector explains it and proposes a change to S_D.
3. The Strategy Optimizer rewrites S_G / S_D once per feedback item, in sequence (each call
   starts from the previous call's rules), as the authors' code does; each call keeps at most
   ``max_rules`` rules, and a rewrite that breaks the limit after retries is rejected and the
   rules before that call are kept. The reflection phase judges ``reflect_batch`` = 4 labelled
   examples per iteration (the authors' batch; this project used 8 without a measured reason).
The judge's accuracy on a held-out labelled split is measured before and after.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any, Sequence

from rlaif_jax.metrics.agreement import binary_agreement
from rlaif_jax.judging import parsing
from rlaif_jax.judging.agent import Agent
from rlaif_jax.judging.backends import base
from rlaif_jax.judging.judge import PrincipleJudge
from rlaif_jax.judging.principles import MAX_RULES, PrincipleSet, format_rules

_VERDICT_TEXT = {1: "Good", 0: "Bad"}
_STRATEGY_KIND = {"S_D": "祝福语评估标准 (S_D)", "S_G": "坏祝福语构造策略 (S_G)"}


@dataclasses.dataclass(frozen=True)
class GameConfig:
  """Sizes and sampling of one iteration."""
  adversarial_batch: int = 4
  reflect_batch: int = 4
  max_rules: int = MAX_RULES
  max_attempts: int = 3
  judge_sampling: base.SamplingParams = base.SamplingParams(temperature=0.0, max_tokens=512)
  generator_sampling: base.SamplingParams = base.SamplingParams(temperature=0.9, max_tokens=512)
  optimizer_sampling: base.SamplingParams = base.SamplingParams(temperature=0.3, max_tokens=1024)


@dataclasses.dataclass
class IterationResult:
  """New principle set, the event log (samples + updates) and metrics of one iteration."""
  principles: PrincipleSet
  log: list[dict[str, Any]]
  metrics: dict[str, Any]


class AdversarialGame:
  """Generator, Detector, Reflector and Strategy Optimizer sharing one backend."""

  def __init__(self, backend: base.LLMBackend, config: GameConfig = GameConfig()):
    self.backend, self.config = backend, config
    self.generator = Agent(backend, "generator", parsing.parse_generator,
                           sampling=config.generator_sampling, max_attempts=config.max_attempts,
                           response_schema=parsing.GENERATOR_SCHEMA)
    self.reflector = Agent(backend, "reflector", parsing.parse_reflector,
                           sampling=config.judge_sampling, max_attempts=config.max_attempts,
                           response_schema=parsing.REFLECTOR_SCHEMA)
    self.optimizer = Agent(backend, "strategy_optimizer",
                           functools.partial(parsing.parse_rules, max_rules=config.max_rules),
                           sampling=config.optimizer_sampling, max_attempts=config.max_attempts,
                           response_schema=parsing.rules_schema(config.max_rules))

  def detector(self, principles: PrincipleSet, template: str = "detector") -> PrincipleJudge:
    return PrincipleJudge(self.backend, principles, template=template,
                          sampling=self.config.judge_sampling,
                          max_attempts=self.config.max_attempts)

  async def evaluate(self, principles: PrincipleSet,
                     labelled: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Detector accuracy vs human labels; a failed verdict counts as wrong.

    ``accuracy`` is correct / all labelled items (None only when no item got a verdict);
    ``agreement`` (confusion matrix etc.) covers the judged items only.
    """
    if not labelled:
      return {"accuracy": None, "n": 0, "n_judged": 0, "n_errors": 0, "agreement": None}
    verdicts = await self.detector(principles).judge([r["query"] for r in labelled],
                                                     [r["response"] for r in labelled])
    pairs = [(r["label"], v.verdict) for r, v in zip(labelled, verdicts) if v.verdict is not None]
    agreement = binary_agreement([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
    correct = sum(label == verdict for label, verdict in pairs)
    return {"accuracy": correct / len(labelled) if pairs else None, "n": len(labelled),
            "n_judged": len(pairs), "n_errors": len(labelled) - len(pairs),
            "agreement": agreement}

  async def optimize(self, target: str, rules: Sequence[str],
                     feedback: Sequence[str]) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Rewrites ``rules`` (S_D or S_G) with one optimiser call per feedback item, in order.

    Returns the final rules and one ``update`` log event per call (``step`` k of n).
    """
    current, events = tuple(rules), []
    for step, item in enumerate(feedback, start=1):
      event: dict[str, Any] = {"event": "update", "target": target, "step": step,
                               "steps": len(feedback), "feedback": [item],
                               "before": list(current)}
      [outcome] = await self.optimizer.run([{
          "strategy_kind": _STRATEGY_KIND[target], "current_strategy": format_rules(current),
          "feedback": f"- {item}", "max_rules": self.config.max_rules}])
      new_rules = tuple(outcome.value) if outcome.ok else current
      if not outcome.ok:
        event["error"] = f"optimizer failed, kept the old rules: {outcome.error}"
      event["after"], event["changed"] = list(new_rules), new_rules != current
      events.append(event)
      current = new_rules
    return current, events

  async def adversarial_phase(self, ps: PrincipleSet, queries: Sequence[str],
                              good_examples: Sequence[dict[str, Any]], rng: random.Random
                              ) -> tuple[PrincipleSet, list[dict[str, Any]], dict[str, Any]]:
    batch = rng.sample(list(queries), min(self.config.adversarial_batch, len(queries)))
    goods = [rng.choice(good_examples)["response"] if good_examples else "无" for _ in batch]
    generated = await self.generator.run([
        {"query": q, "good_example": g, "bad_strategies": ps.bad_strategies_text()}
        for q, g in zip(batch, goods)])
    log = [{"event": "generator_error", "query": q, "error": o.error}
           for q, o in zip(batch, generated) if not o.ok]
    samples = [(q, o.value) for q, o in zip(batch, generated) if o.ok]
    verdicts = await self.detector(ps, "adversarial_detector").judge(
        [q for q, _ in samples], [g.bad_response for _, g in samples])
    to_g, to_d = [], []
    for (query, gen), v in zip(samples, verdicts):
      log.append({"event": "adversarial_sample", "query": query, "bad_response": gen.bad_response,
                  "explanation_of_flaws": gen.explanation, "detector_verdict": v.verdict,
                  "detector_explanation": v.reason, "suggested_for_G": v.suggestion,
                  "fooled": v.verdict == 1, **({"error": v.error} if v.error else {})})
      if v.verdict == 0 and v.suggestion:
        to_g.append(v.suggestion)
      elif v.verdict == 1 and gen.explanation:
        to_d.append(gen.explanation)
    if to_g:
      rules, events = await self.optimize("S_G", ps.bad_strategies, to_g)
      ps = ps.replace(bad_strategies=rules)
      log.extend({"phase": "adversarial", **e} for e in events)
    if to_d:
      rules, events = await self.optimize("S_D", ps.principles, to_d)
      ps = ps.replace(principles=rules)
      log.extend({"phase": "adversarial", **e} for e in events)
    judged = [v for v in verdicts if v.verdict is not None]
    stats = {"generated": len(samples), "generator_errors": len(batch) - len(samples),
             "judged": len(judged), "caught": sum(v.verdict == 0 for v in judged),
             "fooled": sum(v.verdict == 1 for v in judged)}
    return ps, log, stats

  async def reflection_phase(self, ps: PrincipleSet, train: Sequence[dict[str, Any]],
                             rng: random.Random
                             ) -> tuple[PrincipleSet, list[dict[str, Any]], dict[str, Any]]:
    batch = rng.sample(list(train), min(self.config.reflect_batch, len(train)))
    verdicts = await self.detector(ps).judge([r["query"] for r in batch],
                                             [r["response"] for r in batch])
    mistakes = [(r, v) for r, v in zip(batch, verdicts)
                if v.verdict is not None and v.verdict != r["label"]]
    reflections = await self.reflector.run([
        {"principles": ps.principles_text(), "query": r["query"], "response": r["response"],
         "detector_verdict": _VERDICT_TEXT[v.verdict], "detector_explanation": v.reason,
         "ground_truth": _VERDICT_TEXT[r["label"]]} for r, v in mistakes])
    log, feedback = [], []
    for (r, v), o in zip(mistakes, reflections):
      log.append({"event": "reflection", "query": r["query"], "response": r["response"],
                  "label": r["label"], "detector_verdict": v.verdict,
                  "detector_explanation": v.reason,
                  "reflection_feedback": o.value.feedback if o.ok else None,
                  "suggested_for_D": o.value.suggestion if o.ok else None,
                  **({"error": o.error} if not o.ok else {})})
      if o.ok and o.value.suggestion:
        feedback.append(o.value.suggestion)
    if feedback:
      rules, events = await self.optimize("S_D", ps.principles, feedback)
      ps = ps.replace(principles=rules)
      log.extend({"phase": "reflection", **e} for e in events)
    judged = [v for v in verdicts if v.verdict is not None]
    stats = {"examples": len(batch), "judged": len(judged), "mistakes": len(mistakes),
             "detector_errors": len(batch) - len(judged), "suggestions": len(feedback)}
    return ps, log, stats

  async def play_iteration(self, ps: PrincipleSet, *, iteration: int, queries: Sequence[str],
                           train: Sequence[dict[str, Any]], heldout: Sequence[dict[str, Any]],
                           rng: random.Random,
                           before: dict[str, Any] | None = None) -> IterationResult:
    """Both phases plus held-out evaluation before (unless given) and after."""
    if before is None:
      before = await self.evaluate(ps, heldout)
    good_examples = [r for r in train if r["label"] == 1]
    ps, adv_log, adv_stats = await self.adversarial_phase(ps, queries, good_examples, rng)
    ps, ref_log, ref_stats = await self.reflection_phase(ps, train, rng)
    root = ps.version.split("+")[0]
    ps = ps.replace(version=f"{root}+iter{iteration}",
                    description=f"{root} refined by the adversarial game, iteration {iteration}")
    after = await self.evaluate(ps, heldout)
    metrics = {"iteration": iteration, "accuracy_before": before["accuracy"],
               "accuracy_after": after["accuracy"], "heldout": len(heldout),
               "n_errors_before": before.get("n_errors"), "n_errors_after": after["n_errors"],
               "before": before, "after": after, "adversarial": adv_stats,
               "reflection": ref_stats, "num_principles": len(ps.principles),
               "num_bad_strategies": len(ps.bad_strategies)}
    log = [{"iteration": iteration, **e} for e in adv_log + ref_log]
    return IterationResult(principles=ps, log=log, metrics=metrics)
