"""The main job, the paper's experiment, in one work directory: tokenizer -> SFT -> reward model
-> GRPO with the RM reward (path A); adversarial principle optimisation -> GRPO with the
optimised principle judge's verdict as the reward (path B); evaluation.

  WORKDIR/sft         SFT run (its tokenizer is trained first into sft/tokenizer/)
  WORKDIR/initial     the starting policy exported for evaluation (random init, or the HF model)
  WORKDIR/rm          Bradley–Terry reward model (trunk from the SFT run), rm_report.json
  WORKDIR/grpo        path A's RL run (reward: the reward model)
  WORKDIR/principles  path B's principle optimisation (principles_stage.py), usage.json
  WORKDIR/grpo_b      path B's RL run (reward: the optimised principle judge's verdict)
  WORKDIR/eval        generations, judgements, excellence/diversity/reliability/control tables
  WORKDIR/results.md  the paper's main table, the efficiency table, controls, reliability
  WORKDIR/plots/      training curves of every stage

`config.reward_path` = "A", "B" or "AB" (default). The LLM judge (path B, Signal-1, Signal-2) is
`config.judge.base_url/model`, or, with none, the SFT checkpoint served by the pipeline itself
for the run (`local_judge.py`, a stand-in; results.md says so).

Every stage is skipped when its output exists, so a killed run resumes where it stopped (and
the stages themselves resume from their checkpoints). A finished stage records the config it ran
under in WORKDIR/<stage>/pipeline_stage.json (with the configs of the stages it was built on); a
rerun whose config differs for a finished stage is refused before anything runs
(`StageConfigError`, naming the stage and the keys), since the stage would otherwise be reused as
is. Only keys that change how a stage runs, not what it makes (`RUNTIME_KEYS`: mesh, progress
bar, remat, ...), may differ. The evaluation is not such a stage: it is redone whenever its
settings, a checkpoint's weights or a judge changed (generations and judgements made under other
ones are moved to WORKDIR/eval/stale/; the stand-in judge's URL changes per run, so its
judgements are redone on a rerun).
"""
from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Callable

import ml_collections

from rlaif_jax import storage
from rlaif_jax.evaluation import plots
from rlaif_jax.pipeline import curation_stage, local_judge, principles_stage
from rlaif_jax.pipeline.evaluation_stage import judge_configs, run_evaluation
from rlaif_jax.pipeline.results import results_markdown
from rlaif_jax.pipeline.stages import (  # re-exported: the pipeline's public names
    PROMPT_SET_FILES, RESULTS_FILE, RL_FORMAT_KEYS, RUNTIME_KEYS, STAGE_CONFIG_FILE,
    STAGE_FOLDERS, StageConfigError, _stage, check_stage_configs, config_diff,
    eval_generation_config, export_initial, needs_judge, stage_done, stage_records,
    validate_config, write_stage_record, write_stage_time)
from rlaif_jax.rl import run as rl_run
from rlaif_jax.sharding import host
from rlaif_jax.training import reward_model, sft

__all__ = ["PROMPT_SET_FILES", "RESULTS_FILE", "RL_FORMAT_KEYS", "RUNTIME_KEYS",
           "STAGE_CONFIG_FILE", "STAGE_FOLDERS", "StageConfigError", "check_stage_configs",
           "config_diff", "eval_generation_config", "judge_configs", "results_markdown",
           "reward_overrides", "run_pipeline", "stage_done", "stage_records", "validate_config",
           "write_stage_record"]


def reward_overrides(config: Any, path: str, rm_dir: pathlib.Path,
                     judge: local_judge.JudgeEndpoint | None = None,
                     principles: str | None = None) -> dict[str, Any]:
  """The RL reward settings (config.rl.reward keys, `scoring.config`) of path A (the reward
  model) or path B (the principle judge's verdict: `principles` through the `judge` endpoint,
  with the rest of the one judge block, config.judge)."""
  if path == "A":
    return {"use": ("rm",), "rm": {"workdir": str(rm_dir)}}
  # The whole judge block: config.rl may have been replaced after config.judge was tied to it.
  return {"use": ("judge",), "judge": {
      **config.judge.to_dict(), "base_url": judge.base_url, "model": judge.model,
      "api_key_env": judge.api_key_env, "principles": principles or config.judge.principles}}


