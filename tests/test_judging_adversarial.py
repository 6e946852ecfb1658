"""The adversarial principle game: unit pieces and python -m launch.optimize_principles."""
import asyncio
import json
import os
import re

import pytest

from fake_openai_server import FakeOpenAIServer, make_local_generate_fn, run_launch, section
from rlaif_jax import storage
from rlaif_jax.judging import parsing
from rlaif_jax.judging.adversarial import AdversarialGame, GameConfig
from rlaif_jax.judging.adversarial_run import (load_labelled, load_queries, run_optimization,
                                               split_labelled)
from rlaif_jax.judging.backends import LocalSamplerBackend
from rlaif_jax.judging.principles import load_principles

MARKER = "【长度】"
LONG = "愿你前程似锦，万事顺意，岁岁平安，笑口常开！"


def _labelled(n):
  out = []
  for i in range(n):
    response = f"{i}号" + (LONG if i % 2 else "快乐")
    out.append({"query": f"请求{i}", "response": response, "label": int(len(response) >= 20)})
  return out


def _write_inputs(tmp_path, n=30):
  (tmp_path / "labeled.jsonl").write_text(
      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _labelled(n)), encoding="utf-8")
  (tmp_path / "queries.txt").write_text("生日祝福\n写一段长的开业贺词\n新年祝福\n毕业祝福\n",
                                        encoding="utf-8")


def test_loaders_and_split(tmp_path):
  path = tmp_path / "l.jsonl"
  path.write_text('{"query": "q", "response": "r", "label": "Good"}\n'
                  '{"query": "q", "response": "r", "label": 0}\n', encoding="utf-8")
  assert [r["label"] for r in load_labelled(str(path))] == [1, 0]
  path.write_text('{"query": "q", "response": "r", "label": "?"}\n', encoding="utf-8")
  with pytest.raises(storage.InputError, match="l.jsonl:1: field 'label'"):
    load_labelled(str(path))
  (tmp_path / "q.jsonl").write_text('{"query": "a"}\n{"query": "b"}\n', encoding="utf-8")
  assert load_queries(str(tmp_path / "q.jsonl")) == ["a", "b"]
  records = _labelled(20)
  train, heldout = split_labelled(records, 5, seed=3)
  assert len(heldout) == 5 and len(train) == 15
  assert {r["query"] for r in train}.isdisjoint(r["query"] for r in heldout)
  assert split_labelled(records, 5, seed=3) == (train, heldout)
  with pytest.raises(ValueError, match="holdout_size"):
    split_labelled(records, 20, seed=0)


def test_split_keeps_duplicates_on_one_side():
  records = _labelled(20)
  records += [dict(records[i]) for i in (0, 3, 3, 7, 11)]
  train, heldout = split_labelled(records, 5, seed=1)
  assert len(train) + len(heldout) == len(records)
  key = lambda r: (r["query"], r["response"])
  assert {key(r) for r in train}.isdisjoint(key(r) for r in heldout)
  assert len({key(r) for r in heldout}) == 5
  assert split_labelled(_labelled(20), 5, seed=3) == split_labelled(_labelled(20), 5, seed=3)
  with pytest.raises(ValueError, match="holdout_size"):
    split_labelled(records, 20, seed=0)


def test_rule_numbering_keeps_leading_numbers_and_cleaning_is_idempotent():
  rules = parsing.parse_rules(json.dumps(
      {"optimized_strategy": ["1. 3.8妇女节的祝福", "2) 10:30前送达", "- 3. 真诚"]},
      ensure_ascii=False))
  assert rules == ("3.8妇女节的祝福", "10:30前送达", "真诚")
  ps = load_principles("v0").replace(principles=rules)
  assert ps.principles == rules
  assert ps.replace(principles=["1. 3.8妇女节的祝福"]).principles == ("3.8妇女节的祝福",)


