"""RL hook: the principle-guided judge as a reward source ``score(prompts, completions)``."""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from rlaif_jax.data.greetings import GRPO_PREFIX
from rlaif_jax.judging.backends import base
from rlaif_jax.judging.judge import PrincipleJudge, Verdict
from rlaif_jax.judging.principles import PrincipleSet

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


class JudgeReward:
  """Binary judge verdicts as rewards: Good -> ``good_reward``, Bad -> ``bad_reward``.

  Items whose judge call failed (backend error or unparseable after retries) are marked False
  in ``last_valid_mask``: they are not scored. Their reward is the placeholder ``fallback`` (the
  RL config's ``reward.judge.fallback``), which the RL trainer never trains on: it masks invalid
  items out of the policy update and the GRPO group statistics and logs their share as
  ``reward_invalid_frac``. A caller that ignores the mask would treat ``fallback`` as a score.
  ``score`` is synchronous and runs on a private background event loop that keeps HTTP
  connections alive across RL steps; ``ascore`` is the coroutine version.
  """

  def __init__(self, backend: base.LLMBackend, principles: PrincipleSet | str = "v0", *,
               good_reward: float = 1.0, bad_reward: float = 0.0, fallback: float = 0.0,
               query_fn: Callable[[str], str] = query_from_prompt, max_attempts: int = 3,
               sampling: base.SamplingParams = base.SamplingParams(temperature=0.0, max_tokens=512),
               template: str = "detector"):
    self.judge = PrincipleJudge(backend, principles, template=template, sampling=sampling,
                                max_attempts=max_attempts)
    self.good_reward, self.bad_reward, self.fallback = good_reward, bad_reward, fallback
    self.query_fn = query_fn
    self.last_verdicts: list[Verdict] = []
    self.last_valid_mask = np.zeros((0,), dtype=bool)
    self._loop: base.BackgroundLoop | None = None

  def __repr__(self) -> str:
    return (f"JudgeReward(principles={self.judge.principles.version!r}, "
            f"backend={self.judge.backend!r}, fallback={self.fallback})")

  async def ascore(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """float32[batch] rewards; all judge requests of the batch run concurrently."""
    if len(prompts) != len(completions):
      raise ValueError(f"JudgeReward: {len(prompts)} prompts but {len(completions)} completions")
    verdicts = await self.judge.judge([self.query_fn(p) for p in prompts], list(completions))
    if len(verdicts) != len(prompts):
      raise RuntimeError(f"JudgeReward: judge returned {len(verdicts)} verdicts for "
                         f"{len(prompts)} completions")
    table = {1: self.good_reward, 0: self.bad_reward}
    rewards = np.array([table.get(v.verdict, self.fallback) for v in verdicts], dtype=np.float32)
    self.last_verdicts = verdicts
    self.last_valid_mask = np.array([v.verdict in table for v in verdicts], dtype=bool)
    return rewards

  def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """Synchronous ``ascore`` (safe to call from code that runs inside an event loop)."""
    if self._loop is None:
      self._loop = base.BackgroundLoop()
    rewards = self._loop.run(self.ascore(prompts, completions))
    if rewards.shape != (len(prompts),):
      raise RuntimeError(f"JudgeReward: reward shape {rewards.shape} != ({len(prompts)},)")
    return rewards

  __call__ = score

  def close(self) -> None:
    """Closes the HTTP session and stops the background loop."""
    if self._loop is not None:
      self._loop.run(self.judge.backend.aclose())
      self._loop.close()
      self._loop = None
