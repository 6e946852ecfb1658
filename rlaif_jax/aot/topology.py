"""Accelerator topologies by the names users know, as compile-only devices for AOT compiles.

`parse(name, num_slices)` understands GCP accelerator types (`v2-8`, `v4-8`, `v5p-8`,
`v5litepod-8`, `v6e-8`, ...), libtpu's own `v5e:2x4` form and GPUs (`h100-1`, `h100-8`,
`h200-1`: XLA:GPU target descriptions, `gpu_targets`; needs the CUDA plugin), and returns a `Topology` whose
`devices()` are libtpu's compile-only TPU devices (`jax.experimental.topologies`): a `Mesh` over
them lowers and compiles every jitted function for that slice without a TPU.

GCP names count chips as GCP does: v2/v3/v4/v5p names count TensorCores (v5p-8 = 4 chips, one
device per chip with megacore; v2-8 = 4 chips x 2 cores = 8 devices), v5litepod/v6e names count
chips. Hosts are GCP's: a v5litepod-8 / v6e-8 is one host of 8 chips, larger v5e/v6e slices have
4 chips per host, v4/v5p hosts hold 4 chips.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax

from rlaif_jax.aot import gpu_targets

_GIB = 2 ** 30


class TopologyError(ValueError):
  """A topology name that this module cannot describe."""


# GCP prefix -> (libtpu generation, cores per chip counted by the GCP name, dims, megacore)
_GCP = {
    "v2": ("v2", 2, 2, False), "v3": ("v3", 2, 2, False),
    "v4": ("v4", 2, 3, True), "v5p": ("v5p", 2, 3, True),
    "v5litepod": ("v5e", 1, 2, False), "v5e": ("v5e", 1, 2, False),
    "v6e": ("v6e", 1, 2, False),
}


# GiB per device (v2/v3: per TensorCore; v4/v5p megacore and v5e/v6e: per chip).
NOMINAL_HBM_GIB = {"v2": 8, "v3": 16, "v4": 32, "v5p": 95, "v5e": 16, "v6e": 32}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice (or several) to compile for.

  name: as given; platform: "tpu"; libtpu_name: e.g. "v5e:2x4"; kwargs: extra arguments of
  `get_topology_desc` (chips_per_host_bounds, chip_config_name, num_slices).
  """
  name: str
  platform: str
  libtpu_name: str
  kwargs: tuple[tuple[str, Any], ...] = ()
  num_slices: int = 1
  target_config: str = ""  # GPUs: the XLA:GPU target description (gpu_targets)

  def devices(self) -> list[jax.Device]:
    """The compile-only devices of every slice (libtpu, no TPU needed)."""
    import os

    from jax.experimental import topologies
    # libtpu admits one process per machine (/tmp/libtpu_lockfile); compiling needs no TPU, so
    # compiles (and tests beside them) may share it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
      if self.platform == "cuda":
        desc = topologies.get_topology_desc(self.name, "cuda", target_config=self.target_config,
                                            topology=self.libtpu_name)
      else:
        desc = topologies.get_topology_desc(topology_name=self.libtpu_name,
                                            platform=self.platform, **dict(self.kwargs))
    except Exception as e:  # libtpu says why (an impossible shape, an unknown generation)
      raise TopologyError(f"topology {self.name!r} ({self.libtpu_name}, {dict(self.kwargs)}): "
                          f"libtpu cannot describe it: {e}") from e
    return list(desc.devices)

  def hbm_bytes(self, device: jax.Device) -> tuple[float, str]:
    """(bytes one program may use on `device`, where the figure comes from): XLA's own limit
    (`available_hbm_bytes`), else the generation's nominal HBM per device."""
    if self.platform == "cuda":
      return float(gpu_targets.memory_bytes(self.target_config)), "GPU target device memory"
    probed = available_hbm_bytes(device)
    if probed is not None:
      return float(probed), "XLA's available HBM"
    gen = self.libtpu_name.split(":")[0]
    if gen not in NOMINAL_HBM_GIB:
      raise TopologyError(f"{self.name}: XLA did not state the available HBM and {gen!r} has no "
                          "nominal figure; pass --hbm_gib")
    return NOMINAL_HBM_GIB[gen] * _GIB, f"nominal {gen} HBM"


def _grid(chips: int, dims: int) -> list[int]:
  """The slice shape GCP gives `chips` chips: powers of two, doubling the smallest axis (the
  last of equals): 4 -> 2x2x1, 8 -> 2x2x2, 16 -> 2x2x4, 32 -> 2x4x4; 2-D: 8 -> 2x4, 32 -> 4x8."""
  if chips < 1 or chips & (chips - 1):
    raise TopologyError(f"{chips} chips: only powers of two are supported")
  shape = [1] * dims
  if dims == 3 and chips >= 4:
    shape = [2, 2, 1]
  while math.prod(shape) < chips:
    smallest = min(shape)
    i = max(j for j, s in enumerate(shape) if s == smallest)
    shape[i] *= 2
  return shape


