"""StagedGcsAppender recovery: staged lines reach the object; newer shorter local copies win."""
import json

from fake_gcs import FakeGcsClient
from rlaif_jax import storage


PATH = "gs://bkt/out.jsonl"


def _lines(client):
  data = client.buckets.get("bkt", {}).get("out.jsonl", b"")
  return [json.loads(line) for line in data.decode().splitlines()]


def _appender(client, tmp_path):
  return storage.StagedGcsAppender(PATH, staging_dir=str(tmp_path), client=client,
                                   upload_every_s=1e9)


def _kill(appender):
  """A hard kill: the staging file is closed, the close-time upload never happens."""
  storage.JsonlAppender.close(appender)


def test_recovered_lines_are_uploaded_even_if_nothing_new_is_appended(tmp_path):
  client = FakeGcsClient()
  a = _appender(client, tmp_path)
  assert a.recover() == []
  for i in range(3):
    a.append({"id": i})
  _kill(a)
  assert _lines(client) == []
  b = _appender(client, tmp_path)
  assert b.recover() == [{"id": 0}, {"id": 1}, {"id": 2}]
  b.open()
  b.close()
  assert _lines(client) == [{"id": 0}, {"id": 1}, {"id": 2}]


def test_newer_shorter_local_copy_wins_over_stale_remote(tmp_path):
  client = FakeGcsClient()
  a = _appender(client, tmp_path)
  a.recover()
  a.append({"id": 0})
  a.append({"id": 1, "error": "x" * 300})
  a.close()  # uploaded
  b = _appender(client, tmp_path)
  assert len(b.recover()) == 2
  b.rewrite([{"id": 0}])  # e.g. retry_errors dropped the error line
  b.append({"id": 1, "v": 1})
  _kill(b)  # shorter than the remote, never uploaded
  c = _appender(client, tmp_path)
  assert c.recover() == [{"id": 0}, {"id": 1, "v": 1}]
  assert _lines(client) == [{"id": 0}, {"id": 1, "v": 1}]


def test_remote_changed_or_deleted_since_our_upload_wins(tmp_path):
  client = FakeGcsClient()
  a = _appender(client, tmp_path)
  a.recover()
  a.append({"id": 0, "v": "old"})
  a.close()
  client.buckets.setdefault("bkt", {})["out.jsonl"] = b'{"id": 9}\n'  # another writer
  b = _appender(client, tmp_path)
  assert b.recover() == [{"id": 9}]
  b.close()
  del client.buckets["bkt"]["out.jsonl"]  # the user deletes the output to start over
  c = _appender(client, tmp_path)
  assert c.recover() == []
  c.append({"id": 0, "v": "new"})
  c.close()
  assert _lines(client) == [{"id": 0, "v": "new"}]


def test_without_sidecar_the_longer_copy_is_resumed(tmp_path):
  client = FakeGcsClient()
  client.buckets.setdefault("bkt", {})["out.jsonl"] = b'{"id": 0}\n{"id": 1}\n'
  a = _appender(client, tmp_path)
  assert a.recover() == [{"id": 0}, {"id": 1}]
