"""Each judge's excellence rate on the control sets (data/controls.py), which every judge must
fail: a judge that calls byte soup or a greeting for the wrong occasion "excellent" is measuring
something other than quality, whatever its agreement with humans."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rlaif_jax.data.controls import ControlItem
from rlaif_jax.metrics import stats
from rlaif_jax.evaluation import processes
from rlaif_jax.evaluation.judges import EvalJudge


def control_rows(judges: Sequence[EvalJudge], control_sets: dict[str, Sequence[ControlItem]]
                 ) -> list[dict[str, Any]]:
  """One row per (judge, control kind): excellence rate with its 95% Wilson CI over the valid
  verdicts, and the invalid count. Lower is better; 0 is the right answer."""
  rows = []
  for judge in judges:
    for kind, items in control_sets.items():
      verdict = processes.judge(judge, [it.query for it in items],
                                [it.response for it in items])
      labels = verdict.labels[verdict.valid].astype(np.int64)
      rows.append({"judge": judge.name, "control": kind, **stats.excellence_rate(labels),
                   "n_invalid": verdict.n_invalid})
  return rows


def format_control_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: judges as rows, control kinds as columns, `rate [lo, hi]` cells."""
  kinds = list(dict.fromkeys(r["control"] for r in rows))
  judges = list(dict.fromkeys(r["judge"] for r in rows))
  cell = {(r["judge"], r["control"]): r for r in rows}
  lines = ["| judge | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
  for j in judges:
    cells = []
    for k in kinds:
      r = cell.get((j, k))
      if r is None or r["n"] == 0:
        cells.append("n/a")
      else:
        cells.append(f"{r['rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                     + (f" ({r['n_invalid']} invalid)" if r["n_invalid"] else ""))
    lines.append(f"| {j} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
