"""Backend that runs a local model through a synchronous sampler function.

The sampler (``rlaif_jax.sampling``; see ``Sampler.make_generate_fn``) is wrapped by a
``generate_fn(prompts_messages: list[list[dict]], max_tokens: int, temperature: float)
-> list[str]``.
Each ``generate`` call hands all its conversations to ``generate_fn`` in one batch (optionally
split into ``max_batch_size`` chunks) on a worker thread, so the event loop keeps serving other
work (e.g. HTTP judges) while the accelerator decodes. Calls are serialised with a lock: a
device runs one sampler batch at a time.
"""
from __future__ import annotations

import asyncio
import importlib
import threading
from typing import Any, Callable

from rlaif_jax.judging.backends import base

GenerateFn = Callable[[list[base.Conversation], int, float], list[str]]


def resolve_callable(spec: str) -> Callable[..., Any]:
  """``"package.module:attr"`` -> the attribute, with an error naming what was missing."""
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"expected 'package.module:function', got {spec!r}")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"cannot import module {module_name!r} from {spec!r}: {e}") from e
  obj = module
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{module_name!r} has no attribute {attr!r} (from {spec!r})")
    obj = getattr(obj, part)
  if not callable(obj):
    raise ValueError(f"{spec!r} is not callable")
  return obj


class LocalSamplerBackend(base.LLMBackend):
  """Runs ``generate_fn`` on a worker thread; stop strings are applied to its outputs."""

  name = "local"

  def __init__(self, generate_fn: GenerateFn, *, max_batch_size: int | None = None):
    if not callable(generate_fn):
      raise TypeError(f"LocalSamplerBackend: generate_fn must be callable, got {generate_fn!r}")
    if max_batch_size is not None and max_batch_size < 1:
      raise ValueError(f"LocalSamplerBackend: max_batch_size must be >= 1, got {max_batch_size}")
    self._generate_fn = generate_fn
    self.max_batch_size = max_batch_size
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    fn = getattr(self._generate_fn, "__qualname__", repr(self._generate_fn))
    return f"LocalSamplerBackend(generate_fn={fn}, max_batch_size={self.max_batch_size})"

  def _call(self, chunk: list[base.Conversation], max_tokens: int, temperature: float) -> list[str]:
    with self._lock:
      try:
        outputs = self._generate_fn(chunk, max_tokens, temperature)
      except Exception as e:  # The sampler's failure becomes a typed backend failure.
        raise base.TransientBackendError(
            f"local generate_fn raised {type(e).__name__}: {e}") from e
    outputs = list(outputs)
    if len(outputs) != len(chunk):
      raise base.FatalBackendError(
          f"local generate_fn returned {len(outputs)} outputs for {len(chunk)} prompts")
    for i, out in enumerate(outputs):
      if not isinstance(out, str):
        raise base.FatalBackendError(
            f"local generate_fn output {i} is {type(out).__name__}, expected str")
    return outputs

  async def generate(self, messages_batch: list[base.Conversation], *, temperature: float = 0.0,
                     max_tokens: int = 1024, stop: list[str] | None = None) -> list[str]:
    base.validate_messages_batch(messages_batch)
    if not messages_batch:
      return []
    size = self.max_batch_size or len(messages_batch)
    outputs: list[str] = []
    for start in range(0, len(messages_batch), size):
      chunk = list(messages_batch[start:start + size])
      outputs.extend(await asyncio.to_thread(self._call, chunk, max_tokens, temperature))
    return [base.apply_stop(o, stop) for o in outputs]
