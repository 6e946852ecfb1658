"""Prompt templates and versioned principle sets."""
import json

import pytest

from rlaif_jax.judging import prompts
from rlaif_jax.judging.principles import (MAX_RULES, PrincipleError, PrincipleSet,
                                          available_principles, load_principles, save_principles)

EXPECTED_FIELDS = {
    "detector": {"principles", "query", "response"},
    "adversarial_detector": {"principles", "query", "response"},
    "generator": {"query", "good_example", "bad_strategies"},
    "reflector": {"principles", "query", "response", "detector_verdict", "detector_explanation",
                  "ground_truth"},
    "strategy_optimizer": {"strategy_kind", "current_strategy", "feedback", "max_rules"},
    "positive_agent": {"examples", "query", "response"},
    "negative_agent": {"examples", "query", "response"},
    "judge_agent": {"examples", "query", "response", "positive", "negative"},
    "reflect_agent": {"query", "response", "positive", "negative", "initial_judge",
                      "initial_reason"},
}


def test_every_role_has_a_template_with_the_expected_fields():
  assert set(prompts.template_names()) == set(EXPECTED_FIELDS)
  for name, fields in EXPECTED_FIELDS.items():
    template = prompts.load_template(name)
    assert template.fields == fields, name
    text = template.render(**{f: f"<{f}>" for f in fields})
    for f in fields:
      assert f"<{f}>" in text
    assert "{" in text and "JSON" in text  # Literal braces of the format example survive.


def test_render_names_missing_and_unknown_fields():
  with pytest.raises(prompts.TemplateError, match=r"detector.txt: missing field\(s\) \['response'\]"):
    prompts.render("detector", principles="p", query="q")
  with pytest.raises(prompts.TemplateError, match=r"unexpected field\(s\) \['respnse'\]"):
    prompts.render("detector", principles="p", query="q", response="r", respnse="typo")


def test_values_with_braces_are_inserted_verbatim():
  text = prompts.render("detector", principles="p", query="{x}", response="{0} {a.b}")
  assert "{x}" in text and "{0} {a.b}" in text


def test_unknown_template_and_bad_custom_templates(tmp_path):
  with pytest.raises(prompts.TemplateError, match="no prompt template named 'nope'"):
    prompts.load_template("nope")
  bad = tmp_path / "bad.txt"
  bad.write_text("第一行\n坏的 {0} 字段\n", encoding="utf-8")
  with pytest.raises(prompts.TemplateError, match=r"bad.txt:2: field \{0\} must be a plain name"):
    prompts.load_template(str(bad))
  unbalanced = tmp_path / "unbalanced.txt"
  unbalanced.write_text("ok\n{\"a\": 1}\n", encoding="utf-8")
  with pytest.raises(prompts.TemplateError, match="unbalanced.txt:2"):
    prompts.load_template(str(unbalanced))
  good = tmp_path / "mine.txt"
  good.write_text("问：{query}\n格式：{{}}\n", encoding="utf-8")
  assert prompts.render(str(good), query="q") == "问：q\n格式：{}\n"


def test_user_message():
  assert prompts.user_message("hi") == [{"role": "user", "content": "hi"}]
  assert prompts.user_message("hi", system="s")[0] == {"role": "system", "content": "s"}


def test_v0_principles_are_the_papers_initial_sets():
  assert "v0" in available_principles()
  ps = load_principles("v0")
  assert ps.version == "v0"
  assert len(ps.principles) == 6 and len(ps.bad_strategies) == 5
  assert any("陈词滥调" in p for p in ps.principles)
  assert any("极其简短" in s for s in ps.bad_strategies)
  assert ps.principles_text().splitlines()[0].startswith("1. ")


def test_principles_round_trip_and_validation(tmp_path):
  ps = PrincipleSet(version="t", principles=("1. 规则甲", "- 规则乙", "规则甲"), bad_strategies=())
  assert ps.principles == ("规则甲", "规则乙")
  path = str(tmp_path / "p.json")
  save_principles(ps, path)
  assert load_principles(path) == ps
  with pytest.raises(PrincipleError, match=f"11 rules, at most {MAX_RULES}"):
    PrincipleSet(version="t", principles=tuple(f"r{i}" for i in range(11)))
  for content, message in [
      ('{"version": "x"}', "missing field 'principles'"),
      ('{"version": "x", "principles": "not a list"}', "must be a list"),
      ('{"version": "x", "principles": ["a"], "extra": 1}', r"unknown field\(s\) \['extra'\]"),
      ('{"version": "x", "principles": [1]}', r"principles\[0\] must be a string"),
      ('{"version": "x",\n "principles": [}', "bad.json:2: invalid JSON")]:
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(PrincipleError, match=message):
      load_principles(str(bad))
  with pytest.raises(PrincipleError, match="no principle set named 'v99'"):
    load_principles("v99")
  assert json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["version"] == "t"
