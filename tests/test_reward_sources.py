"""Reward sources: length checks, weighting, and the offline file exchange."""
import json
import threading
import time

import numpy as np
import pytest

from rlaif_jax.rl.reward_sources import (CallableReward, OfflineFileReward, RewardError,
                                         WeightedSum, checked_scores, valid_mask)


def test_wrong_length_is_refused():
  src = CallableReward(lambda p, c: [1.0], name="short")
  with pytest.raises(RewardError, match=r"'short' returned shape \(1,\) for a batch of 3"):
    src.score(["a"] * 3, ["x"] * 3)
  with pytest.raises(RewardError, match="non-finite"):
    checked_scores("nan", [0.0, float("nan")], 2)


def test_weighted_sum():
  a = CallableReward(lambda p, c: [len(x) for x in c], name="len")
  b = CallableReward(lambda p, c: [1.0 if "好" in x else 0.0 for x in c], name="good")
  total = WeightedSum([("len", a, 0.5), ("good", b, 2.0)])
  np.testing.assert_allclose(total.score(["q", "q"], ["好好", "abc"]), [3.0, 1.5])
  assert set(total.last_components) == {"len", "good"}


class Masked:
  """A source that could not score some items: `last_valid_mask` marks them False."""

  def __init__(self, valid, fallback=0.0):
    self.valid, self.fallback = list(valid), fallback

  def score(self, prompts, completions):
    self.last_valid_mask = np.array(self.valid, dtype=bool)
    return [1.0 if v else self.fallback for v in self.valid]


def test_valid_mask_of_plain_and_weighted_sources():
  plain = CallableReward(lambda p, c: [0.5] * len(c), name="plain")
  plain.score(["q"] * 3, ["a"] * 3)
  assert valid_mask(plain, 3).tolist() == [True, True, True]  # no mask: all scored
  a, b = Masked([True, False, True, True], -7.0), Masked([True, True, False, True])
  total = WeightedSum([("a", a, 1.0), ("plain", plain, 2.0), ("b", b, 0.5)])
  np.testing.assert_allclose(total.score(["q"] * 4, ["x"] * 4), [2.5, -5.5, 2.0, 2.5])
  # Valid only where every part with a mask is valid; parts without one count as valid.
  assert total.last_valid_mask.tolist() == [True, False, False, True]
  assert valid_mask(total, 4).tolist() == [True, False, False, True]
  assert valid_mask(WeightedSum([("p", plain, 1.0)]), 0).shape == (0,)  # before any call
  with pytest.raises(RewardError, match=r"last_valid_mask of shape \(4,\) after scoring a batch "
                                        r"of 3"):
    valid_mask(a, 3)


def test_offline_exchange_waits_for_scorer(tmp_path):
  src = OfflineFileReward(tmp_path, timeout_s=20, poll_s=0.05, fallback=-1.0)
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
  scores = src.score(["p1", "p2", "p3"], ["c1", "c2", "c3"])
  t.join()
  np.testing.assert_allclose(scores, [0.25, 1.0, -1.0])
  assert src.last_valid_mask.tolist() == [True, True, False]  # the error line is not a score
  assert valid_mask(src, 3).tolist() == [True, True, False]
  assert src.index == 1


def test_offline_timeout_names_file(tmp_path):
  src = OfflineFileReward(tmp_path, timeout_s=0.2, poll_s=0.05)
  with pytest.raises(RewardError, match=r"rollout_000000\.scored\.jsonl has 0 of 2 ids"):
    src.score(["p", "q"], ["a", "b"])


def _score_file(path, rewards):
  path.write_text("".join(json.dumps({"id": i, "reward": r}) + "\n" for i, r in enumerate(rewards)))


def test_offline_files_are_named_by_rl_step_so_a_resumed_run_reads_its_own(tmp_path):
  """A run scored steps 1-2; the resumed run's step 3 must not read the first run's files
  (a per-process call counter restarted at 0 used to read rollout_000000's old scores)."""
  from rlaif_jax.rl.reward_sources import set_step
  first = OfflineFileReward(tmp_path, timeout_s=5, poll_s=0.02)
  for step, rewards in ((1, [1.0, 2.0]), (2, [3.0, 4.0])):
    _score_file(first.paths(step)[1], rewards)
    set_step(first, step)
    np.testing.assert_allclose(first.score(["q", "q"], [f"a{step}", f"b{step}"]), rewards)
  resumed = WeightedSum([("offline", OfflineFileReward(tmp_path, timeout_s=5, poll_s=0.02),
                          1.0)])
  out, scored = resumed.sources[0][1].paths(3)

  def scorer():
    while not out.exists():
      time.sleep(0.02)
    _score_file(scored, [7.0, 8.0])

  t = threading.Thread(target=scorer)
  t.start()
  set_step(resumed, 3)  # WeightedSum forwards the step to its parts
  scores = resumed.score(["q", "q"], ["new1", "new2"])
  t.join()
  np.testing.assert_allclose(scores, [7.0, 8.0])
  assert [json.loads(line)["response"] for line in out.read_text().splitlines()] == [
      "new1", "new2"]


def test_offline_refuses_a_stale_rollout_file_with_other_completions(tmp_path):
  src = OfflineFileReward(tmp_path, timeout_s=5, poll_s=0.02)
  out, scored = src.paths(4)
  src.set_step(4)
  _score_file(scored, [0.5, 0.25])
  np.testing.assert_allclose(src.score(["p", "q"], ["a", "b"]), [0.5, 0.25])
  # The same step redone with the same batch (resume after a crash) reuses the scores ...
  again = OfflineFileReward(tmp_path, timeout_s=5, poll_s=0.02)
  again.set_step(4)
  np.testing.assert_allclose(again.score(["p", "q"], ["a", "b"]), [0.5, 0.25])
  # ... a different batch for that file is refused, naming it.
  again.set_step(4)
  with pytest.raises(RewardError, match=r"rollout_000004\.jsonl exists but holds a different "
                                        r"batch .*first difference at id 1"):
    again.score(["p", "q"], ["a", "other"])
  with pytest.raises(RewardError, match=r"rollout_000004\.jsonl exists but holds a different"):
    again.score(["p", "q", "r"], ["a", "b", "c"])


def test_cut_responses_are_flagged_when_the_rm_would_score_them_as_finished():
  import types
  from rlaif_jax.rl import run
  from rlaif_jax.rl.reward_sources import WeightedSum
  rm = types.SimpleNamespace(fmt=types.SimpleNamespace(max_response_len=128),
                             score=lambda p, c: [0.0] * len(c))
  [note] = run.cut_responses_notes(rm, 64)
  assert "rl.max_new_tokens=64" in note and "127" in note
  assert run.cut_responses_notes(rm, 127) == []
  judge_like = types.SimpleNamespace(score=lambda p, c: [0.0] * len(c))
  assert len(run.cut_responses_notes(WeightedSum([("rm", rm, 1.0), ("j", judge_like, 1.0)]),
                                     64)) == 1
  assert run.cut_responses_notes(judge_like, 64) == []
