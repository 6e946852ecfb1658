"""The multi-agent curator: Retrieval -> Positive + Negative -> Judge -> Reflect.

For each candidate (query, response): the Retrieval agent (BM25, no LLM) finds labelled
examples with similar queries as few-shot references; the Positive and Negative agents list
strengths and weaknesses (in parallel); the Judge agent weighs them into a 0/1 label; the
Reflect agent re-examines the Judge's decision and may overturn it. The Reflect decision is the
final label, except that an overturn without a stated reason is ignored (the Judge's label
stands and ``reflect["ignored"]`` says so). A record whose agent chain fails gets ``error`` and no label, and is left out of
the preference pairs (``build_preference_pairs``) for the reward model.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import random
from typing import Any, Iterable, Sequence

from rlaif_jax.judging import parsing
from rlaif_jax.judging.agent import Agent, Outcome
from rlaif_jax.judging.backends import base
from rlaif_jax.judging.retrieval import ExampleRetriever

_LABEL_TEXT = {1: "1（好）", 0: "0（不好）", None: "未标注"}


def format_examples(examples: Sequence[dict[str, Any]]) -> str:
  """Few-shot block for the agent prompts."""
  if not examples:
    return "（无相似案例）"
  lines = []
  for i, ex in enumerate(examples, start=1):
    label = ex.get("label")
    lines.append(f"{i}. 请求：{ex['query']}\n   祝福语：{ex['response']}\n"
                 f"   人工评价：{_LABEL_TEXT.get(label, str(label))}")
  return "\n".join(lines)


def _points_text(points: dict[str, str]) -> str:
  return json.dumps(points, ensure_ascii=False, indent=2) if points else "{}"


class MultiAgentCurator:
  """Runs the agent chain over batches of candidate records."""

  def __init__(self, backend: base.LLMBackend, retriever: ExampleRetriever | None = None, *,
               num_examples: int = 3,
               sampling: base.SamplingParams = base.SamplingParams(max_tokens=1024),
               max_attempts: int = 3):
    self.retriever = retriever
    self.num_examples = num_examples
    kwargs = dict(sampling=sampling, max_attempts=max_attempts)
    self.positive = Agent(backend, "positive_agent", parsing.parse_points,
                          response_schema=parsing.POINTS_SCHEMA, **kwargs)
    self.negative = Agent(backend, "negative_agent", parsing.parse_points,
                          response_schema=parsing.POINTS_SCHEMA, **kwargs)
    self.judge = Agent(backend, "judge_agent", parsing.parse_judge,
                       response_schema=parsing.JUDGE_SCHEMA, **kwargs)
    self.reflect = Agent(backend, "reflect_agent", parsing.parse_judge,
                         response_schema=parsing.JUDGE_SCHEMA, **kwargs)

  @property
  def fingerprint(self) -> str:
    """A short hash of what decides the labels besides the inputs: the four agents' templates,
    backend and sampling, and the retrieval settings."""
    text = "\n".join([a.fingerprint for a in (self.positive, self.negative, self.judge,
                                               self.reflect)]
                     + [repr(self.num_examples), repr(self.retriever)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

  def retrieve(self, query: str, response: str) -> list[dict[str, Any]]:
    if self.retriever is None or self.num_examples <= 0:
      return []
    return self.retriever.retrieve(query, self.num_examples, exclude_response=response)

  async def curate(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One labelled output dict per record (see module docstring for the stages)."""
    outs: list[dict[str, Any]] = []
    for r in records:
      retrieved = self.retrieve(r["query"], r["response"])
      outs.append({"query": r["query"], "response": r["response"], "retrieved": retrieved,
                   "_examples": format_examples(retrieved)})
    fields = [{"examples": o["_examples"], "query": o["query"], "response": o["response"]}
              for o in outs]
    positives, negatives = await asyncio.gather(self.positive.run(fields),
                                                self.negative.run(fields))
    for o, pos, neg in zip(outs, positives, negatives):
      o["positive"], o["negative"] = pos.value, neg.value
      _fail(o, "positive", pos)
      _fail(o, "negative", neg)

    alive = [o for o in outs if "error" not in o]
    judged = await self.judge.run([
        {"examples": o["_examples"], "query": o["query"], "response": o["response"],
         "positive": _points_text(o["positive"]), "negative": _points_text(o["negative"])}
        for o in alive])
    for o, j in zip(alive, judged):
      o["judge"] = {"judge": j.value.judge, "reason": j.value.reason} if j.ok else None
      _fail(o, "judge", j)

    alive = [o for o in alive if "error" not in o]
    reflected = await self.reflect.run([
        {"query": o["query"], "response": o["response"],
         "positive": _points_text(o["positive"]), "negative": _points_text(o["negative"]),
         "initial_judge": o["judge"]["judge"], "initial_reason": o["judge"]["reason"]}
        for o in alive])
    for o, rf in zip(alive, reflected):
      o["reflect"] = {"judge": rf.value.judge, "reason": rf.value.reason} if rf.ok else None
      _fail(o, "reflect", rf)
      if rf.ok:
        overturned = rf.value.judge != o["judge"]["judge"]
        if overturned and not rf.value.reason:
          # Reflect overturns the Judge only on evidence it states; no reason, no overturn.
          o["reflect"]["ignored"] = "overturned the Judge without giving a reason"
          overturned = False
        o["label"] = rf.value.judge if overturned else o["judge"]["judge"]
        o["overturned"] = overturned

    for o in outs:
      o.pop("_examples")
      o.setdefault("label", None)
      o.setdefault("overturned", None)
      for stage in ("positive", "negative", "judge", "reflect"):
        o.setdefault(stage, None)
    return outs


def _fail(out: dict[str, Any], stage: str, outcome: Outcome) -> None:
  if not outcome.ok and "error" not in out:
    out["error"] = f"{stage} agent: {outcome.error}"


def build_preference_pairs(labelled: Iterable[dict[str, Any]], *,
                           max_pairs_per_query: int | None = None,
                           seed: int = 0) -> list[dict[str, Any]]:
  """Reward-model pairs in the paper's format from curated records of the same query.

  Every (approved, rejected) combination per query, or a seeded random subset of
  ``max_pairs_per_query`` of them. Records without a 0/1 ``label`` are skipped; duplicate
  responses within a query are used once, and a response labelled both 1 and 0 (a repeated
  candidate curated twice) is left out, so no pair holds one text against itself. Output
  order: queries in first-seen order.
  """
  groups: dict[str, dict[int, list[str]]] = collections.OrderedDict()
  for r in labelled:
    if r.get("label") not in (0, 1) or r.get("error") is not None:
      continue
    bucket = groups.setdefault(r["query"], {0: [], 1: []})
    if r["response"] not in bucket[r["label"]]:
      bucket[r["label"]].append(r["response"])
  pairs = []
  for query, bucket in groups.items():
    conflicting = set(bucket[1]) & set(bucket[0])
    combos = list(itertools.product([c for c in bucket[1] if c not in conflicting],
                                    [c for c in bucket[0] if c not in conflicting]))
    if max_pairs_per_query is not None and len(combos) > max_pairs_per_query:
      combos = random.Random(f"{seed}:{query}").sample(combos, max_pairs_per_query)
    for chosen, rejected in combos:
      pairs.append({"conversations": [{"from": "human", "value": query}],
                    "chosen": {"from": "gpt", "value": chosen},
                    "rejected": {"from": "gpt", "value": rejected}})
  return pairs
