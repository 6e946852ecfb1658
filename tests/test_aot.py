"""Ahead-of-time compiles for TPU topologies (libtpu's compiler, no TPU): topology names, the
collective parser, a tiny SFT step compiled for a v5e 2x2 slice (weights split over fsdp, the
summary line, fits=no and a non-zero exit under an impossible HBM budget), a decode step that
reduces activations instead of gathering the FSDP weights."""
import math
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason="needs the [tpu] extra (libtpu's compiler)")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling needs no exclusive TPU

from rlaif_jax.aot import analysis, topology  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^aot topology=(\S+) chips=(\d+) hosts=(\d+) peak_gib_per_chip=([\d.]+) "
                     r"hbm_gib=([\d.]+) fits=(yes|no)$")
# A small SFT step: 2 scanned tiny layers, 8 rows x 32 tokens.
SMALL = ["--config.batch_size=8", "--config.eval_batch_size=8", "--config.format.max_prompt_len=16",
         "--config.format.max_response_len=16", "--config.format.min_bucket=16",
         "--config.data.bucket_multiple=0", "--config.model.scan_layers=True"]


@pytest.mark.parametrize("name, libtpu, kwargs", [
    ("v5p-8", "v5p:2x2x1", {"chips_per_host_bounds": (2, 2, 1), "chip_config_name": "megacore"}),
    ("v5p-32", "v5p:2x2x4", {"chips_per_host_bounds": (2, 2, 1), "chip_config_name": "megacore"}),
    ("v4-8", "v4:2x2x1", {"chips_per_host_bounds": (2, 2, 1), "chip_config_name": "megacore"}),
    ("v5litepod-8", "v5e:2x4", {"chips_per_host_bounds": (2, 4, 1)}),
    ("v5litepod-32", "v5e:4x8", {"chips_per_host_bounds": (2, 2, 1)}),
    ("v5litepod-1", "v5e:1x1", {"chips_per_host_bounds": (1, 1, 1)}),
    ("v6e-8", "v6e:2x4", {"chips_per_host_bounds": (2, 4, 1)}),
    ("v2-8", "v2:2x2", {"chips_per_host_bounds": (2, 2, 1)}),
    ("v5e:2x4", "v5e:2x4", {}),
])
def test_topology_names(name, libtpu, kwargs):
  t = topology.parse(name)
  assert (t.libtpu_name, dict(t.kwargs)) == (libtpu, kwargs)


@pytest.mark.parametrize("name, slices, chips, hosts, devices", [
    ("v5p-8", 1, 4, 1, 4), ("v5litepod-8", 1, 8, 1, 8), ("v5litepod-32", 1, 32, 8, 32),
    ("v2-8", 1, 4, 1, 8), ("v5litepod-4", 2, 8, 2, 8)])
def test_topology_devices_as_on_gcp(name, slices, chips, hosts, devices):
  desc = topology.describe(topology.parse(name, slices).devices())
  assert desc == {"devices": devices, "chips": chips, "hosts": hosts, "slices": slices}


def test_bad_topology_names_are_refused():
  for bad in ("v5p-6", "v9-8", "h100", "v5litepod-3"):
    with pytest.raises(topology.TopologyError):
      topology.parse(bad)


def test_collective_bytes_reads_sync_and_async_ops():
  hlo = "\n".join([
      "  %ag = bf16[28,3584,512]{2,1,0} all-gather(bf16[28,3584,128]{2,1,0} %p), dimensions={2}",
      "  %ags = (f32[4,8]{1,0}, f32[16,8]{1,0}) all-gather-start(f32[4,8]{1,0} %x)",
      "  %agd = f32[16,8]{1,0} all-gather-done((f32[4,8]{1,0}, f32[16,8]{1,0}) %ags)",
      "  %ar = f32[] all-reduce(f32[] %l), to_apply=%add",
      "  %rs = f32[8,4]{1,0} reduce-scatter(f32[32,4]{1,0} %g), dimensions={0}"])
  got = analysis.collective_bytes(hlo)
  assert got["all-gather"] == 28 * 3584 * 512 * 2 + 16 * 8 * 4
  assert got["all-reduce"] == 4 and got["reduce-scatter"] == 8 * 4 * 4
  assert got["all-to-all"] == got["collective-permute"] == 0
  # One all-gather that XLA:TPU chains through async collective fusions is written once per
  # fusion, all with its channel_id: it counts once.
  chained = "\n".join(
      f"  %all-gather.{i} = bf16[3584,1024]{{1,0}} all-gather(%param_0.{i}), channel_id=7, "
      "dimensions={0}" for i in range(5))
  assert analysis.collective_bytes(chained)["all-gather"] == 3584 * 1024 * 2
  assert analysis.collective_bytes(chained.replace("channel_id=7, ", ""))["all-gather"] == (
      5 * 3584 * 1024 * 2)


