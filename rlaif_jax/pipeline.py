"""The main job: tokenizer -> SFT -> reward model -> GRPO -> evaluation, in one work directory.

  WORKDIR/sft       SFT run (its tokenizer is trained first into sft/tokenizer/)
  WORKDIR/initial   the starting policy exported for evaluation (random init, or the HF model)
  WORKDIR/rm        Bradley–Terry reward model (trunk from the SFT run), rm_report.json
  WORKDIR/grpo      RL run (reward: the RM for path A, the LLM judge for path B)
  WORKDIR/eval      generations, judgements, excellence/diversity/reliability tables, plots
  WORKDIR/results.md  the comparison table (initial vs SFT vs SFT+GRPO) and what it rests on
  WORKDIR/plots/    training curves of every stage

Every stage is skipped when its output exists, so a killed run resumes where it stopped (and
the stages themselves resume from their checkpoints). A finished stage records the config it ran
under in WORKDIR/<stage>/pipeline_stage.json (with the configs of the stages it was built on); a
rerun whose config differs for a finished stage is refused before anything runs
(`StageConfigError`, naming the stage and the keys), since the stage would otherwise be reused as
is. Only keys that change how a stage runs, not what it makes (`RUNTIME_KEYS`: mesh, progress
bar, remat, ...), may differ. The evaluation is not such a stage: it is redone whenever its
settings or a checkpoint's weights changed (generations and judgements made under other ones
are moved to WORKDIR/eval/stale/).
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any

import ml_collections

from rlaif_jax import storage
from rlaif_jax.data import greetings
from rlaif_jax.evaluation import harness, judges as judges_lib, plots
from rlaif_jax.models import checkpoint_bridge
from rlaif_jax.rl import run as rl_run
from rlaif_jax.sharding import host, mesh as mesh_lib
from rlaif_jax.tokenizers import load_tokenizer
from rlaif_jax.training import checkpointing, metrics as metrics_lib, reward_model, sft

RESULTS_FILE = "results.md"
STAGE_CONFIG_FILE = "pipeline_stage.json"
# Config keys (last component) that change how a stage runs, not what it makes: a finished stage
# is reused when only these differ.
RUNTIME_KEYS = frozenset({"mesh", "progress_bar", "async_checkpointing", "remat", "remat_policy",
                          "attention_impl", "on_host", "ref_on_host", "concurrency",
                          "api_key_env", "log_every", "checkpoint_every", "keep_checkpoints"})
STAGE_FOLDERS = ("sft", "initial", "rm", "grpo")  # in the order they run
PROMPT_SET_FILES = {"grpo_test": "grpo_data/test.parquet",
                    "eval_queries": "the evaluation set's queries",
                    "both": "grpo_data/test.parquet + the evaluation set's queries"}
RL_FORMAT_KEYS = ("prompt_template", "plain_template", "use_chat_template", "system_prompt",
                  "add_bos", "max_prompt_len")


class StageConfigError(ValueError):
  """The pipeline config is invalid, or differs from the one a finished stage ran under."""


def _stage(name: str, done: bool) -> bool:
  print(f"\n=== {name}: {'done, skipped' if done else 'running'} ===", flush=True)
  return not done


def validate_config(config: Any) -> None:
  """Refuses, before anything runs, a reward path other than "A"/"B", path B without a judge
  server, and an unknown evaluation prompt set."""
  path = config.get("reward_path")
  if path not in ("A", "B"):
    raise StageConfigError(f"--config.reward_path must be \"A\" (reward model) or \"B\" (LLM "
                           f"judge), got {path!r}")
  if path == "B":
    j = config.judge
    missing = [f"--config.judge.{k}" for k in ("base_url", "model") if not j.get(k)]
    if missing:
      raise StageConfigError(
          f"reward_path B rewards GRPO with an LLM judge (an OpenAI-compatible server); set "
          f"{' and '.join(missing)}, e.g. --config.judge.base_url=http://127.0.0.1:8000/v1 "
          "--config.judge.model=NAME")
  if config.eval.prompt_set not in harness.PROMPT_SETS:
    raise StageConfigError(f"--config.eval.prompt_set must be one of {harness.PROMPT_SETS}, got "
                           f"{config.eval.prompt_set!r}")


def _plain(cfg: Any) -> Any:
  """A ConfigDict (or dict) as plain JSON values (tuples become lists, placeholders None)."""
  if hasattr(cfg, "to_json"):
    return json.loads(cfg.to_json())
  return json.loads(json.dumps(cfg))


def stage_records(config: Any) -> dict[str, dict[str, Any]]:
  """folder -> the config that decides what the stage makes: its own and those of the stages it
  is built on (so a stage redone under a new config makes the later ones count as changed)."""
  sft_cfg, rm_cfg = _plain(config.sft), _plain(config.rm)
  records = {"sft": {"sft": sft_cfg}}
  if not config.sft.model.get("hf_checkpoint"):
    records["initial"] = {"sft": {k: sft_cfg.get(k) for k in ("seed", "model", "tokenizer")}}
  records["rm"] = {"sft": sft_cfg, "rm": rm_cfg}
  rl_cfg = _plain(config.rl)  # only the reward's scorer blocks in use decide what GRPO makes
  use = ["judge"] if config.reward_path == "B" else list(rl_cfg["reward"]["use"])
  rl_cfg["reward"] = {k: v for k, v in rl_cfg["reward"].items() if k in use or k == "use"}
  grpo: dict[str, Any] = {"sft": sft_cfg, "rl": rl_cfg, "reward_path": config.reward_path}
  if config.reward_path == "B":
    grpo["judge"] = _plain(config.judge)
  else:
    grpo["rm"] = rm_cfg
  records["grpo"] = grpo
  return records


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(value, dict):
    out: dict[str, Any] = {}
    for k, v in value.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out or {prefix[:-1]: {}}
  return {prefix[:-1]: value}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """'key: old -> new' for every leaf that differs, except RUNTIME_KEYS."""
  a, b = _flatten(old), _flatten(new)
  missing = object()

  def show(v: Any) -> str:
    return "(absent)" if v is missing else f"{json.dumps(v, ensure_ascii=False):.60}"
  lines = []
  for key in sorted(set(a) | set(b)):
    if key.rsplit(".", 1)[-1] in RUNTIME_KEYS:
      continue
    x, y = a.get(key, missing), b.get(key, missing)
    if x != y:
      lines.append(f"{key}: {show(x)} -> {show(y)}")
  return lines


def stage_done(workdir: pathlib.Path, folder: str, note: bool = True) -> bool:
  """Whether the stage in WORKDIR/folder finished (its last output exists and, for the reward
  model's report, reads back: a report cut short is redone, with a printed note)."""
  d = workdir / folder
  if folder == "rm":
    report = d / reward_model.REPORT_FILE
    if not report.exists():
      return False
    try:
      json.loads(report.read_text(encoding="utf-8"))
      return True
    except (ValueError, OSError) as e:
      if note:
        print(f"note: {report} does not read back ({e}); redoing the reward model's report",
              flush=True)
      return False
  return (d / checkpointing.EXPORT_DIR / "config.json").exists()


def check_stage_configs(workdir: pathlib.Path, records: dict[str, dict[str, Any]]) -> None:
  """Raises StageConfigError when a finished stage ran under another config (naming the stages,
  the keys, and what to do). A finished stage without a record (made before records were kept)
  gets the current config recorded, with a note."""
  changed = []
  for folder, record in records.items():
    if not stage_done(workdir, folder, note=False):
      continue
    path = workdir / folder / STAGE_CONFIG_FILE
    if not path.exists():
      print(f"note: {workdir / folder} is finished but has no {STAGE_CONFIG_FILE}; recording the "
            "current config as the one it ran under", flush=True)
      write_stage_record(workdir, folder, record)
      continue
    diff = config_diff(json.loads(path.read_text(encoding="utf-8")), record)
    if diff:
      changed.append((folder, diff))
  if not changed:
    return
  lines = ["the config differs from the one these finished stages ran under, and a rerun would "
           "reuse them as they are:"]
  for folder, diff in changed:
    lines.append(f"  {folder} ({workdir / folder}):")
    lines += [f"    {d}" for d in diff[:12]]
    if len(diff) > 12:
      lines.append(f"    ... and {len(diff) - 12} more")
  folders = " ".join(str(workdir / f) for f, _ in changed)
  lines.append(f"Use a new --workdir, or delete {folders} to redo "
               f"{'that stage' if len(changed) == 1 else 'those stages'} under the new config (or "
               "rerun with the old values). --config.eval.* may change freely: the evaluation is "
               "redone.")
  raise StageConfigError("\n".join(lines))


def write_stage_record(workdir: pathlib.Path, folder: str, record: dict[str, Any]) -> None:
  if not host.is_main():  # one writer in a multi-host run
    return
  storage.write_text(str(workdir / folder / STAGE_CONFIG_FILE),
                     json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def eval_generation_config(config: Any) -> harness.GenerationConfig:
  """The evaluation's sampling (config.eval) with the GRPO prompt format (config.rl.format), so
  evaluation prompts are formatted as the training prompts were."""
  e, fmt = config.eval, config.rl.format
  return harness.GenerationConfig(
      max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
      top_k=e.get("top_k", 0), seed=e.seed, batch_size=e.batch_size,
      **{k: fmt[k] for k in RL_FORMAT_KEYS if k in fmt})


def export_initial(config: Any, workdir: pathlib.Path, sft_dir: pathlib.Path) -> str:
  """The policy before SFT, as an evaluation checkpoint ("hf:DIR" for a HF start)."""
  if config.sft.model.get("hf_checkpoint"):
    return "hf:" + config.sft.model.hf_checkpoint
  out = workdir / "initial"
  export = out / checkpointing.EXPORT_DIR
  if not host.agreed_flag((export / "config.json").exists()):
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
  """Runs every stage not yet done; returns the results markdown (also in WORKDIR/results.md).

  Raises StageConfigError (before anything runs) for an invalid config or one that differs from
  the config a finished stage ran under (module docstring)."""
  t0 = time.perf_counter()
  validate_config(config)
  workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  sft_dir, rm_dir, rl_dir = workdir / "sft", workdir / "rm", workdir / "grpo"
  records = stage_records(config)
  check_stage_configs(workdir, records)
  timings: dict[str, float] = {}

  def timed(name, fn):
    s = time.perf_counter()
    fn()
    timings[name] = time.perf_counter() - s
    write_stage_record(workdir, name, records[name])

  done = lambda folder: host.agreed_flag(stage_done(workdir, folder))  # process 0's view
  if _stage("SFT", done("sft")):
    timed("sft", lambda: sft.run_sft(config.sft, sft_dir, data_dir))
  initial_done = "initial" in records and done("initial")
  initial = export_initial(config, workdir, sft_dir)
  if "initial" in records and not initial_done:
    write_stage_record(workdir, "initial", records["initial"])
  if _stage("reward model", done("rm")):
    rm_cfg = ml_collections.ConfigDict(config.rm.to_dict())
    rm_cfg.init.sft_workdir = str(sft_dir)
    timed("rm", lambda: reward_model.run_train_rm(rm_cfg, rm_dir, data_dir))
  if _stage("GRPO", done("grpo")):
    rl_cfg = ml_collections.ConfigDict(config.rl.to_dict())
    rl_cfg.policy.sft_workdir = str(sft_dir)
    rl_cfg.reward.rm.workdir = str(rm_dir)
    if config.reward_path == "B":
      rl_cfg.reward.use = ("judge",)
      rl_cfg.reward.judge.update(config.judge.to_dict())
    timed("grpo", lambda: rl_run.run_rl(rl_cfg, rl_dir, data_dir))
  _stage("evaluation", False)
  e = config.eval
  s = time.perf_counter()
  labelled = greetings.load_evaluation_set(data_dir)[:e.max_labelled or None]
  spec = judge_spec(config, rm_dir)
  print(f"judges {spec}: calibrating on {len(labelled)} labelled responses", flush=True)
  judges = judges_lib.make_judges(spec, labelled)
  gen = eval_generation_config(config)
  checkpoints = {"initial": initial, "sft": str(sft_dir), "sft_grpo": str(rl_dir)}
  rows = harness.evaluate_checkpoints(checkpoints, judges, workdir / "eval", data_dir=data_dir,
                                      prompt_set=e.prompt_set, max_prompts=e.max_prompts,
                                      generation=gen, on_stale="restart")
  reliability = harness.judge_reliability(judges, labelled, workdir / "eval", on_stale="restart")
  timings["eval"] = time.perf_counter() - s
  pngs = plots.plot_workdir(workdir)
  text = results_markdown(workdir, rows, reliability, timings, pngs, e.prompt_set)
  storage.write_text(str(workdir / RESULTS_FILE), text)
  print(text)
  print(f"pipeline finished in {time.perf_counter() - t0:.0f}s; results in "
        f"{workdir / RESULTS_FILE}")
  return text


def _comparison_table(rows: dict[str, list[dict[str, Any]]]) -> str:
  """One row per checkpoint: excellence under each judge (with CI), diversity (distinct-2,
  self-BLEU over the non-empty responses, novelty-4 against the SFT responses, share of empty
  responses), length."""
  judges = list(dict.fromkeys(r["judge"] for r in rows["excellence"]))
  rate = {(r["checkpoint"], r["judge"]): r for r in rows["excellence"]}
  head = ["checkpoint"] + [f"excellent ({j})" for j in judges] + [
      "distinct-2", "self-BLEU", "novelty-4", "empty", "mean chars"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for d in rows["diversity"]:
    cells = [d["checkpoint"]]
    for j in judges:
      r = rate[(d["checkpoint"], j)]
      cells.append(f"{r['rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
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
  mean = lambda xs, key: sum(x[key] for x in xs) / len(xs)
  first, last = rows[:k], rows[-k:]
  return (f"{len(rows)} GRPO steps: mean reward {mean(first, 'reward_mean'):.3f} over the first "
          f"{len(first)} steps -> {mean(last, 'reward_mean'):.3f} over the last {len(last)}; "
          f"KL to the reference {mean(last, 'kl'):.4f}; mean response length "
          f"{mean(first, 'response_chars'):.1f} -> {mean(last, 'response_chars'):.1f} chars")


def results_markdown(workdir: pathlib.Path, rows: dict[str, list[dict[str, Any]]],
                     reliability: list[dict[str, Any]], timings: dict[str, float],
                     pngs: list[str], prompt_set: str = "grpo_test") -> str:
  rm_report = reward_model.complete_pair_report(
      json.loads((workdir / "rm" / reward_model.REPORT_FILE).read_text()))
  rel = (workdir / "eval" / "reliability.md").read_text()
  n = rows["diversity"][0].get("n") if rows.get("diversity") else None
  prompts = f"{prompt_set} ({PROMPT_SET_FILES.get(prompt_set, prompt_set)})" + (
      f", {n} prompts" if n is not None else "")
  parts = [
      "# rlaif_jax pipeline results", "",
      f"## Policies (evaluation prompts: {prompts})", "",
      _comparison_table(rows), "",
      "Excellence = share of generations a judge calls excellent; `length` is the baseline "
      "judge (response length >= a threshold), `rm` the reward model's score >= a threshold; "
      "thresholds not given are fitted on all labelled items of the evaluation set. 95% Wilson "
      "intervals. self-BLEU is over the non-empty responses, `empty` the share of empty ones; "
      "novelty-4 = share of the generated character 4-grams that never occur in the SFT data's "
      "responses (sft/sft_data.json).",
      "", "## Reward model on reward_data_test.json", "",
      reward_model.format_pair_report(rm_report), "",
      "Lengths are non-whitespace characters. Chosen not longer = chosen strictly shorter + "
      "equal length; the baseline gets an equal-length pair half right.", "",
      "## Judges against the human labels (evaluation set)", "", rel.strip(), "",
      _reliability_note(reliability), "",
      "## GRPO", "", _rl_summary(workdir / "grpo"), "",
      "## Stage wall times (this invocation)", "",
      "\n".join(f"- {k}: {v:.0f}s" for k, v in timings.items()) or "- all stages were done", "",
      "## Plots", "", "\n".join(f"- {os.path.relpath(p, workdir)}" for p in pngs), ""]
  return "\n".join(parts)
