"""The scoring contract: length checks, TRL-style callables with row columns, weighting and
validity, the offline file exchange (named by the rollout's step), the typed configs."""
import json
import threading
import time

import numpy as np
import pytest

from rlaif_jax.scoring import config as cfg_lib
from rlaif_jax.scoring.contract import (CallableScorer, LengthScorer, Rollout, Scores,
                                        ScoringError, WeightedSum, checked)
from rlaif_jax.scoring.offline import OfflineFileScorer


def texts(prompts, completions, **kwargs):
  return Rollout.from_texts(prompts, completions, **kwargs)


def test_wrong_length_is_refused():
  src = CallableScorer(lambda p, c: [1.0], name="short")
  with pytest.raises(ScoringError, match=r"'short' returned shape \(1,\) for a batch of 3"):
    src.score(texts(["a"] * 3, ["x"] * 3))
  with pytest.raises(ScoringError, match="non-finite"):
    checked("nan", [0.0, float("nan")], 2)
  with pytest.raises(ValueError, match="2 prompts, 3 completions"):
    texts(["a"] * 2, ["x"] * 3)


def test_callable_gets_the_row_columns_it_asks_for():
  seen = {}

  def reward(prompts, completions, group, stopped):
    seen.update(group=group, stopped=stopped)
    return [float(g) for g in group]

  def everything(prompts, completions, **columns):
    seen["all"] = sorted(columns)
    return [0.0] * len(completions)
  rollout = texts(["q", "q", "r"], ["a", "b", "c"], stopped=[True, False, True],
                  columns={"group": [0, 0, 1], "query": ["q", "q", "r"]})
  np.testing.assert_array_equal(CallableScorer(reward).score(rollout).values, [0, 0, 1])
  assert seen["group"] == [0, 0, 1] and seen["stopped"] == [True, False, True]
  CallableScorer(everything).score(rollout)
  assert seen["all"] == ["group", "query", "stopped"]
  got = CallableScorer(lambda p, c: [1.0] * len(c)).score(rollout)  # no keywords: plain TRL
  assert got.valid.all()


def test_weighted_sum():
  a = CallableScorer(lambda p, c: [len(x) for x in c], name="len")
  b = CallableScorer(lambda p, c: [1.0 if "好" in x else 0.0 for x in c], name="good")
  total = WeightedSum([(a, 0.5), (b, 2.0)]).score(texts(["q", "q"], ["好好", "abc"]))
  np.testing.assert_allclose(total.values, [3.0, 1.5])
  np.testing.assert_allclose(total.extras["len"], [2, 3])
  assert {"len", "good", "len_valid", "good_valid"} <= set(total.extras)
  np.testing.assert_array_equal(LengthScorer().score(texts(["q"], ["abc"])).values, [3.0])


class Masked:
  """A scorer that could not score some items: `valid` marks them False."""

  def __init__(self, name, valid, fallback=0.0):
    self.name, self.valid, self.fallback = name, list(valid), fallback

  def score(self, rollout):
    return Scores(np.array([1.0 if v else self.fallback for v in self.valid], np.float32),
                  np.array(self.valid, bool), {"reason": np.array(["r"] * len(self.valid))})


def test_validity_of_plain_and_weighted_scorers():
  plain = CallableScorer(lambda p, c: [0.5] * len(c), name="plain")
  assert plain.score(texts(["q"] * 3, ["a"] * 3)).valid.tolist() == [True] * 3
  a, b = Masked("a", [True, False, True, True], -7.0), Masked("b", [True, True, False, True])
  total = WeightedSum([(a, 1.0), (plain, 2.0), (b, 0.5)]).score(texts(["q"] * 4, ["x"] * 4))
  np.testing.assert_allclose(total.values, [2.5, -5.5, 2.0, 2.5])
  assert total.valid.tolist() == [True, False, False, True]  # valid where every part is
  assert total.extras["a.reason"].tolist() == ["r"] * 4
  with pytest.raises(ScoringError, match=r"'a' returned shape \(4,\) for a batch of 3"):
    WeightedSum([(a, 1.0)]).score(texts(["q"] * 3, ["x"] * 3))


