"""The offline judging jobs end to end against our own OpenAI-compatible server.

A tiny random checkpoint is served with `python -m launch.serve`; `launch.judge`,
`launch.curate` and `launch.optimize_principles` then run as subprocesses with
`--backend=openai` pointed at it. The random model's replies never parse, so every record must
end as a finished line with an ``error`` (exit 0, no crash), the optimizer must keep the initial
rules and log why, and re-running each command must resume without writing anything twice.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rlaif_jax.judging.principles import load_principles
from tests import tiny_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_NAME = "tiny-judge"
JOB_TIMEOUT_S = 120

# Labels are 0/1: the judge's agreement report only counts numeric labels.
JUDGE_RECORDS = [
    {"id": "a", "query": "给妈妈写一句新年祝福", "response": "妈妈新年快乐，身体健康！", "label": 1},
    {"id": 7, "query": "给老板写一句祝福", "response": "好", "label": 0},
    {"query": "朋友生日祝福", "response": "祝你生日快乐，天天开心。", "label": 1},
    {"id": "d", "query": "同事升职", "response": "恭喜", "label": 0},
]
EXAMPLES = [
    {"query": "给妈妈写一句新年祝福", "response": "妈妈新年快乐，身体健康！", "label": 1},
    {"query": "给老板写一句祝福", "response": "好", "label": 0},
    {"query": "朋友生日祝福", "response": "祝你生日快乐，天天开心。", "label": "Good"},
]
CANDIDATES = [
    {"id": "c1", "query": "给妈妈写一句新年祝福", "response": "新年快乐，妈妈！"},
    {"id": "c2", "query": "给妈妈写一句新年祝福", "response": "嗯"},
    {"query": "同事升职", "response": "恭喜高升，前程似锦！"},
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
  """CPU-only JAX, the repo on the path, and a dummy key so no real key is ever sent."""
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
              OPENAI_API_KEY="dummy-test-key")


def write_jsonl(path: pathlib.Path, records: list[dict]) -> pathlib.Path:
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                  encoding="utf-8")
  return path


def read_jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
  """Starts `launch.serve` on a free port, waits for /v1/models, and always stops it.

  --max_prompt_tokens is raised because the tiny tokenizer is byte-level (3 tokens per Chinese
  character): the curator's positive-agent prompt is ~2200 tokens, past the default 2048, and
  the server's 400 would end those records as backend errors before any reply is parsed.
  """
  hf_dir = tiny_hf.make_tiny_hf_checkpoint(tmp_path_factory.mktemp("ckpt"))
  port = free_port()
  log_path = tmp_path_factory.mktemp("serve") / "serve.log"
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen([sys.executable, "-m", "launch.serve", f"--hf_dir={hf_dir}",
                             f"--port={port}", f"--model_name={MODEL_NAME}",
                             "--max_prompt_tokens=8192", "--max_tokens_limit=64"],
                            cwd=ROOT, env=subprocess_env(), stdout=log,
                            stderr=subprocess.STDOUT, text=True)
  try:
    deadline, models = time.time() + 90, None
    while models is None:
      assert proc.poll() is None, log_path.read_text(encoding="utf-8")[-3000:]
      assert time.time() < deadline, "server did not come up in 90 s"
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
          models = json.loads(r.read())
      except OSError:
        time.sleep(0.5)
    assert models["data"][0]["id"] == MODEL_NAME
    yield f"http://127.0.0.1:{port}/v1"
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait(timeout=10)


def run_job(module: str, base_url: str, *args: str) -> subprocess.CompletedProcess:
  """Runs `python -m launch.<module>` against the server with small, fail-fast settings."""
  cmd = [sys.executable, "-m", f"launch.{module}", *args, "--backend=openai",
         f"--base_url={base_url}", f"--model={MODEL_NAME}", "--max_tokens=8",
         "--max_parse_attempts=1", "--max_retries=0", "--timeout_s=60"]
  return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                        timeout=JOB_TIMEOUT_S)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


def test_judge_records_errors_and_resumes_without_duplicates(base_url, tmp_path):
  inp = write_jsonl(tmp_path / "in.jsonl", JUDGE_RECORDS)
  out = tmp_path / "judged.jsonl"
  args = (f"--input={inp}", f"--output={out}", "--progress=false")

  assert_ok(run_job("judge", base_url, *args))
  lines = read_jsonl(out)
  assert sorted(map(json.dumps, (r["id"] for r in lines))) == sorted(
      map(json.dumps, ["a", 7, 2, "d"]))  # the record without an id gets its line number
  by_id = {json.dumps(r["id"]): r for r in lines}
  for line_no, record in enumerate(JUDGE_RECORDS):
    line = by_id[json.dumps(record.get("id", line_no))]
    assert line["verdict"] is None and "unparseable reply" in line["error"], line
    assert line["query"] == record["query"] and line["response"] == record["response"]
    assert line["label"] == record["label"]
  report = json.loads(pathlib.Path(f"{out}.report.json").read_text(encoding="utf-8"))
  assert report == {"n_labelled": 4, "n_judged": 0, "n_errors": 4}

  before = out.read_bytes()
  again = run_job("judge", base_url, *args)
  assert_ok(again)
  assert out.read_bytes() == before  # every id was done: nothing re-judged or appended
  assert "processed now     0" in again.stdout


def test_curate_labels_every_candidate_and_writes_pairs(base_url, tmp_path):
  inp = write_jsonl(tmp_path / "candidates.jsonl", CANDIDATES)
  examples = write_jsonl(tmp_path / "examples.jsonl", EXAMPLES)
  out_dir = tmp_path / "curated"
  args = (f"--input={inp}", f"--output_dir={out_dir}", f"--examples={examples}",
          "--num_examples=2", "--progress=false")

  assert_ok(run_job("curate", base_url, *args))
  labeled = out_dir / "labeled.jsonl"
  lines = read_jsonl(labeled)
  assert sorted(map(json.dumps, (r["id"] for r in lines))) == sorted(
      map(json.dumps, ["c1", "c2", 2]))
  for line in lines:
    assert "unparseable reply" in line["error"] and line["label"] is None, line
  pairs = json.loads((out_dir / "pairs.json").read_text(encoding="utf-8"))
  assert pairs == []  # no candidate was approved or rejected

  before = labeled.read_bytes()
  assert_ok(run_job("curate", base_url, *args))
  assert labeled.read_bytes() == before


def test_optimize_principles_keeps_rules_when_nothing_parses(base_url, tmp_path):
  labelled = write_jsonl(tmp_path / "labelled.jsonl", EXAMPLES)
  queries = tmp_path / "queries.txt"
  queries.write_text("给妈妈写一句新年祝福\n同事升职\n", encoding="utf-8")
  out_dir = tmp_path / "principles_run"
  args = (f"--labeled={labelled}", f"--queries={queries}", f"--output_dir={out_dir}",
          "--iterations=1", "--holdout_size=1", "--adversarial_batch=1", "--reflect_batch=1")

  assert_ok(run_job("optimize_principles", base_url, *args))
  iter_dir = out_dir / "iter_1"
  for name in ("principles.json", "strategy.json", "update_log.jsonl", "metrics.json", "DONE"):
    assert (iter_dir / name).is_file(), name
  assert not (out_dir / "iter_0").exists()

  initial = load_principles("v0")
  final = load_principles(str(out_dir / "final_principles.json"))
  assert final.version == "v0+iter1"
  assert final.principles == initial.principles
  assert final.bad_strategies == initial.bad_strategies
  strategy = json.loads((iter_dir / "strategy.json").read_text(encoding="utf-8"))
  assert strategy["bad_strategies"] == list(initial.bad_strategies)

  log = read_jsonl(iter_dir / "update_log.jsonl")
  assert [e["event"] for e in log] == ["generator_error"]
  assert log[0]["iteration"] == 1 and "unparseable" in log[0]["error"]
  metrics = json.loads((iter_dir / "metrics.json").read_text(encoding="utf-8"))
  assert metrics["accuracy_before"] is None and metrics["accuracy_after"] is None
  assert metrics["heldout"] == 1 and metrics["after"]["n_errors"] == 1
  assert metrics["adversarial"]["generator_errors"] == 1
  assert metrics["reflection"] == {"examples": 1, "judged": 0, "mistakes": 0,
                                   "detector_errors": 1, "suggestions": 0}

  before = (iter_dir / "update_log.jsonl").read_bytes()
  again = run_job("optimize_principles", base_url, *args)
  assert_ok(again)
  assert "iteration 1 already done" in again.stderr
  assert (iter_dir / "update_log.jsonl").read_bytes() == before
