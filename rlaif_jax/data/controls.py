"""Control sets that every judge must fail: responses that are not good greetings by
construction, each paired with a real request.

A judge that calls byte soup "excellent" measures something other than quality (in the tiny run
the reward model and the length rule both did). Four kinds, each built from the request and the
SFT corpus of good greetings, deterministic in `seed`:

  random_chars      random CJK characters and punctuation, as long as a typical greeting;
  repeated_phrase   one clause of a real greeting repeated to a typical greeting's length;
  other_occasion    a fluent, real greeting written for a different occasion;
  cut_mid_sentence  a real greeting for the request (or its occasion) cut inside a clause.

The same constructions give synthetic negatives for reward-model training
(`synthetic_negative_pairs`): (request, its real greeting, a control response).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from rlaif_jax.data.greetings import PreferencePair, SFTExample

CONTROL_KINDS = ("random_chars", "repeated_phrase", "other_occasion", "cut_mid_sentence")
# Training negatives leave out cut_mid_sentence: its response is always shorter than the chosen
# one, which would teach the length rule the data already over-rewards.
TRAINING_KINDS = ("random_chars", "repeated_phrase", "other_occasion")

# Occasion -> words that name it in a request. A request matching none is "other".
OCCASIONS: dict[str, tuple[str, ...]] = {
    "spring_festival": ("春节", "新年", "过年", "除夕", "拜年", "蛇年", "龙年", "马年", "元旦", "新春"),
    "birthday": ("生日", "寿"),
    "mid_autumn": ("中秋",),
    "dragon_boat": ("端午",),
    "lantern": ("元宵",),
    "mothers_day": ("母亲节",),
    "fathers_day": ("父亲节",),
    "teachers_day": ("教师节", "老师"),
    "wedding": ("结婚", "婚礼", "新婚", "订婚", "喜结"),
    "exam": ("高考", "中考", "考试", "考研"),
    "graduation": ("毕业",),
    "morning": ("早上好", "早安"),
    "night": ("晚安",),
    "business": ("开业", "生意", "发财"),
    "health": ("康复", "健康", "病"),
    "christmas": ("圣诞",),
    "valentine": ("情人节", "七夕"),
    "retirement": ("退休",),
}
_CLAUSE_END = re.compile(r"[，。！？；,.!?;、…~～\n]")
_PUNCT = "，。！？；、"


@dataclasses.dataclass(frozen=True)
class ControlItem:
  kind: str
  query: str
  response: str


def occasion(text: str) -> str:
  """The first occasion whose words appear in `text`, else "other"."""
  for name, words in OCCASIONS.items():
    if any(w in text for w in words):
      return name
  return "other"


def random_chars(length: int, rng: np.random.Generator) -> str:
  """`length` characters: CJK ideographs with a comma or full stop about every 12."""
  chars = [chr(c) for c in rng.integers(0x4E00, 0x9FA5, size=length)]
  for i in range(11, length, 12):
    chars[i] = _PUNCT[int(rng.integers(0, 2))]
  return "".join(chars)


def repeated_phrase(greeting: str, length: int) -> str:
  """The first clause (>= 2 characters) of `greeting` repeated to at least `length` characters."""
  clauses = [c.strip() for c in _CLAUSE_END.split(greeting) if len(c.strip()) >= 2]
  phrase = (clauses[0] if clauses else greeting.strip() or "祝福") + "！"
  return phrase * max(2, -(-length // len(phrase)))


def cut_mid_sentence(greeting: str, rng: np.random.Generator) -> str:
  """`greeting` cut at 35-65% of its length, inside a clause (neither side of the cut is
  punctuation), so it visibly stops mid-sentence."""
  n = len(greeting)
  lo, hi = max(1, int(n * 0.35)), max(2, int(n * 0.65))
  cuts = [i for i in range(lo, hi + 1)
          if i < n and not _CLAUSE_END.match(greeting[i - 1]) and not _CLAUSE_END.match(greeting[i])]
  if not cuts:
    return greeting[:max(1, n // 2)]
  return greeting[:int(rng.choice(cuts))]


class _Corpus:
  """The good greetings indexed by request and by occasion."""

  def __init__(self, good: Sequence[SFTExample]):
    if not good:
      raise ValueError("controls need a non-empty corpus of good greetings (the SFT data)")
    self.good = list(good)
    self.by_prompt: dict[str, list[str]] = {}
    self.by_occasion: dict[str, list[int]] = {}
    for i, ex in enumerate(self.good):
      self.by_prompt.setdefault(ex.prompt, []).append(ex.response)
      self.by_occasion.setdefault(occasion(ex.prompt), []).append(i)
    self.lengths = np.array([len(ex.response) for ex in self.good])

  def typical_length(self, rng: np.random.Generator) -> int:
    return int(rng.choice(self.lengths))

  def for_query(self, query: str, rng: np.random.Generator) -> str:
    """A good greeting for `query`: its own if the corpus has one, else one of its occasion."""
    if query in self.by_prompt:
      options = self.by_prompt[query]
      return options[int(rng.integers(len(options)))]
    pool = self.by_occasion.get(occasion(query)) or range(len(self.good))
    return self.good[int(rng.choice(list(pool)))].response

  def other_occasion(self, query: str, rng: np.random.Generator) -> str:
    """A good greeting of a named occasion other than the query's, that names none of the
    query's occasion words."""
    own = occasion(query)
    own_words = OCCASIONS.get(own, ())
    names = sorted(o for o in self.by_occasion if o not in (own, "other"))
    for _ in range(50):
      pool = self.by_occasion[names[int(rng.integers(len(names)))]]
      text = self.good[int(rng.choice(pool))].response
      if not any(w in text for w in own_words):
        return text
    raise ValueError(f"no greeting of another occasion found for {query!r}")

  def make(self, kind: str, query: str, rng: np.random.Generator) -> str:
    if kind == "random_chars":
      return random_chars(self.typical_length(rng), rng)
    if kind == "repeated_phrase":
      return repeated_phrase(self.for_query(query, rng), self.typical_length(rng))
    if kind == "other_occasion":
      return self.other_occasion(query, rng)
    if kind == "cut_mid_sentence":
      return cut_mid_sentence(self.for_query(query, rng), rng)
    raise ValueError(f"unknown control kind {kind!r}; known: {CONTROL_KINDS}")


