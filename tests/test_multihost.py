"""Multi-process (multi-host) runs: 2 local CPU processes (localhost coordinator, one device
each, fsdp=2) end where 1 process with 2 devices ends.

* the SFT training loop alone (the worker is this file run as a script; each process feeds only
  its rows of the global batch), including the checkpoint and the inference export;
* every stage through its launch CLI at micro size (`tests/multihost_configs.py`), chained: SFT
  -> reward model -> GRPO (reference and reward model kept on the host) -> PPO -> generate ->
  score -> score_pairs. Metrics, exports, the RM report, samples and job outputs must match the
  1-process run, and every file is written once (by process 0);
* the evaluation (`launch.evaluate`: generation, reward-model and length judges, reliability,
  controls) on those checkpoints: the same tables and summary as the 1-process run.
"""
import argparse
import contextlib
import json
import os
import pathlib
import signal
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
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONFAULTHANDLER="1",
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


# ---- every stage through its launch CLI ------------------------------------------------------

def _launch(module: str, args: list[str], num_processes: int, log: pathlib.Path
            ) -> list[subprocess.Popen]:
  """Starts `python -m module args` as 1 process with 2 devices or as 2 processes."""
  if num_processes == 1:
    env = _env({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    return [subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                             stdout=open(f"{log}.0", "w"), stderr=subprocess.STDOUT)]
  port = _free_port()
  flags = [f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}"]
  return [subprocess.Popen([sys.executable, "-m", module, *args, *flags, f"--process_id={pid}"],
                           cwd=ROOT, env=_env({}), stdout=open(f"{log}.{pid}", "w"),
                           stderr=subprocess.STDOUT) for pid in range(num_processes)]


def _run_stage(root: pathlib.Path, name: str, module: str, args) -> None:
  """Runs the stage as 1 process (root/single) and as 2 processes (root/multi) side by side;
  `args(run_dir)` gives its flags. When a process fails or hangs, the processes still running
  get SIGABRT, which makes Python's faulthandler (PYTHONFAULTHANDLER=1) print every thread's
  stack, and the failure shows the log tail of every process of that mode."""
  procs = {mode: _launch(module, args(root / mode), n, root / f"{name}.{mode}.log")
           for mode, n in (("single", 1), ("multi", 2))}
  logs = lambda mode: [pathlib.Path(f"{root / f'{name}.{mode}.log'}.{pid}")
                       for pid in range(len(procs[mode]))]
  try:
    for mode, ps in procs.items():
      for pid, p in enumerate(ps):
        try:
          p.wait(timeout=400)
        except subprocess.TimeoutExpired:
          pass
        if p.returncode != 0:
          for other in ps:
            if other.poll() is None:
              other.send_signal(signal.SIGABRT)
              with contextlib.suppress(subprocess.TimeoutExpired):
                other.wait(timeout=30)
          tails = "\n".join(f"--- process {i} (returncode {q.returncode}):\n"
                            f"{log.read_text()[-3000:]}"
                            for i, (q, log) in enumerate(zip(ps, logs(mode))))
          pytest.fail(f"{name} {mode} process {pid} failed:\n{tails}")
  finally:
    for p in [p for ps in procs.values() for p in ps]:
      if p.poll() is None:
        p.kill()


@pytest.fixture(scope="module")
def stages(tmp_path_factory, data_dir) -> pathlib.Path:
  """root/{single,multi}/ after every stage ran in both modes (tokenizer trained once)."""
  from rlaif_jax.data import greetings
  from rlaif_jax.tokenizers import train as tok_train
  root = tmp_path_factory.mktemp("stages")
  tok = tok_train.train_sentencepiece(greetings.greeting_corpus(data_dir), root / "tok" / "tok",
                                      vocab_size=3200)
  queries = ["新年祝福", "生日快乐", "给老师的祝福", "中秋节", "端午安康"]
  (root / "prompts.jsonl").write_text("".join(json.dumps({"id": i, "prompt": q}) + "\n"
                                              for i, q in enumerate(queries)))
  (root / "records.jsonl").write_text("".join(
      json.dumps({"id": i, "query": q, "response": q * (i + 1)}) + "\n"
      for i, q in enumerate(queries)))
  # The RM report and score_pairs score a test file: 24 of the paper's test pairs keep it short.
  pairs = json.loads((data_dir / "reward_model" / "reward_data_test.json").read_text())
  small_pairs = root / "test_pairs.json"
  small_pairs.write_text(json.dumps(pairs[:24], ensure_ascii=False))
  cfg = f"--config={ROOT / 'tests' / 'multihost_configs.py'}"
  data = f"--data_dir={data_dir}"
  rl_flags = lambda d: [f"--config.policy.sft_workdir={d / 'sft'}",
                        f"--config.reward.rm.workdir={d / 'rm'}", data]
  _run_stage(root, "sft", "launch.sft", lambda d: [
      f"{cfg}:sft", f"--workdir={d / 'sft'}", data, f"--config.tokenizer.path={tok}"])
  _run_stage(root, "rm", "launch.train_rm", lambda d: [
      f"{cfg}:rm", f"--workdir={d / 'rm'}", data, f"--config.init.sft_workdir={d / 'sft'}",
      f"--config.data.test_file={small_pairs}"])
  _run_stage(root, "grpo", "launch.rl", lambda d: [
      f"{cfg}:grpo", f"--workdir={d / 'grpo'}", *rl_flags(d), "--config.rl.ref_on_host=True",
      "--config.reward.rm.on_host=True"])
  _run_stage(root, "ppo", "launch.rl", lambda d: [
      f"{cfg}:ppo", f"--workdir={d / 'ppo'}", *rl_flags(d), "--config.loop.total_steps=1"])
  _run_stage(root, "generate", "launch.generate", lambda d: [
      f"--checkpoint={d / 'grpo'}", f"--prompts={root / 'prompts.jsonl'}",
      f"--output={d / 'generated.jsonl'}", "--n=2", "--max_new_tokens=8", "--batch_size=8"])
  _run_stage(root, "score", "launch.score", lambda d: [
      f"--workdir={d / 'rm'}", f"--input={root / 'records.jsonl'}",
      f"--output={d / 'scored.jsonl'}", "--batch_size=2"])
  _run_stage(root, "score_pairs", "launch.score_pairs", lambda d: [
      f"--workdir={d / 'rm'}", f"--pairs={small_pairs}",
      f"--output={d / 'pairs.jsonl'}"])
  return root


def _same_metrics(single: pathlib.Path, multi: pathlib.Path, keys: tuple[str, ...]) -> None:
  from rlaif_jax.training import metrics as metrics_lib
  a, b = metrics_lib.read_metrics(single), metrics_lib.read_metrics(multi)
  assert [r["step"] for r in a] == [r["step"] for r in b] and a
  for ra, rb in zip(a, b):
    for k in keys:
      if k in ra:
        assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (single, ra["step"], k)


def _same_export(single: pathlib.Path, multi: pathlib.Path) -> None:
  from safetensors.numpy import load_file
  a = load_file(single / "export" / "model.safetensors")
  b = load_file(multi / "export" / "model.safetensors")
  assert sorted(a) == sorted(b) and a
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_stage_as_two_processes_ends_where_one_process_ends(stages):
  single, multi = stages / "single", stages / "multi"
  # SFT: training rows, export, greedy samples after the export.
  _same_metrics(single / "sft", multi / "sft", ("loss", "eval_loss", "accuracy"))
  _same_export(single / "sft", multi / "sft")
  assert (multi / "sft" / "samples.txt").read_text() == (single / "sft" / "samples.txt").read_text()
  # Reward model: training rows and the report (debiaser fit and test-pair scores).
  _same_metrics(single / "rm", multi / "rm", ("loss", "eval_loss", "eval_accuracy"))
  ra, rb = (json.loads((d / "rm" / "rm_report.json").read_text()) for d in (single, multi))
  assert rb["pair_accuracy"] == ra["pair_accuracy"] and rb["n_pairs"] == ra["n_pairs"]
  np.testing.assert_allclose(rb["chosen_scores"], ra["chosen_scores"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rb["rejected_scores"], ra["rejected_scores"], rtol=1e-5, atol=1e-6)
  assert rb["debiaser_slope_per_char"] == pytest.approx(ra["debiaser_slope_per_char"], rel=1e-4)
  # GRPO (reference and RM on the host) and PPO: rollout rewards, losses, KL, exports, samples.
  rl_keys = ("reward_mean", "reward_std", "response_len", "loss", "kl", "grad_norm",
             "critic_loss")
  for run in ("grpo", "ppo"):
    _same_metrics(single / run, multi / run, rl_keys)
    _same_export(single / run, multi / run)
    assert (multi / run / "samples.txt").read_text() == (single / run / "samples.txt").read_text()
  # Jobs: generations, scores, pair scores, written once.
  gen_a, gen_b = _jsonl(single / "generated.jsonl"), _jsonl(multi / "generated.jsonl")
  assert len(gen_a) == 10 and [r["completion_token_ids"] for r in gen_b] == [
      r["completion_token_ids"] for r in gen_a]
  sa, sb = _jsonl(single / "scored.jsonl"), _jsonl(multi / "scored.jsonl")
  assert [r["id"] for r in sb] == [r["id"] for r in sa] == list(range(5))
  np.testing.assert_allclose([r["score"] for r in sb], [r["score"] for r in sa], rtol=1e-5)
  pa, pb = _jsonl(single / "pairs.jsonl"), _jsonl(multi / "pairs.jsonl")
  assert len(pb) == len(pa) == ra["n_pairs"]
  np.testing.assert_allclose([r["chosen_score"] for r in pb], ra["chosen_scores"], rtol=1e-5,
                             atol=1e-6)
  # Progress and reports are printed by process 0 only.
  log1 = (stages / "rm.multi.log.1").read_text()
  assert "process 1 of 2" in log1 and "pair accuracy" not in log1


@pytest.fixture(scope="module")
def evaluated(stages, data_dir) -> pathlib.Path:
  """root/{single,multi}/eval: `launch.evaluate` on the 1-process run's SFT and GRPO exports
  with its reward model as a judge, reliability and controls on."""
  single = stages / "single"
  _run_stage(stages, "evaluate", "launch.evaluate", lambda d: [
      f"--checkpoints=sft={single / 'sft'},grpo={single / 'grpo'}",
      f"--judges=rm:{single / 'rm'},length", f"--output_dir={d / 'eval'}",
      f"--data_dir={data_dir}", "--max_prompts=4", "--max_new_tokens=8", "--batch_size=4",
      "--max_labelled=12", "--reliability", "--controls", "--judge_chunk_size=4",
      "--mesh=1,2,1"])
  return stages


def test_evaluation_as_two_processes_ends_where_one_process_ends(evaluated):
  a, b = evaluated / "single" / "eval", evaluated / "multi" / "eval"
  for name in ("excellence.csv", "diversity.csv", "reliability.csv", "controls.csv"):
    assert (b / name).read_text() == (a / name).read_text(), name
  sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
  assert sb["excellence"] == sa["excellence"] and sb["diversity"] == sa["diversity"]
  assert len(sa["excellence"]) == 4  # 2 checkpoints x (rm, length)
  for ckpt in ("sft", "grpo"):
    ga, gb = _jsonl(a / "generations" / f"{ckpt}.jsonl"), _jsonl(b / "generations" / f"{ckpt}.jsonl")
    assert [r["response"] for r in gb] == [r["response"] for r in ga] and len(ga) == 4
    ja = _jsonl(a / "judgements" / ckpt / "rm_rm.jsonl")
    jb = _jsonl(b / "judgements" / ckpt / "rm_rm.jsonl")  # written once, by process 0
    assert [r["id"] for r in jb] == list(range(4))
    np.testing.assert_allclose([r["score"] for r in jb], [r["score"] for r in ja], rtol=1e-5)
  log1 = (evaluated / "evaluate.multi.log.1").read_text()
  assert "process 1 of 2" in log1 and "Excellence rate" not in log1


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()
  worker(args.workdir, args.out, args.num_processes, args.process_id, args.port)
