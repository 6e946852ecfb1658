"""`rlaif_jax.sharding.host` in one process (the 2-process behaviour is in test_multihost.py):
reads of sharded arrays, host offload of a model's weights, and the process-0 reward wrapper."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rlaif_jax.scoring.contract import OnMainProcess, Rollout, Scores, ScoringError
from rlaif_jax.sharding import host


def _sharded(x: np.ndarray) -> jax.Array:
  mesh = jax.make_mesh((len(jax.devices()),), ("d",))
  return jax.device_put(x, NamedSharding(mesh, P("d")))


def test_to_host_returns_the_global_value_and_leaves_other_leaves():
  x = np.arange(8, dtype=np.float32).reshape(4, 2)
  out = host.to_host({"a": _sharded(x), "b": 3, "c": [jax.numpy.float32(2.0)]})
  assert isinstance(out["a"], np.ndarray)
  np.testing.assert_array_equal(out["a"], x)
  assert out["b"] == 3 and float(out["c"][0]) == 2.0
  assert host.is_main() and not host.is_multiprocess()
  assert host.broadcast({"v": np.int32(5)}) == {"v": 5} and host.agreed_flag(True)
  host.barrier("single process: no wait")


def test_offload_keeps_host_shards_and_reload_restores_the_sharded_arrays():
  x = _sharded(np.arange(8, dtype=np.float32).reshape(4, 2))
  kept = host.offload({"w": x, "n": None})
  assert isinstance(kept["w"], host.HostShards)
  assert all(isinstance(d, np.ndarray) for _, d in kept["w"].shards)
  back = host.reload(kept)
  assert back["w"].sharding == x.sharding and back["n"] is None
  np.testing.assert_array_equal(np.asarray(back["w"]), np.asarray(x))


class _Source:
  name = "fake"

  def __init__(self, fail=False):
    self.fail, self.step = fail, None

  def score(self, rollout):
    self.step = rollout.step
    if self.fail:
      raise ScoringError("judge down")
    return Scores(np.array([1.0, 0.0], np.float32), np.array([True, False]))


def test_on_main_process_passes_scores_mask_step_and_errors_through():
  wrapped = OnMainProcess(_Source())
  got = wrapped.score(Rollout.from_texts(["q", "q"], ["a", "b"], step=7))
  assert wrapped.scorer.step == 7
  np.testing.assert_array_equal(got.values, [1.0, 0.0])
  np.testing.assert_array_equal(got.valid, [True, False])
  with pytest.raises(ScoringError, match="judge down"):
    OnMainProcess(_Source(fail=True)).score(Rollout.from_texts(["q"], ["a"]))
