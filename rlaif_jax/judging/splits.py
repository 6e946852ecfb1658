"""Leak-free example splits for the judges: retrieval corpus, principle optimisation, reliability.

`make_splits(data_dir, seed)` is the one place these sets are drawn:

- ``principle_examples`` and ``reliability_examples`` split the human-labelled evaluation set
  (evaluation_set/evaluate_data.json) by *query group*: records whose queries are equal after
  `retrieval.normalise_text` (NFKC, lower case, no punctuation/whitespace) form one group, and a
  group goes whole to one side, so a duplicated query never spans two splits. Groups are
  shuffled with ``seed`` and dealt to the reliability side until it holds
  ``reliability_fraction`` of the records.
- ``retrieval_corpus`` (the curator's Retrieval agent) is the SFT data (sft/sft_data.json:
  request + good greeting, ``label`` 1), minus every SFT record whose normalised request is a
  query of the evaluation set, so no retrieved example shares a query with an evaluated one.
  A ``click_num`` field in the SFT records is kept (the retriever then reranks by it); the
  paper's released files have none.

With ``output_dir`` the three sets are written as JSON Lines under ``output_dir/splits/``
together with ``manifest.json`` (seed, sizes, group counts, SHA-256 of each file); the
labelled files load with `rlaif_jax.judging.adversarial_run.load_labelled`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from typing import Any

from rlaif_jax import storage
from rlaif_jax.data import greetings, paths
from rlaif_jax.judging.retrieval import normalise_text

SPLIT_NAMES = ("retrieval_corpus", "principle_examples", "reliability_examples")


@dataclasses.dataclass(frozen=True)
class Splits:
  """The three disjoint example sets (dicts {query, response, label[, click_num]})."""
  retrieval_corpus: list[dict[str, Any]]
  principle_examples: list[dict[str, Any]]
  reliability_examples: list[dict[str, Any]]
  manifest: dict[str, Any]
  files: dict[str, str]  # split name -> written path (empty without output_dir)

  def labelled(self, name: str) -> list[greetings.LabeledResponse]:
    """A labelled split as `LabeledResponse` records."""
    return [greetings.LabeledResponse(r["query"], r["response"], r["label"])
            for r in getattr(self, name)]


def query_key(query: str) -> str:
  """The grouping key of a query (its normalised text, or the raw text if that is empty)."""
  return normalise_text(query) or query


def _sft_records(data_dir: os.PathLike) -> list[dict[str, Any]]:
  """SFT pairs as {query, response, label: 1[, click_num]}, read with the strict reader."""
  path = paths.dataset_file(data_dir, "sft")
  examples = greetings.read_sft_file(path)
  raw = json.loads(path.read_text(encoding="utf-8"))
  out = []
  for i, (ex, record) in enumerate(zip(examples, raw)):
    row: dict[str, Any] = {"query": ex.prompt, "response": ex.response, "label": 1}
    if "click_num" in record:
      clicks = record["click_num"]
      if isinstance(clicks, bool) or not isinstance(clicks, (int, float)):
        raise greetings.DataFormatError(path, f"record {i}", "click_num",
                                        f"expected a number, got {clicks!r}")
      row["click_num"] = clicks
    out.append(row)
  return out


def make_splits(data_dir: str | os.PathLike, seed: int = 0, *,
                reliability_fraction: float = 0.5, output_dir: str | None = None) -> Splits:
  """Draws (and with ``output_dir`` writes) the splits; see the module docstring."""
  if not 0.0 < reliability_fraction < 1.0:
    raise ValueError(f"reliability_fraction must be in (0, 1), got {reliability_fraction}")
  labelled = greetings.load_evaluation_set(data_dir)
  groups: dict[str, list[int]] = {}
  for i, r in enumerate(labelled):
    groups.setdefault(query_key(r.query), []).append(i)
  keys = list(groups)
  random.Random(f"splits:{seed}").shuffle(keys)
  target = round(reliability_fraction * len(labelled))
  reliability_keys: set[str] = set()
  taken = 0
  for key in keys:
    if taken >= target:
      break
    reliability_keys.add(key)
    taken += len(groups[key])
  if not reliability_keys or len(reliability_keys) == len(keys):
    raise ValueError(f"{len(keys)} query groups cannot make two non-empty splits at "
                     f"reliability_fraction={reliability_fraction}")

  def rows(in_reliability: bool) -> list[dict[str, Any]]:
    return [{"query": r.query, "response": r.response, "label": r.label}
            for r in labelled if (query_key(r.query) in reliability_keys) == in_reliability]

  sft = _sft_records(data_dir)
  corpus = [r for r in sft if query_key(r["query"]) not in groups]
  sets = {"retrieval_corpus": corpus, "principle_examples": rows(False),
          "reliability_examples": rows(True)}
  texts = {name: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
           for name, records in sets.items()}
  manifest = {
      "seed": seed, "reliability_fraction": reliability_fraction, "data_dir": str(data_dir),
      "sizes": {name: len(records) for name, records in sets.items()},
      "query_groups": {"evaluation_set": len(keys), "with_duplicates": sum(
          len(g) > 1 for g in groups.values()), "reliability": len(reliability_keys),
                       "principle": len(keys) - len(reliability_keys)},
      "retrieval_corpus_dropped_overlap": len(sft) - len(corpus),
      "retrieval_corpus_click_num": bool(corpus) and all("click_num" in r for r in corpus),
      "sha256": {name: hashlib.sha256(t.encode("utf-8")).hexdigest() for name, t in texts.items()},
  }
  files: dict[str, str] = {}
  if output_dir is not None:
    split_dir = storage.join(output_dir, "splits")
    storage.makedirs(split_dir)
    for name, text in texts.items():
      files[name] = storage.join(split_dir, f"{name}.jsonl")
      storage.write_text(files[name], text)
    storage.write_text(storage.join(split_dir, "manifest.json"),
                       json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
  return Splits(**sets, manifest=manifest, files=files)
