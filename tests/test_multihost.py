"""Multi-process training: a few SFT steps run as 2 local CPU processes (localhost coordinator,
one device each, fsdp=2) end where the same steps run as 1 process with 2 devices end, including
the checkpoint and the inference export.

The worker is this file run as a script; each process feeds only its rows of the global batch.
"""
import argparse
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4


def worker(workdir: str, out: str, num_processes: int, process_id: int, port: int) -> None:
  from rlaif_jax import distributed
  if num_processes > 1:
    assert distributed.maybe_initialize(f"localhost:{port}", num_processes, process_id)
  import jax
  from jax.experimental import multihost_utils
  from rlaif_jax.models import checkpoint_bridge, config as config_lib
  from rlaif_jax.sharding import mesh as mesh_lib
  from rlaif_jax.training import checkpointing, optim, sft
  from rlaif_jax.training import trainer as trainer_lib
  assert jax.device_count() == 2 and jax.process_count() == num_processes
  cfg = config_lib.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                        num_heads=2, num_kv_heads=1, head_dim=16)
  mesh = mesh_lib.make_mesh((1, 2, 1))
  tx, sched = optim.make_optimizer(1e-2, STEPS, warmup_steps=1)
  loop = trainer_lib.LoopConfig(total_steps=STEPS, log_every=1, eval_every=0,
                                checkpoint_every=2, progress_bar=False)
  trainer = trainer_lib.Trainer(sft.sft_loss, tx, sched, mesh, workdir, loop, seed=3,
                                meta={"model_config": cfg.to_dict()})

  def batches(start):
    step = start
    while True:
      rng = np.random.default_rng([2, step])
      tokens = rng.integers(0, 64, (8, 12)).astype(np.int32)
      attention = (np.arange(12)[None] < rng.integers(5, 13, (8, 1))).astype(np.int32)
      yield {"tokens": tokens, "attention_mask": attention, "loss_mask": attention,
             "positions": np.maximum(np.cumsum(attention, 1) - 1, 0).astype(np.int32)}
      step += 1

  state = trainer.init_state(lambda: checkpoint_bridge.init_sharded(cfg, mesh, seed=0),
                             checkpoint_bridge.abstract_model(cfg))
  state = trainer.fit(state, batches)
  trainer.close()
  checkpointing.export_for_inference(workdir, mesh=mesh)  # restores the checkpoint, gathers
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  gathered = {optim.path_name(p): np.asarray(multihost_utils.process_allgather(x, tiled=True))
              for p, x in flat}
  if jax.process_index() == 0:
    np.savez(out, **gathered)


def _env(extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _cmd(workdir, out, n, pid, port):
  return [sys.executable, __file__, "--workdir", str(workdir), "--out", str(out),
          "--num_processes", str(n), "--process_id", str(pid), "--port", str(port)]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  single = subprocess.run(
      _cmd(tmp_path / "single", tmp_path / "single.npz", 1, 0, 0), capture_output=True,
      text=True, timeout=240,
      env=_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}))
  assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
  port = _free_port()
  procs = [subprocess.Popen(_cmd(tmp_path / "multi", tmp_path / "multi.npz", 2, pid, port),
                            env=_env({}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for pid in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for pid, (p, text) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {pid}:\n{text[-4000:]}"
  assert "process 1 of 2" in "".join(outputs)
  want, got = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
  assert sorted(want.files) == sorted(got.files) and len(want.files) > 10
  for k in want.files:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
  from rlaif_jax.training import metrics as metrics_lib
  rows_single = metrics_lib.read_metrics(tmp_path / "single")
  rows_multi = metrics_lib.read_metrics(tmp_path / "multi")  # written once, by process 0
  assert [r["step"] for r in rows_multi] == list(range(1, STEPS + 1))
  for a, b in zip(rows_single, rows_multi):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
  from safetensors.numpy import load_file
  exp_single = load_file(tmp_path / "single" / "export" / "model.safetensors")
  exp_multi = load_file(tmp_path / "multi" / "export" / "model.safetensors")
  for k in exp_single:
    np.testing.assert_allclose(exp_multi[k], exp_single[k], rtol=1e-6, atol=1e-7, err_msg=k)


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()
  worker(args.workdir, args.out, args.num_processes, args.process_id, args.port)
