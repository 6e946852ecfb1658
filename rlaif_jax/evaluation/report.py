"""Result tables: the same rows written as a markdown table (for notes) and a CSV (for tools);
and `save_figure`. Every file is written atomically (`storage.atomic_path`: a temporary file in
the same folder, fsynced, then renamed): a run killed mid-write leaves the previous file whole, never a truncated one.
"""
from __future__ import annotations

import csv
import io
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

from rlaif_jax import storage
from rlaif_jax.evaluation import processes


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
    md_path, csv_path: output files (parent folders are created); multi-host: written by
      process 0 alone (`processes`).
    float_digits: decimals for floats in the markdown table.
  Returns:
    The markdown text.
  """
  if not columns:
    raise ValueError("write_table needs at least one column name.")
  text = markdown_table(rows, columns, float_digits)
  buffer = io.StringIO(newline="")
  writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", restval="")
  writer.writeheader()
  for row in rows:
    writer.writerow({c: row.get(c, "") for c in columns})
  if processes.is_main():
    storage.write_text(str(md_path), text)
    storage.write_bytes(str(csv_path), buffer.getvalue().encode("utf-8"))
  return text


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> str:
  """`fig.savefig` written atomically (`storage.atomic_path`)."""
  path = pathlib.Path(path)
  fmt = path.suffix.lstrip(".").lower() or "png"
  with storage.atomic_path(path) as tmp, open(tmp, "wb") as f:
    fig.savefig(f, format=fmt, dpi=dpi)
  return str(path)
