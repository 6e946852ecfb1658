"""The evaluation harness: judge specs, calibrated judges, judge reliability with hand-checked
numbers, generate -> judge -> report on tiny random checkpoints with an LLM judge over real HTTP
(fake_openai_server), resume, and python -m launch.evaluate end to end."""
import csv
import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fake_openai_server import FLIP_MARKER, FakeOpenAIServer, cli_env, schedule_by_key
from rlaif_jax import storage
from rlaif_jax.data import greetings
from rlaif_jax.data.greetings import LabeledResponse
from rlaif_jax.evaluation import harness
from rlaif_jax.metrics import diversity, stats
from rlaif_jax.evaluation import judges as judges_lib
from rlaif_jax.scoring.contract import Scores, checked
from tests import tiny_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUERIES = ["新年祝福", "给妈妈的生日祝福", "祝老师教师节快乐", "同事升职贺词", "朋友新婚祝福",
           "考试顺利的祝福", "新店开业大吉", "中秋节问候"]
GARBLED = "祝你前程似锦，步步高升，万事顺意！！"  # the fake judge never answers this one

# Hand-checked labelled set; the fake LLM judge says Good iff len(response) >= 10.
LABELLED = [LabeledResponse(q, r, y) for q, r, y in [
    ("新年", "短句", 0),                          # len 2:  llm 0, length(t=8) 0
    ("新年", "新年快乐万事如意", 1),                # len 8:  llm 0 (FN), length 1
    ("生日", "祝你新年快乐，万事如意，心想事成", 1),  # len 16: llm 1, length 1
    ("生日", "祝你生日快乐，天天开心，岁岁平安", 1),  # len 16: llm 1, length 1
    ("开业", "恭喜发财红包拿来吧朋友们", 0),          # len 12: llm 1 (FP), length 1 (FP)
    ("中秋", "平安" + FLIP_MARKER, 0),             # len 6:  llm 0; curator's Reflect flips to 1
    ("升职", GARBLED, 1),                         # len 18: invalid for llm and curator
    ("考试", "一帆风顺二龙腾飞三羊开泰", 1),          # len 12: llm 1, length 1
]]


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  with path.open(encoding="utf-8") as f:
    return list(csv.DictReader(f))


def read_jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def garbled_server(**kwargs) -> FakeOpenAIServer:
  return FakeOpenAIServer(fault_fn=schedule_by_key({GARBLED: ["garbage"] * 3}), **kwargs)


def first_item_garbled():
  """A fault_fn: every reply about the first response the server sees is unparseable."""
  seen: list[str] = []

  def fault_fn(role: str, key: str, attempt: int) -> str | None:
    del role, attempt
    seen[:] = seen or [key]
    return "garbage" if key == seen[0] else None
  return fault_fn


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpts")
  return [tiny_hf.make_tiny_hf_checkpoint(root, seed=s, name=f"m{s}") for s in (0, 1)]


# ---- specs ------------------------------------------------------------------------------------


def test_judge_spec_parsing_names_and_options():
  specs = judges_lib.parse_judge_specs(
      "rm:/runs/rm_a/,qwen=llm:openai@http://127.0.0.1:8000/v1#Qwen2.5-72B?principles=v1"
      "&max_attempts=2, curator:openai@http://h:1/v1#Qwen/Qwen2.5-7B?num_examples=0,"
      "length?threshold=40")
  assert [(s.name, s.kind) for s in specs] == [
      ("rm_rm_a", "rm"), ("qwen", "llm"), ("curator_Qwen_Qwen2.5-7B", "curator"),
      ("length", "length")]
  assert (specs[0].workdir, specs[0].threshold) == ("/runs/rm_a/", None)
  assert (specs[1].principles, specs[1].max_attempts, specs[1].template) == ("v1", 2, "detector")
  assert (specs[2].backend, specs[2].base_url, specs[2].model, specs[2].num_examples) == (
      "openai", "http://h:1/v1", "Qwen/Qwen2.5-7B", 0)
  assert specs[3].threshold == 40
  # The shorthand parses into the same typed configs as a config block.
  from rlaif_jax.scoring import config as scoring_config
  assert specs[1] == scoring_config.scorer_config(
      dict(kind="llm", base_url="http://127.0.0.1:8000/v1", model="Qwen2.5-72B",
           principles="v1", max_attempts=2), "qwen", "x")


