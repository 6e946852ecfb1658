"""Host <-> device moves that work the same in one process and in a multi-host run.

In a multi-process run (one JAX process per host, one global mesh) a batch-sharded array has
shards on devices other processes own, so `np.asarray` / `jax.device_get` on it raise. Every
host read of a device value therefore goes through `to_host`: a plain copy when this process
holds every shard, a `process_allgather` (a collective: every process must call it, in the same
order) otherwise. Files are written by process 0 only (`is_main`); `barrier` makes the others
wait for them. Decisions every process must take alike go through `broadcast` (numbers and
arrays) or `broadcast_json` (records, texts).

`offload` / `reload` keep a model's weights in host memory between uses (`rl.ref_on_host`,
`reward.rm.on_host`): each process keeps only the shards of its own devices.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_main() -> bool:
  """Whether this is process 0, the one that writes files and prints progress."""
  return jax.process_index() == 0


def is_multiprocess() -> bool:
  """Whether this run has several JAX processes (multi-host)."""
  return jax.process_count() > 1


def _leaf_to_host(x: Any) -> Any:
  if not isinstance(x, jax.Array):
    return x
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_host(tree: Any) -> Any:
  """The pytree with every jax.Array as the numpy value of the whole (global) array.

  Shapes are the global shapes, e.g. f32[B] scores of a batch sharded over all processes'
  devices. Collective when an array spans other processes' devices: call it on every process.
  """
  return jax.tree.map(_leaf_to_host, tree)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing to wait for in one process);
  e.g. after process 0 wrote a file the others read next."""
  if is_multiprocess():
    multihost_utils.sync_global_devices(name)


def broadcast(value: Any) -> Any:
  """Process 0's value (a pytree of numbers / numpy arrays) on every process."""
  if not is_multiprocess():
    return value
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(value))


def broadcast_json(value: Any) -> Any:
  """Process 0's JSON-ready `value` on every process (the others' `value` is ignored), sent as
  UTF-8 bytes, length first. As JSON does: tuples come back as lists, dict keys as strings."""
  if not is_multiprocess():
    return value
  data = json.dumps(value, ensure_ascii=False).encode("utf-8") if is_main() else b""
  n = int(broadcast(np.int64(len(data))))
  buf = np.frombuffer(data, np.uint8) if is_main() else np.zeros(n, np.uint8)
  return json.loads(bytes(broadcast(buf)).decode("utf-8"))


def agreed_flag(flag: bool) -> bool:
  """Process 0's decision `flag` on every process (e.g. 'this stage is done' read from files
  that only process 0 wrote, or that another process may not see yet)."""
  return bool(broadcast(np.asarray(bool(flag))))


@dataclasses.dataclass
class HostShards:
  """A global jax.Array kept in host memory as this process's shards."""
  shape: tuple[int, ...]
  sharding: jax.sharding.Sharding
  shards: list[tuple[jax.Device, np.ndarray]]


def _offload_leaf(x: Any) -> Any:
  if not isinstance(x, jax.Array):
    return x
  return HostShards(x.shape, x.sharding,
                    [(s.device, np.asarray(s.data)) for s in x.addressable_shards])


def _reload_leaf(x: Any) -> Any:
  if not isinstance(x, HostShards):
    return x
  arrays = [jax.device_put(data, device) for device, data in x.shards]
  return jax.make_array_from_single_device_arrays(x.shape, x.sharding, arrays)


def offload(tree: Any) -> Any:
  """Device arrays -> `HostShards` (this process's shards copied to host memory; the device
  buffers can then be freed). Not collective."""
  return jax.tree.map(_offload_leaf, tree)


def reload(tree: Any) -> Any:
  """`offload`'s inverse: the same global arrays, with their shardings, on the devices."""
  return jax.tree.map(_reload_leaf, tree, is_leaf=lambda x: isinstance(x, HostShards))
