"""Runs every Job of a config on a topology and formats the result (table, markdown, JSON and
the one summary line `aot topology=... fits=<yes|no>`)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from rlaif_jax.aot import analysis, topology as topo_lib

_GIB = 2 ** 30


@dataclasses.dataclass
class Report:
  topology: str
  chips: int
  hosts: int
  devices: int
  slices: int
  hbm_bytes: float
  hbm_source: str
  mesh: dict[str, int]
  rows: list[analysis.Row]

  @property
  def fits(self) -> bool:
    return bool(self.rows) and all(r.fits for r in self.rows)

  @property
  def peak(self) -> float:
    """The largest per-device total (call + resident) over the rows; a refused row counts
    what XLA said its temporaries need plus what stays resident (a lower bound)."""
    return max((r.total for r in self.rows), default=0.0)

  def summary_line(self) -> str:
    return (f"aot topology={self.topology} chips={self.chips} hosts={self.hosts} "
            f"peak_gib_per_chip={self.peak / _GIB:.2f} hbm_gib={self.hbm_bytes / _GIB:.2f} "
            f"fits={'yes' if self.fits else 'no'}")

  def to_json(self) -> str:
    d = {k: getattr(self, k) for k in ("topology", "chips", "hosts", "devices", "slices",
                                        "hbm_bytes", "hbm_source", "mesh")}
    d.update(fits=self.fits, peak_bytes=self.peak, rows=[r.to_dict() for r in self.rows],
             summary=self.summary_line())
    return json.dumps(d, indent=2)


def _gib(x: float) -> str:
  return f"{x / _GIB:.2f}"


def _flops(x: float) -> str:
  return "-" if x != x or not x else f"{x / 1e12:.2f}"


COLUMNS = ("function", "args", "temp", "out", "alias", "resident", "total", "fits", "compile s",
           "XLA TFLOP", "model TFLOP", "XLA/model", "XLA GB", "all-gather", "reduce-scatter", "all-reduce",
           "all-to-all", "coll-permute")


def table_rows(report: Report) -> list[list[str]]:
  out = []
  for r in report.rows:
    res = "+".join(f"{k} {_gib(v)}" for k, v in r.resident.items()) or "0"
    coll = [_gib(r.collectives.get(k, 0.0)) if r.collectives else "-"
            for k in analysis.COLLECTIVES]
    if r.error and not r.args:  # refused: XLA's stated need as temp, the total a lower bound
      mem = ["-", _gib(r.temp) if r.temp else "-", "-", "-", res, f">={_gib(r.total)}"]
    else:
      mem = [_gib(r.args), _gib(r.temp), _gib(r.output), _gib(r.alias), res, _gib(r.total)]
    model, seen = r.model_flops / report.devices, r.xla_view_flops / report.devices
    ratio = r.xla_flops / seen if seen and r.xla_flops == r.xla_flops else float("nan")
    out.append([r.name, *mem, "yes" if r.fits else "no", f"{r.compile_s:.1f}",
                _flops(r.xla_flops), _flops(model), "-" if ratio != ratio else f"{ratio:.2f}",
                "-" if r.xla_bytes != r.xla_bytes else f"{r.xla_bytes / 1e9:.1f}", *coll])
  return out


def format_table(report: Report) -> str:
  """Plain-text table: GiB per device; XLA TFLOP/GB as cost_analysis() reports them for the
  per-device program; model TFLOP per device (6 N tokens for a train step, 2 N tokens for a
  forward, over the devices). XLA counts a while loop's body once (one layer of a scanned
  stack, one chunk of the chunked LM head, one decode step per segment), so XLA/model divides
  by the model FLOPs counted the same way: 1 + remat's recomputation + non-matmul work.
  Collectives: GiB per device as written in the HLO (an op inside a loop counts once)."""
  rows = [list(COLUMNS)] + table_rows(report)
  widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(r, widths))) for r in rows]
  errors = [f"  {r.name}: {r.error}" for r in report.rows if r.error]
  return "\n".join(lines + (["XLA refused:"] + errors if errors else []))


def format_markdown(report: Report) -> str:
  head = (f"topology {report.topology}: {report.chips} chips, {report.hosts} hosts, "
          f"{report.devices} devices, {report.slices} slice(s), mesh {report.mesh}, HBM "
          f"{_gib(report.hbm_bytes)} GiB per device ({report.hbm_source}); GiB per device\n\n")
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
  errors = [f"- {r.name}: {r.error}" for r in report.rows if r.error]
  return head + "\n".join(lines) + ("\n\nXLA refused:\n" + "\n".join(errors) if errors else "")


def run(config: Any, topology: topo_lib.Topology, hbm_gib: float | None = None,
        make_jobs: Callable | None = None, log: Callable[[str], None] = print,
        functions: list[str] | None = None,
        resolve: Callable[[str], Any] | None = None) -> Report:
  """Compiles every job of `config` for `topology`. hbm_gib: the per-device budget (default:
  what XLA says it leaves a program on that device, `topology.available_hbm_bytes`, or a GPU
  target's memory); functions: only the jobs whose name contains one of these strings."""
  from rlaif_jax.aot import stages
  from rlaif_jax.sharding import mesh as mesh_lib
  devices = topology.devices()
  desc = topo_lib.describe(devices)
  if hbm_gib is not None:
    if hbm_gib <= 0:
      raise ValueError(f"--hbm_gib must be > 0, got {hbm_gib}")
    hbm, source = hbm_gib * _GIB, "--hbm_gib"
  else:
    hbm, source = topology.hbm_bytes(devices[0])
  mesh_fn = lambda cfg: mesh_lib.mesh_from_config(cfg, devices)
  jobs = (make_jobs(config, mesh_fn) if make_jobs else
          stages.jobs_for(config, mesh_fn, resolve))
  if functions:
    names = [j.name for j in jobs]
    jobs = [j for j in jobs if any(f in j.name for f in functions)]
    if not jobs:
      raise ValueError(f"--functions {functions} match none of this config's functions {names}")
  mesh = mesh_fn(stages.first_stage(config))
  report = Report(topology.name, desc["chips"], desc["hosts"], desc["devices"], desc["slices"],
                  hbm, source, dict(mesh.shape), [])
  log(f"aot: {topology.name} = {topology.libtpu_name} {dict(topology.kwargs)}: {desc}; "
      f"HBM {_gib(hbm)} GiB per device ({source}); {len(jobs)} functions; mesh "
      f"{dict(mesh.shape)}")
  for job in jobs:
    row = analysis.compile_row(job, hbm)
    log(f"  {job.name}: {'fits' if row.fits else 'DOES NOT FIT'} total {_gib(row.total)} GiB "
        f"({row.compile_s:.1f} s){' ' + row.error[:200] if row.error else ''}")
    report.rows.append(row)
  return report
