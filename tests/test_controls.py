"""Control sets (data/controls.py): each kind is what its name says, deterministic in the seed;
synthetic-negative pairs put the request's real greeting over a control response."""
import re

import numpy as np
import pytest

from rlaif_jax.data import controls
from rlaif_jax.data.greetings import SFTExample

GOOD = [
    SFTExample("生日快乐祝福语", "愿你的生日像彩虹般绚烂，每一岁都解锁新的惊喜！蛋糕上的蜡烛是时光的刻度。"),
    SFTExample("给妈妈的生日祝福", "亲爱的妈妈，生日快乐！愿您岁岁安康，笑容常在，幸福永远相伴。"),
    SFTExample("蛇年对爱人的祝福语", "新的一年，愿我们的爱如春风般温柔，携手走过每一个晨昏，岁岁常欢愉。"),
    SFTExample("新婚祝福语", "恭喜你们喜结连理！愿你们的婚姻像春天的花园一样繁花似锦，白头偕老。"),
    SFTExample("高考加油的话", "十年寒窗磨一剑，愿你金榜题名，前程似锦，所有努力都不被辜负！"),
    SFTExample("教师节祝福", "尊敬的老师，您如春风化雨般播撒知识的种子，如今已是桃李芬芳满天下。"),
]
QUERIES = ["生日快乐祝福语", "蛇年对爱人的祝福语", "给老师的教师节祝福", "恭喜发财开业大吉"]


def test_occasion():
  assert controls.occasion("蛇年对爱人的祝福语") == "spring_festival"
  assert controls.occasion("给女生的生日祝福") == "birthday"
  assert controls.occasion("短短一句,说透人生") == "other"


def test_each_kind_is_what_it_says():
  made = controls.make_controls(QUERIES, GOOD, seed=3)
  assert list(made) == list(controls.CONTROL_KINDS)
  good_texts = [g.response for g in GOOD]
  for kind, items in made.items():
    assert [it.query for it in items] == QUERIES and all(it.kind == kind for it in items)
  for it in made["random_chars"]:
    assert re.fullmatch(r"[\u4e00-\u9fa5，。]+", it.response)
    assert min(len(t) for t in good_texts) <= len(it.response) <= max(len(t) for t in good_texts)
    assert not any(it.response[:6] in t for t in good_texts)
  for it in made["repeated_phrase"]:
    unit = it.response.split("！")[0] + "！"
    assert it.response == unit * (len(it.response) // len(unit)) and len(it.response) >= 2 * len(unit)
  for it in made["other_occasion"]:
    assert it.response in good_texts
    source = GOOD[good_texts.index(it.response)].prompt
    assert controls.occasion(source) not in (controls.occasion(it.query), "other")
  for it in made["cut_mid_sentence"]:
    full = next(t for t in good_texts if t.startswith(it.response) and t != it.response)
    assert 0.3 * len(full) <= len(it.response) <= 0.7 * len(full)
    assert it.response[-1] not in "，。！？；" and full[len(it.response)] not in "，。！？；"
  # The request's own greeting is the one cut when the corpus has it.
  assert GOOD[0].response.startswith(made["cut_mid_sentence"][0].response)


def test_deterministic_in_seed():
  a = controls.make_controls(QUERIES, GOOD, seed=1)
  b = controls.make_controls(QUERIES, GOOD, seed=1)
  c = controls.make_controls(QUERIES, GOOD, seed=2)
  assert a == b and a["random_chars"] != c["random_chars"]


def test_synthetic_negative_pairs():
  pairs = controls.synthetic_negative_pairs(GOOD, 9, seed=0)
  assert len(pairs) == 9
  by_prompt = {g.prompt: g.response for g in GOOD}
  for p in pairs:
    assert by_prompt[p.prompt] == p.chosen and p.rejected != p.chosen
  # kinds in turn: random characters, a repeated phrase, another occasion's greeting
  assert re.fullmatch(r"[\u4e00-\u9fa5，。]+", pairs[0].rejected)
  assert pairs[1].rejected.count(pairs[1].rejected.split("！")[0]) >= 2
  assert pairs[2].rejected in by_prompt.values()
  assert controls.synthetic_negative_pairs(GOOD, 0) == []


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="unknown"):
    controls.make_controls(QUERIES, GOOD, kinds=("nonsense",))
  with pytest.raises(ValueError, match="non-empty corpus"):
    controls.make_controls(QUERIES, [])
  with pytest.raises(ValueError, match="n=-1"):
    controls.synthetic_negative_pairs(GOOD, -1)


def test_reward_model_pairs_gain_synthetic_negatives(data_dir):
  from configs import rm_tiny_cpu
  from rlaif_jax.training import reward_model
  config = rm_tiny_cpu.get_config()
  assert config.data.synthetic_negatives == 0.1  # the default (BUILD_NOTES: control sets)
  config.data.synthetic_negatives = 0.0
  base, _, _ = reward_model.load_pairs(config, data_dir)
  config.data.synthetic_negatives = 0.1
  train, _, _ = reward_model.load_pairs(config, data_dir)
  assert train[:len(base)] == base and len(train) == len(base) + round(0.1 * len(base))
  config.data.synthetic_negatives = -0.5
  with pytest.raises(ValueError, match="synthetic_negatives"):
    reward_model.load_pairs(config, data_dir)
