"""`Tokenizer` over a local Hugging Face tokenizer directory (tokenizer.json +
tokenizer_config.json, chat template in the config or chat_template.jinja)."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

from rlaif_jax.tokenizers.base import Tokenizer

# Special tokens that end an assistant turn in common chat templates (Qwen, Llama 3, Phi, Gemma),
# and end-of-text tokens that an instruct tokenizer does not name as eos (Llama 3 base EOS).
STOP_TOKEN_NAMES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>",
                    "<|eom_id|>", "<|end_of_text|>")
_SENTINEL = "\ue000RLAIF_REPLY\ue001"


class HFTokenizer(Tokenizer):
  """Wraps `transformers.AutoTokenizer.from_pretrained(local_dir)` (never downloads).

  Without a pad token, pad = eos. `stop_ids` also takes the eos ids listed in the directory's
  generation_config.json (Qwen lists both <|im_end|> and <|endoftext|> there).
  """

  def __init__(self, local_dir: str | os.PathLike):
    import transformers  # Local: heavy import, only needed for HF tokenizers.
    self.path = pathlib.Path(local_dir)
    if not (self.path / "tokenizer.json").is_file():
      raise FileNotFoundError(f"{self.path}: no tokenizer.json; expected a Hugging Face "
                              "tokenizer directory (tokenizer.json + tokenizer_config.json)")
    self.hf = transformers.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
    if self.hf.eos_token_id is None:
      raise ValueError(f"{self.path / 'tokenizer_config.json'}: field 'eos_token' is not set")
    self._eot_id = self._find_eot_id()
    self._stop_ids = self._find_stop_ids()

  def _find_eot_id(self) -> int:
    """The first token the chat template emits after an assistant reply if it is special."""
    if not self.hf.chat_template:
      return self.hf.eos_token_id
    text = self.apply_chat_template(
      [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}],
      add_generation_prompt=False)
    if _SENTINEL not in text:
      return self.hf.eos_token_id
    after = self.encode(text.split(_SENTINEL, 1)[1])
    special = set(self.hf.all_special_ids) | set(self.hf.get_added_vocab().values())
    return after[0] if after and after[0] in special else self.hf.eos_token_id

  def _find_stop_ids(self) -> tuple[int, ...]:
    ids = [self.hf.eos_token_id, self._eot_id]
    added = self.hf.get_added_vocab()
    ids += [added[name] for name in STOP_TOKEN_NAMES if name in added]
    gen_config = self.path / "generation_config.json"
    if gen_config.is_file():
      eos = json.loads(gen_config.read_text(encoding="utf-8")).get("eos_token_id")
      ids += [eos] if isinstance(eos, int) else list(eos or [])
    return tuple(dict.fromkeys(int(i) for i in ids))

  def encode(self, text: str) -> list[int]:
    return list(self.hf.encode(text, add_special_tokens=False))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    if not self.hf.chat_template:
      raise ValueError(f"{self.path}: tokenizer has no chat_template (tokenizer_config.json or "
                       "chat_template.jinja); use a plain prompt template instead")
    return self.hf.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=add_generation_prompt)

  @property
  def eos_id(self) -> int:
    return int(self.hf.eos_token_id)

  @property
  def pad_id(self) -> int:
    pad = self.hf.pad_token_id
    return int(self.eos_id if pad is None else pad)

  @property
  def bos_id(self) -> int | None:
    bos = self.hf.bos_token_id
    return None if bos is None else int(bos)

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  @property
  def eot_id(self) -> int:
    return int(self._eot_id)

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return self._stop_ids
