"""The pipeline's bookkeeping, without training: up-front config validation, per-stage config
records (a finished stage under another config is refused, naming stage and keys), the
evaluation prompt format taken from the GRPO config, the results heading and tables, atomic
writes of the done-markers, the RM report's progress-bar scoring and its figures by hand."""
import json
import pathlib

import numpy as np
import pytest

from configs import tiny_cpu
from rlaif_jax import pipeline, storage
from rlaif_jax.rl import run as rl_run
from rlaif_jax.metrics import stats
from rlaif_jax.training import reward_model
from rlaif_jax.training.reward_scoring import LengthDebiaser

RM_REPORT = {"pair_accuracy": 0.6, "accuracy_chosen_not_longer": 0.5, "n_chosen_not_longer": 10,
             "spearman_score_length": 0.2, "length_baseline_accuracy": 0.55}


def finished_workdir(root: pathlib.Path, config) -> pathlib.Path:
  """A work directory whose stages all look finished under `config` (done-markers + records)."""
  for folder in ("sft", "initial", "grpo", "grpo_b"):
    export = root / folder / "export"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
  (root / "principles").mkdir()
  (root / "principles" / "final_principles.json").write_text("{}")
  (root / "rm").mkdir()
  (root / "rm" / "rm_report.json").write_text(json.dumps(RM_REPORT))
  for folder, record in pipeline.stage_records(config).items():
    pipeline.write_stage_record(root, folder, record)
  return root


# ---- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["C", "a", "", None, "BA"])
def test_an_unknown_reward_path_is_refused_before_anything_runs(path, tmp_path):
  config = tiny_cpu.get_config()
  config.reward_path = path
  with pytest.raises(pipeline.StageConfigError, match="reward_path must be \"A\".*\"B\".*\"AB\""):
    pipeline.run_pipeline(config, tmp_path / "w", tmp_path / "data")
  assert not (tmp_path / "w").exists()  # nothing was started


def test_rm_pairs_is_paper_or_curated_and_curated_takes_no_train_file(tmp_path):
  config = tiny_cpu.get_config()
  config.rm_pairs = "mine"
  with pytest.raises(pipeline.StageConfigError, match="rm_pairs must be \"paper\".*\"curated\""):
    pipeline.run_pipeline(config, tmp_path / "w", tmp_path / "data")
  config.rm_pairs = "curated"
  config.rm.data.train_file = "pairs.json"
  with pytest.raises(pipeline.StageConfigError, match="cannot also take.*train_file"):
    pipeline.run_pipeline(config, tmp_path / "w", tmp_path / "data")
  assert not (tmp_path / "w").exists()


def test_a_judge_endpoint_is_given_whole_or_not_at_all(tmp_path):
  config = tiny_cpu.get_config()
  assert config.reward_path == "AB"
  pipeline.validate_config(config)  # no endpoint: the pipeline serves a stand-in judge
  config.reward_path = "B"
  config.judge.model = "judge"
  with pytest.raises(pipeline.StageConfigError, match="set --config.judge.base_url,"):
    pipeline.run_pipeline(config, tmp_path / "w", tmp_path / "data")
  config.judge.model = None
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
  config.rl.loop.total_steps = 120
  with pytest.raises(pipeline.StageConfigError) as e:
    pipeline.run_pipeline(config, work, tmp_path / "data")  # refused before anything runs
  message = str(e.value)
  assert f"grpo ({work / 'grpo'}):\n    rl.loop.total_steps: 60 -> 120" in message
  # config.rl is both paths' GRPO config
  assert f"delete {work / 'grpo'} {work / 'grpo_b'} to redo those stages" in message
  assert "new --workdir" in message
  assert "sft (" not in message and "rm (" not in message
  # An SFT change makes the stages built on it count as changed too; the initial export only
  # depends on the model, tokenizer and seed.
  config = tiny_cpu.get_config()
  config.sft.optim.lr = 1e-2
  with pytest.raises(pipeline.StageConfigError) as e:
    pipeline.check_stage_configs(work, pipeline.stage_records(config))
  message = str(e.value)
  assert "sft.optim.lr: 0.002 -> 0.01" in message
  assert [f for f in pipeline.STAGE_FOLDERS if f"  {f} (" in message] == [
      "sft", "rm", "grpo", "principles", "grpo_b"]  # the stand-in judge is the SFT checkpoint
  assert f"delete {work / 'sft'} {work / 'rm'} {work / 'grpo'} " in message