def test_heldout_accuracy_counts_failed_verdicts_as_wrong():
  held = [{"query": f"q{i}", "response": f"{i}号" + (LONG if i % 2 else "快乐"), "label": i % 2}
          for i in range(10)]

  def good_or_garbage(prompts_messages, max_tokens, temperature):
    # Says Good to long greetings and fails (no JSON) on every short (Bad) one.
    return [json.dumps({"verdict": "Good", "evaluation_explanation": "ok"})
            if len(section(m[-1]["content"], "待评估祝福语")) >= 20 else "嗯……不好说"
            for m in prompts_messages]
  game = AdversarialGame(LocalSamplerBackend(good_or_garbage), GameConfig(max_attempts=1))
  result = asyncio.run(game.evaluate(load_principles("v0"), held))
  assert (result["accuracy"], result["n"], result["n_judged"], result["n_errors"]) == (
      0.5, 10, 5, 5)


def test_final_principles_are_the_best_heldout_set_not_the_last(tmp_path):
  base = make_local_generate_fn(min_len=20, detector_rule_marker=MARKER)
  server = FakeOpenAIServer(min_len=20, detector_rule_marker=MARKER)
  state = {"regress": False}

  def generate(prompts_messages, max_tokens, temperature):
    out = base(prompts_messages, max_tokens, temperature)
    for j, messages in enumerate(prompts_messages):
      prompt = messages[-1]["content"]
      if state["regress"] and server.route(prompt)[0] == "optimizer" and "(S_D)" in prompt:
        rules = [re.sub(r"^\d+\.\s*", "", line)
                 for line in section(prompt, "当前策略").splitlines()]
        out[j] = json.dumps({"optimized_strategy": [r for r in rules if MARKER not in r]
                             or ["祝福语应真诚"]}, ensure_ascii=False)
    return out
  game = AdversarialGame(LocalSamplerBackend(generate), GameConfig(adversarial_batch=3))
  out_dir = tmp_path / "run"
  kwargs = dict(initial=load_principles("v0"), labelled=_labelled(30),
                queries=["生日祝福", "写一段长的开业贺词", "新年祝福"], output_dir=str(out_dir),
                holdout_size=10, seed=0, run_config={"seed": 0})
  asyncio.run(run_optimization(game, iterations=1, **kwargs))
  state["regress"] = True  # iteration 2 drops the rule that made the judge right
  seen = []
  metrics = asyncio.run(run_optimization(game, iterations=2, on_iteration=seen.append, **kwargs))
  assert [m["iteration"] for m in seen[-1]] == [1, 2] and len(seen) == 2
  assert metrics[0]["accuracy_after"] == 1.0 and metrics[1]["accuracy_after"] < 1.0
  final = load_principles(str(out_dir / "final_principles.json"))
  last = load_principles(str(out_dir / "last_principles.json"))
  assert final.version == "v0+iter1" and any(MARKER in p for p in final.principles)
  assert last.version == "v0+iter2" and not any(MARKER in p for p in last.principles)
  best = json.loads((out_dir / "best.json").read_text(encoding="utf-8"))
  assert (best["best_iteration"], best["best_accuracy"]) == (1, 1.0)


def test_optimizer_output_over_the_rule_limit_is_rejected():
  calls = []

  def eleven_rules(prompts_messages, max_tokens, temperature):
    calls.append(len(prompts_messages))
    return [json.dumps({"optimized_strategy": [f"规则{i}" for i in range(11)]}, ensure_ascii=False)
            for _ in prompts_messages]

  game = AdversarialGame(LocalSamplerBackend(eleven_rules), GameConfig(max_attempts=2))
  rules, [event] = asyncio.run(game.optimize("S_D", ("旧规则",), ["反馈"]))
  assert rules == ("旧规则",) and event["changed"] is False
  assert "11 rules, at most 10" in event["error"] and len(calls) == 2


