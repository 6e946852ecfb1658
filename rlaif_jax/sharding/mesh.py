"""The device mesh and the one table that maps logical axis names to mesh axes.

Model code names axes logically ("embed", "heads", "mlp", "batch", ...); only this module knows
how they land on the physical mesh axes `data`, `fsdp` and `tensor`. The same model code therefore
runs on one CPU, 8 simulated CPU devices, a GPU, or a TPU pod slice.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    # Rows of a one-token decode step: not split over fsdp, so the layers contract each device's
    # weight shard (partial sums, reduced) rather than all-gather the FSDP weights every step.
    ("decode_batch", "data"),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    ("value_out", None),
)
_RULES = dict(LOGICAL_AXIS_RULES)


def _resolve(shape: list[int], n: int) -> list[int]:
  """`shape` with its one -1 entry replaced so the product is n; errors name the mismatch."""
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if n % known:
      raise ValueError(f"mesh shape {shape}: {n} devices are not divisible by {known}")
    shape[shape.index(-1)] = n // known
  if math.prod(shape) != n:
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices; "
                     f"{n} are available")
  return shape


def num_slices(devices: Sequence[jax.Device]) -> int:
  """How many TPU slices (joined over DCN) the devices span; 1 for CPUs and GPUs."""
  return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def _device_array(shape: list[int], devices: list[jax.Device]) -> np.ndarray:
  """Devices laid out as `shape`: on TPUs in ICI order (`mesh_utils.create_device_mesh`, so
  neighbours on a mesh axis are neighbours on the torus), else (CPU, GPU, or a shape the TPU
  helper cannot place) in the given order."""
  if devices[0].platform == "tpu" and len(devices) > 1:
    from jax.experimental import mesh_utils
    try:
      return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError, KeyError):
      pass
  return np.asarray(devices).reshape(shape)


def make_mesh(shape: Sequence[int] | dict[str, int] = (1, -1, 1),
              devices: Sequence[jax.Device] | None = None,
              dcn: Sequence[int] | None = None) -> Mesh:
  """A mesh over (data, fsdp, tensor). One entry may be -1: it takes the remaining devices.

  TPU devices are ordered by their physical topology. Devices of several TPU slices (multi-slice,
  joined by DCN): `shape` is the mesh of one slice and `dcn` (data, fsdp, tensor) says how the
  slices multiply it (default: data-parallel across slices, (num_slices, 1, 1)); the mesh is
  `shape * dcn` per axis, built with `mesh_utils.create_hybrid_device_mesh`.
  """
  if isinstance(shape, dict):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"mesh axes {sorted(unknown)} unknown; use {MESH_AXES}")
    shape = [shape.get(a, 1) for a in MESH_AXES]
  shape = [int(s) for s in shape]
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for {MESH_AXES}")
  devices = list(devices if devices is not None else jax.devices())
  slices = num_slices(devices)
  if dcn is not None:
    dcn = [int(s) for s in dcn]
    if len(dcn) != len(MESH_AXES) or min(dcn) < 1:
      raise ValueError(f"dcn mesh {dcn} must have {len(MESH_AXES)} positive entries for "
                       f"{MESH_AXES}")
    if math.prod(dcn) != slices:
      raise ValueError(f"dcn mesh {dict(zip(MESH_AXES, dcn))} needs {math.prod(dcn)} slices; "
                       f"the devices span {slices}")
  if slices == 1:
    shape = _resolve(shape, len(devices))
    dev_array = _device_array(shape, devices)
  else:
    from jax.experimental import mesh_utils
    dcn = dcn or [slices, 1, 1]
    if len(devices) % slices:
      raise ValueError(f"{len(devices)} devices do not split into {slices} equal slices")
    ici = _resolve(shape, len(devices) // slices)
    dev_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                     allow_split_physical_axes=True)
  return Mesh(dev_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of a stage config: `config.mesh` (one slice's shape) and, for multi-slice runs,
  the optional `config.dcn_mesh` (default: data-parallel across slices)."""
  dcn = config.get("dcn_mesh") if hasattr(config, "get") else None
  return make_mesh(tuple(config.mesh), devices, dcn=tuple(dcn) if dcn else None)


def logical_to_spec(axes: Sequence[str | None] | None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec through LOGICAL_AXIS_RULES."""
  if axes is None:
    return PartitionSpec()
  out, used = [], set()
  for name in axes:
    if name is None:
      out.append(None)
      continue
    if name not in _RULES:
      raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_AXIS_RULES")
    mesh_axes = _RULES[name]
    # A mesh axis may shard at most one dimension of a tensor.
    if isinstance(mesh_axes, tuple):
      mesh_axes = tuple(a for a in mesh_axes if a not in used) or None
    elif mesh_axes in used:
      mesh_axes = None
    if mesh_axes is not None:
      used.update(mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,))
    out.append(mesh_axes)
  return PartitionSpec(*out)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes that do not divide a dimension (e.g. 2 kv heads on tensor=4)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    keep = []
    for a in names:
      if dim % (math.prod(mesh.shape[k] for k in keep) * mesh.shape[a]) == 0:
        keep.append(a)
    fitted.append(tuple(keep) if len(keep) > 1 else (keep[0] if keep else None))
  return PartitionSpec(*fitted)


def logical_sharding(mesh: Mesh, axes: Sequence[str | None] | None,
                     shape: Sequence[int] | None = None) -> NamedSharding:
  spec = logical_to_spec(axes)
  if shape is not None:
    spec = _fit_spec(spec, shape, mesh)
  return NamedSharding(mesh, spec)


def variable_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  return variable.get_metadata().get("axes")


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
  """NamedShardings for every variable of an NNX state, from its `axes` metadata."""
  def one(v):
    if isinstance(v, nnx.Variable):
      return logical_sharding(mesh, variable_axes(v), np.shape(v.get_value()))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def active_mesh() -> jax.sharding.AbstractMesh | None:
  """The mesh of the enclosing `jax.set_mesh` if it has our axes, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return None
  return mesh


def activation_spec(axes: Sequence[str | None], shape: Sequence[int], mesh) -> PartitionSpec:
  """The PartitionSpec of an array of `shape` named by logical `axes` on `mesh`, without the
  mesh axes that do not divide their dimension."""
  return _fit_spec(logical_to_spec(axes), shape, mesh)


def shard_activation(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical names when a mesh is active (jax.set_mesh)."""
  mesh = active_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, activation_spec(axes, x.shape, mesh))


def data_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, ...] host batch: batch over (data, fsdp), the rest replicated."""
  return logical_sharding(mesh, ("batch",) + (None,) * (ndim - 1))