def test_runtime_and_evaluation_settings_may_change(tmp_path):
  config = tiny_cpu.get_config()
  work = finished_workdir(tmp_path / "w", config)
  config.sft.mesh = config.rm.mesh = config.rl.mesh = (1, 1, -1)
  config.sft.loop.progress_bar = False
  config.rl.reward.rm.on_host = True
  config.eval.max_prompts, config.eval.max_new_tokens, config.eval.prompt_set = 8, 8, "both"
  config.principles.iterations = 2  # path A only: the principle stages are not checked
  config.reward_path = "A"
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
  assert "  grpo_b (" not in str(e.value) and "  principles (" not in str(e.value)
  config.rm.loss.margin = 0.0
  config.judge.model = "other"
  with pytest.raises(pipeline.StageConfigError, match=r"judge.model: \"m\" -> \"other\""):
    pipeline.check_stage_configs(work, pipeline.stage_records(config))
  config.judge.model = "m"
  config.rl_b.total_steps = 3  # path B's GRPO alone
  with pytest.raises(pipeline.StageConfigError) as e:
    pipeline.check_stage_configs(work, pipeline.stage_records(config))
  assert "  grpo_b (" in str(e.value) and "  principles (" not in str(e.value)


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


def _results_workdir(tmp_path):
  """A workdir holding what results_markdown reads besides its arguments."""
  (tmp_path / "rm").mkdir()
  (tmp_path / "rm" / "rm_report.json").write_text(json.dumps(RM_REPORT))
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "reliability.md").write_text("| judge |\n|---|\n| rm |\n")


def test_results_heading_names_the_configured_prompt_set(tmp_path):
  _results_workdir(tmp_path)
  rows = {"excellence": [{"checkpoint": "sft", "judge": "rm", "rate": 0.5, "ci_low": 0.2,
                          "ci_high": 0.8}],
          "diversity": [{"checkpoint": "sft", "n": 12, "distinct_2": 0.5, "self_bleu": 0.1,
                         "mean_chars": 20.0}]}
  text = pipeline.results_markdown(tmp_path, rows, [], {}, [], "eval_queries")
  assert "## Policies (evaluation prompts: eval_queries (the evaluation set's queries), 12 " \
         "prompts)" in text
  assert "grpo_data/test.parquet" not in text
  assert "| SFT | 0.500 [0.200, 0.800] |" in text


def test_results_show_novelty_empty_rate_and_how_reliability_was_computed(tmp_path):
  _results_workdir(tmp_path)
  rows = {"excellence": [{"checkpoint": "sft", "judge": "rm", "rate": 0.5, "ci_low": 0.2,
                          "ci_high": 0.8}],
          "diversity": [{"checkpoint": "sft", "n": 12, "distinct_2": 0.5, "self_bleu": 0.1,
                         "novelty_4": 0.25, "empty_rate": 0.125, "mean_chars": 20.0}]}
  reliability = [{"judge": "rm", "folds": 5}, {"judge": "llm_m", "folds": None},
                 {"judge": "length_baseline", "folds": 5}]
  text = pipeline.results_markdown(tmp_path, rows, reliability, {}, [])
  assert "| checkpoint | excellent (reward model) | distinct-2 | self-BLEU | novelty-4 | empty " \
         "| mean chars |" in text
  assert "| SFT | 0.500 [0.200, 0.800] | 0.500 | 0.100 | 0.250 | 0.125 | 20.0 |" in text
  assert "Rows `rm`, `length_baseline`: threshold cross-fitted, 5 folds" in text
  assert "0 by construction" not in text


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



# ---- the reward model's report ----------------------------------------------------------------

# chosen, rejected, chosen score, rejected score. Lengths are non-whitespace characters: pair 2
# is an equal-length pair ("b b" has 2), pair 3's chosen is longer (3 vs 2).
PAIRS = [("aaaa", "a", 1.0, 0.0),   # chosen longer, RM right
         ("a", "aaaa", 2.0, 1.0),   # chosen shorter, RM right
         ("aa", "b b", 0.0, 1.0),   # equal length, RM wrong
         ("a a a", "bb", 0.5, 0.0)]  # chosen longer, RM right


def _pair_report(debiaser=None):
  chosen, rejected, c, r = (list(x) for x in zip(*PAIRS))
  return reward_model.pair_report_from_scores(np.array(c), np.array(r), chosen, rejected,
                                              debiaser)


def test_rm_report_splits_ties_from_shorter_pairs_and_scores_the_baseline_on_them():
  report = _pair_report()
  assert report["pair_accuracy"] == 0.75
  assert (report["accuracy_chosen_not_longer"], report["n_chosen_not_longer"]) == (0.5, 2)
  assert (report["accuracy_chosen_shorter"], report["n_chosen_shorter"]) == (1.0, 1)
  assert (report["accuracy_equal_length"], report["n_equal_length"]) == (0.0, 1)
  # Baseline: 2 wins + half of the tie over 4 pairs; on the not-longer pairs the tie gives it
  # 0.5 / 2 = 0.25 (it used to read "0 by construction").
  assert report["length_baseline_accuracy"] == 0.625
  base = report["length_baseline"]
  assert (base["accuracy_chosen_not_longer"], base["n_chosen_not_longer"]) == (0.25, 2)
  assert (base["accuracy_chosen_shorter"], base["accuracy_equal_length"]) == (0.0, 0.5)
  table = reward_model.format_pair_report(report)
  assert "| reward model | 0.7500 | 0.5000 (2) | 1.0000 (1) | 0.0000 (1) |" in table
  assert ("| longer response wins (baseline) | 0.6250 | "
          "0.2500 (2) | 0.0000 (1) | 0.5000 (1) | 1 |") in table
  assert "by construction" not in table


