"""Tiny random Hugging Face checkpoints with a real tokenizer, for tests (no downloads).

`make_tiny_hf_checkpoint(tmp_path, arch=...)` writes a directory that both `transformers` and
`rlaif_jax` load: config.json + model.safetensors + a byte-level BPE tokenizer (any text,
Chinese included, round-trips) with Qwen-style special tokens and chat template:

  <|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n

Ids: 0..255 bytes, then <|endoftext|> (eos, pad), <|im_start|>, <|im_end|> (end of turn).
`save_tiny_llama3_tokenizer` writes the same byte-level BPE with Llama 3 special tokens instead.
"""
from __future__ import annotations

import pathlib
from typing import Any

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOKENIZER_VOCAB = 256 + len(SPECIAL_TOKENS)
EOS_ID, IM_START_ID, IM_END_ID = 256, 257, 258
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
# A Llama-3-Instruct-style tokenizer: ids 0..255 bytes, then these (eos = <|eot_id|>, bos =
# <|begin_of_text|>, no pad; <|end_of_text|> is the base model's EOS).
LLAMA3_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                         "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>")
LLAMA3_IDS = {name: 256 + i for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)}
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
LLAMA3_ROPE_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                           high_freq_factor=4.0, original_max_position_embeddings=16)


def _byte_level_bpe(special_tokens):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: ord(c))
  tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(list(special_tokens))
  return tok


def save_tiny_tokenizer(directory: str | pathlib.Path) -> pathlib.Path:
  """Writes tokenizer.json + tokenizer_config.json (byte-level BPE, no merges) to `directory`."""
  import transformers
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_level_bpe(SPECIAL_TOKENS),
                                              eos_token="<|endoftext|>", pad_token="<|endoftext|>")
  fast.chat_template = CHAT_TEMPLATE
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(directory)
  return directory


def save_tiny_llama3_tokenizer(directory: str | pathlib.Path) -> pathlib.Path:
  """Like `save_tiny_tokenizer` with Llama-3-Instruct special tokens (LLAMA3_IDS) and template
  (eos <|eot_id|>, bos <|begin_of_text|>, no pad token, no generation_config.json)."""
  import transformers
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=_byte_level_bpe(LLAMA3_SPECIAL_TOKENS), bos_token="<|begin_of_text|>",
      eos_token="<|eot_id|>")
  fast.chat_template = LLAMA3_CHAT_TEMPLATE
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(directory)
  return directory


def make_tiny_hf_model(arch: str = "qwen2", tie: bool = True,
                       rope_scaling: dict[str, Any] | None = None,
                       vocab_size: int = TOKENIZER_VOCAB, seed: int = 0,
                       init_std: float = 0.15, **overrides: Any):
  """A random fp32 `transformers` model (eval mode). Larger-than-default init and random
  biases/norm scales make logits peaked and every tensor matter."""
  import torch
  import transformers
  base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
              tie_word_embeddings=tie, max_position_embeddings=512, initializer_range=init_std,
              eos_token_id=EOS_ID, pad_token_id=EOS_ID, bos_token_id=None)
  if rope_scaling is not None:
    base.update(rope_scaling=dict(rope_scaling), rope_theta=500000.0)
  base.update(overrides)
  if arch == "qwen2":
    cfg, cls = transformers.Qwen2Config(**base), transformers.Qwen2ForCausalLM
  elif arch == "llama":
    cfg, cls = transformers.LlamaConfig(**base), transformers.LlamaForCausalLM
  else:
    raise ValueError(f"arch must be 'qwen2' or 'llama', got {arch!r}")
  torch.manual_seed(seed)
  model = cls(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.copy_(torch.randn_like(p) * 0.1)
      elif "norm" in name:
        p.copy_(1.0 + torch.randn_like(p) * 0.1)
  return model


def make_tiny_hf_checkpoint(tmp_path: str | pathlib.Path, arch: str = "qwen2", tie: bool = True,
                            rope_scaling: dict[str, Any] | None = None,
                            vocab_size: int = TOKENIZER_VOCAB, seed: int = 0,
                            name: str | None = None, **overrides: Any) -> pathlib.Path:
  """Writes a tiny random checkpoint + tokenizer to tmp_path/name and returns that directory.

  Args:
    arch: "qwen2" (QKV bias) or "llama".
    tie: tie input embedding and LM head.
    rope_scaling: e.g. LLAMA3_ROPE_SCALING (also sets rope_theta=500000).
    vocab_size: model vocabulary (>= TOKENIZER_VOCAB; extra ids are never decoded by tests).
    overrides: any HF config field (hidden_size, num_hidden_layers, ...).
  """
  if vocab_size < TOKENIZER_VOCAB:
    raise ValueError(f"vocab_size={vocab_size} is below the tokenizer's {TOKENIZER_VOCAB} ids")
  directory = pathlib.Path(tmp_path) / (name or f"{arch}_{'tied' if tie else 'untied'}_{seed}")
  model = make_tiny_hf_model(arch, tie, rope_scaling, vocab_size, seed, **overrides)
  model.save_pretrained(directory)
  save_tiny_tokenizer(directory)
  return directory