def _rl_config(config: Any, sft_dir: pathlib.Path, reward: dict[str, Any],
               loop_overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  rl_cfg = ml_collections.ConfigDict(config.rl.to_dict())
  rl_cfg.policy.sft_workdir = str(sft_dir)
  rl_cfg.reward.update(reward)
  rl_cfg.loop.update(loop_overrides or {})
  return rl_cfg


def run_pipeline(config: Any, workdir: str | os.PathLike, data_dir: str | os.PathLike
                 ) -> str:
  """Runs every stage not yet done; returns the results markdown (also in WORKDIR/results.md).

  Raises StageConfigError (before anything runs) for an invalid config or one that differs from
  the config a finished stage ran under (module docstring)."""
  t0 = time.perf_counter()
  validate_config(config)
  workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  records = stage_records(config)
  check_stage_configs(workdir, records)
  timings: dict[str, float] = {}

  def timed(name: str, fn: Callable[[], Any]) -> None:
    s = time.perf_counter()
    fn()
    timings[name] = time.perf_counter() - s
    write_stage_time(workdir, name, timings[name])
    write_stage_record(workdir, name, records[name])

  done = lambda folder: host.agreed_flag(stage_done(workdir, folder))  # process 0's view
  sft_dir, paths = workdir / "sft", config.reward_path
  if _stage("SFT", done("sft")):
    timed("sft", lambda: sft.run_sft(config.sft, sft_dir, data_dir))
  initial_done = "initial" in records and done("initial")
  initial = export_initial(config, workdir, sft_dir)
  if "initial" in records and not initial_done:
    write_stage_record(workdir, "initial", records["initial"])
  checkpoints = {"initial": initial, "sft": str(sft_dir)}
  with local_judge.judge_endpoint(config, str(sft_dir), needs_judge(config)) as endpoint:
    _path_a(config, workdir, data_dir, endpoint, done, timed, checkpoints)
    principles = _path_b(config, workdir, data_dir, endpoint, done, timed, checkpoints)
    _stage("evaluation", False)
    s = time.perf_counter()
    evaluation = run_evaluation(config, workdir, data_dir, checkpoints, endpoint, principles)
    timings["eval"] = time.perf_counter() - s
  text = ""
  if host.is_main():
    pngs = plots.plot_workdir(workdir)
    text = results_markdown(
        workdir, evaluation["rows"], evaluation["reliability"], timings, pngs,
        config.eval.prompt_set, controls=evaluation["controls"], paths=paths,
        local_judge=bool(endpoint and endpoint.local), data_dir=data_dir,
        constrained_json=bool(config.judge.get("constrained_json", False)),
        rl_rows_per_step=config.rl.rl.prompts_per_step * config.rl.rl.n_samples)
    storage.write_text(str(workdir / RESULTS_FILE), text)
    print(text)
  print(f"pipeline finished in {time.perf_counter() - t0:.0f}s; results in "
        f"{workdir / RESULTS_FILE}")
  return text


def _path_a(config: Any, workdir: pathlib.Path, data_dir: pathlib.Path,
            endpoint: local_judge.JudgeEndpoint | None, done: Callable[[str], bool],
            timed: Callable[[str, Callable[[], Any]], None], checkpoints: dict[str, str]
            ) -> None:
  """The reward model (on the paper's pairs, or on the curator's: `config.rm_pairs`) and, with
  path A, GRPO against it."""
  sft_dir, rm_dir = workdir / "sft", workdir / "rm"
  rm_cfg = ml_collections.ConfigDict(config.rm.to_dict())
  rm_cfg.init.sft_workdir = str(sft_dir)
  if config.get("rm_pairs", "paper") == "curated":
    out = workdir / curation_stage.CURATED_DIR
    if _stage("curated RM pairs (multi-agent curator on SFT samples)", done("curated")):
      timed("curated", lambda: curation_stage.curate_pairs(config, out, data_dir, sft_dir,
                                                            endpoint))
    rm_cfg.data.train_file = str(out / curation_stage.PAIRS_FILE)
  if _stage("reward model", done("rm")):
    timed("rm", lambda: reward_model.run_train_rm(rm_cfg, rm_dir, data_dir))
  if "A" in config.reward_path:
    if _stage("GRPO, path A (reward model)", done("grpo")):
      rl_cfg = _rl_config(config, sft_dir, reward_overrides(config, "A", rm_dir))
      timed("grpo", lambda: rl_run.run_rl(rl_cfg, workdir / "grpo", data_dir))
    checkpoints["sft_grpo_a"] = str(workdir / "grpo")


def _path_b(config: Any, workdir: pathlib.Path, data_dir: pathlib.Path,
            endpoint: local_judge.JudgeEndpoint | None, done: Callable[[str], bool],
            timed: Callable[[str, Callable[[], Any]], None], checkpoints: dict[str, str]
            ) -> str | None:
  """Path B's stages (principle optimisation, GRPO with the judge's verdict); returns the
  optimised principles' file (None without path B)."""
  if "B" not in config.reward_path:
    return None
  p_dir = workdir / "principles"
  if _stage("principle optimisation, path B", done("principles")):
    if host.is_main():  # the game's LLM calls and files: process 0 alone
      timed("principles", lambda: principles_stage.optimise_principles(
          config, p_dir, data_dir, endpoint))
    host.barrier("pipeline_principles")
  principles = str(p_dir / principles_stage.FINAL_FILE)
  if _stage("GRPO, path B (principle judge)", done("grpo_b")):
    rl_cfg = _rl_config(config, workdir / "sft",
                        reward_overrides(config, "B", workdir / "rm", endpoint, principles),
                        config.rl_b.to_dict())
    timed("grpo_b", lambda: rl_run.run_rl(rl_cfg, workdir / "grpo_b", data_dir))
  checkpoints["sft_grpo_b"] = str(workdir / "grpo_b")
  return principles
