"""Human evaluation: blinded annotation sheets out, filled sheets back in, with strict checks.

Export (`export_sheet`): N generations per checkpoint are sampled (seeded), given opaque item
ids, shuffled together and written as a CSV sheet (UTF-8 with BOM, so Excel opens it as UTF-8)
with the columns ``item_id, request, greeting``, one integer score column per rubric dimension,
the overall verdict column and ``comment``. The key (JSON, never shown to annotators) maps each
item id to its checkpoint, generation file, 1-based line and generation id, and holds the
SHA-256 of the request and greeting as shown (line endings normalised to LF, outer whitespace
stripped) so an edited text is detected on import.

Import (`read_sheet`, `summarise`): every sheet must hold every item of the key exactly once
with every score and verdict cell filled and in range; a bad sheet raises `SheetError` naming
the file, the spreadsheet row (header = row 1) and the column, before anything is written.
Generation files: JSON Lines from ``launch.generate`` ({id, prompt, completion, ...}; a chat
message list prompt shows its last user turn) or from the evaluation harness
(generations/<checkpoint>.jsonl: {id, query, prompt, response, ...}; the request is ``query``).

Signal files (automatic judges, compared with the humans' majority verdict): JSON Lines with a
verdict in ``verdict`` or ``label`` (1/0, true/false, Good/Bad; null = no verdict, counted as
invalid) and the item named by ``item_id`` (the sheet's id), or by ``checkpoint`` + ``id`` (+
``sample_index`` when the generation file has it), or by its text: ``query``/``prompt``/
``request`` and ``response``/``completion``/``greeting``. The harness's
judgements/<checkpoint>/<judge>.jsonl files work as they are. Lines naming no sheet item are
skipped (a signal may cover more generations than were sampled) and counted.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import pathlib
import random
from typing import Any, Mapping, Sequence

from rlaif_jax import storage
from rlaif_jax.judging import parsing

RUBRIC_DIR = pathlib.Path(__file__).parent / "rubrics"
DEFAULT_RUBRIC = "greetings_v1"
KEY_FORMAT = "rlaif_jax.human_eval.key/v1"
ID_COLUMN, REQUEST_COLUMN, GREETING_COLUMN = "item_id", "request", "greeting"
NOT_PUBLIC = ("The paper's exact annotation rubric is not public; this rubric was written for "
              "rlaif_jax from the paper's description of a good greeting.")


class SheetError(ValueError):
  """A filled sheet, key or signal file is unusable; the message names file, row and column."""


@dataclasses.dataclass(frozen=True)
class Rubric:
  """The machine-readable rubric (``rubrics/<name>.json``) and the sheet columns it implies."""
  name: str
  scale: tuple[int, int]
  dimensions: tuple[str, ...]        # keys, e.g. "creativity"
  score_columns: tuple[str, ...]     # sheet columns, e.g. "creativity_1to5"
  verdict_column: str
  comment_column: str
  sha256: str                         # of the JSON file's bytes
  markdown: str                       # the annotator instructions

  @property
  def columns(self) -> tuple[str, ...]:
    return (ID_COLUMN, REQUEST_COLUMN, GREETING_COLUMN, *self.score_columns,
            self.verdict_column, self.comment_column)


def load_rubric(name_or_path: str = DEFAULT_RUBRIC) -> Rubric:
  """A packaged rubric by name (``greetings_v1``) or a JSON file (its ``.md`` beside it)."""
  path = pathlib.Path(name_or_path)
  if path.suffix != ".json":
    path = RUBRIC_DIR / f"{name_or_path}.json"
  if not path.is_file():
    known = sorted(p.stem for p in RUBRIC_DIR.glob("*.json"))
    raise SheetError(f"rubric {name_or_path!r}: no file {path} (packaged rubrics: {known})")
  raw = path.read_bytes()
  spec = json.loads(raw.decode("utf-8"))
  try:
    dims = spec["dimensions"]
    rubric = Rubric(name=spec["name"], scale=(int(spec["scale"]["min"]), int(spec["scale"]["max"])),
                    dimensions=tuple(d["key"] for d in dims),
                    score_columns=tuple(d["column"] for d in dims),
                    verdict_column=spec["verdict"]["column"],
                    comment_column=spec["comment_column"],
                    sha256=hashlib.sha256(raw).hexdigest(),
                    markdown=path.with_suffix(".md").read_text(encoding="utf-8")
                    if path.with_suffix(".md").is_file() else "")
  except (KeyError, TypeError, ValueError) as e:
    raise SheetError(f"{path}: malformed rubric ({type(e).__name__}: {e})") from None
  if len(set(rubric.columns)) != len(rubric.columns) or rubric.scale[0] >= rubric.scale[1]:
    raise SheetError(f"{path}: rubric columns must be distinct and scale min < max")
  return rubric


def normalise_text(text: str) -> str:
  """What the text hash covers: CRLF/CR -> LF, outer whitespace stripped."""
  return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def text_hash(text: str) -> str:
  return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


def parse_named(values: Sequence[str], what: str) -> dict[str, str]:
  """``NAME=FILE`` items -> {name: file}; names are required and distinct."""
  out: dict[str, str] = {}
  for value in values:
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
      raise SheetError(f"{what} {value!r}: expected NAME=FILE")
    if name in out:
      raise SheetError(f"{what} name {name!r} is used twice ({out[name]!r} and {path!r})")
    out[name.strip()] = path.strip()
  return out


# ---------------------------------------------------------------------------------------------
# Export.


def _request_of(record: dict[str, Any], where: str) -> str:
  if isinstance(record.get("query"), str):
    return record["query"]
  prompt = record.get("prompt")
  if isinstance(prompt, list):
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if users and isinstance(users[-1], str):
      return users[-1]
  if isinstance(prompt, str):
    return prompt
  raise SheetError(f"{where}: no request: needs a string 'query', a string 'prompt' or a chat "
                   "message list 'prompt' with a user turn")


def load_generations(path: str) -> list[dict[str, Any]]:
  """Records {line, id, sample_index, request, greeting} of a generation JSONL (module doc)."""
  out = []
  try:
    lines = storage.read_jsonl(path)
  except (storage.InputError, storage.StorageError) as e:
    raise SheetError(str(e)) from None
  for index, record in lines:
    where = f"{path}: line {index + 1}"
    greeting = record.get("completion", record.get("response"))
    if not isinstance(greeting, str):
      raise SheetError(f"{where}: field 'completion' (launch.generate) or 'response' (harness) "
                       "must be a string")
    out.append({"line": index + 1, "id": record.get("id", index),
                "sample_index": record.get("sample_index"),
                "request": _request_of(record, where), "greeting": greeting})
  if not out:
    raise SheetError(f"{path}: no generations")
  return out


def export_sheet(generations: Mapping[str, str], n: int, seed: int, sheet_path: str,
                 key_path: str, rubric: Rubric) -> dict[str, Any]:
  """Writes the blinded sheet (CSV, UTF-8 BOM) and its key (JSON); returns the key.

  Args:
    generations: checkpoint name -> generation JSONL path.
    n: generations sampled per checkpoint (seeded, without replacement).
    seed: seeds the sampling, the item ids and the row order.
  """
  if not generations:
    raise SheetError("no generation files given")
  if n < 1:
    raise SheetError(f"n must be >= 1, got {n}")
  rng = random.Random(f"human_eval:{seed}")
  items = []
  for name, path in generations.items():
    records = load_generations(path)
    if n > len(records):
      raise SheetError(f"{path}: checkpoint {name!r} has {len(records)} generations, fewer than "
                       f"n={n}")
    for r in rng.sample(records, n):
      items.append({"checkpoint": name, "file": path, **r})
  rng.shuffle(items)
  ids = rng.sample(range(16 ** 6), len(items))
  key_items, buffer = {}, io.StringIO(newline="")
  writer = csv.writer(buffer)
  writer.writerow(rubric.columns)
  for item, number in zip(items, ids):
    item_id = f"g{number:06x}"
    request, greeting = normalise_text(item["request"]), normalise_text(item["greeting"])
    writer.writerow([item_id, request, greeting] + [""] * (len(rubric.columns) - 3))
    key_items[item_id] = {
        "checkpoint": item["checkpoint"], "file": item["file"], "line": item["line"],
        "id": item["id"], "sample_index": item["sample_index"], "request": request,
        "greeting": greeting, "request_sha256": text_hash(request),
        "greeting_sha256": text_hash(greeting)}
  key = {"format": KEY_FORMAT, "rubric": rubric.name, "rubric_sha256": rubric.sha256,
         "seed": seed, "n_per_checkpoint": n, "generations": dict(generations),
         "columns": list(rubric.columns), "items": key_items}
  storage.write_bytes(sheet_path, buffer.getvalue().encode("utf-8-sig"))
  storage.write_text(key_path, json.dumps(key, ensure_ascii=False, indent=1) + "\n")
  return key


# ---------------------------------------------------------------------------------------------
# Import.


def load_key(path: str) -> dict[str, Any]:
  """The key written by `export_sheet`, checked against its packaged rubric."""
  try:
    key = json.loads(storage.read_text(path))
  except (storage.StorageError, json.JSONDecodeError) as e:
    raise SheetError(f"{path}: unreadable key ({e})") from None
  if not isinstance(key, dict) or key.get("format") != KEY_FORMAT or not key.get("items"):
    raise SheetError(f"{path}: not a human-evaluation key (format {KEY_FORMAT!r} with items)")
  return key


def rubric_of(key: dict[str, Any], key_path: str) -> Rubric:
  rubric = load_rubric(key["rubric"])
  if rubric.sha256 != key.get("rubric_sha256"):
    raise SheetError(f"{key_path}: rubric {key['rubric']!r} changed since the sheet was exported "
                     "(sha256 differs); import with the package version that exported it")
  return rubric


def _int_cell(value: str, lo: int, hi: int, where: str) -> int:
  text = value.strip()
  try:
    number = float(text)
  except ValueError:
    raise SheetError(f"{where}: {value!r} is not a number in [{lo}, {hi}]") from None
  if number != int(number) or not lo <= number <= hi:
    raise SheetError(f"{where}: {value!r} is not an integer in [{lo}, {hi}]")
  return int(number)


def read_sheet(path: str, key: dict[str, Any], rubric: Rubric) -> dict[str, dict[str, Any]]:
  """item id -> {scores: {dim: int}, verdict: 0/1, comment} of one filled sheet (strict)."""
  try:
    text = storage.read_bytes(path).decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise SheetError(f"{path}: not UTF-8 (byte {e.start}); save it as 'CSV UTF-8'") from None
  except storage.StorageError as e:
    raise SheetError(f"{path}: {e}") from None
  reader = csv.reader(io.StringIO(text, newline=""))
  header = next(reader, None)
  if not header:
    raise SheetError(f"{path}: empty file, no header row")
  header = [h.strip() for h in header]
  for column in rubric.columns:
    if column not in header:
      raise SheetError(f"{path}: row 1: missing column {column!r}")
  doubled = sorted({h for h in header if h and header.count(h) > 1})
  if doubled:
    raise SheetError(f"{path}: row 1: duplicated column(s) {doubled}")
  col = {name: header.index(name) for name in rubric.columns}
  items: dict[str, dict[str, Any]] = {}
  first_row: dict[str, int] = {}
  for row_number, row in enumerate(reader, start=2):
    if not any(cell.strip() for cell in row):
      continue
    row = row + [""] * (len(header) - len(row))

    def cell(column: str) -> tuple[str, str]:
      return row[col[column]], f"{path}: row {row_number}, column {column!r}"

    item_id, where = cell(ID_COLUMN)
    item_id = item_id.strip()
    if item_id not in key["items"]:
      raise SheetError(f"{where}: unknown item id {item_id!r} (not in the key)")
    if item_id in items:
      raise SheetError(f"{where}: item id {item_id!r} repeats row {first_row[item_id]}")
    truth = key["items"][item_id]
    for column, field in ((REQUEST_COLUMN, "request_sha256"), (GREETING_COLUMN, "greeting_sha256")):
      value, where = cell(column)
      if text_hash(value) != truth[field]:
        raise SheetError(f"{where}: the {column} text of item {item_id!r} was edited (it differs "
                         "from the exported text)")
    scores = {}
    for dim, column in zip(rubric.dimensions, rubric.score_columns):
      value, where = cell(column)
      if not value.strip():
        raise SheetError(f"{where}: empty score cell")
      scores[dim] = _int_cell(value, *rubric.scale, where)
    value, where = cell(rubric.verdict_column)
    if not value.strip():
      raise SheetError(f"{where}: empty verdict cell (1 = excellent, 0 = not)")
    verdict = _int_cell(value, 0, 1, where)
    items[item_id] = {"scores": scores, "verdict": verdict,
                      "comment": row[col[rubric.comment_column]].strip()}
    first_row[item_id] = row_number
  missing = sorted(set(key["items"]) - set(items))
  if missing:
    raise SheetError(f"{path}: {len(missing)} item(s) of the key have no row, e.g. {missing[:5]}")
  return items


_REQUEST_FIELDS = ("query", "prompt", "request")
_GREETING_FIELDS = ("response", "completion", "greeting")


def _first_str(record: dict[str, Any], fields: Sequence[str]) -> str | None:
  for f in fields:
    if isinstance(record.get(f), str):
      return record[f]
  return None


def read_signal(path: str, key: dict[str, Any]) -> dict[str, Any]:
  """{verdicts: {item id: 0/1}, lines, unmatched, invalid} of one signal JSONL (module doc)."""
  by_text: dict[tuple[str, str], list[str]] = {}
  by_source: dict[tuple[Any, ...], list[str]] = {}
  for item_id, item in key["items"].items():
    by_text.setdefault((text_hash(item["request"]), text_hash(item["greeting"])), []).append(item_id)
    by_source.setdefault((item["checkpoint"], str(item["id"]), item.get("sample_index")),
                         []).append(item_id)
  try:
    lines = storage.read_jsonl(path)
  except (storage.InputError, storage.StorageError) as e:
    raise SheetError(str(e)) from None
  verdicts: dict[str, int] = {}
  seen_at: dict[str, int] = {}
  unmatched = invalid = 0
  for index, record in lines:
    where = f"{path}: line {index + 1}"
    if "item_id" in record:
      if record["item_id"] not in key["items"]:
        raise SheetError(f"{where}: field 'item_id': unknown item id {record['item_id']!r}")
      targets = [record["item_id"]]
    elif "checkpoint" in record and "id" in record:
      targets = by_source.get((record["checkpoint"], str(record["id"]),
                               record.get("sample_index")), [])
    else:
      request, greeting = _first_str(record, _REQUEST_FIELDS), _first_str(record, _GREETING_FIELDS)
      if request is None or greeting is None:
        raise SheetError(f"{where}: names no item: needs 'item_id', 'checkpoint' + 'id', or text "
                         f"fields (one of {_REQUEST_FIELDS} and one of {_GREETING_FIELDS})")
      targets = by_text.get((text_hash(request), text_hash(greeting)), [])
    if not targets:
      unmatched += 1
      continue
    field = "verdict" if "verdict" in record else "label"
    if record.get(field) is None:
      invalid += 1
      continue
    try:
      verdict = parsing.normalise_binary(record[field], field)
    except parsing.ParseError as e:
      raise SheetError(f"{where}: {e}") from None
    for item_id in targets:
      if item_id in verdicts and verdicts[item_id] != verdict:
        raise SheetError(f"{where}: verdict {verdict} for item {item_id!r} contradicts line "
                         f"{seen_at[item_id]}")
      verdicts[item_id], seen_at[item_id] = verdict, index + 1
  return {"verdicts": verdicts, "lines": len(lines), "unmatched": unmatched, "invalid": invalid}
