"""Typed records and strict readers for the paper's greetings (祝福语) dataset.

Files (relative to the data directory, see `paths.DATASET_FILES`):
  sft/sft_data.json                        JSON list of {instruction, input, output} -> SFTExample
  reward_model/reward_data_{train,test}.json  JSON list of {conversations, chosen, rejected}
                                           -> PreferencePair
  evaluation_set/evaluate_data.json        JSON Lines of {query, response, label} -> LabeledResponse
  grpo_data/{train,test}.parquet           verl prompts [{role: user, content}] -> RLPrompt
  random_query.txt                         one request per line -> str

Every malformed record raises `DataFormatError` naming the file, the record index (JSON list,
parquet row) or 1-based line number (JSON Lines, text) and the field.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

if TYPE_CHECKING:
  import datasets

from rlaif_jax.data import paths

# The instruction the paper puts in front of every GRPO request.
GRPO_PREFIX = "请只生成一条祝福语："

T = TypeVar("T")
PathLike = str | os.PathLike


class DataFormatError(ValueError):
  """A dataset file or one of its records does not have the expected format.

  Attributes:
    path: the file.
    location: "record 12", "line 7", "row 3" or "" for whole-file problems.
    field: the offending field ("" when not about one field).
  """

  def __init__(self, path: PathLike, location: str, field: str, problem: str):
    self.path, self.location, self.field = str(path), location, field
    where = ", ".join(x for x in (location, f"field {field!r}" if field else "") if x)
    super().__init__(f"{path}: {where + ': ' if where else ''}{problem}")


@dataclasses.dataclass(frozen=True)
class SFTExample:
  """One supervised pair; prompt = instruction + ("\\n" + input if input)."""
  prompt: str
  response: str


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """One reward-model comparison: `chosen` is preferred over `rejected` for `prompt`."""
  prompt: str
  chosen: str
  rejected: str


@dataclasses.dataclass(frozen=True)
class LabeledResponse:
  """A human-labelled response: label 1 = excellent greeting, 0 = not."""
  query: str
  response: str
  label: int


@dataclasses.dataclass(frozen=True)
class RLPrompt:
  """A GRPO prompt (verl parquet row).

  query: the user's request without GRPO_PREFIX; prompt_text: the user message exactly as stored;
  data_source / split: verl bookkeeping columns (None when absent); index: extra_info.index, else
  the row number.
  """
  query: str
  prompt_text: str
  index: int
  data_source: str | None = None
  split: str | None = None


# ---------------------------------------------------------------------------------------------
# Field checks shared by the readers.


def _text(record: Any, key: str, path: PathLike, location: str, field: str | None = None,
          allow_empty: bool = False) -> str:
  """Returns record[key] if it is a string (non-blank unless allow_empty), else raises."""
  field = field or key
  if not isinstance(record, dict):
    raise DataFormatError(path, location, field.split(".")[0],
                          f"expected a JSON object, got {type(record).__name__}")
  if key not in record:
    raise DataFormatError(path, location, field, "missing")
  value = record[key]
  if not isinstance(value, str):
    raise DataFormatError(path, location, field, f"expected a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise DataFormatError(path, location, field, "empty")
  return value


def _read_text(path: PathLike) -> str:
  try:
    return pathlib.Path(path).read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise DataFormatError(path, f"byte {e.start}", "", f"not UTF-8 ({e.reason})") from e


def _read_json_list(path: PathLike) -> list[Any]:
  try:
    data = json.loads(_read_text(path))
  except json.JSONDecodeError as e:
    raise DataFormatError(path, f"line {e.lineno} column {e.colno}", "",
                          f"invalid JSON: {e.msg}") from e
  if not isinstance(data, list):
    raise DataFormatError(path, "", "", f"expected a JSON list of records, got "
                          f"{type(data).__name__}")
  return data


# ---------------------------------------------------------------------------------------------
# Readers of one file each.


def read_sft_file(path: PathLike) -> list[SFTExample]:
  """Reads a JSON list of {instruction, input, output} (Alpaca style)."""
  examples = []
  for i, record in enumerate(_read_json_list(path)):
    loc = f"record {i}"
    instruction = _text(record, "instruction", path, loc)
    extra = _text(record, "input", path, loc, allow_empty=True) if "input" in record else ""
    output = _text(record, "output", path, loc)
    prompt = instruction + ("\n" + extra if extra else "")
    examples.append(SFTExample(prompt=prompt, response=output))
  return examples


def read_pair_file(path: PathLike) -> list[PreferencePair]:
  """Reads a JSON list of {conversations: [{from: human, value}], chosen: {from, value},
  rejected: {from, value}} (LLaMA-Factory pairwise format); any file in this format works."""
  pairs = []
  for i, record in enumerate(_read_json_list(path)):
    loc = f"record {i}"
    if not isinstance(record, dict):
      raise DataFormatError(path, loc, "", f"expected a JSON object, got {type(record).__name__}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) != 1:
      got = f"{len(turns)} turns" if isinstance(turns, list) else type(turns).__name__
      raise DataFormatError(path, loc, "conversations",
                            f"expected a list with exactly one human turn, got {got}")
    role = _text(turns[0], "from", path, loc, "conversations[0].from")
    if role not in ("human", "user"):
      raise DataFormatError(path, loc, "conversations[0].from",
                            f"expected 'human', got {role!r}")
    prompt = _text(turns[0], "value", path, loc, "conversations[0].value")
    answers = []
    for key in ("chosen", "rejected"):
      if key not in record:
        raise DataFormatError(path, loc, key, "missing")
      answers.append(_text(record[key], "value", path, loc, f"{key}.value"))
    pairs.append(PreferencePair(prompt=prompt, chosen=answers[0], rejected=answers[1]))
  return pairs


def read_labeled_file(path: PathLike) -> list[LabeledResponse]:
  """Reads JSON Lines of {query, response, label} with label 0 or 1; blank lines are skipped."""
  rows = []
  for n, line in enumerate(_read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    loc = f"line {n}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataFormatError(path, loc, "", f"invalid JSON: {e.msg} (column {e.colno})") from e
    query = _text(record, "query", path, loc)
    response = _text(record, "response", path, loc)
    if "label" not in record:
      raise DataFormatError(path, loc, "label", "missing")
    label = record["label"]
    if isinstance(label, bool) or label not in (0, 1):
      raise DataFormatError(path, loc, "label", f"expected 0 or 1, got {label!r}")
    rows.append(LabeledResponse(query=query, response=response, label=int(label)))
  return rows


def read_query_file(path: PathLike) -> list[str]:
  """Reads one request per line (surrounding whitespace stripped); a blank line is an error
  except at the very end of the file."""
  lines = _read_text(path).splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  queries = []
  for n, line in enumerate(lines, start=1):
    if not line.strip():
      raise DataFormatError(path, f"line {n}", "query", "blank line")
    queries.append(line.strip())
  return queries


def read_rl_prompt_file(path: PathLike, prefix: str = GRPO_PREFIX,
                        require_prefix: bool = True) -> list[RLPrompt]:
  """Reads a verl-style parquet file whose column `prompt` holds [{role: user, content}].

  Args:
    path: the parquet file.
    prefix: instruction stripped from the front of `content` to give `RLPrompt.query`.
    require_prefix: raise if a content does not start with `prefix` (else query = content).
  """
  import pyarrow.parquet as pq  # Local: pyarrow is only needed for the GRPO files.
  try:
    table = pq.read_table(path)
  except Exception as e:  # pyarrow raises several types (ArrowInvalid, OSError) for bad files.
    raise DataFormatError(path, "", "", f"not a readable parquet file ({e})") from e
  if "prompt" not in table.column_names:
    raise DataFormatError(path, "", "prompt", f"missing column; columns: {table.column_names}")
  def column(name: str) -> list[Any]:
    if name in table.column_names:
      return table.column(name).to_pylist()
    return [None] * table.num_rows

  sources, extras = column("data_source"), column("extra_info")
  prompts = []
  for i, messages in enumerate(column("prompt")):
    loc = f"row {i}"
    if not isinstance(messages, list) or len(messages) != 1:
      got = f"{len(messages)} messages" if isinstance(messages, list) else repr(messages)
      raise DataFormatError(path, loc, "prompt", f"expected exactly one user message, got {got}")
    role = _text(messages[0], "role", path, loc, "prompt[0].role")
    if role != "user":
      raise DataFormatError(path, loc, "prompt[0].role", f"expected 'user', got {role!r}")
    content = _text(messages[0], "content", path, loc, "prompt[0].content")
    if content.startswith(prefix):
      query = content[len(prefix):]
    elif require_prefix:
      raise DataFormatError(path, loc, "prompt[0].content",
                            f"does not start with {prefix!r}: {content[:40]!r}")
    else:
      query = content
    if not query.strip():
      raise DataFormatError(path, loc, "prompt[0].content", "empty request after the prefix")
    extra = extras[i] or {}
    if not isinstance(extra, dict):
      raise DataFormatError(path, loc, "extra_info", f"expected a struct, got {extra!r}")
    index = extra.get("index")
    prompts.append(RLPrompt(query=query, prompt_text=content,
                            index=i if index is None else int(index),
                            data_source=sources[i], split=extra.get("split")))
  return prompts


# ---------------------------------------------------------------------------------------------
# Loaders by data directory.


def load_sft(data_dir: PathLike) -> list[SFTExample]:
  """The 4000 SFT examples of sft/sft_data.json."""
  return read_sft_file(paths.dataset_file(data_dir, "sft"))


def load_preference_pairs(data_dir: PathLike, split: str) -> list[PreferencePair]:
  """Reward-model pairs; split is "train" or "test"."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  return read_pair_file(paths.dataset_file(data_dir, f"reward_{split}"))