def test_offline_exchange_waits_for_scorer(tmp_path):
  src = OfflineFileScorer(tmp_path, timeout_s=20, poll_s=0.05, fallback=-1.0)
  out, scored = src.paths(0)

  def scorer():
    while not out.exists():
      time.sleep(0.02)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    with open(scored, "w") as f:  # written in two parts, as a slow job would
      f.write(json.dumps({"id": recs[1]["id"], "verdict": 1}) + "\n")
      f.flush()
      time.sleep(0.2)
      f.write(json.dumps({"id": recs[0]["id"], "reward": 0.25}) + "\n")
      f.write(json.dumps({"id": recs[2]["id"], "verdict": 0, "error": "unparseable"}) + "\n")

  t = threading.Thread(target=scorer)
  t.start()
  scores = src.score(texts(["p1", "p2", "p3"], ["c1", "c2", "c3"], stopped=[True, False, True]))
  t.join()
  np.testing.assert_allclose(scores.values, [0.25, 1.0, -1.0])
  assert scores.valid.tolist() == [True, True, False]  # the error line is not a score
  assert [json.loads(line).get("stopped", True) for line in out.read_text().splitlines()] == [
      True, False, True]  # a cut completion is sent as cut
  assert src.index == 1


def test_offline_timeout_names_file(tmp_path):
  src = OfflineFileScorer(tmp_path, timeout_s=0.2, poll_s=0.05)
  with pytest.raises(ScoringError, match=r"rollout_000000\.scored\.jsonl has 0 of 2 ids"):
    src.score(texts(["p", "q"], ["a", "b"]))


def _score_file(path, rewards):
  path.write_text("".join(json.dumps({"id": i, "reward": r}) + "\n" for i, r in enumerate(rewards)))


def test_offline_files_are_named_by_rl_step_so_a_resumed_run_reads_its_own(tmp_path):
  """A run scored steps 1-2; the resumed run's step 3 must not read the first run's files
  (a per-process call counter restarted at 0 used to read rollout_000000's old scores)."""
  first = OfflineFileScorer(tmp_path, timeout_s=5, poll_s=0.02)
  for step, rewards in ((1, [1.0, 2.0]), (2, [3.0, 4.0])):
    _score_file(first.paths(step)[1], rewards)
    got = first.score(texts(["q", "q"], [f"a{step}", f"b{step}"], step=step))
    np.testing.assert_allclose(got.values, rewards)
  resumed = WeightedSum([(OfflineFileScorer(tmp_path, timeout_s=5, poll_s=0.02), 1.0)])
  out, scored = resumed.parts[0][0].paths(3)

  def scorer():
    while not out.exists():
      time.sleep(0.02)
    _score_file(scored, [7.0, 8.0])

  t = threading.Thread(target=scorer)
  t.start()
  scores = resumed.score(texts(["q", "q"], ["new1", "new2"], step=3))  # the step travels along
  t.join()
  np.testing.assert_allclose(scores.values, [7.0, 8.0])
  assert [json.loads(line)["response"] for line in out.read_text().splitlines()] == [
      "new1", "new2"]


def test_offline_refuses_a_stale_rollout_file_with_other_completions(tmp_path):
  src = OfflineFileScorer(tmp_path, timeout_s=5, poll_s=0.02)
  out, scored = src.paths(4)
  _score_file(scored, [0.5, 0.25])
  np.testing.assert_allclose(src.score(texts(["p", "q"], ["a", "b"], step=4)).values,
                             [0.5, 0.25])
  # The same step redone with the same batch (resume after a crash) reuses the scores ...
  again = OfflineFileScorer(tmp_path, timeout_s=5, poll_s=0.02)
  np.testing.assert_allclose(again.score(texts(["p", "q"], ["a", "b"], step=4)).values,
                             [0.5, 0.25])
  # ... a different batch for that file is refused, naming it.
  with pytest.raises(ScoringError, match=r"rollout_000004\.jsonl exists but holds a different "
                                         r"batch .*first difference at id 1"):
    again.score(texts(["p", "q"], ["a", "other"], step=4))
  with pytest.raises(ScoringError, match=r"rollout_000004\.jsonl exists but holds a different"):
    again.score(texts(["p", "q", "r"], ["a", "b", "c"], step=4))


# ---- typed configs ----------------------------------------------------------------------------


