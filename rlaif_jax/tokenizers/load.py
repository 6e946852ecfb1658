"""`load_tokenizer(path)`: picks the `Tokenizer` implementation from what is on disk."""
from __future__ import annotations

import os
import pathlib

from rlaif_jax import hub
from rlaif_jax.tokenizers.base import Tokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """A directory with tokenizer.json -> HFTokenizer; a `.model` file -> SentencePieceTokenizer.

  Raises:
    FileNotFoundError: `path` is neither (the message says what was expected).
  """
  path = hub.resolve_model_dir(path) if hub.looks_like_hub_id(path) else pathlib.Path(path).expanduser()
  if path.is_dir() and (path / "tokenizer.json").is_file():
    from rlaif_jax.tokenizers.hf import HFTokenizer
    return HFTokenizer(path)
  if path.is_dir() and (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").exists():
    path = path / "tokenizer.model"  # an exported tiny model: sentencepiece next to the weights
  if path.is_file() and path.suffix == ".model":
    from rlaif_jax.tokenizers.sentencepiece_tok import SentencePieceTokenizer
    return SentencePieceTokenizer(path)
  raise FileNotFoundError(
    f"{path}: not a tokenizer; expected a Hugging Face directory containing tokenizer.json or a "
    "sentencepiece .model file (train one with `python -m launch.train_tokenizer`)")
