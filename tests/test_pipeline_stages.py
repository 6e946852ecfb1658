"""The pipeline's bookkeeping, without training: up-front config validation, per-stage config
records (a finished stage under another config is refused, naming stage and keys), the
evaluation prompt format taken from the GRPO config, the results heading, atomic writes of the
done-markers, and the RM report's progress-bar scoring."""
import json
import pathlib

import numpy as np
import pytest

from configs import tiny_cpu
from rlaif_jax import pipeline, storage
from rlaif_jax.rl import run as rl_run
from rlaif_jax.training import reward_model

RM_REPORT = {"pair_accuracy": 0.6, "accuracy_chosen_not_longer": 0.5, "n_chosen_not_longer": 10,
             "spearman_score_length": 0.2, "length_baseline_accuracy": 0.55}


def finished_workdir(root: pathlib.Path, config) -> pathlib.Path:
  """A work directory whose stages all look finished under `config` (done-markers + records)."""
  for folder in ("sft", "initial", "grpo"):
    export = root / folder / "export"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
  (root / "rm").mkdir()
  (root / "rm" / "rm_report.json").write_text(json.dumps(RM_REPORT))
  for folder, record in pipeline.stage_records(config).items():
    pipeline.write_stage_record(root, folder, record)
  return root


# ---- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["C", "a", "", None])
def test_an_unknown_reward_path_is_refused_before_anything_runs(path, tmp_path):
  config = tiny_cpu.get_config()
  config.reward_path = path
  with pytest.raises(pipeline.StageConfigError, match="reward_path must be \"A\".* or \"B\""):
    pipeline.run_pipeline(config, tmp_path / "w", tmp_path / "data")
  assert not (tmp_path / "w").exists()  # nothing was started


def test_path_b_needs_the_judge_server_flags(tmp_path):
  config = tiny_cpu.get_config()
  config.reward_path = "B"
  with pytest.raises(pipeline.StageConfigError,
                     match="--config.judge.base_url and --config.judge.model"):
    pipeline.run_pipeline(config, tmp_path / "w", tmp_path / "data")
  config.judge.base_url = "http://127.0.0.1:8000/v1"
  with pytest.raises(pipeline.StageConfigError, match="set --config.judge.model,"):
    pipeline.validate_config(config)
  config.judge.model = "judge"
  pipeline.validate_config(config)
  config.eval.prompt_set = "grpo_tset"
  with pytest.raises(pipeline.StageConfigError, match="eval.prompt_set must be one of"):
    pipeline.validate_config(config)
  assert not (tmp_path / "w").exists()


# ---- stage config records ---------------------------------------------------------------------


def test_a_finished_stage_under_another_config_is_refused(tmp_path):
  config = tiny_cpu.get_config()
  work = finished_workdir(tmp_path / "w", config)
  pipeline.check_stage_configs(work, pipeline.stage_records(config))  # unchanged: fine
  config.rl.rl.total_steps = 120
  with pytest.raises(pipeline.StageConfigError) as e:
    pipeline.run_pipeline(config, work, tmp_path / "data")  # refused before anything runs
  message = str(e.value)
  assert f"grpo ({work / 'grpo'}):\n    rl.rl.total_steps: 60 -> 120" in message
  assert f"delete {work / 'grpo'} to redo that stage" in message and "new --workdir" in message
  assert "sft (" not in message and "rm (" not in message
  # An SFT change makes the stages built on it count as changed too; the initial export only
  # depends on the model, tokenizer and seed.
  config = tiny_cpu.get_config()
  config.sft.optim.lr = 1e-2
  with pytest.raises(pipeline.StageConfigError) as e:
    pipeline.check_stage_configs(work, pipeline.stage_records(config))
  message = str(e.value)
  assert "sft.optim.lr: 0.002 -> 0.01" in message
  assert [f for f in pipeline.STAGE_FOLDERS if f"  {f} (" in message] == ["sft", "rm", "grpo"]
  assert f"delete {work / 'sft'} {work / 'rm'} {work / 'grpo'} to redo those stages" in message


def test_runtime_and_evaluation_settings_may_change(tmp_path):
  config = tiny_cpu.get_config()
  work = finished_workdir(tmp_path / "w", config)
  config.sft.mesh = config.rm.mesh = config.rl.mesh = (1, 1, -1)
  config.sft.loop.progress_bar = False
  config.rl.reward.rm.on_host = True
  config.eval.max_prompts, config.eval.max_new_tokens, config.eval.prompt_set = 8, 8, "both"
  config.judge.base_url, config.judge.model = "http://127.0.0.1:1/v1", "m"  # path A: eval only
  pipeline.check_stage_configs(work, pipeline.stage_records(config))


def test_path_b_records_the_judge_and_not_the_reward_model(tmp_path):
  config = tiny_cpu.get_config()
  config.reward_path, config.judge.base_url, config.judge.model = "B", "http://h/v1", "m"
  work = finished_workdir(tmp_path / "w", config)
  config.rm.loss.margin = 0.5
  with pytest.raises(pipeline.StageConfigError) as e:
    pipeline.check_stage_configs(work, pipeline.stage_records(config))
  assert "  rm (" in str(e.value) and "  grpo (" not in str(e.value)
  config.rm.loss.margin = 0.0
  config.judge.model = "other"
  with pytest.raises(pipeline.StageConfigError, match=r"judge.model: \"m\" -> \"other\""):
    pipeline.check_stage_configs(work, pipeline.stage_records(config))


