"""Character-level diversity of generated texts: distinct-n, self-BLEU, novelty against the
SFT data, the share of empty responses, length statistics.

Chinese greetings have no word boundaries, so every metric here works on characters. Whitespace
(line breaks between the lines of a greeting) is dropped first: it carries no content. A text
with no non-whitespace character is *empty*: it counts in `empty_rate` and in the length
statistics, and is left out of self-BLEU (as hypothesis and as reference), so a policy that
emits empty responses cannot look diverse by it.
"""
from __future__ import annotations

import collections
import math
from typing import Iterable, Sequence

import numpy as np

NGramCounts = collections.Counter


def char_tokens(text: str) -> list[str]:
  """The non-whitespace characters of `text`, in order."""
  return [c for c in text if not c.isspace()]


def char_length(text: str) -> int:
  """Number of non-whitespace characters."""
  return len(char_tokens(text))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
  """All contiguous n-grams of `tokens` (empty when fewer than n tokens)."""
  return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
  """Corpus-level distinct-n over characters: unique n-grams / total n-grams across all texts.

  Returns:
    value in (0, 1]; NaN when the texts hold no n-gram at all.
  """
  unique: set[tuple[str, ...]] = set()
  total = 0
  for text in texts:
    grams = ngrams(char_tokens(text), n)
    unique.update(grams)
    total += len(grams)
  return len(unique) / total if total else math.nan


def _sample(texts: Sequence[str], max_texts: int | None, seed: int) -> list[str]:
  """`texts`, or `max_texts` of them drawn reproducibly without replacement if there are more."""
  if max_texts is None or len(texts) <= max_texts:
    return list(texts)
  picked = np.random.default_rng(seed).choice(len(texts), size=max_texts, replace=False)
  return [texts[i] for i in sorted(picked)]


def _max_counts_excluding_self(counts: list[NGramCounts]) -> list[dict[tuple[str, ...], int]]:
  """For each text i and each of its n-grams g: max over the other texts j != i of count_j(g).

  Linear time: per n-gram keep the largest count, its owner, and the second largest count.
  """
  best: dict[tuple[str, ...], tuple[int, int, int]] = {}  # gram -> (top, owner, runner_up)
  for owner, counter in enumerate(counts):
    for gram, c in counter.items():
      top, top_owner, second = best.get(gram, (0, -1, 0))
      if c > top:
        best[gram] = (c, owner, top)
      else:
        best[gram] = (top, top_owner, max(second, c))
  result = []
  for i, counter in enumerate(counts):
    others = {}
    for gram in counter:
      top, owner, second = best[gram]
      others[gram] = second if owner == i else top
    result.append(others)
  return result


def _closest_reference_length(hyp_len: int, lengths: np.ndarray, skip: int) -> int:
  """Length of the reference closest to `hyp_len` (the shorter on ties), excluding index `skip`."""
  others = np.delete(lengths, skip)
  order = np.lexsort((others, np.abs(others - hyp_len)))
  return int(others[order[0]])


def self_bleu(
    texts: Sequence[str],
    max_n: int = 4,
    max_texts: int | None = 500,
    seed: int = 0,
    epsilon: float = 0.1,
) -> float:
  """Mean sentence BLEU-`max_n` of each text against all the others as references (characters).

  Per hypothesis: clipped n-gram precisions p_1..p_max_n (a count is clipped at its maximum over
  the references), a zero match count replaced by `epsilon` (NLTK's smoothing method 1), geometric
  mean with uniform weights, times the brevity penalty against the closest reference length.
  Higher = less diverse; identical texts give 1.

  Empty texts (no non-whitespace character) are left out first, as hypotheses and as
  references: an empty response has no n-gram to be precise about, and scoring it 0 would make
  a policy that emits empties look diverse (report them with `empty_rate`).

  Args:
    texts: at least two texts.
    max_n: highest n-gram order.
    max_texts: evaluate at most this many non-empty texts, sampled with `seed` (cost is linear
      in total n-grams plus O(N^2) integers for reference lengths); None = all.
    epsilon: smoothing numerator for orders without any match.
  Returns:
    self-BLEU in [0, 1]; NaN when fewer than two non-empty texts remain.
  """
  if len(texts) < 2:
    raise ValueError(f"self-BLEU needs at least two texts, got {len(texts)}.")
  non_empty = [t for t in texts if char_tokens(t)]
  if len(non_empty) < 2:
    return math.nan
  sample = _sample(non_empty, max_texts, seed)
  tokens = [char_tokens(t) for t in sample]
  lengths = np.array([len(t) for t in tokens])
  clip_by_order = []
  counts_by_order = []
  for n in range(1, max_n + 1):
    counts = [collections.Counter(ngrams(t, n)) for t in tokens]
    counts_by_order.append(counts)
    clip_by_order.append(_max_counts_excluding_self(counts))
  scores = []
  for i, hyp in enumerate(tokens):
    log_precision, no_unigram_match = 0.0, False
    for n in range(max_n):
      counts = counts_by_order[n][i]
      total = sum(counts.values())
      matched = sum(min(c, clip_by_order[n][i][g]) for g, c in counts.items())
      if n == 0 and not matched:
        no_unigram_match = True  # NLTK's sentence_bleu: 0 before any smoothing
        break
      log_precision += math.log((matched if matched else epsilon) / max(total, 1)) / max_n
    if no_unigram_match:
      scores.append(0.0)
      continue
    ref_len = _closest_reference_length(len(hyp), lengths, i)
    brevity = 1.0 if len(hyp) > ref_len else math.exp(1.0 - ref_len / len(hyp))
    scores.append(brevity * math.exp(log_precision))
  return float(np.mean(scores))


