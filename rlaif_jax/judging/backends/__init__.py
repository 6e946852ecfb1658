"""LLM backends behind one async batched interface, and the ``make_backend`` factory."""
from __future__ import annotations

import json
from typing import Any, Callable

from rlaif_jax.judging.backends.base import (BackendError, BackgroundLoop, Conversation,
                                              FatalBackendError, LLMBackend, SamplingParams,
                                              TransientBackendError, run_sync)
from rlaif_jax.judging.backends.local import LocalSamplerBackend, resolve_callable
from rlaif_jax.judging.backends.openai_http import OpenAIChatBackend
from rlaif_jax.judging.backends.retry import RetryPolicy, parse_retry_after

__all__ = [
    "BackendError", "BackgroundLoop", "Conversation", "FatalBackendError", "LLMBackend",
    "LocalSamplerBackend", "OpenAIChatBackend", "RetryPolicy", "SamplingParams",
    "TransientBackendError", "make_backend", "parse_retry_after", "run_sync", "BACKENDS",
]


def _make_openai(**kwargs: Any) -> LLMBackend:
  return OpenAIChatBackend(**kwargs)


def _make_local(generate_fn: Callable[..., Any] | str, *, factory_kwargs: dict[str, Any] | str |
                None = None, max_batch_size: int | None = None) -> LLMBackend:
  """``generate_fn`` is a callable or ``"pkg.mod:attr"``; with ``factory_kwargs`` the attribute
  is a factory called with them to build the generate_fn (e.g. load a checkpoint once)."""
  if isinstance(generate_fn, str):
    generate_fn = resolve_callable(generate_fn)
  if isinstance(factory_kwargs, str):
    factory_kwargs = json.loads(factory_kwargs) if factory_kwargs.strip() else None
  if factory_kwargs is not None:
    generate_fn = generate_fn(**factory_kwargs)
  return LocalSamplerBackend(generate_fn, max_batch_size=max_batch_size)


BACKENDS: dict[str, Callable[..., LLMBackend]] = {"openai": _make_openai, "local": _make_local}


def make_backend(name: str, **kwargs: Any) -> LLMBackend:
  """Builds a backend by name: ``"openai"`` (OpenAIChatBackend kwargs) or ``"local"``
  (``generate_fn``, ``factory_kwargs``, ``max_batch_size``)."""
  try:
    factory = BACKENDS[name]
  except KeyError:
    raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None
  try:
    return factory(**kwargs)
  except TypeError as e:
    raise TypeError(f"make_backend({name!r}): bad arguments: {e}") from e
