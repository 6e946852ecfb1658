"""Figures of a human evaluation: excellence rate per checkpoint, inter-annotator agreement and
each automatic signal's agreement with the humans; written as markdown + JSON.

The human verdict of an item is the strict majority of its annotators (more than half say 1);
a tie (even number of annotators, split evenly) counts as not excellent in the excellence rate
and is left out of the signal agreement (the humans did not decide). Sheets are read by
`human_eval.read_sheet`, which guarantees every annotator rated every item.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from rlaif_jax import storage
from rlaif_jax.evaluation import interrater, report
from rlaif_jax.metrics import agreement, stats
from rlaif_jax.evaluation.human_eval import Rubric
from rlaif_jax.judging.judge_report import dumps_report


def summarise(key: dict[str, Any], rubric: Rubric, sheets: Mapping[str, dict[str, dict]],
              signals: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
  """All figures as one JSON-able dict.

  Args:
    key: the export key (`human_eval.load_key`).
    sheets: annotator name -> `read_sheet` result (every item rated).
    signals: signal name -> `read_signal` result.
  """
  names = list(sheets)
  item_ids = sorted(key["items"])
  verdicts = np.array([[sheets[a][i]["verdict"] for i in item_ids] for a in names], np.float64)
  yes = verdicts.sum(axis=0)
  majority = (yes * 2 > len(names)).astype(np.int64)
  tie = yes * 2 == len(names)
  checkpoints = sorted({key["items"][i]["checkpoint"] for i in item_ids})
  ckpt = np.array([key["items"][i]["checkpoint"] for i in item_ids])
  per_checkpoint = {}
  for c in checkpoints:
    mask = ckpt == c
    row = stats.excellence_rate(majority[mask])
    row.update({"ties": int(tie[mask].sum()),
                "annotator_rates": {a: float(verdicts[k][mask].mean()) for k, a in enumerate(names)},
                "mean_scores": {d: float(np.mean([sheets[a][i]["scores"][d] for a in names
                                                  for i, m in zip(item_ids, mask) if m]))
                                for d in rubric.dimensions}})
    per_checkpoint[c] = row
  dims = {}
  for d in rubric.dimensions:
    scores = np.array([[sheets[a][i]["scores"][d] for i in item_ids] for a in names], np.float64)
    exact, adjacent = interrater.exact_and_adjacent(scores)
    dims[d] = {"krippendorff_alpha_interval": interrater.krippendorff_alpha(scores, "interval"),
               "krippendorff_alpha_ordinal": interrater.krippendorff_alpha(scores, "ordinal"),
               "exact_agreement": exact, "within_1_agreement": adjacent}
  verdict_agreement = {
      "pairwise": interrater.pairwise_cohen(verdicts, names),
      "fleiss_kappa": interrater.fleiss_kappa(verdicts),
      "krippendorff_alpha_nominal": interrater.krippendorff_alpha(verdicts, "nominal"),
      "unanimous_share": float(((yes == 0) | (yes == len(names))).mean()),
  }
  out_signals = {}
  for name, signal in (signals or {}).items():
    out_signals[name] = _signal_figures(signal, item_ids, majority, tie, ckpt, checkpoints)
  return {"rubric": rubric.name, "rubric_sha256": rubric.sha256, "annotators": names,
          "n_items": len(item_ids), "checkpoints": per_checkpoint,
          "verdict_agreement": verdict_agreement, "dimension_agreement": dims,
          "signals": out_signals}


def _signal_figures(signal: dict[str, Any], item_ids: Sequence[str], majority: np.ndarray,
                    tie: np.ndarray, ckpt: np.ndarray, checkpoints: Sequence[str]
                    ) -> dict[str, Any]:
  got = np.array([i in signal["verdicts"] for i in item_ids])
  pred = np.array([signal["verdicts"].get(i, 0) for i in item_ids], np.int64)
  scored = got & ~tie
  figures: dict[str, Any] = {
      "lines": signal["lines"], "unmatched_lines": signal["unmatched"],
      "invalid_lines": signal["invalid"], "items_with_verdict": int(got.sum()),
      "items_compared": int(scored.sum()),
      "agreement": agreement.binary_agreement(majority[scored], pred[scored])
      if scored.any() else None,
      "per_checkpoint": {c: stats.excellence_rate(pred[got & (ckpt == c)]) for c in checkpoints}}
  return figures


_CKPT_COLUMNS = ("checkpoint", "rate", "ci_low", "ci_high", "n", "ties")
_PAIR_COLUMNS = ("a", "b", "n", "agreement", "cohen_kappa")
_DIM_COLUMNS = ("dimension", "krippendorff_alpha_interval", "krippendorff_alpha_ordinal",
                "exact_agreement", "within_1_agreement")
_SIGNAL_COLUMNS = ("signal", "items_compared", "accuracy", "cohen_kappa", "precision", "recall",
                   "positive_rate_true", "positive_rate_pred", "unmatched_lines", "invalid_lines")


def render_markdown(summary: dict[str, Any]) -> str:
  """The summary as markdown tables."""
  ckpt_rows = [{"checkpoint": c, **row} for c, row in summary["checkpoints"].items()]
  score_cols = ("checkpoint", *next(iter(summary["checkpoints"].values()))["mean_scores"])
  score_rows = [{"checkpoint": c, **row["mean_scores"]} for c, row in summary["checkpoints"].items()]
  va = summary["verdict_agreement"]
  dim_rows = [{"dimension": d, **row} for d, row in summary["dimension_agreement"].items()]
  signal_rows = []
  for name, s in summary["signals"].items():
    signal_rows.append({"signal": name, **(s["agreement"] or {}), **s,
                        "items_compared": s["items_compared"]})
  parts = [
      f"# Human evaluation (rubric `{summary['rubric']}`, {len(summary['annotators'])} "
      f"annotator(s): {', '.join(summary['annotators'])}; {summary['n_items']} items)\n",
      "## Excellence rate (strict majority verdict; 95% Wilson CI; ties count as not "
      "excellent)\n", report.markdown_table(ckpt_rows, _CKPT_COLUMNS),
      "\n## Mean scores\n", report.markdown_table(score_rows, score_cols, 2),
      f"\n## Verdict agreement\n\nFleiss' kappa {report.format_cell(va['fleiss_kappa'])}, "
      f"Krippendorff's alpha (nominal) {report.format_cell(va['krippendorff_alpha_nominal'])}, "
      f"unanimous items {report.format_cell(va['unanimous_share'])}\n\n",
      report.markdown_table(va["pairwise"], _PAIR_COLUMNS),
      "\n## Score agreement per dimension\n", report.markdown_table(dim_rows, _DIM_COLUMNS)]
  if signal_rows:
    parts += ["\n## Automatic signals vs. the human majority verdict\n",
              report.markdown_table(signal_rows, _SIGNAL_COLUMNS)]
  return "".join(parts)


def write_summary(summary: dict[str, Any], output_dir: str) -> tuple[str, str]:
  """human_eval.md and human_eval.json in output_dir (each written atomically)."""
  storage.makedirs(output_dir)
  md_path = storage.join(output_dir, "human_eval.md")
  json_path = storage.join(output_dir, "human_eval.json")
  storage.write_text(json_path, dumps_report(summary))
  storage.write_text(md_path, render_markdown(summary))
  return md_path, json_path

