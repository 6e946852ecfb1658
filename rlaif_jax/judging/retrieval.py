"""BM25 over character n-grams (NumPy only) and the curator's few-shot example retriever.

Chinese requests have no spaces, so documents are bags of character n-grams (unigrams and
bigrams by default) after dropping punctuation and whitespace. The index stores, for every
n-gram, its postings (document ids) with precomputed BM25 term weights, so scoring a query is
one ``np.bincount`` over the postings of its n-grams.
"""
from __future__ import annotations

import collections
import hashlib
import json
import unicodedata
from typing import Any, Sequence

import numpy as np


def normalise_text(text: str) -> str:
  """Lower-cased NFKC text without punctuation, symbols or whitespace."""
  text = unicodedata.normalize("NFKC", text).lower()
  return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PZSC")


def char_ngrams(text: str, ngram_range: tuple[int, int] = (1, 2)) -> list[str]:
  """All character n-grams of the normalised text, lengths lo..hi inclusive."""
  lo, hi = ngram_range
  if not 1 <= lo <= hi:
    raise ValueError(f"ngram_range must satisfy 1 <= lo <= hi, got {ngram_range}")
  text = normalise_text(text)
  return [text[i:i + n] for n in range(lo, hi + 1) for i in range(len(text) - n + 1)]


class BM25Index:
  """Okapi BM25 (Lucene idf, always >= 0) over character n-grams."""

  def __init__(self, documents: Sequence[str], *, ngram_range: tuple[int, int] = (1, 2),
               k1: float = 1.5, b: float = 0.75):
    if k1 < 0 or not 0.0 <= b <= 1.0:
      raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    self.ngram_range, self.k1, self.b = ngram_range, k1, b
    self.num_docs = len(documents)
    counts = [collections.Counter(char_ngrams(d, ngram_range)) for d in documents]
    doc_len = np.array([sum(c.values()) for c in counts], dtype=np.float64)
    avg_len = float(doc_len.mean()) if self.num_docs and doc_len.mean() > 0 else 1.0
    postings: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for doc_id, c in enumerate(counts):
      for term, tf in c.items():
        postings[term].append((doc_id, tf))
    self._vocab: dict[str, int] = {}
    offsets, doc_ids, weights = [0], [], []
    for term, plist in postings.items():
      ids = np.array([d for d, _ in plist], dtype=np.int64)
      tf = np.array([t for _, t in plist], dtype=np.float64)
      df = len(plist)
      idf = np.log1p((self.num_docs - df + 0.5) / (df + 0.5))
      norm = k1 * (1.0 - b + b * doc_len[ids] / avg_len)
      self._vocab[term] = len(offsets) - 1
      doc_ids.append(ids)
      weights.append(idf * tf * (k1 + 1.0) / (tf + norm))
      offsets.append(offsets[-1] + df)
    self._offsets = np.array(offsets, dtype=np.int64)
    self._doc_ids = np.concatenate(doc_ids) if doc_ids else np.zeros(0, np.int64)
    self._weights = np.concatenate(weights) if weights else np.zeros(0, np.float64)

  def scores(self, query: str) -> np.ndarray:
    """float32[num_docs] BM25 scores (each query n-gram counted once per occurrence)."""
    terms = [self._vocab[t] for t in char_ngrams(query, self.ngram_range) if t in self._vocab]
    if not terms or self.num_docs == 0:
      return np.zeros(self.num_docs, dtype=np.float32)
    slices = [np.arange(self._offsets[t], self._offsets[t + 1]) for t in terms]
    idx = np.concatenate(slices)
    return np.bincount(self._doc_ids[idx], weights=self._weights[idx],
                       minlength=self.num_docs).astype(np.float32)

  def top_k(self, query: str, k: int) -> list[tuple[int, float]]:
    """Up to k ``(doc_id, score)`` with score > 0, best first (ties: lower doc_id first)."""
    s = self.scores(query)
    order = np.lexsort((np.arange(s.size), -s))
    return [(int(i), float(s[i])) for i in order[:k] if s[i] > 0]


class ExampleRetriever:
  """Finds labelled examples whose query resembles a new query (the paper's Retrieval agent)."""

  def __init__(self, examples: Sequence[dict[str, Any]], *, ngram_range: tuple[int, int] = (1, 2)):
    for i, ex in enumerate(examples):
      if not isinstance(ex.get("query"), str) or not isinstance(ex.get("response"), str):
        raise ValueError(f"example {i} needs str 'query' and 'response', got keys {sorted(ex)}")
    self.examples = list(examples)
    self.index = BM25Index([ex["query"] for ex in self.examples], ngram_range=ngram_range)

  def __len__(self) -> int:
    return len(self.examples)

  def __repr__(self) -> str:  # stable across runs: it feeds MultiAgentCurator.fingerprint
    pool = json.dumps([[ex["query"], ex["response"], ex.get("label")] for ex in self.examples],
                      ensure_ascii=False)
    return (f"ExampleRetriever(examples={len(self.examples)}, "
            f"sha={hashlib.sha256(pool.encode('utf-8')).hexdigest()[:12]}, "
            f"ngram_range={self.index.ngram_range})")

  def retrieve(self, query: str, k: int, *, exclude_response: str | None = None) -> list[dict]:
    """Top-k examples (copies with a ``score``), skipping the candidate itself if it is pooled."""
    found = []
    for doc_id, score in self.index.top_k(query, k + 1 if exclude_response is not None else k):
      ex = self.examples[doc_id]
      is_candidate = ex["response"] == exclude_response and ex["query"] == query
      if exclude_response is not None and is_candidate:
        continue
      found.append({"query": ex["query"], "response": ex["response"], "label": ex.get("label"),
                    "score": round(score, 4)})
    return found[:k]
