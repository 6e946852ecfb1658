"""Model configuration: a frozen dataclass, named presets, and a constructor from HF `config.json`."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from rlaif_jax import hub

SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
}


class UnsupportedArchitectureError(ValueError):
  """A HF config names an architecture (or feature) this port does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency-dependent RoPE scaling (HF `rope_type: llama3`)."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


ATTENTION_IMPLS = ("einsum", "xla", "cudnn", "splash")
# HF `hidden_act` values that are the SwiGLU MLP's SiLU (absent means silu).
SUPPORTED_ACTIVATIONS = ("silu", "swish")
REMAT_POLICIES = ("full", "dots")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Qwen2/Llama-family decoder.

  `param_dtype` is the storage dtype of the weights (fp32 master weights for training, bf16 for
  inference); `dtype` is the compute dtype of matmuls. Softmax, norms and logits run in fp32.
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  qkv_bias: bool = False
  tie_embeddings: bool = False
  max_position_embeddings: int = 32768
  architecture: str = "qwen2"
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: bool = False
  # What a rematerialised layer keeps for the backward pass: "full" only its input (least
  # memory), "dots" also its matmul outputs (no recomputed matmuls; more memory).
  remat_policy: str = "full"
  # One parameter per weight with a leading [num_layers] axis, run by `lax.scan`: compile time
  # independent of depth, and with `remat` XLA keeps one layer's activations at a time (the
  # unrolled loop lets the scheduler hoist every recomputation; see BUILD_NOTES).
  scan_layers: bool = False
  # Attention of the cache-free forward (training, scoring): "einsum" (ours: fp32 scores, any
  # backend), or a `jax.nn.dot_product_attention` implementation: "xla", or "cudnn" (flash
  # attention on NVIDIA GPUs, padding as lengths: `models/length_attention.py`; bf16/fp16
  # compute), or "splash" (the Pallas flash-attention kernel on TPU, `models/splash.py`).
  # Decoding always uses the einsum path.
  attention_impl: str = "einsum"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
    if self.architecture not in SUPPORTED_ARCHITECTURES.values():
      raise UnsupportedArchitectureError(f"architecture={self.architecture!r} is not one of "
                                         f"{sorted(SUPPORTED_ARCHITECTURES.values())}")

  def replace(self, **kwargs: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    d = dict(d)
    if d.get("rope_scaling") is not None:
      d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    return cls(**d)

  @property
  def num_params(self) -> int:
    """Exact number of parameters (what HF reports for the same architecture)."""
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    attn = d * q + 2 * d * kv + q * d + ((q + 2 * kv) if self.qkv_bias else 0)
    layer = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_embeddings else 2) + self.num_layers * layer + d


def tiny(vocab_size: int = 4096, **overrides: Any) -> ModelConfig:
  """A few-million-parameter Qwen2-shaped decoder that trains on 2 CPU cores."""
  base = dict(vocab_size=vocab_size, hidden_size=256, intermediate_size=704, num_layers=4,
              num_heads=8, num_kv_heads=2, head_dim=32, rope_theta=10000.0, qkv_bias=True,
              tie_embeddings=True, max_position_embeddings=2048, architecture="qwen2")
  base.update(overrides)
  return ModelConfig(**base)


def qwen2_5_0_5b(**overrides: Any) -> ModelConfig:
  base = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
              num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1e6, rms_norm_eps=1e-6,
              qkv_bias=True, tie_embeddings=True, max_position_embeddings=32768)
  base.update(overrides)
  return ModelConfig(**base)


def qwen2_5_1_5b(**overrides: Any) -> ModelConfig:
  base = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
              num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
              qkv_bias=True, tie_embeddings=True, max_position_embeddings=32768)
  base.update(overrides)
  return ModelConfig(**base)


def qwen2_5_7b(**overrides: Any) -> ModelConfig:
  base = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
              num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
              qkv_bias=True, tie_embeddings=False, max_position_embeddings=32768)
  base.update(overrides)
  return ModelConfig(**base)


def llama3_1_8b(**overrides: Any) -> ModelConfig:
  base = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
              num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
              rope_scaling=RopeScaling(), rms_norm_eps=1e-5, qkv_bias=False,
              tie_embeddings=False, max_position_embeddings=131072, architecture="llama")
  base.update(overrides)
  return ModelConfig(**base)


PRESETS = {
    "tiny": tiny,
    "qwen2_5_0_5b": qwen2_5_0_5b,
    "qwen2_5_1_5b": qwen2_5_1_5b,
    "qwen2_5_7b": qwen2_5_7b,
    "llama3_1_8b": llama3_1_8b,
}


def preset(name: str, **overrides: Any) -> ModelConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name](**overrides)


