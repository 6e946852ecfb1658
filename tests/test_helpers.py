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
