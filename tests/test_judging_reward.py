"""JudgeScorer: the LLM judge as a scorer (RL reward, evaluation judge)."""
import asyncio

import numpy as np
import pytest

from fake_openai_server import FakeOpenAIServer, make_local_generate_fn, schedule_by_key
from rlaif_jax.judging.backends import LocalSamplerBackend, OpenAIChatBackend, RetryPolicy
from rlaif_jax.judging.judge import PrincipleJudge, Verdict
from rlaif_jax.judging.reward import JudgeScorer, query_from_prompt
from rlaif_jax.scoring.contract import Rollout, ScoringError


def make_judge(backend, principles, *, max_attempts=3, **kwargs):
  return JudgeScorer(PrincipleJudge(backend, principles, max_attempts=max_attempts), **kwargs)


def texts(prompts, completions):
  return Rollout.from_texts(prompts, completions)

LONG = "愿你前程似锦，万事顺意，岁岁平安，笑口常开，幸福美满！"


def test_query_from_prompt():
  assert query_from_prompt("请只生成一条祝福语：给妈妈的生日祝福") == "给妈妈的生日祝福"
  chat = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
          "请只生成一条祝福语：新年快乐<|im_end|>\n<|im_start|>assistant\n")
  assert query_from_prompt(chat) == "新年快乐"
  assert query_from_prompt("  祝贺同事升职 ") == "祝贺同事升职"


def test_rewards_all_in_flight_with_fallback_and_mask():
  completions = ["生日快乐", "妈妈，" + LONG, "坏掉", "爸爸，" + LONG, "好", "新年，" + LONG]
  prompts = [f"请只生成一条祝福语：请求{i}" for i in range(6)]
  plan = {"坏掉": ["garbage"] * 5}
  with FakeOpenAIServer(fault_fn=schedule_by_key(plan), delay_s=0.3, min_len=20) as server:
    backend = OpenAIChatBackend(server.base_url, "m", concurrency=16, timeout_s=5,
                                retry=RetryPolicy(base_delay_s=0.01))
    reward = make_judge(backend, "v0", fallback=-1.0, good_reward=1.0, bad_reward=0.0,
                         max_attempts=2)
    try:
      got = reward.score(texts(prompts, completions))
      assert server.max_in_flight == 6  # The whole batch was in flight at once.
      assert {r.key for r in server.log if r.role == "detector"} == set(completions)
      again = reward.score(texts(prompts[:2], completions[:2]))  # Same loop and session reused.
    finally:
      reward.close()
  rewards = got.values
  assert rewards.dtype == np.float32 and rewards.shape == (6,)
  np.testing.assert_array_equal(rewards, [0, 1, -1, 1, 0, 1])
  assert got.valid.tolist() == [True, True, False, True, True, True]
  np.testing.assert_array_equal(again.values, [0, 1])
  assert again.valid.tolist() == [True, True]
  assert "JudgeScorer(principles='v0'" in repr(reward)


def test_mask_marks_failed_items_and_lengths_are_checked():
  reward = make_judge(LocalSamplerBackend(make_local_generate_fn(min_len=20)), "v0",
                       good_reward=2.0, bad_reward=-2.0)
  got = reward.score(texts(["请只生成一条祝福语：a", "b"], ["短", "长长的" + LONG]))
  np.testing.assert_array_equal(got.values, [-2.0, 2.0])
  assert got.valid.tolist() == [True, True]
  with pytest.raises(ValueError, match="2 prompts, 1 completions"):
    texts(["a", "b"], ["x"])

  async def too_few(queries, responses):
    return [Verdict(verdict=1, reason="")]
  reward.judge.judge = too_few
  with pytest.raises(ScoringError, match="returned 1 verdicts for 2 completions"):
    reward.score(texts(["a", "b"], ["x", "y"]))
  reward.close()


def test_score_works_when_called_from_inside_an_event_loop():
  reward = make_judge(LocalSamplerBackend(make_local_generate_fn(min_len=5)), "v0")

  async def trainer_step():
    return reward.score(texts(["q"], ["一条足够长的祝福"]))
  np.testing.assert_array_equal(asyncio.run(trainer_step()).values, [1.0])
  np.testing.assert_array_equal(asyncio.run(reward.ascore(texts(["q"], ["短"]))).values, [0.0])
  reward.close()


def test_failed_items_are_invalid_not_bad_and_weighted_sums_keep_the_mask():
  """A judge that cannot answer an item gives it the configured fallback but marks it invalid,
  unlike a Bad verdict; a WeightedSum around the judge keeps that mask."""
  import json

  from rlaif_jax.scoring.contract import CallableScorer, WeightedSum

  def generate(msgs, max_tokens, temperature):
    out = []
    for m in msgs:
      text = m[-1]["content"]
      if "坏掉" in text:
        out.append("sorry, I cannot answer")  # unparseable on every attempt
      else:
        out.append(json.dumps({"verdict": "Good" if "很好" in text else "Bad",
                               "evaluation_explanation": "x"}))
    return out

  judge = make_judge(LocalSamplerBackend(generate), "v0", fallback=-3.0, max_attempts=2)
  prompts, completions = ["生日祝福"] * 3, ["很好的祝福", "差", "坏掉的祝福"]
  try:
    got = judge.score(texts(prompts, completions))
    np.testing.assert_array_equal(got.values, [1.0, 0.0, -3.0])
    assert got.valid.tolist() == [True, True, False]  # Bad is valid, failure not
    assert got.extras["verdict"].tolist() == [1, 0, -1] and got.extras["error"][2]
    total = WeightedSum([(judge, 1.0),
                         (CallableScorer(lambda p, c: [0.0] * len(c), name="len"), 0.5)])
    got = total.score(texts(prompts, completions))
    np.testing.assert_array_equal(got.values, [1.0, 0.0, -3.0])
    assert got.valid.tolist() == [True, True, False]
  finally:
    judge.close()