def _check_kinds(kinds: Sequence[str]) -> None:
  unknown = [k for k in kinds if k not in CONTROL_KINDS]
  if unknown or not kinds:
    raise ValueError(f"control kinds {list(kinds)}: unknown {unknown}; known: {CONTROL_KINDS}")


def make_controls(queries: Sequence[str], good: Sequence[SFTExample], seed: int = 0,
                  kinds: Sequence[str] = CONTROL_KINDS) -> dict[str, list[ControlItem]]:
  """For each kind, one control response per query (in the order of `queries`)."""
  _check_kinds(kinds)
  corpus = _Corpus(good)
  out = {}
  for k, kind in enumerate(kinds):
    rng = np.random.default_rng([seed, k])
    out[kind] = [ControlItem(kind, q, corpus.make(kind, q, rng)) for q in queries]
  return out


def synthetic_negative_pairs(good: Sequence[SFTExample], n: int, seed: int = 0,
                             kinds: Sequence[str] = TRAINING_KINDS) -> list[PreferencePair]:
  """`n` pairs (request, its real greeting, a control response of a kind drawn in turn)."""
  _check_kinds(kinds)
  if n < 0:
    raise ValueError(f"synthetic negatives: n={n} must be >= 0")
  corpus = _Corpus(good)
  rng = np.random.default_rng([seed, 7919])
  rows = rng.choice(len(corpus.good), size=n, replace=n > len(corpus.good))
  pairs = []
  for j, i in enumerate(rows):
    ex = corpus.good[int(i)]
    kind = kinds[j % len(kinds)]
    pairs.append(PreferencePair(ex.prompt, ex.response, corpus.make(kind, ex.prompt, rng)))
  return pairs
