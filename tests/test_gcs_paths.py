"""gs:// work and checkpoint directories are kept as they are (never `$PWD/gs:/...`), through
the path layer orbax itself uses (etils.epath over fsspec), against an in-memory fake bucket."""
import importlib

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from rlaif_jax import storage
from rlaif_jax.training import checkpointing, metrics


class FakeGcsFileSystem(MemoryFileSystem):
  """gcsfs's place in fsspec's registry, holding objects in memory."""
  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=None, **kwargs):  # gcsfs's option, as epath passes
    super().__init__(*args, **kwargs)


class FakeBucket:
  name = "bucket"  # orbax asks whether hierarchical namespaces are on: a plain bucket


@pytest.fixture
def fake_bucket(monkeypatch):
  FakeGcsFileSystem.store = {}
  FakeGcsFileSystem.pseudo_dirs = [""]
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, FakeGcsFileSystem, clobber=True)
  from google.cloud import storage as gcs
  from orbax.checkpoint._src.path import gcs_utils

  class Client:
    def get_bucket(self, name):
      return FakeBucket()
  monkeypatch.setattr(gcs, "Client", Client)
  gcs_utils.get_bucket.cache_clear()
  yield FakeGcsFileSystem
  for protocol in ("gs", "gcs"):
    importlib.import_module("fsspec.registry")._registry.pop(protocol, None)  # pylint: disable=protected-access


def test_as_path_keeps_gs_urls():
  assert str(storage.as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  assert str(storage.as_path("runs/x") / "a") == "runs/x/a"


def test_checkpointer_on_gs_is_not_mangled(fake_bucket):
  ckpt = checkpointing.Checkpointer("gs://bucket/run/checkpoints", async_save=False)
  try:
    assert str(ckpt.directory) == "gs://bucket/run/checkpoints"
    assert str(ckpt.manager.directory) == "gs://bucket/run/checkpoints"
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
  finally:
    ckpt.close()
  assert fake_bucket().exists("gs://bucket/run/checkpoints")  # created in the bucket
  with pytest.raises(checkpointing.NoCheckpointError, match="gs://bucket/run/checkpoints"):
    checkpointing.restore_module("gs://bucket/run", lambda cfg: None)


def test_metrics_on_gs(fake_bucket):
  writer = metrics.MetricWriter("gs://bucket/run", tensorboard=False, enabled=True)
  for step in (1, 2, 3):
    writer.write(step, {"loss": float(step)})
  assert [r["step"] for r in metrics.read_metrics("gs://bucket/run")] == [1, 2, 3]
  writer.truncate_after(2)  # a resumed run drops the rows after its checkpoint
  assert [r["loss"] for r in metrics.read_metrics("gs://bucket/run")] == [1.0, 2.0]
  assert fake_bucket().cat_file("gs://bucket/run/metrics.jsonl").count(b"\n") == 2


def test_a_stage_on_a_gs_workdir_is_refused_by_name():
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-m", "launch.sft", "--config=configs/sft_tiny_cpu.py",
                         "--workdir=gs://bucket/run"], capture_output=True, text=True, timeout=120,
                        cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
  assert proc.returncode != 0 and "--workdir=gs://... is not supported" in proc.stderr
