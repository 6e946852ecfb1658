"""Where the time of a jitted call goes, per XLA op: a `jax.profiler` trace of one call, its
op events summed by HLO instruction name, with each op's shape and JAX source op (from the
compiled HLO's metadata). Used by `benchmarks/sampler.py --trace_top=N`.

Thunks of one executable may run concurrently on CPU, so the per-op sums can exceed wall time;
they rank ops, they do not add up to the step.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
from typing import Any, Callable

import jax

_SKIP = ("$", "Thunk", "Pjit", "Slinky", "end: ", "Execute", "Handle", "Parse", "Allocate")
_META = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]+)\"")


def hlo_op_metadata(hlo_texts: list[str]) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (result shape, op_name metadata) over compiled HLO texts."""
  meta: dict[str, tuple[str, str]] = {}
  for text in hlo_texts:
    for line in text.splitlines():
      m = _META.match(line)
      if m:
        meta.setdefault(m.group(1), (m.group(2), m.group(3)))
  return meta


def top_ops(run: Callable[[], Any], hlo_texts: list[str], top: int, per: int = 1
            ) -> list[tuple[float, str, str, str]]:
  """Traces one `run()` (already compiled) and returns the `top` ops as (ms per `per` units,
  HLO name, result shape, JAX op_name), slowest first."""
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    try:
      jax.block_until_ready(run())
    finally:
      jax.profiler.stop_trace()
    files = sorted(glob.glob(f"{d}/**/*.json.gz", recursive=True))
    if not files:
      raise RuntimeError(f"jax.profiler wrote no perfetto trace under {d}")
    with gzip.open(files[-1]) as f:
      events = json.load(f)["traceEvents"]
  total: collections.Counter[str] = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_SKIP):
      total[e["name"]] += e.get("dur", 0)
  meta = hlo_op_metadata(hlo_texts)
  return [(us / 1e3 / per, name, *meta.get(name, ("?", "?")))
          for name, us in total.most_common(top)]
