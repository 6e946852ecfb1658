"""Resumable/shardable JSON Lines jobs and the storage layer (local and a fake GCS client)."""
import asyncio
import dataclasses
import json
import os

import pytest

from fake_gcs import FakeGcsClient

from rlaif_jax import storage
from rlaif_jax import jsonl_jobs
from rlaif_jax.jsonl_jobs import JobConfig


def _write_jsonl(path, records, extra_lines=()):
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for line in extra_lines:
      f.write(line)


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _upper(calls=None):
  async def process(chunk):
    if calls is not None:
      calls.append([r["id"] for r in chunk])
    await asyncio.sleep(0)
    return [{"text": r["text"].upper()} for r in chunk]
  return process


def _cfg(tmp_path, **kwargs):
  kwargs.setdefault("chunk_size", 3)
  kwargs.setdefault("progress", False)
  return JobConfig(input_path=str(tmp_path / "in.jsonl"), output_path=str(tmp_path / "out.jsonl"),
                   **kwargs)


def test_ids_default_to_line_numbers_and_bad_lines_name_file_and_line(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_text('{"text": "a"}\n\n{"id": "x", "text": "b"}\n{"text": "c"}\n', encoding="utf-8")
  assert [r["id"] for r in jsonl_jobs.load_records(str(path))] == [0, "x", 3]
  for content, message in [('{"text": "a"}\n{"text": \n', r"in.jsonl:2: invalid JSON"),
                           ('{"id": 1}\n[1, 2]\n', r"in.jsonl:2: expected a JSON object"),
                           ('{"id": 1}\n{"id": 1}\n', r"in.jsonl:2: duplicate id 1 \(first at line 1\)"),
                           ('{"id": [1]}\n', r"in.jsonl:1: field 'id' must be a string or integer")]:
    path.write_text(content, encoding="utf-8")
    with pytest.raises(storage.InputError, match=message):
      jsonl_jobs.load_records(str(path))
  path.write_text('{"query": "q", "response": "r"}\n{"query": "q"}\n', encoding="utf-8")
  with pytest.raises(storage.InputError, match=r"in.jsonl:2: field 'response' must be a string \(missing\)"):
    jsonl_jobs.require_fields(jsonl_jobs.load_records(str(path)), ("query", "response"), str(path))
  path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
  with pytest.raises(storage.InputError, match="in.jsonl:2: not valid UTF-8"):
    jsonl_jobs.load_records(str(path))


def test_appender_truncates_a_partial_trailing_line(tmp_path):
  path = tmp_path / "out.jsonl"
  _write_jsonl(path, [{"id": 0}, {"id": 1}], extra_lines=['{"id": 2, "te'])
  appender = storage.JsonlAppender(str(path))
  assert appender.recover() == [{"id": 0}, {"id": 1}]
  with appender:
    appender.append({"id": 2, "text": "é"})
  assert _lines(path) == [{"id": 0}, {"id": 1}, {"id": 2, "text": "é"}]
  _write_jsonl(path, [{"id": 0}], extra_lines=["not json\n"])
  with pytest.raises(storage.InputError, match="out.jsonl:2: invalid JSON"):
    storage.JsonlAppender(str(path)).recover()


def test_resume_skips_done_ids_and_writes_each_id_once(tmp_path):
  records = [{"id": f"r{i}", "text": f"t{i}"} for i in range(10)]
  _write_jsonl(tmp_path / "in.jsonl", records)
  # A previous run wrote r0, r3 and half a line before it was killed.
  _write_jsonl(tmp_path / "out.jsonl", [{"id": "r0", "text": "T0"}, {"id": "r3", "text": "T3"}],
               extra_lines=['{"id": "r5", "te'])
  calls = []
  summary = jsonl_jobs.run_job(_cfg(tmp_path), _upper(calls))
  assert sorted(i for c in calls for i in c) == sorted(f"r{i}" for i in range(10) if i not in (0, 3))
  out = _lines(tmp_path / "out.jsonl")
  assert sorted(r["id"] for r in out) == sorted(r["id"] for r in records)
  assert all(r["text"] == r["id"].replace("r", "T") for r in out)
  assert (summary.already_done, summary.processed, summary.errors) == (2, 8, 0)
  assert "processed now     8" in summary.table()
  again = jsonl_jobs.run_job(_cfg(tmp_path), _upper())
  assert again.processed == 0 and len(_lines(tmp_path / "out.jsonl")) == 10


def test_a_crash_mid_job_keeps_finished_chunks_and_resume_completes(tmp_path):
  _write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(12)])

  async def crash_on_third_chunk(chunk):
    if 6 in [r["id"] for r in chunk]:
      raise KeyboardInterrupt  # Like Ctrl-C while a chunk is in flight.
    return [{"text": r["text"]} for r in chunk]

  with pytest.raises(KeyboardInterrupt):
    jsonl_jobs.run_job(_cfg(tmp_path, chunks_in_flight=1), crash_on_third_chunk)
  assert [r["id"] for r in _lines(tmp_path / "out.jsonl")] == [0, 1, 2, 3, 4, 5]
  jsonl_jobs.run_job(_cfg(tmp_path), _upper())
  assert sorted(r["id"] for r in _lines(tmp_path / "out.jsonl")) == list(range(12))


