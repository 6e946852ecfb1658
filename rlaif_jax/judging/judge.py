"""The principle-guided LLM judge (the paper's Detector): Good/Bad verdicts under principles S_D."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

from rlaif_jax.judging import parsing
from rlaif_jax.judging.agent import Agent
from rlaif_jax.judging.backends import base
from rlaif_jax.judging.principles import PrincipleSet, load_principles


@dataclasses.dataclass(frozen=True)
class Verdict:
  """``verdict`` 1 = Good, 0 = Bad, None when the item failed (then ``error`` says why)."""
  verdict: int | None
  reason: str
  error: str | None = None
  suggestion: str = ""
  attempts: int = 0

  def to_json(self) -> dict:
    out = {"verdict": self.verdict, "reason": self.reason}
    if self.error is not None:
      out["error"] = self.error
    return out


class PrincipleJudge:
  """Judges (query, response) pairs against a principle set, one batched backend call."""

  def __init__(self, backend: base.LLMBackend, principles: PrincipleSet | str = "v0", *,
               template: str = "detector",
               sampling: base.SamplingParams = base.SamplingParams(temperature=0.0, max_tokens=512),
               max_attempts: int = 3, retry_temperature: float | None = 0.7,
               system_prompt: str | None = None):
    """Args:
      principles: a PrincipleSet, a shipped set name ("v0") or a path to a principles JSON.
      template: "detector" (verdict + explanation) or "adversarial_detector" (adds
        suggested_for_G); any template with fields {principles, query, response} works.
      max_attempts: tries per item when the reply cannot be parsed.
    """
    self.principles = load_principles(principles) if isinstance(principles, str) else principles
    self._agent = Agent(backend, template, parsing.parse_detector, sampling=sampling,
                        max_attempts=max_attempts, retry_temperature=retry_temperature,
                        system_prompt=system_prompt, response_schema=parsing.DETECTOR_SCHEMA)

  @property
  def backend(self) -> base.LLMBackend:
    return self._agent.backend

  @property
  def fingerprint(self) -> str:
    """The principle set's version and a hash of its text, the template, backend and sampling:
    two judges with equal fingerprints give the same verdicts on the same inputs."""
    text = self.principles.principles_text() + "\n" + self._agent.fingerprint
    return (f"principles={self.principles.version} "
            f"settings={hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}")

  def conversation(self, query: str, response: str) -> base.Conversation:
    return self._agent.conversation(self._fields(query, response))

  def _fields(self, query: str, response: str) -> dict[str, str]:
    return {"principles": self.principles.principles_text(), "query": query, "response": response}

  async def judge(self, queries: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
    """One Verdict per (query, response); all requests in flight together."""
    if len(queries) != len(responses):
      raise ValueError(f"judge: {len(queries)} queries but {len(responses)} responses")
    outcomes = await self._agent.run([self._fields(q, r) for q, r in zip(queries, responses)])
    verdicts = []
    for o in outcomes:
      if o.ok:
        verdicts.append(Verdict(verdict=o.value.verdict, reason=o.value.explanation,
                                suggestion=o.value.suggestion, attempts=o.attempts))
      else:
        verdicts.append(Verdict(verdict=None, reason="", error=o.error, attempts=o.attempts))
    return verdicts

  def judge_sync(self, queries: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
    async def run() -> list[Verdict]:
      try:
        return await self.judge(queries, responses)
      finally:
        await self.backend.aclose()
    return base.run_sync(run())
