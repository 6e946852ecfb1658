"""The evaluation's rows and tables: excellence per checkpoint x judge, diversity and length
per checkpoint, the column sets of every table, report.md + summary.json."""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Sequence

import numpy as np

from rlaif_jax import storage
from rlaif_jax.data import greetings
from rlaif_jax.metrics import diversity, stats
from rlaif_jax.judging.judge_report import json_safe

EXCELLENCE_COLUMNS = ("checkpoint", "judge", "rate", "ci_low", "ci_high", "n", "n_invalid",
                      "mean_score", "spearman_score_length")
DIVERSITY_COLUMNS = ("checkpoint", "n", "distinct_1", "distinct_2", "self_bleu", "novelty_4",
                     "empty_rate", "mean_chars", "median_chars", "std_chars", "min_chars",
                     "max_chars", "eos_rate")
RELIABILITY_COLUMNS = ("judge", "kind", "n", "n_invalid", "accuracy", "precision", "recall",
                       "f1", "cohen_kappa", "positive_rate_pred", "threshold", "notes")
CONTROL_COLUMNS = ("judge", "control", "rate", "ci_low", "ci_high", "n", "n_invalid")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def excellence_row(checkpoint: str, judge: str, records: Sequence[dict[str, Any]]
                   ) -> dict[str, Any]:
  """Excellence rate with its 95% Wilson CI over the valid verdicts, the invalid count, the mean
  score and Spearman(score, length) of one checkpoint under one judge."""
  valid = [r for r in records if r["valid"]]
  scores = np.array([r["score"] for r in valid], dtype=np.float64)
  lengths = [diversity.char_length(r["response"]) for r in valid]
  return {"checkpoint": checkpoint, "judge": judge,
          **stats.excellence_rate(np.array([r["label"] for r in valid], dtype=np.int64)),
          "n_invalid": len(records) - len(valid),
          "mean_score": float(scores.mean()) if scores.size else float("nan"),
          "spearman_score_length": stats.spearman(scores, lengths)}


def diversity_row(checkpoint: str, generations: Sequence[dict[str, Any]], seed: int = 0,
                  novelty_reference: set[str] | None = None) -> dict[str, Any]:
  """Diversity and length statistics of one checkpoint's responses; novelty-4 against
  `novelty_reference` (`sft_ngrams`; NaN without one)."""
  texts = [g["response"] for g in generations]
  eos = np.mean([g["finish_reason"] == "stop" for g in generations]) if generations else np.nan
  return {"checkpoint": checkpoint,
          **diversity.diversity_report(texts, seed=seed, novelty_reference=novelty_reference),
          "eos_rate": float(eos)}


def sft_ngrams(data_dir: str | os.PathLike, n: int = 4) -> set[str]:
  """The character n-grams of every response of the SFT data (sft/sft_data.json, all
  examples: the SFT run's small held-out split included), the reference of novelty-n."""
  return diversity.char_ngram_set((e.response for e in greetings.load_sft(data_dir)), n)


def _check_names(kind: str, names: Sequence[str]) -> None:
  for name in names:
    if not _NAME.match(name):
      raise ValueError(f"{kind} name {name!r} may only hold letters, digits, '_', '.', '-'")
  if len(set(names)) != len(names):
    raise ValueError(f"{kind} names must be unique, got {list(names)}")


def _write_summary(out: pathlib.Path, settings: dict[str, Any], tables: dict[str, str],
                   rows: dict[str, Any]) -> None:
  text = "# Evaluation\n\n" + "\n".join(f"- {k}: {v}" for k, v in settings.items()) + "\n"
  for title, table in tables.items():
    text += f"\n## {title}\n\n{table}"
  storage.write_text(str(out / "report.md"), text)
  summary = json.dumps(json_safe({"settings": settings, **rows}), ensure_ascii=False, indent=2)
  storage.write_text(str(out / "summary.json"), summary + "\n")
