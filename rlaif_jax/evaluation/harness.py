"""Evaluation harness: generate with every checkpoint on the evaluation prompts, judge the
greetings with every judge, and report excellence rates, diversity and length; plus the
reliability of the judges themselves against the human labels.

`evaluate_checkpoints` writes under OUTPUT_DIR:

  generations/<checkpoint>.jsonl       {id, query, prompt, response, finish_reason,
                                         completion_tokens, prompt_truncated, seed, settings}
  judgements/<checkpoint>/<judge>.jsonl {id, query, response, label (0/1, null if invalid),
                                         valid, score, judge (what decided), reason | error}
  excellence.{md,csv}                  per checkpoint x judge: rate with 95% Wilson CI over the
                                         valid verdicts, n, n_invalid, mean score, Spearman of
                                         score vs length
  diversity.{md,csv}                   per checkpoint: distinct-1/2, self-BLEU-4 (characters,
                                         over the non-empty responses), empty-response rate,
                                         novelty-4 (share of generated character 4-grams never
                                         in the SFT data's responses), length statistics, share
                                         ended by EOS
  plots/excellence.png, plots/length_<checkpoint>.png, report.md, summary.json

Tables, plots, report.md and summary.json are written atomically (temporary file + rename).
`judge_reliability` adds reliability.{md,csv} and reliability/ (see there): a judge whose
threshold was fitted on the labelled items is scored there cross-fitted (out of fold).

Prompts are formatted as in training: `GenerationConfig.prompt_template` (the GRPO template
"请只生成一条祝福语：{query}" by default) inside the tokenizer's chat template
(`rlaif_jax.data.formatting`). Both stages resume: generation batch k (prompts
[k*batch_size, (k+1)*batch_size)) always uses seed + k and is written whole, so a resumed run
writes what an uninterrupted one would; judgements are appended chunk by chunk and only
missing ids are judged. A file written under other prompts, generation settings, checkpoint
weights (`checkpoint_identity`: a checkpoint retrained in place counts as another one) or judge
is never mixed in: it is refused (`StaleOutputError`), or with `on_stale="restart"` moved to
OUTPUT_DIR/stale/<time>/ with a printed note (a checkpoint's judgements with its generations)
and written afresh. Multi-host (`processes.py`): every process generates and scores with the
reward model; process 0 reads and writes the files and asks the LLM judges, and shares what it
read or was told. Lengths are non-whitespace characters (`diversity.char_length`),
except for the length judge, which thresholds len(response) as the paper's baseline does.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

from rlaif_jax import storage
from rlaif_jax.data import controls as controls_lib, greetings
from rlaif_jax.evaluation import control_eval, plots, processes, report
from rlaif_jax.metrics import diversity
from rlaif_jax.evaluation.generation import (  # re-exported: the harness's public names
    PROMPT_SETS, GenerationConfig, checkpoint_dir, checkpoint_identity, generate_checkpoint,
    parse_checkpoints, select_queries)
from rlaif_jax.evaluation.judges import EvalJudge
from rlaif_jax.evaluation.judging_io import (CROSSFIT_DIR, RELIABILITY_FOLDS, judge_records,
                                             judge_reliability)
from rlaif_jax.evaluation.stale import (STALE_DIR, STALE_MODES, StaleOutputError,
                                        _check_on_stale, _fresh_if_stale, set_aside)
from rlaif_jax.evaluation.tables import (CONTROL_COLUMNS, DIVERSITY_COLUMNS, EXCELLENCE_COLUMNS,
                                         RELIABILITY_COLUMNS, _check_names, _write_summary,
                                         diversity_row, excellence_row, sft_ngrams)

plot_length_histogram = plots.plot_length_histogram
__all__ = ["CONTROL_COLUMNS", "CROSSFIT_DIR", "DIVERSITY_COLUMNS", "EXCELLENCE_COLUMNS",
           "GenerationConfig", "PROMPT_SETS", "RELIABILITY_COLUMNS", "RELIABILITY_FOLDS",
           "STALE_DIR", "STALE_MODES", "StaleOutputError", "checkpoint_dir",
           "checkpoint_identity", "diversity_row", "evaluate_checkpoints", "evaluate_controls",
           "excellence_row", "generate_checkpoint", "judge_records", "judge_reliability",
           "parse_checkpoints", "plot_length_histogram", "select_queries", "set_aside",
           "sft_ngrams"]


def evaluate_checkpoints(checkpoints: dict[str, str], judges: Sequence[EvalJudge],
                         output_dir: str | os.PathLike, *, queries: Sequence[str] | None = None,
                         data_dir: str | os.PathLike | None = None,
                         prompt_set: str = "grpo_test", max_prompts: int | None = None,
                         generation: GenerationConfig = GenerationConfig(), mesh: Any = None,
                         judge_chunk_size: int = 64, on_stale: str = "refuse",
                         progress: bool = True, novelty_reference: set[str] | None = None
                         ) -> dict[str, list[dict[str, Any]]]:
  """Generates, judges and reports (module docstring) for every checkpoint.

  Args:
    checkpoints: name -> run directory (with export/), HF directory, or "hf:DIR".
    judges: built with `judges.make_judges` (calibrated).
    queries: the evaluation requests; when None, `select_queries(data_dir, prompt_set,
      max_prompts, generation.seed)`.
    on_stale: "refuse" raises StaleOutputError on a generations or judgements file written for
      other prompts, settings, weights or judge; "restart" moves it aside (a checkpoint's
      judgements go with its generations) and writes it afresh.
    novelty_reference: the character 4-grams novelty-4 is measured against; when None,
      `sft_ngrams(data_dir)` if data_dir holds the SFT data, else novelty-4 is NaN.
  Returns:
    {"excellence": rows, "diversity": rows} as written to the tables.
  """
  _check_names("checkpoint", list(checkpoints))
  _check_names("judge", [j.name for j in judges])
  _check_on_stale(on_stale)
  source = prompt_set if queries is None else "given"
  if queries is None:
    if data_dir is None:
      raise ValueError("evaluate_checkpoints needs queries= or data_dir= (see select_queries)")
    queries = select_queries(data_dir, prompt_set, max_prompts, generation.seed)
  elif max_prompts is not None:
    queries = list(queries)[:max_prompts]
  if not queries:
    raise ValueError("evaluate_checkpoints: no evaluation prompts")
  out = pathlib.Path(output_dir)
  if novelty_reference is None and data_dir is not None:
    try:
      novelty_reference = sft_ngrams(data_dir)
    except FileNotFoundError as e:
      print(f"note: novelty-4 is left out (NaN): no SFT data to compare with ({e})", flush=True)
  excellence, diversity_rows = [], []
  for name, path in checkpoints.items():
    gens = _fresh_if_stale(
        out, on_stale, lambda: generate_checkpoint(
            path, queries, out / "generations" / f"{name}.jsonl", generation, mesh, progress),
        also=[out / "judgements" / name])
    diversity_rows.append(diversity_row(name, gens, generation.seed, novelty_reference))
    if processes.is_main():
      plots.plot_length_histogram([diversity.char_length(g["response"]) for g in gens],
                                  f"Response length: {name}", out / "plots" / f"length_{name}.png")
    for judge in judges:
      j_path = out / "judgements" / name / f"{judge.name}.jsonl"
      records = _fresh_if_stale(out, on_stale, lambda: judge_records(
          judge, gens, j_path, judge_chunk_size, progress))
      excellence.append(excellence_row(name, judge.name, records))
  tables = {
      "Excellence rate (95% Wilson CI)": report.write_table(
          excellence, EXCELLENCE_COLUMNS, out / "excellence.md", out / "excellence.csv"),
      "Diversity and length": report.write_table(
          diversity_rows, DIVERSITY_COLUMNS, out / "diversity.md", out / "diversity.csv")}
  if processes.is_main():
    plots.plot_bars(excellence, out / "plots" / "excellence.png")
  settings = {"checkpoints": dict(checkpoints), "judges": [j.signature for j in judges],
              "n_prompts": len(queries), "prompt_set": source,
              "generation": dataclasses.asdict(generation),
              "novelty_reference": (None if novelty_reference is None else
                                    f"{len(novelty_reference)} distinct character 4-grams")}
  rows = {"excellence": excellence, "diversity": diversity_rows}
  if processes.is_main():
    _write_summary(out, settings, tables, rows)
  return rows


def evaluate_controls(judges: Sequence[EvalJudge], queries: Sequence[str],
                      output_dir: str | os.PathLike, data_dir: str | os.PathLike,
                      seed: int = 0) -> list[dict[str, Any]]:
  """Each judge's excellence rate on the control sets every judge must fail
  (`data.controls.make_controls` over `queries` and the SFT corpus of good greetings): rows
  (judge, control, rate with 95% Wilson CI, n, n_invalid), written to controls.{md,csv} and
  controls/<kind>.jsonl (the control items)."""
  if not queries:
    raise ValueError("evaluate_controls: no queries to build the control sets from")
  out = pathlib.Path(output_dir)
  sets = controls_lib.make_controls(queries, greetings.load_sft(data_dir), seed=seed)
  for kind, items in sets.items():
    if processes.is_main():
      storage.write_text(str(out / "controls" / f"{kind}.jsonl"), "".join(
          storage.dumps_line(dataclasses.asdict(it)).decode("utf-8") for it in items))
  rows = control_eval.control_rows(judges, sets)
  report.write_table(rows, CONTROL_COLUMNS, out / "controls.md", out / "controls.csv")
  return rows
