"""Multi-process (multi-host) start-up: one JAX process per host, all of them running the same
program over one global mesh.

Where the coordinates come from, first match wins:
  * the flags --coordinator_address / --num_processes / --process_id (launch/ entry points);
  * env JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
  * --auto_detect (e.g. TPU VMs, SLURM): plain `jax.distributed.initialize()` finds them.
With none of these the run stays single-process. Data: every process builds the same global host
batch (the order is a pure function of seed and step) and hands over only the rows of its own
devices (`training.trainer.put_batch` -> `jax.make_array_from_process_local_data`).
"""
from __future__ import annotations

import os

import jax
from absl import flags

ENV_ADDRESS, ENV_NUM, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
_initialized = False


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, auto_detect: bool = False) -> bool:
  """Calls `jax.distributed.initialize` when this is one of several processes; returns whether it
  did. Must run before any other JAX call (device queries included)."""
  global _initialized
  if _initialized:
    return True
  address = coordinator_address or os.environ.get(ENV_ADDRESS)
  num = num_processes if num_processes is not None else _env_int(ENV_NUM)
  pid = process_id if process_id is not None else _env_int(ENV_ID)
  if address is None and num is None and pid is None:
    if not auto_detect:
      return False
    jax.distributed.initialize()
  else:
    missing = [name for name, v in ((ENV_ADDRESS, address), (ENV_NUM, num), (ENV_ID, pid))
               if v is None]
    if missing:
      raise ValueError(f"multi-process launch needs all of {ENV_ADDRESS}, {ENV_NUM}, {ENV_ID} "
                       f"(or the matching flags); missing: {missing}")
    if not 0 <= pid < num:
      raise ValueError(f"{ENV_ID}={pid} must be in [0, {ENV_NUM}={num})")
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  _initialized = True
  print(f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices")
  return True


def shutdown() -> None:
  """Leaves the coordination service now, from the main thread, when `maybe_initialize` joined
  it. Every process calls it once its work is done (`launch.common.run` does after `main`):
  left to interpreter exit, the shutdown barrier would run after Python joined the library's
  background threads, so one process held at exit would leave the others waiting at the barrier
  until its timeout aborts them."""
  global _initialized
  if _initialized:
    jax.distributed.shutdown()
    _initialized = False


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"env {name}={value!r} is not an integer") from None


def define_flags() -> None:
  """Declares --coordinator_address, --num_processes, --process_id, --auto_detect (once)."""
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_string("coordinator_address", None, f"host:port of process 0 (else {ENV_ADDRESS}).")
  flags.DEFINE_integer("num_processes", None, f"Number of processes (else {ENV_NUM}).")
  flags.DEFINE_integer("process_id", None, f"This process's index (else {ENV_ID}).")
  flags.DEFINE_bool("auto_detect", False, "jax.distributed.initialize() with cluster "
                    "auto-detection (TPU VMs, SLURM).")


def initialize_from_flags() -> bool:
  """maybe_initialize from the flags of `define_flags` (env vars fill what is not given)."""
  f = flags.FLAGS
  return maybe_initialize(f.coordinator_address, f.num_processes, f.process_id, f.auto_detect)
