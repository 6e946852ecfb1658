r"""Compiles every jitted function of a config's run for a TPU topology, without the TPU.

  python -m launch.aot_compile --config=configs/grpo_qwen2_5_7b_tpu.py --topology=v5p-8
  python -m launch.aot_compile --config=configs/tiny_cpu.py --topology=v5e:2x2 --output=/tmp/aot
  python -m launch.aot_compile --config=configs/sft_qwen2_5_7b_tpu.py --topology=v5litepod-8 \
      --num_slices=2 --config.batch_size=64

libtpu's ahead-of-time compiler (`jax.experimental.topologies`) lowers and compiles the run's
functions at the config's exact shapes, dtypes and mesh (`--config.x=y` overrides apply as in
the run), on abstract weights built from the config's model preset: no checkpoint, tokenizer or
data is read. Topologies: GCP accelerator types (v2-8, v4-8, v5p-8, v5p-32, v5litepod-1/4/8/16/32,
v6e-8, ...) or libtpu names (v5e:2x4); `--num_slices` joins that many slices over DCN (the
config's `dcn_mesh`, default data-parallel across slices).

Prints one row per function (GiB per device: arguments, temporaries, outputs, aliased, what
stays resident beside it, the total against the HBM), compile seconds, XLA's FLOPs and bytes,
the model FLOPs, and the bytes of each collective kind in the compiled HLO; a function XLA
refuses for memory is a `fits=no` row with XLA's message. `--output=PATH` also writes PATH.md
and PATH.json (or only the one named by a .md / .json suffix). The last line is
`aot topology=<name> chips=<n> hosts=<h> peak_gib_per_chip=<x> hbm_gib=<y> fits=<yes|no>`; the
exit status is 0 only when everything fits.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices need no TPU backend
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # GPU targets: no driver here

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import common  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).",
                                          lock_config=False)
_TOPOLOGY = flags.DEFINE_string("topology", None, "GCP accelerator type (v5p-8, v5litepod-8, "
                                "v2-8, ...) or libtpu name (v5e:2x4); default: the config's "
                                "target_topology.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN.")
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "Per-device memory budget in GiB (default: the "
                              "HBM XLA leaves a program on the topology's device).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write PATH.md and PATH.json (or the one "
                              "file a .md / .json suffix names).")
_FUNCTIONS = flags.DEFINE_list("functions", None, "Compile only the functions whose name "
                               "contains one of these strings (e.g. 'actor update').")
flags.mark_flag_as_required("config")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rlaif_jax.aot import report as report_lib, topology as topo_lib
  name = _TOPOLOGY.value or _CONFIG.value.get("target_topology")
  if not name:
    raise app.UsageError("--topology is required (the config names no target_topology)")
  try:
    topology = topo_lib.parse(name, _NUM_SLICES.value)
  except topo_lib.TopologyError as e:
    raise app.UsageError(str(e)) from e
  report = report_lib.run(_CONFIG.value, topology, _HBM_GIB.value,
                         functions=_FUNCTIONS.value, resolve=common.stage_config)
  print(report_lib.format_table(report))
  if _OUTPUT.value:
    out = pathlib.Path(_OUTPUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    texts = {".md": report_lib.format_markdown(report) + "\n", ".json": report.to_json() + "\n"}
    targets = [out] if out.suffix in texts else [out.with_name(out.name + s) for s in texts]
    for path in targets:
      path.write_text(texts[path.suffix[-3:] if path.suffix == ".md" else path.suffix])
  print(report.summary_line(), flush=True)
  return 0 if report.fits else 1


if __name__ == "__main__":
  common.run(main)
