"""Exact resume: a run killed with SIGKILL mid-training and restarted ends with bitwise the same
parameters as an uninterrupted run; checkpoints round-trip every leaf of the train state.

The worker (this file run as a script) trains a tiny decoder with the SFT loss on synthetic
batches that are a pure function of the step; `--sleep` slows the data so the kill lands mid-run.
"""
import argparse
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rlaif_jax.models import checkpoint_bridge, config as config_lib
from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.training import checkpointing, metrics as metrics_lib, optim, sft
from rlaif_jax.training import train_state as ts
from rlaif_jax.training import trainer as trainer_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOTAL, EVERY = 16, 4
CFG = config_lib.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=2, num_kv_heads=1, head_dim=16)


def synthetic_batches(sleep: float):
  def make(start):
    step = start
    while True:
      rng = np.random.default_rng([11, step])
      tokens = rng.integers(0, CFG.vocab_size, (8, 16)).astype(np.int32)
      attention = (np.arange(16)[None] < rng.integers(6, 17, (8, 1))).astype(np.int32)
      yield {"tokens": tokens, "attention_mask": attention,
             "loss_mask": attention * (np.arange(16)[None] >= 3).astype(np.int32),
             "positions": np.maximum(np.cumsum(attention, 1) - 1, 0).astype(np.int32)}
      time.sleep(sleep)
      step += 1
  return make


def make_trainer(workdir) -> trainer_lib.Trainer:
  mesh = mesh_lib.make_mesh((1, -1, 1))
  tx, sched = optim.make_optimizer(3e-3, TOTAL, warmup_steps=3, weight_decay=0.1)
  loop = trainer_lib.LoopConfig(total_steps=TOTAL, log_every=1, eval_every=0,
                                checkpoint_every=EVERY, keep_checkpoints=2, progress_bar=False)
  return trainer_lib.Trainer(sft.sft_loss, tx, sched, mesh, workdir, loop, seed=5,
                             meta={"model_config": CFG.to_dict()})


def worker(workdir: str, sleep: float, out: str) -> None:
  trainer = make_trainer(workdir)
  mesh = trainer.mesh
  state = trainer.init_state(lambda: checkpoint_bridge.init_sharded(CFG, mesh, seed=1),
                             checkpoint_bridge.abstract_model(CFG))
  state = trainer.fit(state, synthetic_batches(sleep))
  trainer.close()
  np.savez(out, **ts.host_params(state))


def _run_worker(workdir, sleep, out, wait=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}"
             f"{os.environ.get('PYTHONPATH', '')}")
  cmd = [sys.executable, __file__, "--workdir", str(workdir), "--sleep", str(sleep),
         "--out", str(out)]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  if wait:
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-4000:]
  return proc


def _finished_steps(ckpt_dir: pathlib.Path) -> list[int]:
  if not ckpt_dir.exists():
    return []
  return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(tmp_path):
  ref = _run_worker(tmp_path / "ref", 0.0, tmp_path / "ref.npz")
  assert ref.returncode == 0
  victim_dir = tmp_path / "victim"
  victim = _run_worker(victim_dir, 0.3, tmp_path / "victim.npz", wait=False)
  deadline = time.time() + 180
  while time.time() < deadline and max(_finished_steps(victim_dir / "checkpoints"), default=0) < 8:
    assert victim.poll() is None, victim.stdout.read()[-4000:]
    time.sleep(0.1)
  time.sleep(0.5)  # land between checkpoints, possibly while one is being written
  victim.send_signal(signal.SIGKILL)
  victim.wait(timeout=30)
  assert victim.returncode == -signal.SIGKILL
  killed_at = max(_finished_steps(victim_dir / "checkpoints"))
  assert 8 <= killed_at < TOTAL and not (tmp_path / "victim.npz").exists()
  _run_worker(victim_dir, 0.0, tmp_path / "victim.npz")
  want, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "victim.npz")
  assert sorted(want.files) == sorted(got.files)
  for k in want.files:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  steps = [r["step"] for r in metrics_lib.read_metrics(victim_dir)]
  assert steps == list(range(1, TOTAL + 1))  # rows after the last checkpoint were not duplicated
  losses = {r["step"]: r["loss"] for r in metrics_lib.read_metrics(tmp_path / "ref")}
  assert all(r["loss"] == losses[r["step"]] for r in metrics_lib.read_metrics(victim_dir))


def test_checkpoint_roundtrip_restores_every_leaf(tmp_path):
  mesh = mesh_lib.make_mesh((1, -1, 1))
  tx, sched = optim.make_optimizer(1e-2, 10, warmup_steps=2)
  state = ts.create_train_state(checkpoint_bridge.init_sharded(CFG, mesh, 0), tx, mesh, seed=9)
  step = trainer_lib.make_train_step(sft.sft_loss, tx, sched, mesh=mesh, donate=False)
  state, _ = step(state, trainer_lib.put_batch(next(synthetic_batches(0)(0)), mesh))
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=True)
  ckpt.save(state, {"model_config": CFG.to_dict(), "data": {"seed": 9}})
  ckpt.wait()
  abstract = ts.abstract_train_state(checkpoint_bridge.abstract_model(CFG), tx, mesh)
  restored, meta = ckpt.restore(abstract)
  ckpt.close()
  assert meta["step"] == 1 and meta["data"] == {"seed": 9}
  assert int(restored.step) == 1
  np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
  want = jax.tree_util.tree_flatten_with_path((state.params, state.opt_state))[0]
  got = jax.tree.leaves((restored.params, restored.opt_state))
  assert len(want) == len(got)
  for (path, a), b in zip(want, got):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=optim.path_name(path))
    assert b.sharding == a.sharding or b.sharding.is_equivalent_to(a.sharding, a.ndim)
  # A different model structure fails with a message naming the missing entry.
  other = config_lib.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3,
                          num_heads=2, num_kv_heads=1, head_dim=16)
  ckpt = checkpointing.Checkpointer(tmp_path)
  try:
    with pytest.raises(Exception, match="layers"):
      ckpt.restore(ts.abstract_train_state(checkpoint_bridge.abstract_model(other), tx, mesh))
  finally:
    ckpt.close()


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--sleep", type=float, default=0.0)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  worker(args.workdir, args.sleep, args.out)
