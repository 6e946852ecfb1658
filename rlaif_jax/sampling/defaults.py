"""Sampling defaults from a model's `generation_config.json` and the default dtype.

As vLLM does, the model's own sampling settings (Qwen2.5-7B-Instruct ships temperature 0.7,
top_p 0.8, top_k 20, repetition_penalty 1.05) are the defaults of `launch.generate`,
`launch.serve` and `launch.evaluate`; an explicit flag or request field overrides them.
`do_sample` is ignored (vLLM ignores it too): a model whose config says `do_sample: false` with
a temperature is still sampled at that temperature unless the caller asks for 0.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

from rlaif_jax.sampling.logits_processing import SamplingParams

logger = logging.getLogger(__name__)

# generation_config.json key -> SamplingParams field
_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
         "repetition_penalty": "repetition_penalty"}


def generation_defaults(model_dir: str | os.PathLike | None) -> dict[str, Any]:
  """The SamplingParams fields set by `model_dir/generation_config.json` ({} without one).
  Values that SamplingParams would refuse are dropped with a warning."""
  if model_dir is None:
    return {}
  path = pathlib.Path(model_dir) / "generation_config.json"
  if not path.is_file():
    return {}
  config = json.loads(path.read_text(encoding="utf-8"))
  out = {}
  for key, field in _KEYS.items():
    value = config.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    try:
      SamplingParams(**{field: value})
    except ValueError as e:
      logger.warning("%s: ignoring %s=%r (%s)", path, key, value, e)
      continue
    out[field] = int(value) if field == "top_k" else float(value)
  return out


def effective_sampling(defaults: dict[str, Any], overrides: dict[str, Any]) -> SamplingParams:
  """SamplingParams from the built-in defaults, then `defaults` (generation_config.json), then
  the `overrides` whose value is not None."""
  fields = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
  return SamplingParams(**fields)


def describe(params: SamplingParams) -> str:
  """The sampling settings that matter, for logs."""
  keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
          "frequency_penalty")
  return ", ".join(f"{k}={getattr(params, k)}" for k in keys) + (
      f", stop={list(params.stop)}" if params.stop else "")


def default_dtype() -> str:
  """bfloat16 on accelerators (a 7B model in float32 would take 30 GB), float32 on CPU (XLA:CPU
  runs bfloat16 matmuls slower than float32)."""
  import jax
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def resolve_dtype(flag_value: str) -> str:
  return default_dtype() if flag_value == "auto" else flag_value