def length_stats(texts: Sequence[str]) -> dict[str, float]:
  """Character-length summary: {"mean_chars", "median_chars", "std_chars", "min_chars",
  "max_chars", "n"} over non-whitespace characters; NaNs when there are no texts."""
  lengths = np.array([char_length(t) for t in texts], dtype=np.float64)
  if lengths.size == 0:
    nan = math.nan
    return {"mean_chars": nan, "median_chars": nan, "std_chars": nan, "min_chars": nan,
            "max_chars": nan, "n": 0}
  return {
      "mean_chars": float(lengths.mean()),
      "median_chars": float(np.median(lengths)),
      "std_chars": float(lengths.std()),
      "min_chars": float(lengths.min()),
      "max_chars": float(lengths.max()),
      "n": int(lengths.size),
  }


def empty_rate(texts: Sequence[str]) -> float:
  """Share of texts with no non-whitespace character; NaN when there are no texts."""
  if not texts:
    return math.nan
  return sum(1 for t in texts if not char_tokens(t)) / len(texts)


def char_ngram_set(texts: Iterable[str], n: int = 4) -> set[str]:
  """Every character n-gram (whitespace dropped, within one text) of `texts`, as strings."""
  grams: set[str] = set()
  for text in texts:
    chars = "".join(char_tokens(text))
    grams.update(chars[i:i + n] for i in range(len(chars) - n + 1))
  return grams


def novelty_n(texts: Sequence[str], reference: set[str] | Iterable[str], n: int = 4) -> float:
  """Share of the character n-grams of `texts` that never occur in the reference texts.

  Occurrences are counted (a novel n-gram generated twice counts twice), over non-whitespace
  characters within each text, as `distinct_n` counts them. `novelty_n(generations,
  sft_responses, 4)` is the evaluation's novelty-4: how much of what a policy writes is not
  copied 4-gram by 4-gram from the SFT data.

  Args:
    texts: generated texts.
    reference: the reference texts, or their `char_ngram_set(..., n)` (reused across calls).
    n: n-gram order.
  Returns:
    value in [0, 1]; NaN when the texts hold no n-gram at all.
  """
  known = reference if isinstance(reference, set) else char_ngram_set(reference, n)
  total = novel = 0
  for text in texts:
    chars = "".join(char_tokens(text))
    for i in range(len(chars) - n + 1):
      total += 1
      novel += chars[i:i + n] not in known
  return novel / total if total else math.nan


def diversity_report(
    texts: Sequence[str], max_texts: int | None = 500, seed: int = 0,
    novelty_reference: set[str] | None = None
) -> dict[str, float]:
  """distinct-1, distinct-2, self-BLEU-4 (over the non-empty texts), the empty-response rate,
  novelty-4 against `novelty_reference` (a `char_ngram_set(..., 4)` of the SFT responses; NaN
  without one) and length statistics of one set of generations."""
  return {
      "distinct_1": distinct_n(texts, 1),
      "distinct_2": distinct_n(texts, 2),
      "self_bleu": self_bleu(texts, max_texts=max_texts, seed=seed) if len(texts) > 1 else math.nan,
      "empty_rate": empty_rate(texts),
      "novelty_4": (novelty_n(texts, novelty_reference, 4) if novelty_reference is not None
                    else math.nan),
      **length_stats(texts),
  }