def test_tiny_sft_step_compiles_for_v5e_with_weights_split_over_fsdp():
  from configs import sft_tiny_cpu
  from rlaif_jax.aot import report, stages
  config = sft_tiny_cpu.get_config()
  config.batch_size = config.eval_batch_size = 8
  config.format.max_prompt_len = config.format.max_response_len = config.format.min_bucket = 16
  config.data.bucket_multiple = 0
  config.model.scan_layers = True
  train_only = lambda cfg, mesh_fn: stages.sft_jobs(cfg, mesh_fn(cfg))[:1]
  rep = report.run(config, topology.parse("v5e:2x2"), make_jobs=train_only, log=lambda _: None)
  assert rep.mesh == {"data": 1, "fsdp": 4, "tensor": 1} and rep.fits
  assert 15 < rep.hbm_bytes / 2**30 < 16  # XLA's own figure for a 16 GiB v5e chip
  row, = rep.rows
  assert row.args > 0 and row.alias > 0.9 * row.output  # the state is donated
  import jax
  state_shardings = row.compiled.input_shardings[0][0]
  # Weights and AdamW moments are split over fsdp: what stays replicated (norm scales, biases,
  # counters) is under 1% of the state, and the devices exchange data.
  shapes = [a.shape for a in jax.tree.leaves(row.compiled.args_info[0][0])]
  shardings = jax.tree.leaves(state_shardings)
  assert len(shapes) == len(shardings)
  sizes = [math.prod(shape) for shape in shapes]
  replicated = sum(n for n, s in zip(sizes, shardings) if s.is_fully_replicated)
  assert replicated < 0.01 * sum(sizes), (replicated, sum(sizes))
  assert sum("fsdp" in str(s.spec) for s in shardings) >= 3 * 7  # weights, two moments
  assert sum(row.collectives.values()) > 0


def test_decode_steps_reduce_activations_instead_of_gathering_fsdp_weights():
  """A decode step's rows stay whole over fsdp (logical axis `decode_batch`): each chip
  multiplies them by its own weight shard and the partial sums are all-reduced. With the rows
  split over fsdp like training rows, XLA all-gathered every layer's weights every step (here
  56 MiB of all-gathers as written: all the layers' bf16 weights)."""
  import ml_collections
  from configs import grpo_tiny_cpu, rm_tiny_cpu, sft_tiny_cpu
  from rlaif_jax.aot import report
  config = grpo_tiny_cpu.get_config()
  sft_config = sft_tiny_cpu.get_config()
  sft_config.model.overrides = ml_collections.ConfigDict(dict(
      num_layers=4, hidden_size=512, intermediate_size=4096, num_heads=8, num_kv_heads=2,
      head_dim=64))
  with config.ignore_type():
    config.policy.sft_config = sft_config
    config.reward.rm.config = rm_tiny_cpu.get_config()
  rep = report.run(config, topology.parse("v5e:2x2"), functions=["decode"], log=lambda _: None)
  row, = rep.rows
  assert rep.mesh["fsdp"] == 4 and row.fits
  weights = 4 * (3 * 512 * 4096 + 4 * 512 * 512) * 4  # fp32 layer weights, all chips
  assert row.collectives["all-gather"] < 0.01 * weights, row.collectives
  assert row.collectives["all-reduce"] > 0, row.collectives


def _cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "launch.aot_compile",
                         "--config=configs/sft_tiny_cpu.py", *SMALL, *args], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=600)
  return proc.returncode, proc.stdout.strip().splitlines()


def test_cli_says_fits_no_and_exits_nonzero_under_an_impossible_budget(tmp_path):
  rc, lines = _cli("--topology=v5litepod-4", "--hbm_gib=0.001", f"--output={tmp_path}/r")
  m = SUMMARY.match(lines[-1])
  assert m, lines[-3:]
  assert m.groups()[:3] == ("v5litepod-4", "4", "1") and m.group(6) == "no" and rc == 1
  assert m.group(5) == "0.00"
  md = (tmp_path / "r.md").read_text()
  assert "sft train step" in md and "sft eval step" in md
  assert '"fits": false' in (tmp_path / "r.json").read_text()


def test_multi_slice_mesh_is_data_parallel_across_slices_by_default():
  from rlaif_jax.sharding import mesh as mesh_lib
  devices = topology.parse("v5litepod-4", num_slices=2).devices()
  mesh = mesh_lib.make_mesh((1, -1, 1), devices)  # one slice's mesh; slices over data
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  for i in range(2):  # each data row is one slice: fsdp collectives stay on ICI
    assert len({d.slice_index for d in mesh.devices[i].flat}) == 1
  mesh = mesh_lib.make_mesh((1, -1, 1), devices, dcn=(1, 2, 1))  # fsdp across slices
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="needs 4 slices"):
    mesh_lib.make_mesh((1, -1, 1), devices, dcn=(4, 1, 1))
  one = topology.parse("v5litepod-8").devices()
  with pytest.raises(ValueError, match="needs 2 slices"):
    mesh_lib.make_mesh((1, -1, 1), one, dcn=(2, 1, 1))


def test_tpu_mesh_follows_the_physical_topology():
  import numpy as np
  from jax.experimental import mesh_utils
  from rlaif_jax.sharding import mesh as mesh_lib
  devices = topology.parse("v5litepod-8").devices()  # a 2x4 slice
  mesh = mesh_lib.make_mesh((1, 2, 4), devices)
  # JAX's ICI-aware order (rings along the torus), not the plain id order.
  expected = mesh_utils.create_device_mesh((1, 2, 4), devices, allow_split_physical_axes=True)
  assert [d.id for d in mesh.devices.flat] == [d.id for d in expected.flat]
  assert [d.id for d in mesh.devices.flat] != sorted(d.id for d in devices)
  cpu = mesh_lib.make_mesh((1, -1, 1))  # CPUs keep their order
  assert [d.id for d in cpu.devices.flat] == [d.id for d in np.asarray(cpu.devices).flat]
