"""Reward sources: length checks, weighting, and the offline file exchange."""
import json
import threading
import time

import numpy as np
import pytest

from rlaif_jax.rl.reward_sources import (CallableReward, OfflineFileReward, RewardError,
                                         WeightedSum, checked_scores)


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
  assert src.index == 1


def test_offline_timeout_names_file(tmp_path):
  src = OfflineFileReward(tmp_path, timeout_s=0.2, poll_s=0.05)
  with pytest.raises(RewardError, match=r"rollout_000000\.scored\.jsonl has 0 of 2 ids"):
    src.score(["p", "q"], ["a", "b"])