def _rope_scaling_from_hf(hf: dict[str, Any], path: str) -> RopeScaling | None:
  rs = hf.get("rope_scaling") or hf.get("rope_parameters")
  if not rs:
    return None
  kind = rs.get("rope_type", rs.get("type", "default"))
  if kind == "default":
    return None
  if kind != "llama3":
    raise UnsupportedArchitectureError(f"{path}: rope_scaling type {kind!r} is not supported "
                                       "(supported: llama3, none)")
  return RopeScaling(factor=float(rs["factor"]), low_freq_factor=float(rs["low_freq_factor"]),
                     high_freq_factor=float(rs["high_freq_factor"]),
                     original_max_position_embeddings=int(rs["original_max_position_embeddings"]))


def _check_no_sliding_window(hf: dict[str, Any], path: str) -> None:
  """Refuses configs where any layer uses sliding-window attention (we attend to all keys)."""
  layer_types = hf.get("layer_types")
  if layer_types is not None:
    sliding = sorted(set(layer_types) - {"full_attention"})
    if sliding:
      raise UnsupportedArchitectureError(
          f"{path}: layer_types contains {sliding}; only full attention is supported "
          "(sliding-window attention is not implemented)")
    return
  num_layers = hf.get("num_hidden_layers")
  max_window_layers = hf.get("max_window_layers")
  if (hf.get("use_sliding_window") and hf.get("sliding_window") is not None
      and (max_window_layers is None or num_layers is None or max_window_layers < num_layers)):
    raise UnsupportedArchitectureError(
        f"{path}: use_sliding_window=true with sliding_window={hf['sliding_window']} and "
        f"max_window_layers={max_window_layers} < num_hidden_layers={num_layers}: "
        "sliding-window attention is not implemented")


def from_hf_config(hf: dict[str, Any] | str | pathlib.Path, **overrides: Any) -> ModelConfig:
  """Builds a ModelConfig from a HF `config.json` (a dict, the file, or its directory)."""
  path = "<dict>"
  if not isinstance(hf, dict):
    p = hub.resolve_model_dir(hf)
    if p.is_dir():
      p = p / "config.json"
    path = str(p)
    hf = json.loads(p.read_text())
  archs = hf.get("architectures") or []
  arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
  if arch is None:
    raise UnsupportedArchitectureError(
        f"{path}: architectures={archs} not supported; supported: {sorted(SUPPORTED_ARCHITECTURES)}")
  num_heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
  rope_theta = hf.get("rope_theta")
  if rope_theta is None:
    rope_theta = (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
  if arch == "llama" and hf.get("attention_bias"):
    raise UnsupportedArchitectureError(
        f"{path}: attention_bias=true is not supported for Llama (HF then also has an o_proj "
        "bias, which this port does not implement)")
  qkv_bias = arch == "qwen2"
  if hf.get("mlp_bias"):
    raise UnsupportedArchitectureError(f"{path}: mlp_bias=true is not supported")
  act = hf.get("hidden_act") or "silu"
  if act not in SUPPORTED_ACTIVATIONS:
    raise UnsupportedArchitectureError(f"{path}: hidden_act={act!r} is not supported "
                                       f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
  _check_no_sliding_window(hf, path)
  kwargs = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      num_heads=num_heads, num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=head_dim, rope_theta=float(rope_theta),
      rope_scaling=_rope_scaling_from_hf(hf, path), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      qkv_bias=qkv_bias, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=int(hf.get("max_position_embeddings", 32768)), architecture=arch)
  kwargs.update(overrides)
  return ModelConfig(**kwargs)


def to_hf_config(cfg: ModelConfig, torch_dtype: str = "float32", *,
                 bos_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> dict[str, Any]:
  """The HF `config.json` dict for `cfg` (inverse of `from_hf_config`).

  The special-token ids are written even when None (unknown): `transformers` would otherwise
  fall back to its class defaults (Llama: bos=1, eos=2), which are wrong for our tokenizers.

  Raises:
    UnsupportedArchitectureError: a Llama model with qkv_bias (HF's `attention_bias` also
      implies an o_proj bias, so no HF Llama config describes it).
  """
  if cfg.architecture == "llama" and cfg.qkv_bias:
    raise UnsupportedArchitectureError(
        "a llama model with qkv_bias=True has no Hugging Face equivalent (HF attention_bias "
        "also adds an o_proj bias); use architecture='qwen2' for QKV biases")
  arch = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[cfg.architecture]
  hf: dict[str, Any] = dict(
      architectures=[arch], model_type=cfg.architecture, vocab_size=cfg.vocab_size,
      hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
      rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_embeddings,
      max_position_embeddings=cfg.max_position_embeddings, hidden_act="silu",
      torch_dtype=torch_dtype, dtype=torch_dtype, bos_token_id=bos_token_id,
      eos_token_id=eos_token_id, pad_token_id=pad_token_id)
  if cfg.rope_scaling is not None:
    hf["rope_scaling"] = dict(rope_type="llama3", **dataclasses.asdict(cfg.rope_scaling))
  if cfg.architecture == "llama":
    hf["attention_bias"] = False
    hf["mlp_bias"] = False
  else:
    hf["use_sliding_window"] = False
  return hf