def test_constrained_json_asks_the_backend_for_the_verdict_schemas():
  from rlaif_jax.judging import parsing
  on, off, curator = judges_lib.make_judges(
      "a=llm:openai@http://h/v1#m?constrained_json=true,b=llm:openai@http://h/v1#m,"
      "c=curator:openai@http://h/v1#m?constrained_json=true&num_examples=0",
      length_baseline=False)
  schema = lambda backend: getattr(backend, "response_format", {}).get("json_schema", {})
  assert schema(on.scorer.judge.backend)["schema"] == parsing.DETECTOR_SCHEMA
  assert schema(off.scorer.judge.backend) == {}  # plain backend: nothing is sent
  assert schema(curator.scorer.curator.judge.backend)["schema"] == parsing.JUDGE_SCHEMA
  assert on.signature != off.signature  # a changed setting redoes the judgements


@pytest.mark.parametrize("spec, message", [
    ("", "empty entry"),
    ("length,,rm:/x", "empty entry"),
    ("bleu", "KIND one of"),
    ("rm", "rm needs :TARGET"),
    ("length:/x", "takes no target"),
    ("llm:openai@http://127.0.0.1:8000/v1", "BACKEND@BASE_URL#MODEL"),
    ("llm:vllm@http://h/v1#m", "unknown backend 'vllm'"),
    ("length?threshold=long", "not a valid integer"),
    ("length?thresh=3", "unknown option 'thresh'"),
    ("rm:/a?debias=perhaps", "boolean"),
    ("rm:/a?threshold=inf", "must be finite"),
    ("length,length?threshold=3", "already used by entry 1"),
])
def test_bad_judge_specs_name_the_entry(spec, message):
  with pytest.raises(judges_lib.JudgeSpecError, match="judge (entry|spec)") as e:
    judges_lib.parse_judge_specs(spec)
  assert message in str(e.value)


def test_make_judges_needs_labels_or_thresholds(tmp_path):
  with pytest.raises(judges_lib.JudgeSpecError, match="entry 1 'length'.*--data_dir"):
    judges_lib.make_judges("length")
  with pytest.raises(judges_lib.JudgeSpecError, match="does not exist"):
    judges_lib.make_judges(f"rm:{tmp_path / 'no_run'}?threshold=0")
  (judge,) = judges_lib.make_judges("length", LABELLED)
  assert judge.threshold == 8 and not judge.needs_calibration


def test_parse_checkpoints():
  assert harness.parse_checkpoints(["runs/sft", "g=runs/grpo/export", "hf:/m/Qwen2.5-0.5B",
                                    "runs/ppo/export/"]) == {
      "sft": "runs/sft", "g": "runs/grpo/export", "Qwen2.5-0.5B": "hf:/m/Qwen2.5-0.5B",
      "ppo": "runs/ppo/export/"}
  with pytest.raises(ValueError, match="used twice"):
    harness.parse_checkpoints(["a/sft", "b/sft"])
  with pytest.raises(ValueError, match="empty path"):
    harness.parse_checkpoints(["x="])


# ---- judges -----------------------------------------------------------------------------------


class CountGoodScorer:
  """Reward = number of 好 in the response; an empty response is not scored."""
  name = "count"

  def score(self, rollout):
    responses = rollout.completions
    return Scores(np.array([r.count("好") for r in responses], np.float32),
                  np.array([bool(r) for r in responses]))


def test_best_score_threshold_by_hand():
  assert judges_lib.best_score_threshold([0.1, 0.4, 0.35, 0.8], [0, 1, 0, 1]) == 0.375
  assert judges_lib.best_score_threshold([1.0, 2.0], [1, 1]) == 1.0  # all 1
  assert judges_lib.best_score_threshold([1.0, 2.0], [0, 0]) == math.inf  # all 0


def test_reward_model_and_length_judges():
  rm = judges_lib.RewardModelJudge(CountGoodScorer(), name="rm")
  assert rm.needs_calibration
  rm.calibrate(["q"] * 4, ["好", "好好好", "", "好好"], [0, 1, 1, 1])
  assert rm.threshold == 1.5  # the empty response's NaN score is left out
  got = rm.judge(["q"] * 3, ["好好", "", "好"])
  assert got.labels.tolist() == [1, judges_lib.INVALID, 0]
  assert got.valid.tolist() == [True, False, True] and got.n_invalid == 1
  assert got.details[1] == {"error": "not scored"}
  assert rm.signature == "rm threshold=1.5"
  length = judges_lib.LengthJudge(threshold=3)
  got = length.judge(["q", "q"], ["ab", "a c"])
  assert got.labels.tolist() == [0, 1] and got.scores.tolist() == [2.0, 3.0]
  with pytest.raises(ValueError, match="2 queries but 1 responses"):
    length.judge(["q", "q"], ["a"])


