"""WORKDIR/results.md: the paper's main table (initial / SFT / SFT+GRPO(A) / SFT+GRPO(B) under
Signal-1, Signal-2, the reward model and the length baseline, with diversity and length), the
training-efficiency table per path, the judges' agreement with humans beside their excellence on
the control sets, the reward model's pair report and the GRPO summaries."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from rlaif_jax.data import greetings
from rlaif_jax.evaluation import control_eval
from rlaif_jax.pipeline import curation_stage, principles_stage
from rlaif_jax.pipeline.evaluation_stage import SIGNAL_NAMES
from rlaif_jax.pipeline.stages import PROMPT_SET_FILES, stage_time
from rlaif_jax.training import metrics as metrics_lib, reward_model

CHECKPOINT_NAMES = {"initial": "initial", "sft": "SFT", "sft_grpo_a": "SFT+GRPO(A)",
                    "sft_grpo_b": "SFT+GRPO(B)"}


def _comparison_table(rows: dict[str, list[dict[str, Any]]]) -> str:
  """One row per checkpoint: excellence under each judge (with CI), diversity (distinct-2,
  self-BLEU over the non-empty responses, novelty-4 against the SFT responses, share of empty
  responses), length."""
  judges = list(dict.fromkeys(r["judge"] for r in rows["excellence"]))
  rate = {(r["checkpoint"], r["judge"]): r for r in rows["excellence"]}
  head = ["checkpoint"] + [f"excellent ({SIGNAL_NAMES.get(j, j)})" for j in judges] + [
      "distinct-2", "self-BLEU", "novelty-4", "empty", "mean chars"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for d in rows["diversity"]:
    cells = [CHECKPOINT_NAMES.get(d["checkpoint"], d["checkpoint"])]
    for j in judges:
      r = rate[(d["checkpoint"], j)]
      invalid = f" ({r['n_invalid']} invalid)" if r.get("n_invalid") else ""
      cells.append("n/a" + invalid if not r.get("n", 1) else
                   f"{r['rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]{invalid}")
    cells += [_num(d.get("distinct_2")), _num(d.get("self_bleu")), _num(d.get("novelty_4")),
              _num(d.get("empty_rate")), _num(d.get("mean_chars"), 1)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _num(value: Any, digits: int = 3) -> str:
  """A table cell: `value` to `digits` decimals, "-" for a missing or NaN value."""
  if value is None or value != value:
    return "-"
  return f"{value:.{digits}f}"


def _reliability_note(reliability: list[dict[str, Any]]) -> str:
  """How the reliability rows were computed: which thresholds were cross-fitted, in how many
  folds."""
  fitted = [r for r in reliability if r.get("folds")]
  if not fitted:
    return ""
  ks = sorted({int(r["folds"]) for r in fitted})
  names = ", ".join(f"`{r['judge']}`" for r in fitted)
  k = " or ".join(str(x) for x in ks)
  return (f"Rows {names}: threshold cross-fitted, {k} folds (stratified, seeded): each item's "
          "verdict comes from the threshold fitted on the other folds, so these are held-out "
          "figures (the notes column gives the in-sample accuracy beside them). The `threshold` "
          "column, and the excellence rates above, use the threshold fitted on all labelled "
          "items.")


def _rl_summary(rl_dir: pathlib.Path, k: int = 5) -> str:
  rows = [r for r in metrics_lib.read_metrics(rl_dir) if "reward_mean" in r]
  if not rows:
    return "(no RL metrics)"
  mean = lambda xs, key: sum(x.get(key, 0.0) for x in xs) / len(xs)
  first, last = rows[:k], rows[-k:]
  text = (f"{len(rows)} GRPO steps: mean reward {mean(first, 'reward_mean'):.3f} over the first "
          f"{len(first)} steps -> {mean(last, 'reward_mean'):.3f} over the last {len(last)}; "
          f"KL to the reference {mean(last, 'kl'):.4f}; mean response length "
          f"{mean(first, 'response_chars'):.1f} -> {mean(last, 'response_chars'):.1f} chars")
  invalid = mean(rows, "reward_invalid_frac")
  if invalid:
    text += (f"; **{invalid:.1%} of the rewards were invalid** (judge verdicts that did not "
             "parse after the re-asks): those rows were masked out of the update and the "
             "group statistics, not scored as Bad")
  return text


def efficiency_table(workdir: pathlib.Path, data_dir: pathlib.Path | None, paths: str,
                     rl_rows_per_step: int) -> str:
  """Per path: human-labelled examples consumed, wall time of its own stages (from each stage's
  recorded time), and the judge or reward-model calls it made."""
  lines = ["| path | human-labelled examples | wall time (own stages) | judge / RM calls |",
           "|---|---|---|---|"]
  steps = lambda d: sum(1 for r in metrics_lib.read_metrics(d) if "reward_mean" in r)
  fmt_t = lambda *ts: (f"{sum(ts):.0f}s" if all(t is not None for t in ts) else "-")
  if "A" in paths:
    n = steps(workdir / "grpo") * rl_rows_per_step
    t_r, t_g = stage_time(workdir, "rm"), stage_time(workdir, "grpo")
    curated = curation_stage.read_usage(workdir / curation_stage.CURATED_DIR)
    if curated is not None:  # config.rm_pairs="curated"
      t_c = stage_time(workdir, "curated")
      lines.append(f"| A (reward model) | none: {curated['pairs']} pairs the curator made from "
                   f"{curated['samples']} SFT samples | {fmt_t(t_c, t_r, t_g)} (curation "
                   f"{fmt_t(t_c)} + RM {fmt_t(t_r)} + GRPO {fmt_t(t_g)}) | "
                   f"{curated['llm_calls']} LLM calls (curation) + {n} RM scorings (GRPO) |")
    else:
      pairs = (len(greetings.load_preference_pairs(data_dir, "train")) if data_dir else None)
      lines.append(f"| A (reward model) | {pairs if pairs is not None else '-'} preference "
                   f"pairs (reward_data_train.json) | {fmt_t(t_r, t_g)} (RM {fmt_t(t_r)} + "
                   f"GRPO {fmt_t(t_g)}) | {n} RM scorings (GRPO) |")
  if "B" in paths:
    usage = principles_stage.read_usage(workdir / "principles") or {}
    n = steps(workdir / "grpo_b") * rl_rows_per_step
    t_p, t_g = stage_time(workdir, "principles"), stage_time(workdir, "grpo_b")
    lines.append(f"| B (principle judge) | {usage.get('labelled_examples', '-')} labelled "
                 f"examples (principle_examples split) | {fmt_t(t_p, t_g)} (principles "
                 f"{fmt_t(t_p)} + GRPO {fmt_t(t_g)}) | {usage.get('llm_calls', '-')} LLM calls "
                 f"(optimisation, re-asks included) + {n} judged completions (GRPO) |")
  return "\n".join(lines)


def results_markdown(workdir: pathlib.Path, rows: dict[str, list[dict[str, Any]]],
                     reliability: list[dict[str, Any]], timings: dict[str, float],
                     pngs: list[str], prompt_set: str = "grpo_test", *,
                     controls: list[dict[str, Any]] = (), paths: str = "A",
                     local_judge: bool = False, data_dir: pathlib.Path | None = None,
                     rl_rows_per_step: int = 0, constrained_json: bool = False) -> str:
  rm_report = reward_model.complete_pair_report(
      json.loads((workdir / "rm" / reward_model.REPORT_FILE).read_text()))
  rel = (workdir / "eval" / "reliability.md").read_text()
  n = rows["diversity"][0].get("n") if rows.get("diversity") else None
  prompts = f"{prompt_set} ({PROMPT_SET_FILES.get(prompt_set, prompt_set)})" + (
      f", {n} prompts" if n is not None else "")
  parts = ["# rlaif_jax pipeline results", ""]
  if local_judge:
    parts += [LOCAL_JUDGE_NOTE + " " + (CONSTRAINED_NOTE if constrained_json
                                        else UNCONSTRAINED_NOTE), ""]
  parts += [
      f"## Policies (evaluation prompts: {prompts})", "",
      _comparison_table(rows), "",
      EXCELLENCE_NOTE, "",
      "## Training efficiency per path", "",
      efficiency_table(workdir, data_dir, paths, rl_rows_per_step), "",
      "## Judges against the human labels (reliability_examples split)", "", rel.strip(), "",
      _reliability_note(reliability), ""]
  if controls:
    parts += ["## Judges on the controls (every judge must fail them: lower is better)", "",
              control_eval.format_control_table(controls).strip(), "", CONTROL_NOTE, ""]
  parts += [
      "## Reward model on reward_data_test.json", "",
      reward_model.format_pair_report(rm_report), "",
      "Lengths are non-whitespace characters. Chosen not longer = chosen strictly shorter + "
      "equal length; the baseline gets an equal-length pair half right.", ""]
  for path, folder in (("A", "grpo"), ("B", "grpo_b")):
    if path in paths:
      parts += [f"## GRPO, path {path}", "", _rl_summary(workdir / folder), ""]
  parts += [
      "## Stage wall times (this invocation)", "",
      "\n".join(f"- {k}: {v:.0f}s" for k, v in timings.items()) or "- all stages were done", "",
      "## Plots", "", "\n".join(f"- {os.path.relpath(p, workdir)}" for p in pngs), ""]
  return "\n".join(parts)


LOCAL_JUDGE_NOTE = (
    "**The LLM judge here is a stand-in**: no judge endpoint was configured, so the pipeline "
    "served its own SFT checkpoint (a tiny model) as the judge of path B's GRPO, of the "
    "principle optimisation, and of Signal-1 and Signal-2. Those figures show that the "
    "machinery runs end to end; they say nothing about judge quality or about path B versus "
    "path A. Rerun with `--config.judge.base_url=... --config.judge.model=...` (vLLM, SGLang, "
    "OpenAI) for the paper's comparison.")
CONSTRAINED_NOTE = (
    "Its replies are decoded under each verdict's JSON schema (`judge.constrained_json`), so "
    "they parse unless cut at `judge.max_tokens`.")
UNCONSTRAINED_NOTE = (
    "Its replies are not constrained (`judge.constrained_json=false`): a tiny model's verdicts "
    "mostly fail to parse, and are masked (path B's GRPO) or counted invalid (evaluation).")
EXCELLENCE_NOTE = (
    "Excellence = share of generations a judge calls excellent, over its valid verdicts (the "
    "invalid ones, replies that did not parse, are counted in brackets and left out); 95% "
    "Wilson intervals. Signal-1 = the multi-agent curator, Signal-2 = the principle judge (the "
    "optimised principles when path B ran), both through the same judge endpoint; `reward "
    "model` = RM score >= a threshold, `length baseline` = response length >= a threshold, "
    "thresholds fitted on the reliability_examples split. self-BLEU is over the non-empty "
    "responses, `empty` the share of empty ones; novelty-4 = share of the generated character "
    "4-grams that never occur in the SFT data's responses (sft/sft_data.json).")
CONTROL_NOTE = (
    "One control response per evaluation prompt (rlaif_jax/data/controls.py): random_chars "
    "(random CJK characters), repeated_phrase (one clause repeated), other_occasion (a fluent "
    "greeting for another occasion), cut_mid_sentence (a real greeting cut inside a clause). A "
    "judge that passes them measures something other than quality, whatever its agreement "
    "with humans above.")
