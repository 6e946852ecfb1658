"""The main job: tokenizer -> SFT -> reward model -> GRPO -> evaluation, in one work directory.

  WORKDIR/sft       SFT run (its tokenizer is trained first into sft/tokenizer/)
  WORKDIR/initial   the starting policy exported for evaluation (random init, or the HF model)
  WORKDIR/rm        Bradley–Terry reward model (trunk from the SFT run), rm_report.json
  WORKDIR/grpo      RL run (reward: the RM for path A, the LLM judge for path B)
  WORKDIR/eval      generations, judgements, excellence/diversity/reliability tables, plots
  WORKDIR/results.md  the comparison table (initial vs SFT vs SFT+GRPO) and what it rests on
  WORKDIR/plots/    training curves of every stage

Every stage is skipped when its output exists, so a killed run resumes where it stopped (and
the stages themselves resume from their checkpoints).
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any

import ml_collections

from rlaif_jax.data import greetings
from rlaif_jax.evaluation import harness, judges as judges_lib, plots
from rlaif_jax.models import checkpoint_bridge
from rlaif_jax.rl import run as rl_run
from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.tokenizers import load_tokenizer
from rlaif_jax.training import checkpointing, reward_model, sft

RESULTS_FILE = "results.md"


def _stage(name: str, done: bool) -> bool:
  print(f"\n=== {name}: {'done, skipped' if done else 'running'} ===", flush=True)
  return not done


def export_initial(config: Any, workdir: pathlib.Path, sft_dir: pathlib.Path) -> str:
  """The policy before SFT, as an evaluation checkpoint ("hf:DIR" for a HF start)."""
  if config.sft.model.get("hf_checkpoint"):
    return "hf:" + config.sft.model.hf_checkpoint
  out = workdir / "initial"
  export = out / checkpointing.EXPORT_DIR
  if not (export / "config.json").exists():
    tok_path = rl_run._sft_tokenizer(sft_dir)
    cfg = sft.model_config(config.sft, load_tokenizer(tok_path))
    model = checkpoint_bridge.init_sharded(cfg, mesh_lib.make_mesh(tuple(config.sft.mesh)),
                                           config.sft.seed)
    checkpointing.export_for_inference(out, model, tok_path)
  return str(out)


def judge_spec(config: Any, rm_dir: pathlib.Path) -> str:
  spec = f"rm=rm:{rm_dir},length"
  j = config.judge
  if j.get("base_url") and j.get("model"):
    spec += (f",llm:openai@{j.base_url}#{j.model}?principles={j.principles}"
             f"&api_key_env={j.api_key_env}")
  return spec


def run_pipeline(config: Any, workdir: str | os.PathLike, data_dir: str | os.PathLike
                 ) -> str:
  """Runs every stage not yet done; returns the results markdown (also in WORKDIR/results.md)."""
  t0 = time.perf_counter()
  workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  sft_dir, rm_dir, rl_dir = workdir / "sft", workdir / "rm", workdir / "grpo"
  timings: dict[str, float] = {}

  def timed(name, fn):
    s = time.perf_counter()
    fn()
    timings[name] = time.perf_counter() - s

  if _stage("SFT", (sft_dir / checkpointing.EXPORT_DIR / "config.json").exists()):
    timed("sft", lambda: sft.run_sft(config.sft, sft_dir, data_dir))
  initial = export_initial(config, workdir, sft_dir)
  if _stage("reward model", (rm_dir / "rm_report.json").exists()):
    rm_cfg = ml_collections.ConfigDict(config.rm.to_dict())
    rm_cfg.init.sft_workdir = str(sft_dir)
    timed("rm", lambda: reward_model.run_train_rm(rm_cfg, rm_dir, data_dir))
  if _stage("GRPO", (rl_dir / checkpointing.EXPORT_DIR / "config.json").exists()):
    rl_cfg = ml_collections.ConfigDict(config.rl.to_dict())
    rl_cfg.policy.sft_workdir = str(sft_dir)
    rl_cfg.reward.rm.workdir = str(rm_dir)
    if config.reward_path == "B":
      rl_cfg.reward.sources = "judge"
      rl_cfg.reward.judge.update(config.judge.to_dict())
    timed("grpo", lambda: rl_run.run_rl(rl_cfg, rl_dir, data_dir))
  _stage("evaluation", False)
  e = config.eval
  labelled = greetings.load_evaluation_set(data_dir)[:e.max_labelled or None]
  judges = judges_lib.make_judges(judge_spec(config, rm_dir), labelled)
  gen = harness.GenerationConfig(max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                                 top_p=e.top_p, seed=e.seed, batch_size=e.batch_size,
                                 max_prompt_len=config.rl.format.max_prompt_len)
  checkpoints = {"initial": initial, "sft": str(sft_dir), "sft_grpo": str(rl_dir)}
  s = time.perf_counter()
  rows = harness.evaluate_checkpoints(checkpoints, judges, workdir / "eval", data_dir=data_dir,
                                      prompt_set=e.prompt_set, max_prompts=e.max_prompts,
                                      generation=gen)
  reliability = harness.judge_reliability(judges, labelled, workdir / "eval")
  timings["eval"] = time.perf_counter() - s
  pngs = plots.plot_workdir(workdir)
  text = results_markdown(workdir, rows, reliability, timings, pngs)
  (workdir / RESULTS_FILE).write_text(text, encoding="utf-8")
  print(text)
  print(f"pipeline finished in {time.perf_counter() - t0:.0f}s; results in {workdir / RESULTS_FILE}")
  return text


def _comparison_table(rows: dict[str, list[dict[str, Any]]]) -> str:
  """One row per checkpoint: excellence under each judge (with CI), diversity, length."""
  judges = list(dict.fromkeys(r["judge"] for r in rows["excellence"]))
  rate = {(r["checkpoint"], r["judge"]): r for r in rows["excellence"]}
  head = ["checkpoint"] + [f"excellent ({j})" for j in judges] + [
      "distinct-2", "self-BLEU", "mean chars"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for d in rows["diversity"]:
    cells = [d["checkpoint"]]
    for j in judges:
      r = rate[(d["checkpoint"], j)]
      cells.append(f"{r['rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    cells += [f"{d['distinct_2']:.3f}", f"{d['self_bleu']:.3f}", f"{d['mean_chars']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _rl_summary(rl_dir: pathlib.Path, k: int = 5) -> str:
  path = rl_dir / "metrics.jsonl"
  if not path.exists():
    return "(no RL metrics)"
  rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  rows = [r for r in rows if "reward_mean" in r]
  if not rows:
    return "(no RL metrics)"
  mean = lambda xs, key: sum(x[key] for x in xs) / len(xs)
  first, last = rows[:k], rows[-k:]
  return (f"{len(rows)} GRPO steps: mean reward {mean(first, 'reward_mean'):.3f} over the first "
          f"{len(first)} steps -> {mean(last, 'reward_mean'):.3f} over the last {len(last)}; "
          f"KL to the reference {mean(last, 'kl'):.4f}; mean response length "
          f"{mean(first, 'response_chars'):.1f} -> {mean(last, 'response_chars'):.1f} chars")


def results_markdown(workdir: pathlib.Path, rows: dict[str, list[dict[str, Any]]],
                     reliability: list[dict[str, Any]], timings: dict[str, float],
                     pngs: list[str]) -> str:
  rm_report = json.loads((workdir / "rm" / "rm_report.json").read_text())
  rel = (workdir / "eval" / "reliability.md").read_text()
  parts = [
      "# rlaif_jax pipeline results", "",
      "## Policies (evaluation prompts: grpo_data/test.parquet)", "",
      _comparison_table(rows), "",
      "Excellence = share of generations a judge calls excellent; `length` is the baseline "
      "judge (response length >= a threshold fitted on the human labels). 95% Wilson intervals.",
      "", "## Reward model on reward_data_test.json", "",
      reward_model.format_pair_report(rm_report), "",
      "## Judges against the human labels (evaluation set)", "", rel.strip(), "",
      "## GRPO", "", _rl_summary(workdir / "grpo"), "",
      "## Stage wall times (this invocation)", "",
      "\n".join(f"- {k}: {v:.0f}s" for k, v in timings.items()) or "- all stages were done", "",
      "## Plots", "", "\n".join(f"- {os.path.relpath(p, workdir)}" for p in pngs), ""]
  return "\n".join(parts)
