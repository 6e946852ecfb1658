"""python -m launch.judge end to end against the fake server: faults, SIGKILL + resume, report."""
import json
import signal
import subprocess
import time

import numpy as np
import pytest

from fake_openai_server import (FakeOpenAIServer, cli_env, launch_args, run_launch,
                                schedule_by_key)
from rlaif_jax.metrics.agreement import best_length_threshold_baseline, binary_agreement

FAST = dict(timeout_s=0.5, max_retries=6, retry_base_delay_s=0.01, retry_max_delay_s=0.05)


def _write(path, records):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                  encoding="utf-8")


def _read(path):
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _synthetic(n):
  return [{"query": f"请求{i}", "response": f"{i}号" + "祝你前程似锦万事如意" * (i % 4)}
          for i in range(n)]


def test_killed_job_resumes_without_duplicates_or_loss(tmp_path):
  records = _synthetic(60)
  _write(tmp_path / "in.jsonl", records)
  out = tmp_path / "out.jsonl"
  plan = {records[i]["response"]: [["429", "500", "truncated", "timeout"][i % 4]]
          for i in range(0, 60, 7)}
  with FakeOpenAIServer(delay_s=0.03, fault_fn=schedule_by_key(plan), timeout_sleep_s=0.8,
                        min_len=20) as server:
    flags = dict(input=tmp_path / "in.jsonl", output=out, base_url=server.base_url, model="m",
                 concurrency=2, chunk_size=4, chunks_in_flight=1, progress=False, **FAST)
    proc = subprocess.Popen(launch_args("judge", **flags), cwd=str(tmp_path), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
      if out.exists() and out.read_text(encoding="utf-8").count("\n") >= 12:
        break
      time.sleep(0.02)
    assert proc.poll() is None, "job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()
    done_before = out.read_text(encoding="utf-8").count("\n")
    assert 12 <= done_before < 60
    with open(out, "a", encoding="utf-8") as f:
      f.write('{"id": 59, "query": "torn wri')  # A write cut by the kill.
    result = subprocess.run(launch_args("judge", **flags), cwd=str(tmp_path), env=cli_env(),
                            capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = _read(out)
  assert sorted(r["id"] for r in lines) == list(range(60))  # Exactly once each.
  for r in lines:
    assert r.get("error") is None, r
    assert r["verdict"] == int(len(records[r["id"]]["response"]) >= 20)
    assert r["query"] == records[r["id"]]["query"]
  assert f"already done      {done_before}" in result.stdout
  assert "report" not in result.stdout  # No labels -> no report.


def test_judge_on_the_evaluation_set_writes_the_agreement_report(tmp_path, data_dir):
  src = data_dir / "evaluation_set" / "evaluate_data.json"
  records = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()[:80]]
  _write(tmp_path / "eval.jsonl", records)
  out = tmp_path / "judged.jsonl"
  plan = {records[3]["response"]: ["503", "non_json"], records[9]["response"]: ["garbage"],
          records[20]["response"]: ["garbage", "garbage", "garbage", "garbage"]}
  with FakeOpenAIServer(fault_fn=schedule_by_key(plan), min_len=40) as server:
    result = run_launch("judge", input=tmp_path / "eval.jsonl", output=out,
                        base_url=server.base_url, model="m", concurrency=8, principles="v0",
                        max_parse_attempts=3, progress=False, **FAST)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = {r["id"]: r for r in _read(out)}
  assert sorted(lines) == list(range(80))
  assert "unparseable reply after 3 attempt(s)" in lines[20]["error"]
  assert lines[20]["verdict"] is None
  judged = [lines[i] for i in range(80) if i != 20]
  for r in judged:
    assert r["verdict"] == int(len(r["response"]) >= 40) and r["label"] == records[r["id"]]["label"]
  report = json.loads((tmp_path / "judged.jsonl.report.json").read_text(encoding="utf-8"))
  labels = np.array([r["label"] for r in judged])
  expected = binary_agreement(labels, np.array([r["verdict"] for r in judged]))
  baseline = best_length_threshold_baseline(np.array([len(r["response"]) for r in judged]), labels)
  assert (report["n_labelled"], report["n_judged"], report["n_errors"]) == (80, 79, 1)
  for key in ("accuracy", "precision", "recall", "f1", "cohen_kappa"):
    assert report["judge"][key] == pytest.approx(expected[key])
    assert report["length_baseline"][key] == pytest.approx(baseline[key])
  assert report["length_baseline"]["threshold"] == baseline["threshold"]
  # The fake judge IS a length rule, so the fitted baseline can only match or beat it.
  assert report["length_baseline"]["accuracy"] >= report["judge"]["accuracy"]
  assert "cohen_kappa" in result.stdout and f"len>={baseline['threshold']}" in result.stdout


def test_judge_cli_local_backend_and_input_errors(tmp_path):
  _write(tmp_path / "in.jsonl", _synthetic(9))
  result = run_launch("judge", input=tmp_path / "in.jsonl", output=tmp_path / "o.jsonl",
                      backend="local", local_fn="fake_openai_server:make_local_generate_fn",
                      local_fn_kwargs='{"min_len": 20}', progress=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r["verdict"] for r in _read(tmp_path / "o.jsonl")] == [
      int(len(r["response"]) >= 20) for r in _synthetic(9)]
  (tmp_path / "bad.jsonl").write_text('{"query": "q", "response": "r"}\n{"query": "q"\n',
                                      encoding="utf-8")
  bad = run_launch("judge", input=tmp_path / "bad.jsonl", output=tmp_path / "o2.jsonl",
                   base_url="http://127.0.0.1:9", model="m", progress=False)
  assert bad.returncode == 1 and "bad.jsonl:2: invalid JSON" in bad.stderr
  (tmp_path / "labels.jsonl").write_text('{"query": "q", "response": "r", "label": "Good"}\n'
                                         '{"query": "q", "response": "r", "label": "maybe"}\n',
                                         encoding="utf-8")
  unlabelled = run_launch("judge", input=tmp_path / "labels.jsonl", output=tmp_path / "o4.jsonl",
                          base_url="http://127.0.0.1:9", model="m", progress=False)
  assert unlabelled.returncode == 1
  assert "labels.jsonl:2: field 'label' has unusable value 'maybe'" in unlabelled.stderr
  missing = run_launch("judge", input=tmp_path / "in.jsonl", output=tmp_path / "o3.jsonl",
                       progress=False)
  assert missing.returncode != 0 and "--base_url" in missing.stderr


def test_cli_never_prints_the_api_key(tmp_path):
  secret = "sk-cli-SECRET-987654321"
  _write(tmp_path / "in.jsonl", _synthetic(3))
  env = cli_env(MY_JUDGE_KEY=secret)
  flags = dict(input=tmp_path / "in.jsonl", model="m", api_key_env="MY_JUDGE_KEY",
               progress=False, verbosity=1, **FAST)
  with FakeOpenAIServer(expected_key=secret,
                        fault_fn=schedule_by_key({_synthetic(3)[0]["response"]: ["429"]})) as server:
    ok = run_launch("judge", env=env, output=tmp_path / "ok.jsonl", base_url=server.base_url,
                    **flags)
    assert {r.authorization for r in server.log} == {f"Bearer {secret}"}
  with FakeOpenAIServer(expected_key="some-other-key") as server:  # Echoes the header in a 401.
    rejected = run_launch("judge", env=env, output=tmp_path / "no.jsonl",
                          base_url=server.base_url, **flags)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert rejected.returncode == 2 and "HTTP 401" in rejected.stderr
  assert "Bearer ***" in rejected.stderr
  for text in (ok.stdout, ok.stderr, rejected.stdout, rejected.stderr):
    assert secret not in text
