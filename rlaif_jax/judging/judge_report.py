"""Judge-vs-human agreement report for judged records that carry a ``label``."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from rlaif_jax.metrics.agreement import best_length_threshold_baseline, binary_agreement
from rlaif_jax.judging import parsing

_ROWS = ("n", "accuracy", "precision", "recall", "f1", "cohen_kappa")


def _label(value: Any) -> int | None:
  """0/1, or Good/Bad-style strings (as the labelled-file loaders accept); None otherwise."""
  if value is None:
    return None
  try:
    return parsing.normalise_binary(value, "label")
  except parsing.ParseError:
    return None


def agreement_report(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
  """Judge metrics and the best length-threshold baseline on the same records.

  Records need ``label`` (0/1), ``verdict`` (0/1 or None on error) and ``response``; records
  whose judge call failed are counted in ``n_errors`` and left out of both columns. Returns
  None when no record has a label.
  """
  labelled = [r for r in records if _label(r.get("label")) is not None]
  if not labelled:
    return None
  judged = [r for r in labelled if r.get("verdict") in (0, 1)]
  report: dict[str, Any] = {"n_labelled": len(labelled), "n_judged": len(judged),
                            "n_errors": len(labelled) - len(judged)}
  if judged:
    labels = np.array([_label(r["label"]) for r in judged])
    report["judge"] = binary_agreement(labels, np.array([r["verdict"] for r in judged]))
    report["length_baseline"] = best_length_threshold_baseline(
        np.array([len(r.get("response", "")) for r in judged]), labels)
  return report


def json_safe(value: Any) -> Any:
  """NaN/inf -> None so the report is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def dumps_report(report: dict[str, Any]) -> str:
  return json.dumps(json_safe(report), ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def format_report(report: dict[str, Any]) -> str:
  """Text table: metric | judge | length >= t baseline."""
  lines = [f"labelled records: {report['n_labelled']}  judged: {report['n_judged']}  "
           f"errors (excluded): {report['n_errors']}"]
  if "judge" not in report:
    return "\n".join(lines)
  judge, base = report["judge"], report["length_baseline"]
  header = ("metric", "judge", f"len>={base['threshold']}")
  lines.append(f"{header[0]:<12}{header[1]:>10}{header[2]:>12}")
  for key in _ROWS:
    def cell(v: Any) -> str:
      if isinstance(v, int):
        return str(v)
      return "nan" if v is None or not math.isfinite(v) else f"{v:.4f}"
    lines.append(f"{key:<12}{cell(judge[key]):>10}{cell(base[key]):>12}")
  return "\n".join(lines)