def test_rm_report_uses_non_whitespace_lengths_throughout():
  report = _pair_report()
  scores = [1.0, 2.0, 0.0, 0.5, 0.0, 1.0, 1.0, 0.0]
  chars = [4, 1, 2, 3, 1, 4, 2, 2]  # chosen then rejected, whitespace dropped
  raw = [4, 1, 2, 5, 1, 4, 3, 2]    # len(): what the Spearman column used to use
  assert report["spearman_score_length"] == pytest.approx(stats.spearman(scores, chars))
  assert stats.spearman(scores, chars) != pytest.approx(stats.spearman(scores, raw))
  # The debiased row applies the debiaser as RewardModelScorer.score does (len(response)):
  # c - len: -3, 1, -2, -4.5 vs r - len: -1, -3, -2, -2 -> only pair 1 right.
  debiased = _pair_report(LengthDebiaser(slope=1.0, mean_chars=0.0))["debiased"]
  assert debiased["pair_accuracy"] == 0.25
  assert (debiased["accuracy_chosen_shorter"], debiased["accuracy_equal_length"]) == (1.0, 0.0)


def test_an_old_rm_report_is_completed_from_its_scores_and_test_file(tmp_path):
  test_file = tmp_path / "reward_data_test.json"
  test_file.write_text(json.dumps([
      {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": c},
       "rejected": {"from": "gpt", "value": r}} for c, r, _, _ in PAIRS]))
  old = {**RM_REPORT, "n_pairs": 4, "test_file": str(test_file),
         "chosen_scores": [p[2] for p in PAIRS], "rejected_scores": [p[3] for p in PAIRS],
         "debiaser_slope_per_char": 1.0, "debiased": dict(RM_REPORT)}
  got = reward_model.complete_pair_report(old)
  want = _pair_report(LengthDebiaser(slope=1.0, mean_chars=37.0))  # the mean cancels
  for key in ("pair_accuracy", "n_equal_length", "accuracy_chosen_shorter",
              "spearman_score_length", "length_baseline"):
    assert got[key] == want[key], key
  assert got["debiased"] == want["debiased"]
  assert reward_model.complete_pair_report(got) is got  # current: left alone
  gone = {**old, "test_file": str(tmp_path / "gone")}
  assert reward_model.complete_pair_report(gone) == gone


# ---- path B end to end (micro sizes, the local stand-in judge) --------------------------------


def micro_pipeline_config(path: str = "B"):
  """The tiny pipeline config shrunk to seconds per stage (tests/multihost_configs.py sizes)."""
  import multihost_configs  # tests/ is on sys.path under pytest (rootdir conftest)
  config = tiny_cpu.get_config()
  config.sft, config.rm = multihost_configs.get_config("sft"), multihost_configs.get_config("rm")
  config.rl = multihost_configs.get_config("grpo")
  config.reward_path, config.rl_b.total_steps = path, 2
  config.principles.update(max_examples=8, holdout_size=2, adversarial_batch=1,
                           reflect_batch=1, max_attempts=1, max_tokens=16)
  config.judge.update(max_tokens=128, max_attempts=1)
  # A random stand-in writes each string to its cap: 8 characters keep every reply (2 debater
  # points included) well inside max_tokens.
  config.local_judge.update(max_schema_string_chars=8)
  config.eval.update(max_prompts=2, max_new_tokens=8, max_labelled=12, batch_size=4,
                     llm_signals=False)
  return config