@pytest.mark.parametrize("shard_by", ["hash", "index"])
def test_shards_partition_the_input(tmp_path, shard_by):
  _write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(40)])
  seen = []
  for shard in range(3):
    cfg = _cfg(tmp_path, num_shards=3, shard_index=shard, shard_by=shard_by)
    summary = jsonl_jobs.run_job(cfg, _upper())
    assert summary.output_path.endswith(f"out-{shard:05d}-of-00003.jsonl")
    ids = [r["id"] for r in _lines(summary.output_path)]
    assert ids and len(ids) == summary.shard_records
    seen.extend(ids)
  assert sorted(seen) == list(range(40))
  if shard_by == "index":
    shard1 = _lines(tmp_path / "out-00001-of-00003.jsonl")
    assert sorted(r["id"] for r in shard1) == list(range(1, 40, 3))
  with pytest.raises(ValueError, match="shard_index"):
    _cfg(tmp_path, num_shards=2, shard_index=2)


def test_retry_errors_reprocesses_failed_ids_only(tmp_path):
  _write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(6)])

  async def flaky(chunk):
    return [{"text": r["text"], **({"error": "boom"} if r["id"] % 2 else {})} for r in chunk]

  first = jsonl_jobs.run_job(_cfg(tmp_path), flaky)
  assert first.errors == 3
  calls = []
  second = jsonl_jobs.run_job(_cfg(tmp_path, retry_errors=True), _upper(calls))
  assert sorted(i for c in calls for i in c) == [1, 3, 5] and second.retried_errors == 3
  out = {r["id"]: r for r in _lines(tmp_path / "out.jsonl")}
  assert len(out) == 6 and len(_lines(tmp_path / "out.jsonl")) == 6
  assert all("error" not in r for r in out.values())


def test_duplicate_ids_in_the_output_keep_the_last_complete_line(tmp_path):
  _write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"t{i}"} for i in range(3)])
  _write_jsonl(tmp_path / "out.jsonl", [
      {"id": 0, "text": "old"}, {"id": 1, "text": "ok"}, {"id": 0, "text": "new"},
      {"id": 1, "text": "x", "error": "boom"}, {"id": 0, "text": "x", "error": "boom"}])
  calls = []
  summary = jsonl_jobs.run_job(_cfg(tmp_path), _upper(calls))
  assert calls == [[2]] and summary.already_done == 2
  out = _lines(tmp_path / "out.jsonl")
  assert [(r["id"], r["text"]) for r in out] == [(1, "ok"), (0, "new"), (2, "T2")]


class _Killed(Exception):
  pass


def _samples(job, kill_at=None):
  """Writes 3 lines per todo id through `job`; at id `kill_at` only two lines and half of the
  third reach the file, as when a kill cuts an id's lines."""
  written = []
  for r in job.todo:
    lines = [{"id": r["id"], "sample_index": s, "text": r["text"] * (s + 1)} for s in range(3)]
    if r["id"] == kill_at:
      job.appender.append(lines[0])
      job.appender.append(lines[1])
      os.write(job.appender._fd, b'{"id": 2, "sample_in')  # pylint: disable=protected-access
      raise _Killed
    job.write([r], lines)
    written.append(r["id"])
  return written


