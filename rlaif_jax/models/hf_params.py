"""The map between Hugging Face Qwen2/Llama tensor names and our NNX parameter paths.

Each rule is (HF regex, NNX path template, to_ours, to_hf). HF linear weights are [out, in]; ours
are [in, out] with the head dimension split out for attention.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from rlaif_jax.models.config import ModelConfig

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # regex with an optional (?P<i>\d+) layer group
  ours: str  # dotted path with {i}
  to_ours: Callable[[Array, ModelConfig], Array]
  to_hf: Callable[[Array, ModelConfig], Array]


def _ident(x, cfg):
  return x


def _t(x, cfg):
  return x.T


def _heads_in(n_attr):
  def to_ours(x, cfg):  # [N*E, D] -> [D, N, E]
    return x.T.reshape(cfg.hidden_size, getattr(cfg, n_attr), cfg.head_dim)

  def to_hf(x, cfg):  # [D, N, E] -> [N*E, D]
    return x.reshape(cfg.hidden_size, -1).T
  return to_ours, to_hf


def _bias_in(n_attr):
  def to_ours(x, cfg):
    return x.reshape(getattr(cfg, n_attr), cfg.head_dim)

  def to_hf(x, cfg):
    return x.reshape(-1)
  return to_ours, to_hf


def _o_to_ours(x, cfg):  # [D, H*E] -> [H, E, D]
  return x.T.reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size)


def _o_to_hf(x, cfg):  # [H, E, D] -> [D, H*E]
  return x.reshape(-1, cfg.hidden_size).T


_L = r"model\.layers\.(?P<i>\d+)\."
RULES = (
    Rule(r"model\.embed_tokens\.weight", "embed", _ident, _ident),
    Rule(r"model\.norm\.weight", "final_norm.scale", _ident, _ident),
    Rule(r"lm_head\.weight", "lm_head", _t, _t),
    Rule(_L + r"input_layernorm\.weight", "layers.{i}.input_norm.scale", _ident, _ident),
    Rule(_L + r"post_attention_layernorm\.weight", "layers.{i}.post_attn_norm.scale", _ident,
         _ident),
    Rule(_L + r"self_attn\.q_proj\.weight", "layers.{i}.attn.wq", *_heads_in("num_heads")),
    Rule(_L + r"self_attn\.k_proj\.weight", "layers.{i}.attn.wk", *_heads_in("num_kv_heads")),
    Rule(_L + r"self_attn\.v_proj\.weight", "layers.{i}.attn.wv", *_heads_in("num_kv_heads")),
    Rule(_L + r"self_attn\.q_proj\.bias", "layers.{i}.attn.bq", *_bias_in("num_heads")),
    Rule(_L + r"self_attn\.k_proj\.bias", "layers.{i}.attn.bk", *_bias_in("num_kv_heads")),
    Rule(_L + r"self_attn\.v_proj\.bias", "layers.{i}.attn.bv", *_bias_in("num_kv_heads")),
    Rule(_L + r"self_attn\.o_proj\.weight", "layers.{i}.attn.wo", _o_to_ours, _o_to_hf),
    Rule(_L + r"mlp\.gate_proj\.weight", "layers.{i}.mlp.w_gate", _t, _t),
    Rule(_L + r"mlp\.up_proj\.weight", "layers.{i}.mlp.w_up", _t, _t),
    Rule(_L + r"mlp\.down_proj\.weight", "layers.{i}.mlp.w_down", _t, _t),
)
_COMPILED = [(re.compile(r.hf + r"\Z"), r) for r in RULES]
# Buffers that some exported checkpoints carry and that are recomputed, never loaded.
IGNORED_HF = re.compile(r".*rotary_emb\.inv_freq\Z")


def hf_to_ours(name: str) -> tuple[str, Rule] | None:
  """'model.layers.3.mlp.up_proj.weight' -> ('layers.3.mlp.w_up', rule); None if unknown."""
  for pattern, rule in _COMPILED:
    m = pattern.match(name)
    if m:
      return rule.ours.format(**m.groupdict()), rule
  return None


def ours_to_hf(path: str) -> tuple[str, Rule]:
  """'layers.3.mlp.w_up' -> ('model.layers.3.mlp.up_proj.weight', rule)."""
  for rule in RULES:
    pattern = re.escape(rule.ours).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z"
    m = re.match(pattern, path)
    if m:
      hf = rule.hf.replace(r"(?P<i>\d+)", m.groupdict().get("i", "")).replace("\\", "")
      return hf, rule
  raise KeyError(f"parameter {path!r} has no Hugging Face name")
