"""Robust parsing of LLM replies into the JSON objects the prompts ask for.

Handles JSON inside or outside ``` fences, prose around it, full-width punctuation (｛｝：，“”),
single quotes, Python literals, comments and trailing commas. When a reply holds several
objects (a model that first echoes the prompt's format example, then answers), the last one
that makes a valid answer wins; ``Agent`` also refuses a reply equal to its template's own
example. A reply whose object never closes (cut off by max_tokens) is a ``ParseError``: callers
retry it rather than guess. Verdict words under a negation ("not good", "不 合格") are errors,
never read as the word they negate. Every role parser returns a small frozen dataclass.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, Iterator, Sequence, TypeVar

from rlaif_jax import storage
from rlaif_jax.judging import principles as principles_lib

T = TypeVar("T")

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_OPEN, _CLOSE = "{｛", "}｝"
_OUTSIDE_MAP = {"｛": "{", "｝": "}", "：": ":", "，": ",", "［": "[", "］": "]", "、": ","}
_CLOSER = {'"': '"', "“": "”", "'": "'", "‘": "’", "”": "”"}
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}

_GOOD = {"good", "g", "好", "好的", "优", "优秀", "优质", "合格", "通过", "pass", "yes", "1", "true",
         "positive", "正面", "积极", "是"}
_BAD = {"bad", "b", "坏", "差", "不好", "较差", "劣", "劣质", "不合格", "不通过", "fail", "no", "0",
        "false", "negative", "负面", "否"}
# Tokens that negate a verdict word next to them ("not good", "isn't bad", "不 好"): such a
# value is ambiguous, never read as the word it negates.
_NEGATIONS = {"not", "isn", "isnt", "non", "never", "hardly", "不", "非", "未", "没", "没有", "并非"}


class ParseError(ValueError):
  """The reply holds no usable answer; the message says why (shown in job outputs)."""


def _balanced_spans(text: str) -> list[tuple[int, str]]:
  """(start, span) of the outermost ``{...}`` spans (ASCII or full-width braces), skipping
  braces in "strings"."""
  spans, depth, start, in_str, escaped = [], 0, -1, False, False
  for i, ch in enumerate(text):
    if in_str:
      if escaped:
        escaped = False
      elif ch == "\\":
        escaped = True
      elif ch == '"':
        in_str = False
    elif ch == '"' and depth > 0:
      in_str = True
    elif ch in _OPEN:
      if depth == 0:
        start = i
      depth += 1
    elif ch in _CLOSE and depth > 0:
      depth -= 1
      if depth == 0:
        spans.append((start, text[start:i + 1]))
  return spans


def _normalise(candidate: str) -> str:
  """Rewrites near-JSON into JSON: quotes, punctuation, comments, literals, trailing commas."""
  out: list[str] = []
  i, n = 0, len(candidate)
  while i < n:
    ch = candidate[i]
    if ch in _CLOSER:  # A string: copy its body, escaping what JSON needs escaped.
      closer, j, body, nested = _CLOSER[ch], i + 1, [], 0
      curly = ch in "“”"
      while j < n:
        c = candidate[j]
        if curly and c == "“":
          nested += 1  # Chinese text quotes “inside” a “-delimited string.
        elif curly and c == "”" and nested:
          nested -= 1
        elif c == closer or (curly and c == '"'):
          break
        if c == "\\" and j + 1 < n:
          nxt = candidate[j + 1]
          body.append(nxt if nxt in "'’" else candidate[j:j + 2])  # \' is not a JSON escape.
          j += 2
          continue
        body.append('\\"' if c == '"' else c)
        j += 1
      out.append('"' + "".join(body) + '"')
      i = j + 1
    elif candidate.startswith("//", i):
      while i < n and candidate[i] != "\n":
        i += 1
    elif candidate.startswith("/*", i):
      end = candidate.find("*/", i + 2)
      i = n if end < 0 else end + 2
    elif ch.isascii() and ch.isdigit():
      j = i
      while j < n and candidate[j].isascii() and (candidate[j].isalnum() or candidate[j] in ".+-"):
        j += 1
      out.append(candidate[i:j])
      i = j
    elif ch.isalpha() and ch.isascii():
      j = i
      while j < n and (candidate[j].isalnum() or candidate[j] == "_") and candidate[j].isascii():
        j += 1
      word = _PY_LITERALS.get(candidate[i:j], candidate[i:j])
      # JSON has no bare words besides literals: quote unquoted keys/values ({verdict: Good}).
      out.append(word if word in ("true", "false", "null") else f'"{word}"')
      i = j
    else:
      out.append(_OUTSIDE_MAP.get(ch, ch))
      i += 1
  return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def _loads(candidate: str) -> Any:
  try:
    return json.loads(candidate, strict=False)
  except ValueError:
    return json.loads(_normalise(candidate), strict=False)


def iter_json_objects(text: str) -> Iterator[dict[str, Any]]:
  """Every JSON object found in ``text`` (fenced blocks and bare ``{...}`` spans), in the order
  they appear."""
  candidates = [(m.start(1), m.group(1).strip()) for m in _FENCE.finditer(text)]
  candidates += _balanced_spans(text)
  candidates.sort(key=lambda c: c[0])  # stable: a fence before the same object's bare span
  seen = set()
  for _, candidate in candidates:
    if candidate in seen or not candidate:
      continue
    seen.add(candidate)
    try:
      value = _loads(candidate)
    except ValueError:
      for _, inner in _balanced_spans(candidate):  # A fence holding prose + object.
        if inner != candidate and inner not in seen:
          seen.add(inner)
          try:
            value = _loads(inner)
          except ValueError:
            continue
          if isinstance(value, dict):
            yield value
      continue
    if isinstance(value, dict):
      yield value


def _last_valid(text: str, build: Callable[[dict[str, Any]], T], what: str) -> T:
  """The answer built from the last object in ``text`` that makes one (see module docstring)."""
  if not isinstance(text, str) or not text.strip():
    raise ParseError(f"empty reply (expected {what})")
  first_error, found, answer = None, False, None
  for obj in iter_json_objects(text):
    try:
      answer, found = build(obj), True
    except ParseError as e:
      first_error = first_error or e
  if found:
    return answer
  if first_error is not None:
    raise ParseError(f"{first_error} (in reply {_preview(text)!r})")
  unclosed = text.count("{") + text.count("｛") > text.count("}") + text.count("｝")
  reason = "no complete JSON object (reply cut off?)" if unclosed else "no JSON object"
  raise ParseError(f"{reason}; expected {what}; reply {_preview(text)!r}")


def _preview(text: str, limit: int = 160) -> str:
  text = " ".join(text.split())
  return text if len(text) <= limit else text[:limit] + "..."


def _get(obj: dict[str, Any], aliases: Sequence[str]) -> Any:
  lowered = {str(k).strip().lower(): v for k, v in obj.items()}
  for alias in aliases:
    if alias.lower() in lowered:
      return lowered[alias.lower()]
  return None


def _text(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, str):
    return value.strip()
  return json.dumps(value, ensure_ascii=False)


def normalise_binary(value: Any, field: str) -> int:
  """Good/Bad, 好/坏, 1/0, true/false (and similar) -> 1/0; ambiguous values are errors."""
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, (int, float)) and value in (0, 1):
    return int(value)
  if isinstance(value, str):
    s = value.strip().strip("\"'“”‘’「」【】[]()（）。.!！ ").lower()
    if s in _GOOD:
      return 1
    if s in _BAD:
      return 0
    if re.fullmatch(r"[+-]?\d+\.\d*", s):  # "1.0" is 1, "0.8" is no verdict (not "0" and "8")
      number = float(s)
      if number in (0, 1):
        return int(number)
      raise ParseError(f"field {field!r} has unusable value {value!r} (expected Good/Bad or 1/0)")
    tokens = re.findall(r"[a-z]+|\d+(?:\.\d+)?|[\u4e00-\u9fff]+", s)
    classes = {1 if t in _GOOD else 0 for t in tokens if t in _GOOD or t in _BAD}
    negated = any(t in _NEGATIONS for t in tokens)
    if len(classes) == 1 and not negated:
      return classes.pop()
  raise ParseError(f"field {field!r} has unusable value {value!r} (expected Good/Bad or 1/0)")


def require_binary_labels(records: Sequence[dict[str, Any]], path: str,
                          field: str = "label") -> None:
  """Where present (and not null), ``field`` of input records (`jsonl_jobs.load_records`) must
  be 0/1 or a Good/Bad-style word; it is normalised to 0/1 in place. The error names file:line,
  so no label is dropped silently."""
  for record in records:
    if record.get(field) is None:
      continue
    try:
      record[field] = normalise_binary(record[field], field)
    except ParseError as e:
      raise storage.InputError(f"{path}:{record['_line'] + 1}: {e}") from None


@dataclasses.dataclass(frozen=True)
class DetectorReply:
  """Principle-guided judge (Detector): ``verdict`` 1 = Good, 0 = Bad."""
  verdict: int
  explanation: str
  suggestion: str = ""


@dataclasses.dataclass(frozen=True)
class JudgeReply:
  """Judge / Reflect agent of the curator: ``judge`` 1 = good, 0 = bad."""
  judge: int
  reason: str


@dataclasses.dataclass(frozen=True)
class GeneratorReply:
  """Adversarial generator: a subtly bad greeting and how it was made bad."""
  bad_response: str
  explanation: str


@dataclasses.dataclass(frozen=True)
class ReflectorReply:
  """Reflector: why the detector was wrong and how to change S_D."""
  feedback: str
  suggestion: str


def _required(obj: dict[str, Any], aliases: Sequence[str]) -> Any:
  value = _get(obj, aliases)
  if value is None:
    raise ParseError(f"JSON object lacks field {aliases[0]!r} (keys: {sorted(map(str, obj))})")
  return value


# The JSON Schemas of the verdicts, requested from servers with structured output
# (`Agent(response_schema=...)`); the parsers below accept more (aliases, prose around the JSON).
# Explanations are capped (MAX_EXPLANATION_CHARS) so that a reply fits in the judges' max_tokens:
# a reply cut at max_tokens is incomplete JSON, schema or not.
MAX_EXPLANATION_CHARS = 400
# The detector template asks for explanation and verdict; the adversarial detector adds a
# suggestion for the generator (optional, after the verdict).
DETECTOR_SCHEMA = {"type": "object", "properties": {
    "evaluation_explanation": {"type": "string", "maxLength": MAX_EXPLANATION_CHARS},
    "verdict": {"enum": ["Good", "Bad"]}},
    "required": ["evaluation_explanation", "verdict"], "additionalProperties": False}
ADVERSARIAL_DETECTOR_SCHEMA = {**DETECTOR_SCHEMA, "properties": {
    **DETECTOR_SCHEMA["properties"],
    "suggested_for_G": {"type": "string", "maxLength": MAX_EXPLANATION_CHARS}}}
JUDGE_SCHEMA = {"type": "object", "properties": {
    "reason": {"type": "string", "maxLength": MAX_EXPLANATION_CHARS}, "judge": {"enum": [0, 1]}},
    "required": ["reason", "judge"], "additionalProperties": False}

# Positive / Negative debaters: {"point": "reason", ...}, at most one per analysis dimension of
# their templates (9), possibly none.
MAX_POINTS, MAX_POINT_NAME_CHARS = 9, 40
POINTS_SCHEMA = {"type": "object",
                 "propertyNames": {"type": "string", "maxLength": MAX_POINT_NAME_CHARS},
                 "additionalProperties": {"type": "string", "maxLength": MAX_EXPLANATION_CHARS},
                 "maxProperties": MAX_POINTS}

# The adversarial game's other agents (Generator, Reflector, Strategy Optimizer).
MAX_GREETING_CHARS = 300
GENERATOR_SCHEMA = {"type": "object", "properties": {
    "bad_response": {"type": "string", "minLength": 1, "maxLength": MAX_GREETING_CHARS},
    "explanation_of_flaws": {"type": "string", "maxLength": MAX_EXPLANATION_CHARS}},
    "required": ["bad_response", "explanation_of_flaws"], "additionalProperties": False}
REFLECTOR_SCHEMA = {"type": "object", "properties": {
    "reflection_feedback": {"type": "string", "maxLength": MAX_EXPLANATION_CHARS},
    "suggested_for_D": {"type": "string", "maxLength": MAX_EXPLANATION_CHARS}},
    "required": ["reflection_feedback", "suggested_for_D"], "additionalProperties": False}


def rules_schema(max_rules: int = principles_lib.MAX_RULES) -> dict[str, Any]:
  """The Strategy Optimizer's reply: 1..max_rules non-empty rules."""
  return {"type": "object", "properties": {"optimized_strategy": {
      "type": "array", "items": {"type": "string", "minLength": 1,
                                 "maxLength": MAX_EXPLANATION_CHARS},
      "minItems": 1, "maxItems": max_rules}},
      "required": ["optimized_strategy"], "additionalProperties": False}