def test_reward_model_judge_calibrates_a_real_scorer(hf_dirs):
  from flax import nnx

  from rlaif_jax.data import formatting
  from rlaif_jax.models import Decoder, config as config_lib
  from rlaif_jax.models.scalar_head import ScalarHeadModel
  from rlaif_jax.tokenizers import load_tokenizer
  from rlaif_jax.training.reward_scoring import RewardModelScorer
  tok = load_tokenizer(hf_dirs[0])
  cfg = config_lib.tiny(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48,
                        num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8)
  model = ScalarHeadModel(Decoder(cfg, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  scorer = RewardModelScorer(model, tok, formatting.FormatConfig(max_prompt_len=32,
                                                                 max_response_len=64))
  judge = judges_lib.RewardModelJudge(scorer)
  queries, responses, labels = (list(x) for x in zip(*[(r.query, r.response, r.label)
                                                       for r in LABELLED]))
  judge.calibrate(queries, responses, labels)
  scores = scorer.score_texts(queries, responses).astype(np.float64)
  got = judge.judge(queries, responses)
  assert got.labels.tolist() == (scores >= judge.threshold).astype(int).tolist()
  np.testing.assert_array_equal(got.scores, scores)
  best = np.mean(got.labels == labels)
  assert all(np.mean((scores >= t) == labels) <= best for t in [*scores, np.inf])


def test_judge_reliability_matches_hand_computed_numbers(tmp_path):
  with garbled_server(min_len=10) as server:
    url = server.base_url
    judges = judges_lib.make_judges(f"llm:openai@{url}#m,curator:openai@{url}#m?num_examples=2,"
                                    "length", LABELLED)
    rows = {r["judge"]: r for r in harness.judge_reliability(judges, LABELLED, tmp_path)}
    n_requests = len(server.log)
    harness.judge_reliability(judges, LABELLED, tmp_path)  # resumed: nothing is asked again
    assert len(server.log) == n_requests
  expected = {  # (n, n_invalid, accuracy, precision, recall, f1, kappa, threshold)
      "llm_m": (7, 1, 5 / 7, 3 / 4, 3 / 4, 3 / 4, 5 / 12, None),
      "curator_m": (7, 1, 4 / 7, 3 / 5, 3 / 4, 2 / 3, 2 / 23, None),
  }
  assert list(rows) == ["llm_m", "curator_m", "length", "length_baseline"]
  table = {r["judge"]: r for r in read_csv(tmp_path / "reliability.csv")}
  for name, (n, n_invalid, acc, prec, rec, f1, kappa, threshold) in expected.items():
    got = rows[name]
    assert (got["n"], got["n_invalid"], got.get("threshold")) == (n, n_invalid, threshold), name
    np.testing.assert_allclose([got[k] for k in ("accuracy", "precision", "recall", "f1",
                                                 "cohen_kappa")], [acc, prec, rec, f1, kappa])
    assert float(table[name]["cohen_kappa"]) == pytest.approx(kappa)
    assert got["notes"] == "no fitted parameters"
  assert "| llm_m | llm | 7 | 1 | 0.7143 |" in (tmp_path / "reliability.md").read_text()
  # The calibrated length judge and the length baseline (threshold 8 on all items, 7/8 right
  # in sample) are scored out of fold, recomputed here from their saved cross-fit verdicts.
  for name in ("length", "length_baseline"):
    _check_cross_fit(tmp_path, rows[name], LABELLED, lambda r: len(r.response), 5)
    assert rows[name]["threshold"] == 8 and rows[name]["n_invalid"] == 0
    assert "in-sample accuracy 0.8750" in rows[name]["notes"]
    assert table[name]["notes"] == rows[name]["notes"]
  verdicts = read_jsonl(tmp_path / "reliability" / "curator_m.jsonl")
  assert [v["label"] for v in verdicts] == [0, 0, 1, 1, 1, 1, None, 1]
  assert verdicts[6]["error"].startswith("positive agent") and verdicts[6]["valid"] is False


def _check_cross_fit(out: pathlib.Path, row: dict, labelled, score_of, k: int) -> None:
  """The reliability row of a fitted-threshold judge holds the agreement of out-of-fold verdicts:
  every fold's threshold refitted without that fold's items, by the judge's rule."""
  from rlaif_jax.metrics import agreement
  lines = read_jsonl(out / "reliability" / "crossfit" / f"{row['judge']}.jsonl")
  assert [x["id"] for x in lines] == list(range(len(labelled)))
  folds = np.array([x["fold"] for x in lines])
  scores = np.array([score_of(r) for r in labelled], np.float64)
  human = np.array([r.label for r in labelled])
  assert sorted(set(folds.tolist())) == list(range(k))
  for f in range(k):
    train = folds != f
    if row["kind"] == "rm":
      want = judges_lib.best_score_threshold(scores[train], human[train])
    else:
      want = agreement.best_length_threshold_baseline(scores[train].astype(int),
                                                      human[train])["threshold"]
    for x in (x for x, g in zip(lines, folds) if g == f):
      assert x["threshold"] == want
      assert x["label"] == int(scores[x["id"]] >= want)
      assert x["human_label"] == labelled[x["id"]].label
  got = agreement.binary_agreement(human, [x["label"] for x in lines])
  for key in ("n", "accuracy", "precision", "recall", "f1", "cohen_kappa"):
    assert row[key] == pytest.approx(got[key], nan_ok=True), key
  assert row["folds"] == k
  assert row["notes"].startswith(f"threshold cross-fitted, {k} folds")


class TableScorer:
  """Reward = a fixed score per response."""

  def __init__(self, table):
    self.table = table

  name = "table"

  def score(self, rollout):
    return checked(self.name, [self.table[r] for r in rollout.completions],
                   len(rollout.completions))


def test_reliability_of_fitted_thresholds_is_cross_fitted_by_hand(tmp_path):
  # Scores (= lengths) 1..4 with labels 0 1 0 1. A threshold fitted on all four items gets 3/4
  # of them right (rm: 1.5, length: 2), which the table used to report. Left out one at a time
  # (4 folds, so the shuffle does not matter) the refitted thresholds are 2, 3.5, 1.5, 1.5 (rm)
  # and 2, 4, 2, 2 (length): verdicts 0 0 1 1, half right: tp = fp = fn = tn = 1.
  labelled = [LabeledResponse("q", "一" * n, y) for n, y in [(1, 0), (2, 1), (3, 0), (4, 1)]]
  rm = judges_lib.RewardModelJudge(TableScorer({r.response: len(r.response) for r in labelled}),
                                   name="rm")
  judges = [rm, judges_lib.LengthJudge(), judges_lib.LengthJudge(2, name="given")]
  for j in judges[:2]:
    j.calibrate([r.query for r in labelled], [r.response for r in labelled],
                [r.label for r in labelled])
  assert (rm.threshold, judges[1].threshold) == (1.5, 2)
  assert rm.threshold_fitted and judges[1].threshold_fitted and not judges[2].threshold_fitted
  rows = {r["judge"]: r for r in harness.judge_reliability(judges, labelled, tmp_path, folds=4,
                                                           progress=False)}
  for name in ("rm", "length", "length_baseline"):
    row = rows[name]
    assert (row["accuracy"], row["precision"], row["recall"], row["cohen_kappa"]) == (
        0.5, 0.5, 0.5, 0.0), name
    assert "in-sample accuracy 0.7500" in row["notes"]
    _check_cross_fit(tmp_path, row, labelled, lambda r: len(r.response), 4)
  thresholds = [x["threshold"] for x in read_jsonl(tmp_path / "reliability" / "crossfit" /
                                                   "rm.jsonl")]
  assert thresholds == [2.0, 3.5, 1.5, 1.5]
  assert (rows["rm"]["threshold"], rows["length"]["threshold"],
          rows["length_baseline"]["threshold"]) == (1.5, 2, 2)
  # A threshold given in the spec was not fitted on these labels: scored as is.
  assert rows["given"]["accuracy"] == 0.75 and rows["given"]["notes"].startswith(
      "threshold given")
  md = (tmp_path / "reliability.md").read_text(encoding="utf-8")
  assert "| rm | rm | 4 | 0 | 0.5000 |" in md and "threshold cross-fitted, 4 folds" in md
  with pytest.raises(ValueError, match="folds must be >= 2"):
    harness.judge_reliability(judges, labelled, tmp_path, folds=1)


# ---- generate -> judge -> report --------------------------------------------------------------


def _check_tables_against_records(out: pathlib.Path, names, thresholds: dict,
                                  novelty_reference=None) -> None:
  """Recomputes every table cell from the saved generations and judgements; `thresholds`:
  judge -> the length rule its verdicts follow (the fake LLM judge's min_len)."""
  excellence = read_csv(out / "excellence.csv")
  assert [(r["checkpoint"], r["judge"]) for r in excellence] == [
      (c, j) for c in names for j in thresholds]
  for row in excellence:
    gens = read_jsonl(out / "generations" / f"{row['checkpoint']}.jsonl")
    records = read_jsonl(out / "judgements" / row["checkpoint"] / f"{row['judge']}.jsonl")
    assert [r["response"] for r in records] == [g["response"] for g in gens]
    threshold = thresholds[row["judge"]]
    assert [r["label"] for r in records if r["valid"]] == [
        int(len(g["response"]) >= threshold) for g, r in zip(gens, records) if r["valid"]]
    assert all(r["label"] is None and r["error"] for r in records if not r["valid"])
    labels = [r["label"] for r in records if r["valid"]]
    good = sum(labels)
    low, high = stats.wilson_interval(good, len(labels))
    assert int(row["n"]) == len(labels) and int(row["n_invalid"]) == len(records) - len(labels)
    np.testing.assert_allclose([float(row[k]) for k in ("rate", "ci_low", "ci_high")],
                               [good / len(labels), low, high], rtol=1e-12)
    cell = f"| {row['checkpoint']} | {row['judge']} | {good / len(labels):.4f} |"
    assert cell in (out / "excellence.md").read_text(encoding="utf-8")
  for row in read_csv(out / "diversity.csv"):
    texts = [g["response"] for g in read_jsonl(out / "generations" / f"{row['checkpoint']}.jsonl")]
    assert float(row["distinct_1"]) == pytest.approx(diversity.distinct_n(texts, 1))
    assert float(row["empty_rate"]) == pytest.approx(diversity.empty_rate(texts))
    if novelty_reference is not None:
      assert float(row["novelty_4"]) == pytest.approx(
          diversity.novelty_n(texts, novelty_reference, 4))
    assert float(row["mean_chars"]) == pytest.approx(
        np.mean([diversity.char_length(t) for t in texts]))
  for png in ["excellence.png"] + [f"length_{c}.png" for c in names]:
    assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_checkpoints_end_to_end_and_resume(hf_dirs, tmp_path):
  workdir = tmp_path / "run_b"
  shutil.copytree(hf_dirs[1], workdir / "export")  # a trainer run directory
  checkpoints = {"a": f"hf:{hf_dirs[0]}", "b": str(workdir)}
  gen = harness.GenerationConfig(max_new_tokens=8, batch_size=4, temperature=1.0, seed=3)
  out = tmp_path / "eval"
  with FakeOpenAIServer(min_len=8, fault_fn=first_item_garbled()) as server:
    judges = judges_lib.make_judges(f"length?threshold=8,llm:openai@{server.base_url}#m")
    rows = harness.evaluate_checkpoints(checkpoints, judges, out, queries=QUERIES,
                                        generation=gen)["excellence"]
    _check_tables_against_records(out, ["a", "b"], {"length": 8, "llm_m": 8})
    assert [r["n_invalid"] for r in rows] == [0, 1, 0, 0]  # the first item judged by llm_m
    assert all(0 < r["rate"] < 1 for r in rows)  # both verdicts occur: the checks above bite
    gens = read_jsonl(out / "generations" / "a.jsonl")
    assert [g["prompt"] for g in gens] == ["请只生成一条祝福语：" + q for q in QUERIES]
    assert [g["seed"] for g in gens] == [3] * 4 + [4] * 4
    before = {p: p.read_bytes() for p in out.rglob("*.*sv") if p.is_file()}
    gen_a = (out / "generations" / "a.jsonl").read_text(encoding="utf-8")
    # Cut the second generation batch and the last LLM verdict, then resume.
    (out / "generations" / "a.jsonl").write_text("".join(gen_a.splitlines(True)[:6]) + '{"id"',
                                                 encoding="utf-8")
    llm_file = out / "judgements" / "b" / "llm_m.jsonl"
    llm_file.write_text("".join(llm_file.read_text(encoding="utf-8").splitlines(True)[:-1]),
                        encoding="utf-8")
    n_requests = len(server.log)
    harness.evaluate_checkpoints(checkpoints, judges, out, queries=QUERIES, generation=gen)
    assert len(server.log) == n_requests + 1  # only the removed verdict is asked again
  assert (out / "generations" / "a.jsonl").read_text(encoding="utf-8") == gen_a  # same samples
  assert {p: p.read_bytes() for p in out.rglob("*.*sv") if p.is_file()} == before
  # The harness formats prompts as the sampler does for the GRPO user message + chat template.
  from rlaif_jax.sampling.loading import load_policy
  from rlaif_jax.sampling.sampler import Sampler
  policy = load_policy(hf_dir=hf_dirs[0])
  direct = Sampler(policy.model, policy.tokenizer).generate(
      ["请只生成一条祝福语：" + q for q in QUERIES[:4]], 8, gen.sampling(), seed=3)
  assert [c.text.strip() for c in direct] == [g["response"] for g in gens[:4]]


def test_stale_outputs_are_refused(hf_dirs, tmp_path):
  items = [{"id": 0, "query": "q", "response": "一二三"}]
  harness.judge_records(judges_lib.LengthJudge(2), items, tmp_path / "j.jsonl")
  with pytest.raises(storage.InputError, match="j.jsonl: record 1 .*delete the file"):
    harness.judge_records(judges_lib.LengthJudge(3), items, tmp_path / "j.jsonl")
  gen = harness.GenerationConfig(max_new_tokens=2, batch_size=2)
  harness.generate_checkpoint(str(hf_dirs[0]), QUERIES[:2], tmp_path / "g.jsonl", gen)
  for queries, cfg in ((QUERIES[1:3], gen), (QUERIES[:2], dataclasses.replace(gen, top_k=5))):
    with pytest.raises(storage.InputError, match="g.jsonl: record 1 .*other prompts or gen"):
      harness.generate_checkpoint(str(hf_dirs[0]), queries, tmp_path / "g.jsonl", cfg)


def _retrain_in_place(run_dir: pathlib.Path, other_hf_dir: pathlib.Path) -> None:
  """Replaces run_dir/export's weights with other ones, as a retraining in place would (a new
  file, a later mtime)."""
  weights = run_dir / "export" / "model.safetensors"
  old_mtime = weights.stat().st_mtime_ns
  shutil.copyfile(other_hf_dir / "model.safetensors", weights)
  os.utime(weights, ns=(old_mtime + 10**9, old_mtime + 10**9))


def test_checkpoint_identity_is_in_the_generation_fingerprint(hf_dirs, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(hf_dirs[0], run / "export")
  gen = harness.GenerationConfig(max_new_tokens=2, batch_size=2)
  assert harness.checkpoint_dir(str(run)) == run / "export"
  assert harness.checkpoint_dir(f"hf:{hf_dirs[0]}") == hf_dirs[0]
  before = gen.fingerprint(str(run))
  assert gen.fingerprint(str(run)) == before  # stable
  identity = harness.checkpoint_identity(str(run))
  assert "model.safetensors" in [f[0] for f in identity["files"]]
  _retrain_in_place(run, hf_dirs[1])
  assert gen.fingerprint(str(run)) != before
  after = gen.fingerprint(str(run))
  config = run / "export" / "config.json"
  config.write_text(config.read_text().replace("}", ', "note": 1}', 1))
  assert gen.fingerprint(str(run)) != after  # config.json is hashed
  for changed in (dataclasses.replace(gen, system_prompt="你好"),
                  dataclasses.replace(gen, use_chat_template=False),
                  dataclasses.replace(gen, plain_template="Q: {prompt}\nA:")):
    assert changed.fingerprint(str(run)) != gen.fingerprint(str(run))
  assert dataclasses.replace(gen, plain_template="Q: {prompt}\nA:").format_config(
      ).plain_template == "Q: {prompt}\nA:"
  with pytest.raises(FileNotFoundError, match="no config.json"):
    gen.fingerprint(str(tmp_path / "missing"))


def test_a_checkpoint_retrained_in_place_is_generated_and_judged_again(hf_dirs, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(hf_dirs[0], run / "export")
  gen = harness.GenerationConfig(max_new_tokens=6, batch_size=2, seed=1)
  out = tmp_path / "eval"
  judges = [judges_lib.LengthJudge(4)]
  kwargs = dict(queries=QUERIES[:2], generation=gen, progress=False)
  harness.evaluate_checkpoints({"p": str(run)}, judges, out, **kwargs)
  old_gens = read_jsonl(out / "generations" / "p.jsonl")
  old_verdicts = read_jsonl(out / "judgements" / "p" / "length.jsonl")
  _retrain_in_place(run, hf_dirs[1])
  with pytest.raises(harness.StaleOutputError, match="p.jsonl: record 1 .*checkpoint weights"):
    harness.evaluate_checkpoints({"p": str(run)}, judges, out, **kwargs)  # refuse by default
  harness.evaluate_checkpoints({"p": str(run)}, judges, out, on_stale="restart", **kwargs)
  gens = read_jsonl(out / "generations" / "p.jsonl")
  assert [g["settings"] for g in gens] == [gen.fingerprint(str(run))] * 2
  assert gens[0]["settings"] != old_gens[0]["settings"]
  fresh = harness.generate_checkpoint(f"hf:{hf_dirs[1]}", QUERIES[:2], tmp_path / "direct.jsonl",
                                      gen, progress=False)
  assert [g["response"] for g in gens] == [g["response"] for g in fresh]  # the new weights'
  assert [v["response"] for v in read_jsonl(out / "judgements" / "p" / "length.jsonl")] == [
      g["response"] for g in gens]
  stale = list((out / harness.STALE_DIR).iterdir())
  assert len(stale) == 1  # the old generations and their judgements, kept aside
  assert read_jsonl(stale[0] / "generations" / "p.jsonl") == old_gens
  assert read_jsonl(stale[0] / "judgements" / "p" / "length.jsonl") == old_verdicts
  # A judge with other settings: its verdicts alone are redone.
  harness.evaluate_checkpoints({"p": str(run)}, [judges_lib.LengthJudge(5)], out,
                               on_stale="restart", **kwargs)
  assert read_jsonl(out / "generations" / "p.jsonl") == gens
  assert {v["judge"] for v in read_jsonl(out / "judgements" / "p" / "length.jsonl")} == {
      "length threshold=5"}
  with pytest.raises(ValueError, match="on_stale"):
    harness.evaluate_checkpoints({"p": str(run)}, judges, out, on_stale="ignore", **kwargs)


def test_reliability_restarts_a_file_of_another_judge(tmp_path):
  harness.judge_reliability([judges_lib.LengthJudge(8)], LABELLED, tmp_path, progress=False)
  with pytest.raises(harness.StaleOutputError, match="other settings"):
    harness.judge_reliability([judges_lib.LengthJudge(9)], LABELLED, tmp_path, progress=False)
  rows = harness.judge_reliability([judges_lib.LengthJudge(9)], LABELLED, tmp_path,
                                   on_stale="restart", progress=False)
  assert rows[0]["threshold"] == 9
  assert {r["judge"] for r in read_jsonl(tmp_path / "reliability" / "length.jsonl")} == {
      "length threshold=9"}
  [moved] = (tmp_path / harness.STALE_DIR).glob("*/reliability/length.jsonl")
  assert {r["judge"] for r in read_jsonl(moved)} == {"length threshold=8"}


def test_backend_failures_are_judged_again_on_resume_and_llm_signatures_track_settings(tmp_path):
  from fake_openai_server import make_local_generate_fn
  from rlaif_jax.judging.backends.local import LocalSamplerBackend
  from rlaif_jax.judging.judge import PrincipleJudge
  from rlaif_jax.judging.principles import PrincipleSet
  answer = make_local_generate_fn(min_len=5)
  server_up = {"now": False}

  def generate_fn(prompts_messages, max_tokens, temperature):
    if not server_up["now"]:
      raise RuntimeError("connection refused")
    return answer(prompts_messages, max_tokens, temperature)

  rules = PrincipleSet("v9", ("内容具体",))

  def llm_judge(principles=rules):
    return judges_lib.LLMJudge(PrincipleJudge(LocalSamplerBackend(generate_fn), principles))
  items = [{"id": i, "query": "q", "response": r} for i, r in enumerate(["短", "足够长的祝福语"])]
  path = tmp_path / "llm.jsonl"
  first = harness.judge_records(llm_judge(), items, path)
  assert [r["valid"] for r in first] == [False, False]
  assert all("backend error" in r["error"] for r in first)
  server_up["now"] = True
  second = harness.judge_records(llm_judge(), items, path)  # a new judge, same settings
  assert [(r["valid"], r["label"]) for r in second] == [(True, 0), (True, 1)]
  assert [json.loads(line)["id"] for line in path.read_text("utf-8").splitlines()] == [0, 1]
  same_version_other_text = PrincipleSet("v9", ("内容具体", "不要空话"))
  assert llm_judge().signature == llm_judge().signature
  assert llm_judge(same_version_other_text).signature != llm_judge().signature
  with pytest.raises(storage.InputError, match="other settings"):
    harness.judge_records(llm_judge(same_version_other_text), items, path)


# ---- data and the launcher --------------------------------------------------------------------


def test_select_queries_on_the_dataset(data_dir):
  grpo = harness.select_queries(data_dir, "grpo_test")
  evaluation = harness.select_queries(data_dir, "eval_queries")
  assert len(grpo) == len({p.query for p in greetings.load_rl_prompts(data_dir, "test")})
  assert len(evaluation) == len({r.query for r in greetings.load_evaluation_set(data_dir)})
  both = harness.select_queries(data_dir, "both")
  assert set(both) == set(grpo) | set(evaluation) and len(both) == len(set(both))
  subset = harness.select_queries(data_dir, "both", max_prompts=50, seed=1)
  assert subset == harness.select_queries(data_dir, "both", max_prompts=50, seed=1)
  assert len(subset) == 50 and subset == [q for q in both if q in set(subset)]


def write_mini_dataset(root: pathlib.Path) -> pathlib.Path:
  (root / "grpo_data").mkdir(parents=True)
  rows = [[{"role": "user", "content": greetings.GRPO_PREFIX + q}] for q in QUERIES[:4]]
  pq.write_table(pa.table({"prompt": rows}), root / "grpo_data" / "test.parquet")
  (root / "evaluation_set").mkdir()
  (root / "evaluation_set" / "evaluate_data.json").write_text("".join(
      json.dumps({"query": r.query, "response": r.response, "label": r.label},
                 ensure_ascii=False) + "\n" for r in LABELLED), encoding="utf-8")
  (root / "sft").mkdir()
  (root / "sft" / "sft_data.json").write_text(json.dumps(
      [{"instruction": r.query, "input": "", "output": r.response} for r in LABELLED],
      ensure_ascii=False), encoding="utf-8")
  return root


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "launch.evaluate", *args], cwd=ROOT,
                        env=cli_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=240)


def test_launch_evaluate_end_to_end(hf_dirs, tmp_path):
  data = write_mini_dataset(tmp_path / "data")
  out = tmp_path / "out"
  with garbled_server(min_len=10) as server:
    judges = f"length,llm:openai@{server.base_url}#m"
    proc = run_evaluate(f"--checkpoints=tiny=hf:{hf_dirs[0]}", f"--judges={judges}",
                        f"--output_dir={out}", f"--data_dir={data}", "--prompt_set=both",
                        "--max_prompts=6", "--max_new_tokens=4", "--batch_size=8",
                        "--reliability", "--reliability_folds=3",
                        "--labelled_split=all")  # the hand-checked figures use all 8 items
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "judge length: length threshold=8" in proc.stdout
  reliability = {r["judge"]: r for r in read_csv(out / "reliability.csv")}
  assert reliability["length"]["notes"].startswith("threshold cross-fitted, 3 folds")
  assert "in-sample accuracy 0.8750" in reliability["length"]["notes"]
  assert float(reliability["llm_m"]["accuracy"]) == pytest.approx(5 / 7)
  assert len(read_jsonl(out / "generations" / "tiny.jsonl")) == 6
  sft = [r.response for r in greetings.load_sft(data)]
  _check_tables_against_records(out, ["tiny"], {"length": 8, "llm_m": 10},
                                diversity.char_ngram_set(sft, 4))
  summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
  assert summary["settings"]["n_prompts"] == 6 and summary["settings"]["prompt_set"] == "both"

  bad = run_evaluate(f"--checkpoints={hf_dirs[0]}", "--judges=length,llm:openai@http://h/v1",
                     f"--output_dir={out}", f"--data_dir={data}")
  assert bad.returncode != 0 and "judge entry 2" in bad.stderr
  bad = run_evaluate("--judges=length", "--nocontrols", f"--output_dir={out}",
                     f"--data_dir={data}")
  assert bad.returncode != 0 and "nothing to do" in bad.stderr


def test_evaluate_controls_writes_each_judges_rate_on_each_control(data_dir, tmp_path):
  from rlaif_jax.data import controls as controls_lib
  queries = harness.select_queries(data_dir, "grpo_test", 8, 0)
  judge = judges_lib.make_judges("length?threshold=30")[0]
  rows = harness.evaluate_controls([judge], queries, tmp_path, data_dir, seed=0)
  assert [r["control"] for r in rows] == list(controls_lib.CONTROL_KINDS)
  sets = controls_lib.make_controls(queries, greetings.load_sft(data_dir), seed=0)
  for row in rows:  # the length rule by hand: len(response) >= 30
    want = np.mean([len(it.response) >= 30 for it in sets[row["control"]]])
    assert (row["judge"], row["n"], row["n_invalid"]) == ("length", 8, 0)
    assert row["rate"] == pytest.approx(want)
  assert read_csv(tmp_path / "controls.csv")[0]["control"] == "random_chars"
  assert len(read_jsonl(tmp_path / "controls" / "other_occasion.jsonl")) == 8
