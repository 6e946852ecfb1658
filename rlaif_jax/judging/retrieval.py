"""The curator's few-shot example retriever (the paper's Retrieval agent) and its two indexes.

``EmbeddingIndex``: sentence-transformers embeddings (normalised, cosine) searched with a faiss
inner-product index, the authors' stack; needs the optional extra ``pip install
rlaif_jax[retrieval]``. The model is a hub id or a local SentenceTransformer directory
(``DEFAULT_EMBEDDING_MODEL`` unless given).

``BM25Index``: BM25 over character n-grams (NumPy only), the fallback. Chinese requests have no
spaces, so documents are bags of character n-grams (unigrams and bigrams by default) after
dropping punctuation and whitespace. The index stores, for every n-gram, its postings
(document ids) with precomputed BM25 term weights, so scoring a query is one ``np.bincount``
over the postings of its n-grams.

``ExampleRetriever(examples, backend="auto")`` uses embeddings when the extra is installed and
BM25 otherwise, and logs which. When every example has a numeric ``click_num`` (none of the
paper's released files do), the ``rerank_pool`` most similar examples are re-ordered by
``click_num`` (descending, ties by similarity) before the top k are taken.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import pathlib
import unicodedata
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "embedding", "bm25")
# Our choice (a small Chinese sentence-embedding model); the paper does not name its model.
DEFAULT_EMBEDDING_MODEL = "BAAI/bge-small-zh-v1.5"


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


class EmbeddingIndex:
  """Cosine similarity of sentence-transformers embeddings, searched with faiss (exact)."""

  def __init__(self, documents: Sequence[str], model: str, *, batch_size: int = 64):
    from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel
    import faiss  # pylint: disable=import-outside-toplevel
    self.model_name, self.batch_size, self.num_docs = model, batch_size, len(documents)
    self.encoder = SentenceTransformer(model)
    embeddings = self._encode(list(documents))
    self.faiss_index = faiss.IndexFlatIP(embeddings.shape[1])
    self.faiss_index.add(embeddings)

  def _encode(self, texts: list[str]) -> np.ndarray:
    """float32[len(texts), dim], L2-normalised rows."""
    out = self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(out, dtype=np.float32)

  def top_k(self, query: str, k: int) -> list[tuple[int, float]]:
    """Up to k ``(doc_id, cosine)`` pairs, most similar first."""
    if self.num_docs == 0 or k <= 0:
      return []
    scores, ids = self.faiss_index.search(self._encode([query]), min(k, self.num_docs))
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def embedding_extra_available() -> bool:
  """Whether sentence-transformers and faiss import (the ``retrieval`` extra)."""
  try:
    import faiss  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import sentence_transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def model_available_locally(model: str) -> bool:
  """Whether `model` is a local directory or a hub id already in the local hub cache."""
  if pathlib.Path(model).expanduser().is_dir():
    return True
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return any(isinstance(huggingface_hub.try_to_load_from_cache(model, name), str)
             for name in ("modules.json", "config.json"))


class ExampleRetriever:
  """Finds good examples whose query resembles a new query (the paper's Retrieval agent).

  Args:
    examples: dicts with str ``query`` and ``response`` (optional ``label``, ``click_num``).
    backend: "embedding" (needs the ``retrieval`` extra, else ImportError), "bm25", or "auto"
      (embedding when the extra imports, else BM25; logged either way).
    model: embedding model, hub id or local directory (default ``DEFAULT_EMBEDDING_MODEL``);
      refused with the BM25 backend.
    rerank_pool: candidates re-ordered by ``click_num`` when every example has one (>= k used).
  """

  def __init__(self, examples: Sequence[dict[str, Any]], *, backend: str = "bm25",
               model: str | None = None, ngram_range: tuple[int, int] = (1, 2),
               rerank_pool: int = 20):
    if backend not in BACKENDS:
      raise ValueError(f"retrieval backend must be one of {BACKENDS}, got {backend!r}")
    for i, ex in enumerate(examples):
      if not isinstance(ex.get("query"), str) or not isinstance(ex.get("response"), str):
        raise ValueError(f"example {i} needs str 'query' and 'response', got keys {sorted(ex)}")
    self.examples = list(examples)
    has_clicks = ["click_num" in ex for ex in self.examples]
    if any(has_clicks) and not all(has_clicks):
      odd = has_clicks.index(not has_clicks[0])
      raise ValueError(f"example {odd} {'has' if has_clicks[odd] else 'lacks'} 'click_num' "
                       "unlike example 0: give it to every example or to none")
    for i, ex in enumerate(self.examples):
      if "click_num" in ex and (isinstance(ex["click_num"], bool)
                                or not isinstance(ex["click_num"], (int, float))):
        raise ValueError(f"example {i}: 'click_num' must be a number, got {ex['click_num']!r}")
    self.rerank_by_clicks = bool(self.examples) and all(has_clicks)
    self.rerank_pool = rerank_pool
    if backend == "bm25" and model is not None:
      raise ValueError("a retrieval model was given but the backend is bm25")
    if backend == "auto":
      backend = self._auto_backend(model)
    queries = [ex["query"] for ex in self.examples]
    if backend == "embedding" and not embedding_extra_available():
      raise ImportError("the embedding retriever needs sentence-transformers and faiss "
                        "(pip install 'rlaif_jax[retrieval]'), or use backend='bm25'")
    if backend == "embedding":
      self.model = model or DEFAULT_EMBEDDING_MODEL
      self.index: EmbeddingIndex | BM25Index = EmbeddingIndex(queries, self.model)
      self.settings = f"embedding={self.model}"
    else:
      self.model = None
      self.index = BM25Index(queries, ngram_range=ngram_range)
      self.settings = f"bm25 ngram_range={ngram_range}"
    self.backend = backend
    logger.info("retrieval: %s over %d examples%s", self.settings, len(self.examples),
                ", reranked by click_num" if self.rerank_by_clicks else "")

  @staticmethod
  def _auto_backend(model: str | None) -> str:
    """embedding when the extra imports and the model is given or already local, else bm25."""
    if not embedding_extra_available():
      if model is not None:
        raise ImportError(f"retrieval model {model!r} needs sentence-transformers and faiss "
                          "(pip install 'rlaif_jax[retrieval]')")
      logger.warning("retrieval: sentence-transformers/faiss not installed (pip install "
                     "'rlaif_jax[retrieval]'); falling back to BM25 over character n-grams")
      return "bm25"
    if model is None and not model_available_locally(DEFAULT_EMBEDDING_MODEL):
      # Never a surprise download (it hangs without network): naming a model fetches it.
      logger.warning("retrieval: %s is not in the local hub cache; falling back to BM25 "
                     "(pass --retrieval_model=%s to download it, or a local directory)",
                     DEFAULT_EMBEDDING_MODEL, DEFAULT_EMBEDDING_MODEL)
      return "bm25"
    return "embedding"

  def __len__(self) -> int:
    return len(self.examples)

  def __repr__(self) -> str:  # stable across runs: it feeds MultiAgentCurator.fingerprint
    rows = [[ex["query"], ex["response"], ex.get("label")]
            + ([ex["click_num"]] if self.rerank_by_clicks else []) for ex in self.examples]
    sha = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()[:12]
    if self.backend == "bm25" and not self.rerank_by_clicks:  # as before embeddings existed
      return (f"ExampleRetriever(examples={len(self.examples)}, sha={sha}, "
              f"ngram_range={self.index.ngram_range})")
    return (f"ExampleRetriever(examples={len(self.examples)}, sha={sha}, {self.settings}, "
            f"click_rerank_pool={self.rerank_pool if self.rerank_by_clicks else None})")

  def retrieve(self, query: str, k: int, *, exclude_response: str | None = None) -> list[dict]:
    """Top-k examples (copies with a ``score``), skipping the candidate itself if it is pooled."""
    wanted = k + 1 if exclude_response is not None else k
    hits = self.index.top_k(query, max(wanted, self.rerank_pool) if self.rerank_by_clicks
                            else wanted)
    if self.rerank_by_clicks:  # stable: equal clicks keep the similarity order
      hits = sorted(hits, key=lambda hit: -self.examples[hit[0]]["click_num"])
    found = []
    for doc_id, score in hits:
      ex = self.examples[doc_id]
      if exclude_response is not None and ex["response"] == exclude_response \
          and ex["query"] == query:
        continue
      found.append({"query": ex["query"], "response": ex["response"], "label": ex.get("label"),
                    "score": round(score, 4),
                    **({"click_num": ex["click_num"]} if self.rerank_by_clicks else {})})
    return found[:k]