def parse_detector(text: str) -> DetectorReply:
  """``{"verdict": "Good"|"Bad", "evaluation_explanation": ..., "suggested_for_G"?: ...}``."""
  def build(obj: dict[str, Any]) -> DetectorReply:
    verdict = _required(obj, ("verdict", "判断", "判断结果", "结论", "评估结果", "result"))
    return DetectorReply(
        verdict=normalise_binary(verdict, "verdict"),
        explanation=_text(_get(obj, ("evaluation_explanation", "explanation", "reason", "评估解释",
                                     "解释", "理由"))),
        suggestion=_text(_get(obj, ("suggested_for_g", "suggestion", "建议"))))
  return _last_valid(text, build, '{"verdict": "Good"|"Bad", "evaluation_explanation": ...}')


def parse_judge(text: str) -> JudgeReply:
  """``{"judge": 0|1, "reason": ...}`` (Judge and Reflect agents)."""
  def build(obj: dict[str, Any]) -> JudgeReply:
    judge = _required(obj, ("judge", "判定", "判定结果", "label", "verdict", "final_judge"))
    return JudgeReply(judge=normalise_binary(judge, "judge"),
                      reason=_text(_get(obj, ("reason", "理由", "final_reason", "explanation"))))
  return _last_valid(text, build, '{"judge": 0|1, "reason": ...}')


