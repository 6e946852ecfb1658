"""The one helper per duty (issue 19): atomic writes, the metrics.jsonl reader, the checkpoint
fingerprint, the GRPO prompt prefix and the group advantages each exist once."""
import os
import stat

import pytest

from rlaif_jax import storage


def test_atomic_path_replaces_whole_file_or_leaves_old_one(tmp_path):
  target = tmp_path / "sub" / "out.txt"
  storage.write_text(str(target), "old\n")
  assert stat.S_IMODE(os.stat(target).st_mode) == 0o644  # not mkstemp's 0600
  with pytest.raises(RuntimeError):
    with storage.atomic_path(target) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("killed mid-write")
  assert target.read_text() == "old\n"
  assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp file left
  with storage.atomic_path(target) as tmp:
    with open(tmp, "w") as f:
      f.write("new\n")
  assert target.read_text() == "new\n"


def test_read_metrics_takes_the_file_or_its_run_directory(tmp_path):
  from rlaif_jax.training import metrics as metrics_lib
  assert metrics_lib.read_metrics(tmp_path) == []
  path = tmp_path / metrics_lib.METRICS_FILE
  path.write_text('{"step": 1, "loss": NaN}\n\n{"step": 2, "loss": 0.5}\n')
  rows = metrics_lib.read_metrics(tmp_path)
  assert rows[1] == {"step": 2, "loss": 0.5} and rows == metrics_lib.read_metrics(path)
  path.write_text('{"step": 1}\n[1]\n')
  with pytest.raises(storage.InputError, match="metrics.jsonl:2: expected a JSON object"):
    metrics_lib.read_metrics(path)


def test_file_stats_lists_names_sizes_and_times(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "w.bin").write_bytes(b"123")
  (tmp_path / "b.json").write_text("{}")
  assert [s[:2] for s in storage.file_stats(tmp_path)] == [["b.json", 2]]
  assert [s[:2] for s in storage.file_stats(tmp_path, recursive=True)] == [["a/w.bin", 3],
                                                                         ["b.json", 2]]
