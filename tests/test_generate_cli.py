"""`python -m launch.generate` end to end (subprocess), resume after a kill, trainer-checkpoint
loading, and input errors."""
import collections
import json
import os
import pathlib
import subprocess
import sys

import pytest

from rlaif_jax import storage
from rlaif_jax.models import checkpoint_bridge
from rlaif_jax.sampling import jsonl_job, loading
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler
from tests import tiny_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = [{"id": "a", "prompt": "新年快乐"}, {"prompt": "祝你生日快乐"}, {"id": 7, "prompt": "hi"},
           {"id": "d", "prompt": [{"role": "user", "content": "写一条祝福语"}]},
           {"id": "e", "prompt": "恭喜发财"}]


def run_cli(*args: str, cache_dir: pathlib.Path | None = None) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  if cache_dir is not None:  # later runs reuse the first run's compiled programs
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.run([sys.executable, "-m", "launch.generate", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=240)


def read_lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return tiny_hf.make_tiny_hf_checkpoint(tmp_path_factory.mktemp("ckpt"))


def write_prompts(path: pathlib.Path) -> pathlib.Path:
  path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS),
                  encoding="utf-8")
  return path


def test_cli_end_to_end_and_resume_without_duplicates(hf_dir, tmp_path):
  prompts, out = write_prompts(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
  args = [f"--hf_dir={hf_dir}", f"--prompts={prompts}", f"--output={out}", "--max_new_tokens=6",
          "--n=2", "--batch_size=2", "--temperature=0.8", "--top_p=0.9", "--seed=3"]
  proc = run_cli(*args, cache_dir=tmp_path / "jax_cache")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tok/s" in proc.stderr  # the tqdm bar reports throughput
  lines = read_lines(out)
  assert len(lines) == 2 * len(PROMPTS)
  assert [(r["id"], r["sample_index"]) for r in lines] == [
      (i, s) for i in ("a", 1, 7, "d", "e") for s in (0, 1)]
  for r in lines:
    assert set(r) == {"id", "prompt", "completion", "completion_token_ids", "finish_reason",
                      "sample_index"}
    assert r["finish_reason"] in ("stop", "length")
    assert 1 <= len(r["completion_token_ids"]) <= 6
    assert all(0 <= t < tiny_hf.TOKENIZER_VOCAB for t in r["completion_token_ids"])
  assert lines[6]["prompt"] == PROMPTS[3]["prompt"]

  # A kill mid-batch: 5 whole lines (id "7" has only sample 0) and half of the sixth.
  raw = out.read_bytes().split(b"\n")
  out.write_bytes(b"\n".join(raw[:5]) + b"\n" + raw[5][:10])
  resumed_args = [a if a != "--batch_size=2" else "--batch_size=3" for a in args]
  proc = run_cli(*resumed_args, cache_dir=tmp_path / "jax_cache")
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = read_lines(out)
  keys = [(r["id"], r["sample_index"]) for r in again]
  assert len(keys) == len(set(keys)) == 2 * len(PROMPTS)
  assert again[:4] == lines[:4]  # complete ids were kept, not regenerated
  # Each prompt draws with a key of (seed, its line), not of its batch: the resumed run wrote
  # what the uninterrupted one did, although the pending ids fell into other batches.
  by_key = lambda rows: {(r["id"], r["sample_index"]): r for r in rows}
  assert by_key(again) == by_key(lines)
  assert collections.Counter(r["id"] for r in again) == {i: 2 for i in ("a", 1, 7, "d", "e")}
  assert "2 already done" in proc.stdout

  # Everything done: a further run (in-process here, to save a process start) writes nothing.
  before = out.read_bytes()
  policy = loading.load_policy(hf_dir=hf_dir)
  stats = jsonl_job.run(Sampler(policy.model, policy.tokenizer), str(prompts), str(out),
                        max_new_tokens=6, sampling=SamplingParams(), n=2)
  assert stats["prompts"] == 0 and stats["skipped"] == len(PROMPTS)
  assert out.read_bytes() == before


def test_cli_usage_errors(hf_dir, tmp_path):
  prompts = write_prompts(tmp_path / "in.jsonl")
  proc = run_cli(f"--prompts={prompts}", f"--output={tmp_path / 'o.jsonl'}")
  assert proc.returncode != 0 and "exactly one of --hf_dir or --checkpoint" in proc.stderr
  proc = run_cli(f"--hf_dir={hf_dir}", f"--prompts={prompts}", f"--output={tmp_path / 'o.jsonl'}",
                 "--top_p=1.5")
  assert proc.returncode != 0 and "top_p" in proc.stderr


def test_checkpoint_workdir_loads_the_export(hf_dir, tmp_path):
  policy = loading.load_policy(hf_dir=hf_dir)
  workdir = tmp_path / "run"
  export = checkpoint_bridge.export_hf_checkpoint(policy.model, workdir / loading.EXPORT_SUBDIR,
                                                  tokenizer_dir=hf_dir)
  # transformers 5 keeps the chat template in chat_template.jinja: the export must carry it.
  assert (export / "chat_template.jinja").exists()
  again = loading.load_policy(checkpoint=workdir)
  assert again.source == workdir / "export"
  assert again.tokenizer.stop_ids == policy.tokenizer.stop_ids
  prompts = [p["prompt"] for p in PROMPTS]
  a = Sampler(policy.model, policy.tokenizer).generate(prompts, 5, SamplingParams.greedy())
  b = Sampler(again.model, again.tokenizer).generate(prompts, 5, SamplingParams.greedy())
  assert [c.token_ids for c in a] == [c.token_ids for c in b]
  with pytest.raises(FileNotFoundError, match="export/config.json"):
    loading.load_policy(checkpoint=tmp_path / "empty")
  with pytest.raises(ValueError, match="exactly one"):
    loading.load_policy(hf_dir=hf_dir, checkpoint=workdir)


def test_jsonl_job_input_errors_and_greedy_output(hf_dir, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n')
  with pytest.raises(storage.InputError, match=r"bad.jsonl:2: duplicate id 1"):
    jsonl_job.read_prompts(str(bad))
  bad.write_text('{"id": 1, "prompt": 5}\n')
  with pytest.raises(storage.InputError, match=r"bad.jsonl:1: field 'prompt'"):
    jsonl_job.read_prompts(str(bad))
  policy = loading.load_policy(hf_dir=hf_dir)
  sampler = Sampler(policy.model, policy.tokenizer)
  out = tmp_path / "greedy.jsonl"
  stats = jsonl_job.run(sampler, str(write_prompts(tmp_path / "in.jsonl")), str(out),
                        max_new_tokens=5, sampling=SamplingParams.greedy(), batch_size=8)
  lines = read_lines(out)
  assert stats["prompts"] == len(PROMPTS) and len(lines) == len(PROMPTS)
  assert "sample_index" not in lines[0]
  direct = sampler.generate([p["prompt"] for p in PROMPTS], 5, SamplingParams.greedy())
  assert [r["completion_token_ids"] for r in lines] == [c.token_ids for c in direct]
  assert [r["completion"] for r in lines] == [c.text for c in direct]


def test_jsonl_job_rejects_nan_and_infinity_up_front(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": "a", "prompt": "x"}\n{"id": NaN, "prompt": "y"}\n')
  with pytest.raises(storage.InputError, match=r"bad.jsonl:2: record holds NaN or Infinity"):
    jsonl_job.read_prompts(str(bad))
  bad.write_text('{"prompt": [{"role": "user", "content": "x", "weight": -Infinity}]}\n')
  with pytest.raises(storage.InputError, match=r"bad.jsonl:1: record holds NaN or Infinity"):
    jsonl_job.read_prompts(str(bad))


def test_jsonl_job_checks_every_prompt_encodes_before_generating(hf_dir, tmp_path, monkeypatch):
  policy = loading.load_policy(hf_dir=hf_dir)
  sampler = Sampler(policy.model, policy.tokenizer)

  def never(*args, **kwargs):
    raise AssertionError("generated before the input was checked")

  monkeypatch.setattr(sampler, "generate_encoded", never)
  prompts, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  prompts.write_text('{"id": "a", "prompt": "ok"}\n\n{"id": "b", "prompt": "ok2"}\n'
                     '{"id": "c", "prompt": "fine"}\n{"id": "d", "prompt": ""}\n')
  with pytest.raises(storage.InputError, match=r"in.jsonl:5: field 'prompt' encodes to no tokens"):
    jsonl_job.run(sampler, str(prompts), str(out), max_new_tokens=4,
                  sampling=SamplingParams.greedy(), batch_size=2, use_chat_template=False)
  assert not out.exists() or out.read_text() == ""
