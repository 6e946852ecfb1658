"""Scoring CLIs: a malformed pair file fails naming the file and the record before any model
work; a trained reward model's scores through launch.score_pairs / launch.score agree with the
in-process scorer; launch.score refuses to resume a file scored by another model or debias
setting."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_malformed_pair_file_names_file_and_record(tmp_path):
  bad = tmp_path / "pairs.json"
  good = {"conversations": [{"from": "human", "value": "新年祝福"}],
          "chosen": {"from": "gpt", "value": "新年快乐！"}, "rejected": {"from": "gpt", "value": "好"}}
  broken = {"conversations": [{"from": "human", "value": "生日祝福"}],
            "chosen": {"from": "gpt", "value": "生日快乐"}}
  bad.write_text(json.dumps([good, good, broken], ensure_ascii=False))
  proc = run("launch.score_pairs", f"--workdir={tmp_path / 'no_run'}", f"--pairs={bad}",
             f"--output={tmp_path / 'out.jsonl'}")
  assert proc.returncode != 0
  assert str(bad) in proc.stderr and "record 2" in proc.stderr and "rejected" in proc.stderr
  assert not (tmp_path / "out.jsonl").exists()


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
  """A reward-model run directory with a real checkpoint (tiny random model, 2 steps)."""
  from configs import rm_tiny_cpu
  from rlaif_jax.training import reward_model
  workdir = tmp_path_factory.mktemp("rm")
  data = tmp_path_factory.mktemp("data")
  (data / "reward_model").mkdir()
  pairs = [{"conversations": [{"from": "human", "value": f"祝福{i}"}],
            "chosen": {"from": "gpt", "value": "新年快乐，万事如意，身体健康！" * (1 + i % 2)},
            "rejected": {"from": "gpt", "value": "新年好"}} for i in range(16)]
  for split in ("train", "test"):
    (data / "reward_model" / f"reward_data_{split}.json").write_text(
        json.dumps(pairs, ensure_ascii=False))
  texts = ["新年快乐，万事如意，身体健康！", "生日快乐", "恭喜发财"] * 50
  from rlaif_jax.tokenizers.train import train_sentencepiece
  tok = train_sentencepiece(texts, workdir / "sp", vocab_size=300)
  config = rm_tiny_cpu.get_config()
  config.tokenizer.path = str(tok)
  config.model.overrides = dict(hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                                num_kv_heads=2, head_dim=8)
  config.batch_size, config.eval_batch_size = 4, 8
  config.loop.total_steps, config.loop.eval_every, config.loop.checkpoint_every = 2, 2, 2
  config.loop.progress_bar = False
  config.optim.warmup_steps = 0
  config.data.synthetic_negatives = 0.0  # this data dir holds only the pair files
  report = reward_model.run_train_rm(config, workdir, data)
  return workdir, data, report


def test_score_pairs_matches_training_report(rm_run, tmp_path):
  workdir, data, report = rm_run
  out = tmp_path / "scores.jsonl"
  proc = run("launch.score_pairs", f"--workdir={workdir}",
             f"--pairs={data / 'reward_model' / 'reward_data_test.json'}", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["index"] for r in rows] == list(range(16))
  np.testing.assert_allclose([r["chosen_score"] for r in rows], report["chosen_scores"],
                             atol=1e-5)
  assert f"| reward model | {report['pair_accuracy']:.4f} |" in proc.stdout
  assert "longer response wins (baseline)" in proc.stdout


def test_score_records_resumable(rm_run, tmp_path):
  workdir, _, report = rm_run
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps({"id": f"r{i}", "query": "祝福0", "response": r},
                                    ensure_ascii=False) + "\n"
                         for i, r in enumerate(["新年快乐，万事如意，身体健康！", "新年好"])))
  out = tmp_path / "out.jsonl"
  for _ in range(2):  # the second run finds every id done and appends nothing
    proc = run("launch.score", f"--workdir={workdir}", f"--input={inp}", f"--output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["id"] for r in rows] == ["r0", "r1"]
  assert rows[0]["scored_with"] == rows[1]["scored_with"]
  np.testing.assert_allclose([r["score"] for r in rows],
                             [report["chosen_scores"][0], report["rejected_scores"][0]], atol=1e-5)


def test_score_refuses_a_resume_under_another_model_or_debias_setting(rm_run, tmp_path):
  workdir, _, _ = rm_run
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps({"id": i, "query": "祝福0", "response": r},
                                    ensure_ascii=False) + "\n"
                         for i, r in enumerate(["新年快乐，万事如意！", "新年好", "恭喜发财"])))
  out = tmp_path / "out.jsonl"
  proc = run("launch.score", f"--workdir={workdir}", f"--input={inp}", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  fingerprint = lines[0]["scored_with"]
  assert all(r["scored_with"] == fingerprint for r in lines)
  assert fingerprint["debias"] is False and fingerprint["debiaser_sha256"] is None
  assert fingerprint["rm_checkpoint"].startswith("step 2, files ")
  # Keep the first line only, as a killed run would, then resume with --debias: refused.
  first = out.read_text().splitlines(True)[0]
  out.write_text(first)
  proc = run("launch.score", f"--workdir={workdir}", f"--input={inp}", f"--output={out}",
             "--debias")
  assert proc.returncode == 1
  assert str(out) in proc.stderr and "debias False (now True)" in proc.stderr
  assert out.read_text() == first  # nothing was appended
  # The model retrained in place (its checkpoint files rewritten): refused, naming it.
  ckpt_file = next(p for p in (workdir / "checkpoints").rglob("*") if p.is_file())
  st = ckpt_file.stat()
  os.utime(ckpt_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  try:
    proc = run("launch.score", f"--workdir={workdir}", f"--input={inp}", f"--output={out}")
  finally:
    os.utime(ckpt_file, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert proc.returncode == 1 and str(out) in proc.stderr
  assert "rm_checkpoint" in proc.stderr and "debias False" not in proc.stderr
  # A refitted debiaser under --debias: refused, naming the debiaser.
  out_d = tmp_path / "out_debiased.jsonl"
  proc = run("launch.score", f"--workdir={workdir}", f"--input={inp}", f"--output={out_d}",
             "--debias")
  assert proc.returncode == 0, proc.stderr[-3000:]
  debiased = [json.loads(l) for l in out_d.read_text().splitlines()]
  assert debiased[0]["scored_with"]["debias"] is True
  assert debiased[0]["scored_with"]["debiaser_sha256"]
  out_d.write_text(out_d.read_text().splitlines(True)[0])
  debiaser = workdir / "length_debiaser.json"
  saved = debiaser.read_text()
  debiaser.write_text(json.dumps({**json.loads(saved), "slope": 123.0}))
  try:
    proc = run("launch.score", f"--workdir={workdir}", f"--input={inp}", f"--output={out_d}",
               "--debias")
  finally:
    debiaser.write_text(saved)
  assert proc.returncode == 1 and str(out_d) in proc.stderr and "debiaser_sha256" in proc.stderr
  # A file from before fingerprints: refused too.
  out.write_text(json.dumps({"id": 0, "query": "祝福0", "response": "x", "score": 1.0}) + "\n")
  proc = run("launch.score", f"--workdir={workdir}", f"--input={inp}", f"--output={out}")
  assert proc.returncode == 1 and "without a scoring fingerprint" in proc.stderr