def load_evaluation_set(data_dir: PathLike) -> list[LabeledResponse]:
  """Human-labelled responses of evaluation_set/evaluate_data.json."""
  return read_labeled_file(paths.dataset_file(data_dir, "evaluation"))


def load_rl_prompts(data_dir: PathLike, split: str) -> list[RLPrompt]:
  """GRPO prompts of grpo_data/{split}.parquet; split is "train" or "test"."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  return read_rl_prompt_file(paths.dataset_file(data_dir, f"grpo_{split}"))


def load_random_queries(data_dir: PathLike) -> list[str]:
  """The requests of random_query.txt."""
  return read_query_file(paths.dataset_file(data_dir, "random_query"))


# Short name (as in paths.DATASET_FILES) -> reader of that file.
READERS: dict[str, Callable[[PathLike], list[Any]]] = {
  "sft": read_sft_file,
  "reward_train": read_pair_file,
  "reward_test": read_pair_file,
  "evaluation": read_labeled_file,
  "grpo_train": read_rl_prompt_file,
  "grpo_test": read_rl_prompt_file,
  "random_query": read_query_file,
}


def greeting_corpus(data_dir: PathLike) -> Iterator[str]:
  """Yields the distinct texts of the training files, in file order: SFT prompts and responses,
  reward-model train prompts/chosen/rejected, random_query requests, and the GRPO train prompts
  (which carry the paper's prefix "请只生成一条祝福语："). The test and evaluation files are left
  out, but their text is not fully unseen: the SFT file is read whole (the SFT held-out split
  included), and random_query.txt holds the evaluation-set queries (and 10 of the 791 GRPO test
  queries). Only the vocabulary sees them; no model is trained on them through this corpus."""
  def texts() -> Iterator[str]:
    for ex in load_sft(data_dir):
      yield ex.prompt
      yield ex.response
    for pair in load_preference_pairs(data_dir, "train"):
      yield pair.prompt
      yield pair.chosen
      yield pair.rejected
    yield from load_random_queries(data_dir)
    for prompt in load_rl_prompts(data_dir, "train"):
      yield prompt.prompt_text

  seen: set[str] = set()
  for text in texts():
    if text not in seen:
      seen.add(text)
      yield text


# ---------------------------------------------------------------------------------------------
# Record-list helpers.


def to_hf_dataset(records: Sequence[Any]) -> "datasets.Dataset":
  """Returns a `datasets.Dataset` with one column per dataclass field (or column "text" for
  plain strings). Raises ValueError for an empty or mixed-type list. Needs the optional
  `datasets` package (`pip install -e ".[hf]"`)."""
  try:
    import datasets  # Local: optional and heavy, only needed here.
  except ImportError as e:
    raise ImportError("to_hf_dataset needs the `datasets` package: pip install -e \".[hf]\"") from e
  if not records:
    raise ValueError("to_hf_dataset: no records")
  kind = type(records[0])
  if any(type(r) is not kind for r in records):
    raise ValueError(f"to_hf_dataset: records mix types, first is {kind.__name__}")
  if kind is str:
    return datasets.Dataset.from_dict({"text": list(records)})
  if not dataclasses.is_dataclass(kind):
    raise ValueError(f"to_hf_dataset: expected dataclass records or str, got {kind.__name__}")
  names = [f.name for f in dataclasses.fields(kind)]
  return datasets.Dataset.from_dict({n: [getattr(r, n) for r in records] for n in names})


def shard_for_host(records: Sequence[T], process_index: int, process_count: int) -> list[T]:
  """Returns this host's strided shard; every host gets len(records) // process_count records
  (the last len % process_count are dropped) so all hosts run the same number of steps."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                     f"{process_count}")
  per_host = len(records) // process_count
  if per_host == 0:
    raise ValueError(f"{len(records)} records cannot be split over {process_count} hosts")
  return list(records[process_index:per_host * process_count:process_count])


def shuffled(records: Sequence[T], seed: int) -> list[T]:
  """Returns a new list in a permutation fixed by `seed` (NumPy PCG64: same on every host)."""
  order = np.random.default_rng(seed).permutation(len(records))
  return [records[i] for i in order]
