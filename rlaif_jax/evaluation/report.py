"""Result tables: the same rows written as a markdown table (for notes) and a CSV (for tools)."""
from __future__ import annotations

import csv
import math
import pathlib
from typing import Any, Mapping, Sequence


def format_cell(value: Any, float_digits: int = 4) -> str:
  """Markdown text of one value: floats to `float_digits` decimals, NaN/None as "-", pipes
  escaped."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if isinstance(value, float):
    return f"{value:.{float_digits}f}"
  return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], float_digits: int = 4
) -> str:
  """A GitHub-flavoured markdown table of `rows` restricted to `columns` (missing keys -> "-")."""
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(format_cell(row.get(c), float_digits) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def write_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    md_path: str | pathlib.Path,
    csv_path: str | pathlib.Path,
    float_digits: int = 4,
) -> str:
  """Write `rows` (dicts) as a markdown table and as a CSV with full-precision values.

  Args:
    rows: one dict per table row; keys outside `columns` are ignored, missing ones left empty.
    columns: column names in order.
    md_path, csv_path: output files (parent folders are created).
    float_digits: decimals for floats in the markdown table.
  Returns:
    The markdown text.
  """
  if not columns:
    raise ValueError("write_table needs at least one column name.")
  text = markdown_table(rows, columns, float_digits)
  md_path, csv_path = pathlib.Path(md_path), pathlib.Path(csv_path)
  for path in (md_path, csv_path):
    path.parent.mkdir(parents=True, exist_ok=True)
  md_path.write_text(text, encoding="utf-8")
  with csv_path.open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", restval="")
    writer.writeheader()
    for row in rows:
      writer.writerow({c: row.get(c, "") for c in columns})
  return text