def test_optimize_principles_end_to_end_and_resume(tmp_path):
  _write_inputs(tmp_path)
  out_dir = tmp_path / "run"
  flags = dict(labeled=tmp_path / "labeled.jsonl", queries=tmp_path / "queries.txt",
               output_dir=out_dir, holdout_size=10, adversarial_batch=3, reflect_batch=8,
               model="m", timeout_s=2, retry_base_delay_s=0.01)
  with FakeOpenAIServer(min_len=20, detector_rule_marker=MARKER) as server:
    result = run_launch("optimize_principles", iterations=2, base_url=server.base_url, **flags)
    assert result.returncode == 0, result.stderr[-3000:]
    roles = {r.role for r in server.log}
  assert {"generator", "adversarial_detector", "detector", "reflector", "optimizer"} <= roles
  m1 = json.loads((out_dir / "iter_1" / "metrics.json").read_text(encoding="utf-8"))
  # The detector starts by calling everything Good; the Reflector's rule fixes it.
  assert m1["accuracy_before"] == pytest.approx(m1["before"]["agreement"]["positive_rate_true"])
  assert m1["accuracy_before"] < 1.0 and m1["accuracy_after"] == 1.0
  assert m1["adversarial"]["fooled"] == 3 and m1["reflection"]["mistakes"] > 0
  p1 = load_principles(str(out_dir / "iter_1" / "principles.json"))
  assert any(MARKER in p for p in p1.principles) and p1.version == "v0+iter1"
  assert len(p1.principles) <= 10
  log = [json.loads(line) for line in (out_dir / "iter_1" / "update_log.jsonl").read_text("utf-8").splitlines()]
  events = [e["event"] for e in log]
  assert events.count("adversarial_sample") == 3 and "reflection" in events
  updates = [e for e in log if e["event"] == "update"]
  assert {(u["phase"], u["target"]) for u in updates} == {("adversarial", "S_D"), ("reflection", "S_D")}
  m2 = json.loads((out_dir / "iter_2" / "metrics.json").read_text(encoding="utf-8"))
  assert m2["accuracy_before"] == m1["accuracy_after"]
  assert m2["adversarial"]["caught"] >= 1  # Short fakes are now caught -> S_G is sharpened.
  s2 = json.loads((out_dir / "iter_2" / "strategy.json").read_text(encoding="utf-8"))
  assert "把缺陷藏在更长的句子里" in s2["bad_strategies"] and len(s2["bad_strategies"]) <= 10
  assert "iter  acc before" in result.stdout and "err after" in result.stdout
  assert "final principles:" in result.stdout and "iteration 2" in result.stdout
  summary = (out_dir / "summary.tsv").read_text(encoding="utf-8").splitlines()
  assert summary[0].startswith("iteration\taccuracy_before\taccuracy_after\tn_errors_before")
  assert [row.split("\t")[0] for row in summary[1:]] == ["1", "2"]
  assert (out_dir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # Simulate a kill during iteration 2, then ask for 3 iterations: 1 is kept, 2 redone, 3 new.
  iter1 = {p: os.stat(out_dir / "iter_1" / p).st_mtime_ns for p in os.listdir(out_dir / "iter_1")}
  os.remove(out_dir / "iter_2" / "DONE")
  with FakeOpenAIServer(min_len=20, detector_rule_marker=MARKER) as server:
    again = run_launch("optimize_principles", iterations=3, base_url=server.base_url, **flags)
    assert again.returncode == 0, again.stderr[-3000:]
  assert {p: os.stat(out_dir / "iter_1" / p).st_mtime_ns for p in iter1} == iter1
  assert (out_dir / "iter_2" / "DONE").exists() and (out_dir / "iter_3" / "DONE").exists()
  final = load_principles(str(out_dir / "final_principles.json"))
  assert final.version == "v0+iter3" and len(final.principles) <= 10
  changed = run_launch("optimize_principles", iterations=3, base_url="http://127.0.0.1:9",
                       **{**flags, "seed": 7})
  assert changed.returncode != 0 and "seed" in changed.stderr
