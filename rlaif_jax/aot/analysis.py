"""One ahead-of-time compile and what XLA says about it: memory, cost and collectives.

`compile_row(job, hbm_bytes)` lowers and compiles one jitted function on abstract arguments and
returns a `Row`: per-device argument / temporary / output / aliased bytes from
`compiled.memory_analysis()`, what stays resident on the device beside the call (`job.resident`),
XLA's FLOP and byte counts (`compiled.cost_analysis()`), the model FLOPs of the call (6 N tokens
for a train step, 2 N tokens for a forward) and the bytes of each collective kind in the
compiled HLO. A compile that XLA refuses for memory is a row with `fits=False` and XLA's message.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable

import jax
import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_GIB = 2 ** 30
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
                "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_OP_RE = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE_RE = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+(?:fn)?)?)\[([\d,]*)\]")
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "exceeds available HBM", "Ran out of memory")
_NEEDED_RE = re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_CHANNEL_RE = re.compile(r"\bchannel_id=(\d+)")


@dataclasses.dataclass
class Job:
  """A function to compile. lower() -> jax.stages.Lowered (on the topology's mesh);
  resident: {what: per-device bytes} that stays on the device beside the call;
  model_flops: 6 N tokens (train) or 2 N tokens (forward), whole call, all devices;
  xla_view_flops: the same counting each while-loop body once, as XLA's cost analysis does
  (`stages.model_flops`)."""
  name: str
  lower: Callable[[], Any]
  resident: dict[str, float] = dataclasses.field(default_factory=dict)
  model_flops: float = 0.0
  note: str = ""
  xla_view_flops: float = 0.0


@dataclasses.dataclass
class Row:
  """One compiled function; bytes are per device, flops for the whole program (all devices)."""
  name: str
  fits: bool
  args: float = 0.0
  temp: float = 0.0
  output: float = 0.0
  alias: float = 0.0
  resident: dict[str, float] = dataclasses.field(default_factory=dict)
  compile_s: float = 0.0
  xla_flops: float = float("nan")
  xla_bytes: float = float("nan")
  model_flops: float = 0.0
  xla_view_flops: float = 0.0
  collectives: dict[str, float] = dataclasses.field(default_factory=dict)
  error: str = ""
  note: str = ""
  compiled: Any = dataclasses.field(default=None, repr=False, compare=False)  # jax Compiled

  @property
  def peak(self) -> float:
    """Bytes the call itself holds: arguments + temporaries + outputs not aliased to inputs."""
    return self.args + self.temp + self.output - self.alias

  @property
  def total(self) -> float:
    return self.peak + sum(self.resident.values())

  def to_dict(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "compiled"}
    d.update(peak=self.peak, total=self.total)
    return d


def per_device_bytes(tree: Any) -> float:
  """Bytes one device holds of a pytree of ShapeDtypeStructs/Arrays with shardings (the
  largest shard; unsharded leaves count whole)."""
  total = 0.0
  for x in jax.tree.leaves(tree):
    shape = tuple(np.shape(x))
    sharding = getattr(x, "sharding", None)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def _shape_bytes(text: str) -> list[float]:
  return [math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dt]
          for dt, dims in _SHAPE_RE.findall(text) if dt in _DTYPE_BYTES]


def collective_bytes(hlo_text: str) -> dict[str, float]:
  """Per-device result bytes of each collective kind in compiled HLO text, summed over the ops
  as written: an op inside a loop body (the layer scan) counts once though it runs every
  iteration. Async `-start` ops return a tuple (operands, results, contexts): their largest
  array counts, which is the gathered result of an all-gather. One collective appears many
  times when XLA:TPU chains it through async collective fusions (every copy carries the same
  `channel_id`; a 7B prefill's one LM-head all-gather was written 394 times): it counts once
  per channel."""
  out = {k: 0.0 for k in COLLECTIVES}
  seen: set[tuple[str, str]] = set()
  for line in hlo_text.splitlines():
    m = _OP_RE.search(line)
    if not m:
      continue
    channel = _CHANNEL_RE.search(line)
    if channel:
      if (m.group(2), channel.group(1)) in seen:
        continue
      seen.add((m.group(2), channel.group(1)))
    sizes = _shape_bytes(m.group(1))
    if sizes:
      out[m.group(2)] += max(sizes) if m.group(3) else sum(sizes)
  return out


def _cost(compiled) -> tuple[float, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return float(cost.get("flops", float("nan"))), float(cost.get("bytes accessed", float("nan")))


def is_memory_error(message: str) -> bool:
  return any(m in message for m in _OOM_MARKERS)


def compile_row(job: Job, hbm_bytes: float) -> Row:
  """Compiles `job` and returns its Row; fits = XLA accepted it and total <= hbm_bytes. Errors
  other than XLA's memory refusal propagate (a bug, not a figure)."""
  t0 = time.perf_counter()
  row = Row(job.name, fits=False, resident=dict(job.resident), model_flops=job.model_flops,
            xla_view_flops=job.xla_view_flops or job.model_flops, note=job.note)
  try:
    compiled = job.lower().compile()
  except Exception as e:  # XLA's RESOURCE_EXHAUSTED is a result, anything else a bug
    if not is_memory_error(str(e)):
      raise
    row.compile_s = time.perf_counter() - t0
    row.error = " ".join(str(e).split())[:400]
    needed = _NEEDED_RE.search(row.error)  # what XLA says it needs: the row's temporaries
    if needed:
      row.temp = float(needed.group(1)) * _UNITS[needed.group(2)]
    return row
  row.compile_s = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  row.args, row.temp = float(ma.argument_size_in_bytes), float(ma.temp_size_in_bytes)
  row.output, row.alias = float(ma.output_size_in_bytes), float(ma.alias_size_in_bytes)
  row.xla_flops, row.xla_bytes = _cost(compiled)
  row.collectives = collective_bytes(compiled.as_text())
  row.fits = row.total <= hbm_bytes
  row.compiled = compiled
  return row