def test_path_b_runs_end_to_end_with_the_local_stand_in_judge(tmp_path, data_dir):
  from rlaif_jax.training import metrics as metrics_lib
  # Constrained decoding makes every verdict of the tiny random stand-in parse, provided it
  # fits in max_tokens: the stand-in's schema caps (config.local_judge) keep replies short.
  work = tmp_path / "w"
  config = micro_pipeline_config("B")
  assert config.judge.constrained_json
  text = pipeline.run_pipeline(config, work, data_dir)
  assert (work / "principles" / "final_principles.json").is_file()
  assert (work / "principles" / "usage.json").is_file()
  assert (work / "grpo_b" / "export" / "config.json").is_file()
  # The blinded human-annotation sheet (2 generations of each of the 3 checkpoints) and its key.
  import csv
  with open(work / "eval" / "human_eval" / "sheet.csv", encoding="utf-8-sig", newline="") as f:
    assert len(list(csv.reader(f))) == 1 + 3 * 2
  assert (work / "eval" / "human_eval" / "key.json").is_file()
  # Every reward row is a parsed verdict of the schema-constrained stand-in judge.
  rows = [r for r in metrics_lib.read_metrics(work / "grpo_b") if "reward_mean" in r]
  assert len(rows) == 2 and all(r["reward_invalid_frac"] == 0.0 for r in rows), rows
  assert "**The LLM judge here is a stand-in**" in text
  assert "of the rewards were invalid" not in text
  assert "| B (principle judge) | 8 labelled examples (principle_examples split) |" in text
  assert "| SFT+GRPO(B) |" in text and "## Judges on the controls" in text
  assert not (work / "grpo").exists()  # path A was not asked for
  assert "signal2" not in text  # eval.llm_signals=false is honoured
  record = json.loads((work / "grpo_b" / pipeline.STAGE_CONFIG_FILE).read_text())
  assert record["reward_path"] == "B" and record["judge_checkpoint"] == "sft"


def test_evaluation_judges_are_typed_configs_equal_to_the_cli_shorthand(tmp_path):
  """The pipeline builds Signal-1/2, rm and length as scorer configs, the ones that the
  `launch.evaluate --judges` shorthand of the same settings parses to; no Signal-1/2 without
  an endpoint or with eval.llm_signals=false."""
  from rlaif_jax.pipeline.local_judge import JudgeEndpoint
  from rlaif_jax.scoring import config as cfg_lib
  config = tiny_cpu.get_config()
  endpoint = JudgeEndpoint("http://127.0.0.1:9/v1", "m", "KEY_ENV", local=True)
  got = pipeline.judge_configs(config, tmp_path / "rm", endpoint, "p.json")
  j, target = config.judge, "openai@http://127.0.0.1:9/v1#m"
  options = (f"max_tokens={j.max_tokens}&max_attempts={j.max_attempts}&api_key_env=KEY_ENV"
             f"&concurrency={j.concurrency}&constrained_json=true")
  want = cfg_lib.parse_judge_specs(
      f"signal1=curator:{target}?num_examples={config.eval.curator_examples}&{options},"
      f"signal2=llm:{target}?principles=p.json&{options},rm=rm:{tmp_path / 'rm'},length")
  assert got == want
  assert [c.name for c in pipeline.judge_configs(config, tmp_path, None, None)] == ["rm", "length"]
  config.eval.llm_signals = False
  assert [c.name for c in pipeline.judge_configs(config, tmp_path, endpoint, None)] == [
      "rm", "length"]


def test_path_a_trains_the_reward_model_on_the_curators_pairs(tmp_path, data_dir):
  """config.rm_pairs="curated": the SFT checkpoint samples 4 greetings for each of 6 requests,
  the multi-agent curator labels them through a judge endpoint (a real HTTP server on
  127.0.0.1 answering as each agent would: Good iff the greeting has an even number of
  characters, so requests get both verdicts), the pairs are written in the paper's format and
  the reward model trains on them; the efficiency table counts no human labels for path A."""
  from fake_openai_server import FakeOpenAIServer
  config = micro_pipeline_config("A")
  config.rm_pairs = "curated"
  config.curate.update(max_queries=6, samples_per_query=4)
  with FakeOpenAIServer(good_rule=lambda r: len(r) % 2 == 0) as server:
    config.judge.update(base_url=server.base_url, model="fake-judge")
    text = pipeline.run_pipeline(config, tmp_path / "w", data_dir)
  work = tmp_path / "w"
  usage = json.loads((work / "curated" / "usage.json").read_text())
  assert usage["samples"] == 24 and usage["valid_verdicts"] == 24, usage
  labelled = [json.loads(line) for line in (work / "curated" / "labelled.jsonl").open()]
  assert all(r["label"] == int(len(r["response"]) % 2 == 0) for r in labelled)
  pairs = json.loads((work / "curated" / "pairs.json").read_text())
  assert len(pairs) == usage["pairs"] > 0
  for p in pairs:
    assert len(p["chosen"]["value"]) % 2 == 0 and len(p["rejected"]["value"]) % 2 == 1
  record = json.loads((work / "rm" / pipeline.STAGE_CONFIG_FILE).read_text())
  assert record["rm_pairs"] == "curated" and record["curate"]["samples_per_query"] == 4
  assert (f"| A (reward model) | none: {usage['pairs']} pairs the curator made from 24 SFT "
          "samples |") in text
  assert "| SFT+GRPO(A) |" in text