def test_an_id_with_some_of_its_lines_is_dropped_and_redone_whole(tmp_path):
  _write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"t{i}"} for i in range(4)])
  cfg = _cfg(tmp_path, lines_per_id=3)
  with pytest.raises(_Killed):
    with jsonl_jobs.open_job(cfg) as job:
      _samples(job, kill_at=2)
  assert [(r["id"], r["sample_index"]) for r in _lines_upto_cut(tmp_path / "out.jsonl")] == [
      (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
  with jsonl_jobs.open_job(cfg) as job:
    assert _samples(job) == [2, 3]  # id 2 again, all three lines
  assert (job.summary.already_done, job.summary.processed) == (2, 2)
  out = _lines(tmp_path / "out.jsonl")
  assert sorted((r["id"], r["sample_index"]) for r in out) == [
      (i, s) for i in range(4) for s in range(3)]
  assert all(r["text"] == f"t{r['id']}" * (r["sample_index"] + 1) for r in out)
  with jsonl_jobs.open_job(cfg) as job:
    assert job.todo == [] and len(_lines(tmp_path / "out.jsonl")) == 12


def _lines_upto_cut(path):
  text = path.read_text(encoding="utf-8")
  return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def test_keep_drops_lines_to_redo_or_refuses_the_file(tmp_path):
  _write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"t{i}"} for i in range(3)])
  _write_jsonl(tmp_path / "out.jsonl", [{"id": 0, "text": "T0", "v": 1},
                                        {"id": 1, "text": "stale", "v": 0}])
  calls = []
  summary = jsonl_jobs.run_job(_cfg(tmp_path, keep=lambda r, n: r["v"] == 1), _upper(calls))
  assert calls == [[1, 2]] and summary.retried_errors == 1
  assert [r["id"] for r in _lines(tmp_path / "out.jsonl")] == [0, 1, 2]
  before = (tmp_path / "out.jsonl").read_text(encoding="utf-8")

  def refuse(r, n):
    if n == 2:
      raise storage.InputError(f"out.jsonl:{n}: written under other settings")
    return True
  with pytest.raises(storage.InputError, match="out.jsonl:2: written under other settings"):
    jsonl_jobs.run_job(_cfg(tmp_path, keep=refuse), _upper())
  assert (tmp_path / "out.jsonl").read_text(encoding="utf-8") == before


def test_process_chunk_must_return_one_result_per_record(tmp_path):
  _write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"text": "b"}])

  async def short(chunk):
    return chunk[:1]
  with pytest.raises(RuntimeError, match="returned 1 results for 2 records"):
    jsonl_jobs.run_job(_cfg(tmp_path), short)


def test_gcs_input_and_staged_output_resume(tmp_path):
  client = FakeGcsClient()
  lines = "".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(7))
  storage.write_text("gs://bkt/data/in.jsonl", lines, client=client)
  assert storage.glob("gs://bkt/data/*.jsonl", client=client) == ["gs://bkt/data/in.jsonl"]
  cfg = JobConfig(input_path="gs://bkt/data/in.jsonl", output_path="gs://bkt/out/o.jsonl",
                  chunk_size=2, progress=False, staging_dir=str(tmp_path / "stage1"),
                  gcs_client=client)

  async def stop_after_two_chunks(chunk):
    if chunk[0]["id"] >= 4:
      raise KeyboardInterrupt
    return [{"text": r["text"]} for r in chunk]

  with pytest.raises(KeyboardInterrupt):
    jsonl_jobs.run_job(dataclasses.replace(cfg, chunks_in_flight=1), stop_after_two_chunks)
  uploaded = jsonl_jobs.read_output("gs://bkt/out/o.jsonl", client=client)
  assert [r["id"] for r in uploaded] == [0, 1, 2, 3]  # Uploaded on close.
  # Resume on "another machine" (empty staging dir): continues from the uploaded object.
  summary = jsonl_jobs.run_job(dataclasses.replace(cfg, staging_dir=str(tmp_path / "stage2")),
                              _upper())
  assert summary.already_done == 4 and summary.processed == 3
  out = jsonl_jobs.read_output("gs://bkt/out/o.jsonl", client=client)
  assert sorted(r["id"] for r in out) == list(range(7))
  assert not os.path.exists(tmp_path / "out")
  with pytest.raises(storage.StorageError, match="does not exist"):
    storage.read_text("gs://bkt/missing.jsonl", client=client)


def test_a_second_job_on_the_same_output_is_refused_naming_the_first_pid(tmp_path):
  import subprocess
  import sys
  import textwrap
  _write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"t{i}"} for i in range(3)])
  out = str(tmp_path / "out.jsonl")
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          from rlaif_jax import storage
          with storage.output_lock({out!r}):
            print("locked", flush=True)
            sys.stdin.readline()
          """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(storage.OutputLockedError, match=rf"out\.jsonl is being written by another "
                                                         rf"job \(pid {holder.pid}"):
      jsonl_jobs.run_job(_cfg(tmp_path), _upper())
    assert not os.path.exists(out)  # the refused job wrote nothing
  finally:
    holder.stdin.close()
    holder.wait(timeout=30)
  assert jsonl_jobs.run_job(_cfg(tmp_path), _upper()).processed == 3  # the lock went with it
