"""Versioned principle sets: the detector's principles S_D and the generator's bad strategies S_G.

A principle set is a JSON file ``{"version", "principles": [...], "bad_strategies": [...]}``
(optionally ``"description"``). Shipped sets live in ``rlaif_jax/judging/principles/<name>.json``
and load by name (``load_principles("v0")``); any other file loads by path. At most
``MAX_RULES`` rules per list: the paper's strategy optimiser is told the same limit.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import re
from typing import Any, Sequence

from rlaif_jax import storage

MAX_RULES = 10
_PACKAGE = "rlaif_jax.judging"
_FOLDER = "principles"
# A leading bullet or list number. A number must not run on into another digit, so "3.8妇女节"
# or "10:30" at the start of a rule are kept.
_NUMBERING = re.compile(
    r"^\s*(?:[-*•·]+|\(?\d+[.)、．:：](?!\d)|[（(]\d+[）)]|第\d+条[:：]?)\s*")


def strip_numbering(rule: str) -> str:
  """Removes leading bullets/list numbers (all of them, so cleaning twice changes nothing)."""
  text = rule.strip()
  while True:
    stripped = _NUMBERING.sub("", text, count=1).strip()
    if stripped == text:
      return text
    text = stripped


class PrincipleError(ValueError):
  """A principle set file or rule list is malformed."""


def clean_rules(rules: Sequence[Any], *, where: str, max_rules: int = MAX_RULES,
                allow_empty: bool = False) -> tuple[str, ...]:
  """Strips bullets/numbering and blanks, drops duplicates, enforces 1..max_rules rules."""
  cleaned: list[str] = []
  for i, rule in enumerate(rules):
    if not isinstance(rule, str):
      raise PrincipleError(f"{where}[{i}] must be a string, got {type(rule).__name__}")
    text = strip_numbering(rule)
    if text and text not in cleaned:
      cleaned.append(text)
  if not cleaned and not allow_empty:
    raise PrincipleError(f"{where} is empty; at least one rule is required")
  if len(cleaned) > max_rules:
    raise PrincipleError(f"{where} has {len(cleaned)} rules, at most {max_rules} are allowed")
  return tuple(cleaned)


def split_rules(text: str) -> list[str]:
  """Rule text (one rule per line, bulleted or numbered) -> list of lines (not yet cleaned)."""
  return [line for line in text.splitlines() if line.strip()]


def format_rules(rules: Sequence[str]) -> str:
  """Numbered rule list as it appears in prompts: ``1. ...`` one per line."""
  return "\n".join(f"{i}. {rule}" for i, rule in enumerate(rules, start=1))


@dataclasses.dataclass(frozen=True)
class PrincipleSet:
  """Detector principles S_D and generator bad strategies S_G, with a version tag."""
  version: str
  principles: tuple[str, ...]
  bad_strategies: tuple[str, ...] = ()
  description: str = ""

  def __post_init__(self):
    object.__setattr__(self, "principles", clean_rules(
        self.principles, where=f"principle set {self.version!r}: principles"))
    object.__setattr__(self, "bad_strategies", clean_rules(
        self.bad_strategies, where=f"principle set {self.version!r}: bad_strategies",
        allow_empty=True))

  def principles_text(self) -> str:
    return format_rules(self.principles)

  def bad_strategies_text(self) -> str:
    return format_rules(self.bad_strategies)

  def replace(self, **changes: Any) -> "PrincipleSet":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict[str, Any]:
    out: dict[str, Any] = {"version": self.version, "principles": list(self.principles),
                           "bad_strategies": list(self.bad_strategies)}
    if self.description:
      out["description"] = self.description
    return out


def principles_from_json(data: Any, source: str) -> PrincipleSet:
  """Validates a decoded principle-set JSON object; errors name ``source`` and the field."""
  if not isinstance(data, dict):
    raise PrincipleError(f"{source}: expected a JSON object, got {type(data).__name__}")
  for field in ("version", "principles"):
    if field not in data:
      raise PrincipleError(f"{source}: missing field {field!r}")
  if not isinstance(data["version"], str) or not data["version"]:
    raise PrincipleError(f"{source}: field 'version' must be a non-empty string")
  for field in ("principles", "bad_strategies"):
    if field in data and not isinstance(data[field], list):
      raise PrincipleError(f"{source}: field {field!r} must be a list of strings")
  unknown = set(data) - {"version", "principles", "bad_strategies", "description"}
  if unknown:
    raise PrincipleError(f"{source}: unknown field(s) {sorted(unknown)}")
  try:
    return PrincipleSet(version=data["version"], principles=tuple(data["principles"]),
                        bad_strategies=tuple(data.get("bad_strategies", ())),
                        description=str(data.get("description", "")))
  except PrincipleError as e:
    raise PrincipleError(f"{source}: {e}") from None


def available_principles() -> list[str]:
  """Names of the principle sets shipped with the package."""
  folder = importlib.resources.files(_PACKAGE) / _FOLDER
  return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_principles(name_or_path: str) -> PrincipleSet:
  """A shipped set by name (``"v0"``) or a JSON file by local/``gs://`` path."""
  if name_or_path.endswith(".json") or os.sep in name_or_path or storage.is_gcs(name_or_path):
    source = name_or_path
    try:
      text = storage.read_text(name_or_path)
    except (OSError, storage.StorageError) as e:
      raise PrincipleError(f"cannot read principle set {name_or_path}: {e}") from e
  else:
    resource = importlib.resources.files(_PACKAGE) / _FOLDER / f"{name_or_path}.json"
    source = f"{_PACKAGE.replace('.', '/')}/{_FOLDER}/{name_or_path}.json"
    if not resource.is_file():
      raise PrincipleError(f"no principle set named {name_or_path!r} ({source} does not exist); "
                           f"available: {available_principles()}, or pass a path to a .json file")
    text = resource.read_text(encoding="utf-8")
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise PrincipleError(f"{source}:{e.lineno}: invalid JSON: {e.msg}") from None
  return principles_from_json(data, source)


def save_principles(principle_set: PrincipleSet, path: str) -> None:
  """Writes the set as pretty JSON (atomically for local paths)."""
  storage.write_text(path, json.dumps(principle_set.to_json(), ensure_ascii=False, indent=2) + "\n")