def test_a_finished_stage_without_a_record_adopts_the_current_config(tmp_path, capsys):
  config = tiny_cpu.get_config()
  work = finished_workdir(tmp_path / "w", config)
  (work / "rm" / pipeline.STAGE_CONFIG_FILE).unlink()
  config.rm.loss.margin = 0.5
  with pytest.raises(pipeline.StageConfigError, match="grpo"):  # grpo's record names rm's
    pipeline.check_stage_configs(work, pipeline.stage_records(config))
  assert "has no pipeline_stage.json" in capsys.readouterr().out
  record = json.loads((work / "rm" / pipeline.STAGE_CONFIG_FILE).read_text())
  assert record["rm"]["loss"]["margin"] == 0.5


def test_an_unreadable_rm_report_is_not_a_finished_stage(tmp_path):
  rm = tmp_path / "rm"
  rm.mkdir()
  assert not pipeline.stage_done(tmp_path, "rm")
  (rm / "rm_report.json").write_text('{"pair_accuracy": 0.6, "accur')  # a write cut short
  assert not pipeline.stage_done(tmp_path, "rm")
  (rm / "rm_report.json").write_text(json.dumps(RM_REPORT))
  assert pipeline.stage_done(tmp_path, "rm")


def test_config_diff_names_added_and_removed_keys():
  assert pipeline.config_diff({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 2]}}) == []
  assert pipeline.config_diff({"a": {"b": 1}}, {"a": {"b": 2, "d": "x"}}) == [
      "a.b: 1 -> 2", 'a.d: (absent) -> "x"']
  assert pipeline.config_diff({"x": {"mesh": [1, -1, 1]}}, {"x": {"mesh": [1, 1, -1]}}) == []


# ---- evaluation settings and results ----------------------------------------------------------


def test_evaluation_prompts_use_the_whole_grpo_prompt_format():
  config = tiny_cpu.get_config()
  fmt = config.rl.format
  fmt.prompt_template, fmt.system_prompt = "写一条祝福：{query}", "你是助手"
  fmt.use_chat_template, fmt.add_bos, fmt.max_prompt_len = False, True, 48
  fmt.plain_template = "问：{prompt}\n答："
  gen = pipeline.eval_generation_config(config)
  assert (gen.prompt_template, gen.system_prompt, gen.use_chat_template, gen.add_bos,
          gen.max_prompt_len, gen.plain_template) == (
              "写一条祝福：{query}", "你是助手", False, True, 48, "问：{prompt}\n答：")
  e = config.eval
  assert (gen.max_new_tokens, gen.temperature, gen.top_p, gen.seed, gen.batch_size) == (
      e.max_new_tokens, e.temperature, e.top_p, e.seed, e.batch_size)
  from rlaif_jax.training import sft
  trained, evaluated = sft.format_config(fmt), gen.format_config()  # as GRPO formats prompts
  for key in pipeline.RL_FORMAT_KEYS:
    assert getattr(evaluated, key) == getattr(trained, key), key


def test_results_heading_names_the_configured_prompt_set(tmp_path):
  (tmp_path / "rm").mkdir()
  (tmp_path / "rm" / "rm_report.json").write_text(json.dumps(RM_REPORT))
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "reliability.md").write_text("| judge |\n|---|\n| rm |\n")
  rows = {"excellence": [{"checkpoint": "sft", "judge": "rm", "rate": 0.5, "ci_low": 0.2,
                          "ci_high": 0.8}],
          "diversity": [{"checkpoint": "sft", "n": 12, "distinct_2": 0.5, "self_bleu": 0.1,
                         "mean_chars": 20.0}]}
  text = pipeline.results_markdown(tmp_path, rows, [], {}, [], "eval_queries")
  assert "## Policies (evaluation prompts: eval_queries (the evaluation set's queries), 12 " \
         "prompts)" in text
  assert "grpo_data/test.parquet" not in text
  assert "| sft | 0.500 [0.200, 0.800] |" in text


# ---- atomic done-markers and progress ---------------------------------------------------------


def test_samples_and_stage_records_are_written_atomically(tmp_path, monkeypatch):
  rl_run.write_samples(tmp_path, [("q", "c", 1.0)])
  before = (tmp_path / "samples.txt").read_text()

  def killed(src, dst):
    raise KeyboardInterrupt  # a kill between writing the temporary file and the rename

  monkeypatch.setattr(storage.os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    rl_run.write_samples(tmp_path, [("q2", "other", 0.0)])
  with pytest.raises(KeyboardInterrupt):
    pipeline.write_stage_record(tmp_path, ".", {"a": 1})
  assert (tmp_path / "samples.txt").read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.txt"]  # no partial files


class FakeScorer:
  batch_size, mesh, on_host = 4, None, False

  def __init__(self):
    self.calls = []

  def raw_scores(self, queries, responses):
    self.calls.append(len(responses))
    return np.array([len(q) + 10 * len(r) for q, r in zip(queries, responses)], np.float32)


def test_rm_report_scoring_with_progress_scores_the_same_batches():
  queries = [f"q{i}" for i in range(10)]
  responses = ["x" * i for i in range(10)]
  scorer = FakeScorer()
  a, b = reward_model.raw_scores_with_progress(scorer, [(queries, responses),
                                                        (queries[:3], responses[:3])], "t")
  np.testing.assert_array_equal(a, FakeScorer().raw_scores(queries, responses))
  np.testing.assert_array_equal(b, FakeScorer().raw_scores(queries[:3], responses[:3]))
  assert scorer.calls == [4, 4, 2, 3]  # whole scoring batches of each job
  assert [len(x) for x in reward_model.raw_scores_with_progress(
      scorer, [([], [])], "t")] == [0]

