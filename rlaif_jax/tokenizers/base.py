"""The one tokenizer interface the rest of rlaif_jax uses (HF tokenizers and sentencepiece)."""
from __future__ import annotations

import abc
from typing import Sequence


class Tokenizer(abc.ABC):
  """Text <-> token ids plus the chat template and the special ids a sampler needs.

  `encode` never adds BOS/EOS; special-token strings that appear in the text (as produced by
  `apply_chat_template`) become their special ids.
  """

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without added special tokens."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids`; special tokens are dropped when `skip_special_tokens`."""

  @abc.abstractmethod
  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Renders [{role, content}, ...] as the model's prompt text.

    With `add_generation_prompt`, the text ends where the assistant's reply starts.
    """

  @property
  @abc.abstractmethod
  def eos_id(self) -> int:
    """End-of-sequence id."""

  @property
  @abc.abstractmethod
  def pad_id(self) -> int:
    """Padding id (eos when the tokenizer has no pad token)."""

  @property
  @abc.abstractmethod
  def bos_id(self) -> int | None:
    """Beginning-of-sequence id, or None."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids, added/special tokens included (every id < vocab_size)."""

  @property
  @abc.abstractmethod
  def eot_id(self) -> int:
    """The id that closes an assistant turn in the chat template (e.g. <|im_end|>, <|end|>);
    eos when the template has no dedicated one. Training appends it after chat responses."""

  @property
  @abc.abstractmethod
  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end generation: eos, eot, and e.g. <|im_end|>/<|eot_id|> when present."""

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, bos_id={self.bos_id}, stop_ids={self.stop_ids})")
