"""Preference pairs -> padded [2B, T] batches (chosen rows first), and length-balanced subsets."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from rlaif_jax.data import formatting
from rlaif_jax.data.greetings import PreferencePair
from rlaif_jax.tokenizers.base import Tokenizer


def encode_pairs(tok: Tokenizer, pairs: Sequence[PreferencePair], fmt: formatting.FormatConfig,
                 stats: formatting.FormattingStats | None = None) -> list[dict[str, np.ndarray]]:
  """Each pair -> {chosen: int32[Tc], rejected: int32[Tr]} (prompt + response + end id)."""
  out = []
  for p in pairs:
    c = formatting.encode_sft_example(tok, p.prompt, p.chosen, fmt, stats)["tokens"]
    r = formatting.encode_sft_example(tok, p.prompt, p.rejected, fmt, stats)["tokens"]
    out.append({"chosen": c, "rejected": r})
  return out


def pair_batch(encoded: Sequence[dict[str, np.ndarray]], buckets: Sequence[int],
               pad_id: int) -> dict[str, np.ndarray]:
  """Stacks B pairs as 2B right-padded rows: rows [0, B) chosen, rows [B, 2B) rejected."""
  rows = [{"tokens": e["chosen"]} for e in encoded] + [{"tokens": e["rejected"]} for e in encoded]
  batch = formatting.pad_batch(rows, buckets, pad_id)
  batch.pop("loss_mask")
  return batch


def pair_batches(encoded: Sequence[dict[str, np.ndarray]], batch_size: int, *,
                 buckets: Sequence[int], pad_id: int, seed: int, start_batch: int = 0,
                 num_epochs: int | None = None, shuffle: bool = True,
                 drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Epoch-aware pair batches; the order is a pure function of (seed, epoch) so resume is exact."""
  per_epoch = formatting.batches_per_epoch(len(encoded), batch_size, drop_remainder)
  if per_epoch == 0:
    raise ValueError(f"{len(encoded)} pairs make no batch of {batch_size}")
  step = start_batch
  while num_epochs is None or step < num_epochs * per_epoch:
    epoch, b = divmod(step, per_epoch)
    order = (np.random.default_rng([seed, epoch]).permutation(len(encoded)) if shuffle
             else np.arange(len(encoded)))
    rows = order[b * batch_size:(b + 1) * batch_size]
    yield pair_batch([encoded[i] for i in rows], buckets, pad_id)
    step += 1


def length_balanced(pairs: Sequence[PreferencePair], seed: int = 0) -> list[PreferencePair]:
  """All pairs whose chosen response is not longer, plus as many random pairs where it is.

  In the paper's data the chosen greeting is longer in ~96% of pairs; on this subset "longer
  wins" is right half the time, so a model trained on it cannot score well by counting.
  """
  not_longer = [p for p in pairs if len(p.chosen) <= len(p.rejected)]
  longer = [p for p in pairs if len(p.chosen) > len(p.rejected)]
  rng = np.random.default_rng(seed)
  keep = rng.choice(len(longer), size=min(len(longer), len(not_longer)), replace=False)
  mixed = not_longer + [longer[i] for i in keep]
  return [mixed[i] for i in rng.permutation(len(mixed))]