def test_reward_config_from_the_grpo_config_and_unknown_keys_named():
  from configs import grpo_tiny_cpu
  reward = grpo_tiny_cpu.get_config().reward
  got = cfg_lib.reward_config(reward)
  assert [(c.kind, c.name, c.weight) for c in got.scorers] == [("rm", "rm", 1.0)]
  assert got.scorers[0].config == "rm_tiny_cpu"
  reward.use = ("rm", "judge")
  reward.judge.weight = 0.5
  both = cfg_lib.reward_config(reward).scorers
  assert [(c.kind, c.weight) for c in both] == [("rm", 1.0), ("llm", 0.5)]
  assert isinstance(both[1], cfg_lib.LLMJudgeConfig) and both[1].principles == "v0"
  with pytest.raises(cfg_lib.ScorerConfigError, match="config.reward.judge: set base_url, model"):
    cfg_lib.check_required(both[1])
  with reward.unlocked():
    reward.judge.princples = "v1"
  with pytest.raises(cfg_lib.ScorerConfigError,
                     match=r"config.reward.judge: unknown key\(s\) \['princples'\] for kind 'llm'"):
    cfg_lib.reward_config(reward)
  with pytest.raises(cfg_lib.ScorerConfigError, match=r"use names \['jugde'\]"):
    cfg_lib.reward_config({"use": ("jugde",), "rm": {"kind": "rm"}})
  with pytest.raises(cfg_lib.ScorerConfigError, match=r"config.reward.x.kind='bleu'"):
    cfg_lib.reward_config({"use": ("x",), "x": {"kind": "bleu"}})


def test_rl_config_refuses_unknown_and_misplaced_keys():
  from configs import grpo_tiny_cpu, ppo_tiny_cpu
  from rlaif_jax.rl import run
  config = grpo_tiny_cpu.get_config()
  cfg = run.rl_config(config)
  assert (cfg.total_steps, cfg.log_every, cfg.checkpoint_every, cfg.keep_checkpoints) == (
      60, 1, 20, 2)
  assert run.rl_config(ppo_tiny_cpu.get_config()).advantage.estimator == "gae"
  with config.unlocked():
    config.rl.total_steps = 5  # a loop field belongs in config.loop
  with pytest.raises(ValueError, match=r"config.rl: unknown key\(s\) \['total_steps'\]"):
    run.rl_config(config)
  config = grpo_tiny_cpu.get_config()
  with config.unlocked():
    config.loop.eval_every = 5  # RL has no eval loop: refused, not ignored
    config.rl.actor.kl_cof = 0.1
  with pytest.raises(ValueError, match=r"config.rl.actor: unknown key\(s\) \['kl_cof'\]"):
    run.rl_config(config)
  del config.rl.actor["kl_cof"]
  with pytest.raises(ValueError, match=r"config.loop: unknown key\(s\) \['eval_every'\]"):
    run.rl_config(config)


def test_loop_config_refuses_unknown_keys():
  import ml_collections

  from rlaif_jax.training.trainer import LoopConfig
  assert LoopConfig.from_config(ml_collections.ConfigDict(dict(total_steps=3))).total_steps == 3
  with pytest.raises(ValueError, match=r"config.loop: unknown key\(s\) \['log_evry'\]"):
    LoopConfig.from_config(ml_collections.ConfigDict(dict(total_steps=3, log_evry=2)))


def test_rl_reward_refuses_a_threshold():
  from rlaif_jax.judging import scorers
  c = cfg_lib.LengthConfig(name="len", threshold=3, where="config.reward.len")
  with pytest.raises(cfg_lib.ScorerConfigError, match="config.reward.len.threshold=3"):
    scorers.build_reward(cfg_lib.RewardConfig((c,)))
  curator = cfg_lib.CuratorConfig(name="c", base_url="http://h/v1", model="m", where="r.c")
  with pytest.raises(cfg_lib.ScorerConfigError, match="r.c.num_examples=3: an RL reward"):
    scorers.build_reward(cfg_lib.RewardConfig((curator,)))
  reward = scorers.build_reward(cfg_lib.RewardConfig(
      (cfg_lib.LengthConfig(name="len", weight=2.0),
       cfg_lib.CallableConfig(name="one", fn=f"{__name__}:one_reward"))))
  with pytest.raises(ScoringError, match=r"'one' returned shape \(1,\) for a batch of 2"):
    reward.score(texts(["q", "q"], ["ab", "c"]))  # checked, never broadcast
  with pytest.raises(cfg_lib.ScorerConfigError, match="cannot be imported"):
    scorers.build_scorer(cfg_lib.CallableConfig(name="x", fn=f"{__name__}:nope"))


def one_reward(prompts, completions):
  return [1.0]