def parse_generator(text: str) -> GeneratorReply:
  """``{"bad_response": ..., "explanation_of_flaws": ...}``."""
  def build(obj: dict[str, Any]) -> GeneratorReply:
    response = _text(_required(obj, ("bad_response", "response", "祝福语")))
    if not response:
      raise ParseError("field 'bad_response' is empty")
    return GeneratorReply(bad_response=response, explanation=_text(
        _get(obj, ("explanation_of_flaws", "explanation", "缺陷说明"))))
  return _last_valid(text, build, '{"bad_response": ..., "explanation_of_flaws": ...}')


def parse_reflector(text: str) -> ReflectorReply:
  """``{"reflection_feedback": ..., "suggested_for_D": ...}`` (both may be empty)."""
  def build(obj: dict[str, Any]) -> ReflectorReply:
    feedback = _get(obj, ("reflection_feedback", "feedback", "反思反馈"))
    suggestion = _get(obj, ("suggested_for_d", "suggestion", "建议"))
    if feedback is None and suggestion is None:
      raise ParseError("JSON object lacks 'reflection_feedback' and 'suggested_for_D'")
    return ReflectorReply(feedback=_text(feedback), suggestion=_text(suggestion))
  return _last_valid(text, build, '{"reflection_feedback": ..., "suggested_for_D": ...}')


def parse_points(text: str) -> dict[str, str]:
  """Positive/Negative agent: ``{"优点名": "原因", ...}`` (may be empty) -> str dict."""
  def build(obj: dict[str, Any]) -> dict[str, str]:
    return {str(k).strip(): _text(v) for k, v in obj.items() if str(k).strip()}
  return _last_valid(text, build, '{"point": "reason", ...}')


def parse_rules(text: str, max_rules: int = principles_lib.MAX_RULES) -> tuple[str, ...]:
  """Strategy optimiser: ``{"optimized_strategy": [rules] | "rule\\nrule"}``, 1..max_rules."""
  def build(obj: dict[str, Any]) -> tuple[str, ...]:
    value = _required(obj, ("optimized_strategy", "strategy", "rules", "principles"))
    rules = principles_lib.split_rules(value) if isinstance(value, str) else value
    if not isinstance(rules, list):
      raise ParseError("field 'optimized_strategy' must be a list or text, got "
                       f"{type(value).__name__}")
    try:
      return principles_lib.clean_rules(rules, where="optimized_strategy", max_rules=max_rules)
    except principles_lib.PrincipleError as e:
      raise ParseError(str(e)) from None
  return _last_valid(text, build, '{"optimized_strategy": [...]}')
