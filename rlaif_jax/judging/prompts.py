"""Prompt templates as package data: ``prompts/<name>.txt``, filled with str.format named fields.

Templates are plain Chinese text files; literal braces are written ``{{`` / ``}}``. Only named
fields are allowed (no ``{0}``, ``{a.b}``, ``{a[0]}``), so every template declares exactly the
fields it needs, and ``render`` fails with the file and the missing/unknown field names.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import string
from typing import Any

_PACKAGE = "rlaif_jax.judging"
_FOLDER = "prompts"


class TemplateError(ValueError):
  """A template file is malformed, or ``render`` got the wrong fields."""


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """A loaded template: ``name``, where it came from (``source``), its text and field names."""
  name: str
  source: str
  text: str
  fields: frozenset[str]

  def render(self, **values: Any) -> str:
    """Fills every field; raises TemplateError naming missing or unexpected fields."""
    missing = sorted(self.fields - values.keys())
    unknown = sorted(values.keys() - self.fields)
    if missing or unknown:
      parts = []
      if missing:
        parts.append(f"missing field(s) {missing}")
      if unknown:
        parts.append(f"unexpected field(s) {unknown}")
      raise TemplateError(f"prompt template {self.source}: {'; '.join(parts)}; "
                          f"the template uses {sorted(self.fields)}")
    return self.text.format(**{k: str(v) for k, v in values.items()})


def _template_fields(text: str, source: str) -> frozenset[str]:
  fields = set()
  for line_no, line in enumerate(text.splitlines(), start=1):
    try:
      parsed = list(string.Formatter().parse(line))
    except ValueError as e:
      raise TemplateError(f"{source}:{line_no}: {e} (write literal braces as '{{{{' and '}}}}')")
    for _, field, _, _ in parsed:
      if field is None:
        continue
      if not field.isidentifier():
        raise TemplateError(f"{source}:{line_no}: field {{{field}}} must be a plain name "
                            "(no positional, attribute or index fields)")
      fields.add(field)
  return frozenset(fields)


def template_names() -> list[str]:
  """Names of the templates shipped with the package."""
  folder = importlib.resources.files(_PACKAGE) / _FOLDER
  return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


@functools.lru_cache(maxsize=None)
def load_template(name_or_path: str) -> PromptTemplate:
  """A shipped template by name (``"detector"``) or any ``.txt`` file by path."""
  if name_or_path.endswith(".txt") or os.sep in name_or_path:
    source = name_or_path
    try:
      with open(name_or_path, encoding="utf-8") as f:
        text = f.read()
    except OSError as e:
      raise TemplateError(f"cannot read prompt template {name_or_path}: {e}") from e
    name = os.path.basename(name_or_path)[:-4] if name_or_path.endswith(".txt") else name_or_path
  else:
    resource = importlib.resources.files(_PACKAGE) / _FOLDER / f"{name_or_path}.txt"
    source = f"{_PACKAGE.replace('.', '/')}/{_FOLDER}/{name_or_path}.txt"
    if not resource.is_file():
      raise TemplateError(f"no prompt template named {name_or_path!r} ({source} does not exist); "
                          f"available: {template_names()}")
    text = resource.read_text(encoding="utf-8")
    name = name_or_path
  return PromptTemplate(name=name, source=source, text=text,
                        fields=_template_fields(text, source))


def render(name_or_path: str, **values: Any) -> str:
  """``load_template(name_or_path).render(**values)``."""
  return load_template(name_or_path).render(**values)


def user_message(text: str, system: str | None = None) -> list[dict[str, str]]:
  """A one-turn chat conversation (optionally with a system message)."""
  messages = [{"role": "system", "content": system}] if system else []
  messages.append({"role": "user", "content": text})
  return messages