def parse(name: str, num_slices: int = 1) -> Topology:
  """A Topology for a GCP accelerator type (`v5p-8`, `v5litepod-32`, `v2-8`) or a libtpu name
  (`v5e:2x4`, `v5p:2x2x1`); `num_slices` > 1 describes that many identical slices (DCN)."""
  if num_slices < 1:
    raise TopologyError(f"--num_slices must be >= 1, got {num_slices}")
  extra: dict[str, Any] = {"num_slices": num_slices} if num_slices > 1 else {}
  m = re.fullmatch(r"([a-z]\d+)-(\d+)", name)
  if m and m.group(1) in gpu_targets.names():
    if num_slices > 1:
      raise TopologyError(f"{name}: --num_slices is for TPU slices")
    return Topology(name, "cuda", f"1x1x{int(m.group(2))}",
                    target_config=gpu_targets.target_config(m.group(1)))
  m = re.fullmatch(r"(v\d[a-z]*):(\d+(?:x\d+)+)", name)
  if m:
    return Topology(name, "tpu", name, tuple(extra.items()), num_slices)
  m = re.fullmatch(r"(v\d[a-z]*)-(\d+)", name)
  if not m or m.group(1) not in _GCP:
    raise TopologyError(f"topology {name!r}: expected a GCP accelerator type ({', '.join(f'{p}-N' for p in _GCP)}) "
                        "or a libtpu name such as v5e:2x4")
  gen, per_chip, dims, megacore = _GCP[m.group(1)]
  count = int(m.group(2))
  if count % per_chip:
    raise TopologyError(f"topology {name!r}: {m.group(1)} names count {per_chip} cores per chip")
  chips = count // per_chip
  shape = _grid(chips, dims)
  if gen in ("v5e", "v6e"):
    host = (1, 1, 1) if chips == 1 else (2, 4, 1) if chips == 8 else (2, 2, 1)
  else:
    host = (2, 2, 1) if chips >= 4 else tuple(shape + [1] * (3 - dims))
  extra["chips_per_host_bounds"] = host
  if megacore:
    extra["chip_config_name"] = "megacore"
  return Topology(name, "tpu", f"{gen}:{'x'.join(map(str, shape))}", tuple(extra.items()),
                  num_slices)


def describe(devices: list[jax.Device]) -> dict[str, int]:
  """{devices, chips, hosts, slices} of a device list (chips: distinct (slice, coords))."""
  slices = {getattr(d, "slice_index", 0) or 0 for d in devices}
  chips = {(getattr(d, "slice_index", 0) or 0, tuple(getattr(d, "coords", (d.id,))))
           for d in devices}
  return {"devices": len(devices), "chips": len(chips),
          "hosts": len({d.process_index for d in devices}), "slices": len(slices)}


_HBM_RE = re.compile(r"available HBM \(([\d.]+)([KMGT])\)")


def available_hbm_bytes(device: jax.Device) -> int | None:
  """The HBM XLA lets one program use on `device`, read from XLA's own refusal of a probe too
  large for any chip (a 256 GiB buffer; compiles in well under a second). None when XLA did not
  refuse it in the expected words."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh([device], ("x",))
  probe = jax.jit(lambda: jax.numpy.zeros((256 * _GIB,), jax.numpy.int8),
                  out_shardings=NamedSharding(mesh, PartitionSpec()))
  try:
    probe.lower().compile()
  except Exception as e:  # XLA: "... exceeds available HBM (15.75G)"
    m = _HBM_RE.search(str(e))
    if m:
      return int(float(m.group(1)) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)])
  return None


_LOCAL = {"TPU v2": "v2", "TPU v3": "v3", "TPU v4": "v4", "TPU v5 lite": "v5litepod",
          "TPU v5": "v5p", "TPU v6 lite": "v6e"}


def local_name() -> str | None:
  """The GCP name of this machine's TPU runtime (Colab's v2-8, a v5e single chip:
  v5litepod-1), or None off TPUs (one host's devices; a pod slice names itself on GCP)."""
  devices = jax.devices()
  gen = _LOCAL.get(devices[0].device_kind) if devices[0].platform == "tpu" else None
  if gen is None:
    return None
  per_device = 2 if gen in ("v2", "v3", "v4", "v5p") else 1  # GCP counts cores for these
  return f"{gen}-{len(devices) * per_device}"
