"""Trains a small sentencepiece tokenizer on the greetings corpus (for tiny CPU models).

Settings that matter for Chinese greetings:
  * character_coverage=0.9995 keeps the ~2.4k common characters as pieces;
  * byte_fallback=True spells every other character (rare hanzi, emoji) as UTF-8 bytes, so any
    text round-trips exactly;
  * normalization "identity", no dummy prefix, no whitespace folding: decode(encode(x)) == x
    (NFKC would turn the full-width punctuation "，！" into ASCII);
  * input_sentence_size=0 (no sampling) and a single thread: the same corpus gives the same model.
"""
from __future__ import annotations

import os
import pathlib
from typing import Iterable

from rlaif_jax.tokenizers import sentencepiece_tok as spt

DEFAULT_VOCAB_SIZE = 4000


def train_sentencepiece(texts: Iterable[str], output_prefix: str | os.PathLike,
                        vocab_size: int = DEFAULT_VOCAB_SIZE, model_type: str = "bpe",
                        character_coverage: float = 0.9995) -> pathlib.Path:
  """Trains a sentencepiece model with the ids and chat pieces `SentencePieceTokenizer` expects.

  Args:
    texts: training texts (each may span lines).
    output_prefix: writes `{output_prefix}.model` and `{output_prefix}.vocab`.
    vocab_size: total pieces, including 4 control ids, 4 chat pieces and 256 byte pieces.
    model_type: "bpe" or "unigram".
    character_coverage: share of characters covered by character pieces (rest: bytes).

  Returns:
    Path of the `.model` file.
  """
  import sentencepiece as spm  # Local: only needed to train.
  if model_type not in ("bpe", "unigram"):
    raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
  corpus = [t for t in texts if t.strip()]
  if not corpus:
    raise ValueError("train_sentencepiece: no non-empty training texts")
  minimum = len(spt.CONTROL_IDS) + len(spt.CHAT_PIECES) + 256 + 1
  if vocab_size < minimum:
    raise ValueError(f"vocab_size={vocab_size} is below {minimum} (specials + 256 byte pieces)")
  prefix = pathlib.Path(output_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  try:
    spm.SentencePieceTrainer.Train(
      sentence_iterator=iter(corpus), model_prefix=str(prefix), vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
      pad_id=spt.CONTROL_IDS[spt.PAD], unk_id=spt.CONTROL_IDS[spt.UNK],
      bos_id=spt.CONTROL_IDS[spt.BOS], eos_id=spt.CONTROL_IDS[spt.EOS],
      pad_piece=spt.PAD, unk_piece=spt.UNK, bos_piece=spt.BOS, eos_piece=spt.EOS,
      user_defined_symbols=list(spt.CHAT_PIECES), normalization_rule_name="identity",
      add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
      allow_whitespace_only_pieces=True, max_sentence_length=1 << 16, input_sentence_size=0,
      shuffle_input_sentence=False, num_threads=1, minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"sentencepiece training into {prefix}.model failed: {e}") from e
  return prefix.with_name(prefix.name + ".model")
