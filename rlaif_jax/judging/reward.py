"""The principle judge and the multi-agent curator as `scoring.Scorer`s (RL rewards, evaluation
judges): the verdict is the value (Good 1 / Bad 0), a failed verdict is not valid."""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from rlaif_jax.data.greetings import GRPO_PREFIX
from rlaif_jax.judging.backends import base
from rlaif_jax.judging.curator import MultiAgentCurator
from rlaif_jax.judging.judge import PrincipleJudge, Verdict
from rlaif_jax.scoring.contract import Rollout, Scores, ScoringError, checked

_CHAT_MARKUP = re.compile(r"<\|[^|>]*\|>|<s>|</s>|\[INST\]|\[/INST\]")


def query_from_prompt(prompt: str) -> str:
  """The user's request inside an RL prompt.

  The GRPO prompts are ``请只生成一条祝福语：<query>``, possibly wrapped in a chat template; the
  text after the last prefix up to the next chat-markup token or line break is the query. A
  prompt without the prefix is used as is (minus chat markup).
  """
  text = prompt
  pos = text.rfind(GRPO_PREFIX)
  if pos >= 0:
    text = text[pos + len(GRPO_PREFIX):]
    text = _CHAT_MARKUP.split(text, maxsplit=1)[0].split("\n", 1)[0]
  else:
    text = _CHAT_MARKUP.sub(" ", text)
  return text.strip()


class JudgeScorer:
  """Binary judge verdicts as values: Good -> ``good_reward``, Bad -> ``bad_reward``.

  Items whose judge call failed (backend error or unparseable after retries) are not valid
  (`Scores.valid` False) and carry the placeholder ``fallback``: the RL trainer masks them out
  of the update and the GRPO group statistics (`reward_invalid_frac`), evaluation excludes them
  from rates. Extras: ``verdict`` (int, -1 failed), ``reason`` and ``error`` (str, per row).
  keep_loop: True runs every call on one private background event loop that keeps the HTTP
  connections alive across calls (RL steps; `close` ends it); False opens and closes a session
  per call. ``ascore`` is the coroutine version.
  """

  def __init__(self, judge: PrincipleJudge, *, good_reward: float = 1.0,
               bad_reward: float = 0.0, fallback: float = 0.0,
               query_fn: Callable[[str], str] = query_from_prompt, name: str = "llm",
               keep_loop: bool = True):
    self.judge, self.name = judge, name
    self.good_reward, self.bad_reward, self.fallback = good_reward, bad_reward, fallback
    self.query_fn, self.keep_loop = query_fn, keep_loop
    self._loop: base.BackgroundLoop | None = None

  def __repr__(self) -> str:
    return (f"JudgeScorer(principles={self.judge.principles.version!r}, "
            f"backend={self.judge.backend!r}, fallback={self.fallback})")

  @property
  def signature(self) -> str:
    return f"llm {self.judge.fingerprint}"

  def _scores(self, rollout: Rollout, verdicts: Sequence[Verdict]) -> Scores:
    if len(verdicts) != rollout.size:
      raise ScoringError(f"scorer {self.name!r}: judge returned {len(verdicts)} verdicts for "
                         f"{rollout.size} completions")
    table = {1: self.good_reward, 0: self.bad_reward}
    values = [table.get(v.verdict, self.fallback) for v in verdicts]
    extras = {"verdict": np.array([v.verdict if v.verdict in table else -1 for v in verdicts]),
              "reason": [v.reason for v in verdicts], "error": [v.error or "" for v in verdicts]}
    return checked(self.name, values, rollout.size, [v.verdict in table for v in verdicts],
                   extras)

  async def ascore(self, rollout: Rollout) -> Scores:
    """All judge requests of the batch run concurrently."""
    verdicts = await self.judge.judge([self.query_fn(p) for p in rollout.prompts],
                                      list(rollout.completions))
    return self._scores(rollout, verdicts)

  def score(self, rollout: Rollout) -> Scores:
    """Synchronous ``ascore`` (safe to call from code that runs inside an event loop)."""
    if not self.keep_loop:
      return self._scores(rollout, self.judge.judge_sync(
          [self.query_fn(p) for p in rollout.prompts], list(rollout.completions)))
    if self._loop is None:
      self._loop = base.BackgroundLoop()
    return self._loop.run(self.ascore(rollout))

  def close(self) -> None:
    """Closes the HTTP session and stops the background loop."""
    if self._loop is not None:
      self._loop.run(self.judge.backend.aclose())
      self._loop.close()
      self._loop = None


class CuratorScorer:
  """The multi-agent curator (Retrieval -> Positive/Negative -> Judge -> Reflect): the Reflect
  agent's label is the value (1/0); a failed agent chain is not valid (value ``fallback``).
  Extras: ``reason`` (the Reflect agent's), ``overturned`` (bool), ``error`` (str)."""

  def __init__(self, curator: MultiAgentCurator, name: str = "curator",
               fallback: float = 0.0):
    self.curator, self.name, self.fallback = curator, name, fallback

  @property
  def signature(self) -> str:
    return f"curator settings={self.curator.fingerprint}"

  def score(self, rollout: Rollout) -> Scores:
    records = [{"query": q, "response": r} for q, r in zip(rollout.prompts, rollout.completions)]

    async def run() -> list[dict[str, Any]]:
      try:
        return await self.curator.curate(records)
      finally:
        await self.curator.judge.backend.aclose()

    outs = base.run_sync(run())
    if len(outs) != rollout.size:
      raise ScoringError(f"scorer {self.name!r}: curator returned {len(outs)} records for "
                         f"{rollout.size} completions")
    labels = [o.get("label") if o.get("error") is None else None for o in outs]
    valid = [v in (0, 1) for v in labels]
    extras = {"reason": [(o.get("reflect") or {}).get("reason", "") for o in outs],
              "overturned": np.array([bool(o.get("overturned")) for o in outs]),
              "error": [str(o["error"]) if o.get("error") is not None else "" for o in outs]}
    values = [float(v) if ok else self.fallback for v, ok in zip(labels, valid)]
    return checked(self.name, values, rollout.size, valid, extras)
