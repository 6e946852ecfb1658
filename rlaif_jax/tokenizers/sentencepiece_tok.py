"""`Tokenizer` over a sentencepiece model trained by `rlaif_jax.tokenizers.train` (tiny configs).

Ids: <pad>=0, <unk>=1, <s>=2, </s>=3, then the user-defined chat pieces <|system|>, <|user|>,
<|assistant|>, <|end|>. Chat template (plain, no whitespace added):

  [<|system|>{system}<|end|>]<|user|>{content}<|end|><|assistant|>{reply}<|end|>...

so a generation prompt ends with "<|assistant|>" and a reply ends with <|end|> (`eot_id`).
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

from rlaif_jax.tokenizers.base import Tokenizer

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
CONTROL_IDS = {PAD: 0, UNK: 1, BOS: 2, EOS: 3}
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_PIECES = (SYSTEM, USER, ASSISTANT, END)
_ROLE_PIECES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


class SentencePieceTokenizer(Tokenizer):
  """Wraps a `.model` file; checks it has the ids and chat pieces above."""

  def __init__(self, model_file: str | os.PathLike):
    import sentencepiece as spm  # Local: only needed for sentencepiece models.
    self.path = pathlib.Path(model_file)
    if not self.path.is_file():
      raise FileNotFoundError(f"{self.path}: sentencepiece model file not found")
    self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
    for piece, expected in CONTROL_IDS.items():
      if self.sp.IdToPiece(expected) != piece:
        raise ValueError(f"{self.path}: id {expected} is {self.sp.IdToPiece(expected)!r}, "
                         f"expected {piece!r}; train the model with "
                         "rlaif_jax.tokenizers.train.train_sentencepiece")
    self._piece_ids = {}
    for piece in CHAT_PIECES:
      pid = self.sp.PieceToId(piece)
      # A user-defined piece is matched in raw text, so the string encodes to exactly its id.
      if pid == CONTROL_IDS[UNK] or self.sp.EncodeAsIds(piece) != [pid]:
        raise ValueError(f"{self.path}: missing user-defined piece {piece!r}; train the model "
                         "with rlaif_jax.tokenizers.train.train_sentencepiece")
      self._piece_ids[piece] = pid
    self._special_ids = frozenset(
      [CONTROL_IDS[PAD], CONTROL_IDS[BOS], CONTROL_IDS[EOS], *self._piece_ids.values()])

  def encode(self, text: str) -> list[int]:
    return list(self.sp.EncodeAsIds(text))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    parts: list[str] = []
    run: list[int] = []
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"id {i} out of range for {self.path} (vocab_size {self.vocab_size})")
      if i in self._special_ids:
        # Decode ordinary runs separately so special pieces keep their place in the text.
        parts.append(self.sp.DecodeIds(run))
        run = []
        if not skip_special_tokens:
          parts.append(self.sp.IdToPiece(i))
      else:
        run.append(i)
    parts.append(self.sp.DecodeIds(run))
    return "".join(parts)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    parts = []
    for n, message in enumerate(messages):
      role = message.get("role")
      if role not in _ROLE_PIECES:
        raise ValueError(f"messages[{n}]: role {role!r} is not one of {sorted(_ROLE_PIECES)}")
      if role == "system" and n != 0:
        raise ValueError(f"messages[{n}]: a system message must come first")
      content = message.get("content")
      if not isinstance(content, str):
        raise ValueError(f"messages[{n}]: content must be a string, got {type(content).__name__}")
      parts.append(f"{_ROLE_PIECES[role]}{content}{END}")
    if add_generation_prompt:
      parts.append(ASSISTANT)
    return "".join(parts)

  def piece_id(self, piece: str) -> int:
    """Id of one of the chat pieces (SYSTEM, USER, ASSISTANT, END)."""
    return self._piece_ids[piece]

  @property
  def eos_id(self) -> int:
    return CONTROL_IDS[EOS]

  @property
  def pad_id(self) -> int:
    return CONTROL_IDS[PAD]

  @property
  def bos_id(self) -> int | None:
    return CONTROL_IDS[BOS]

  @property
  def vocab_size(self) -> int:
    return int(self.sp.GetPieceSize())

  @property
  def eot_id(self) -> int:
    return self._piece_ids[END]

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return (self.eos_id, self.eot_id)
