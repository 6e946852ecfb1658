"""The one interface every LLM backend implements: async, batched chat generation.

A backend takes a batch of chat conversations (each a list of ``{"role", "content"}`` dicts) and
returns one reply string per conversation, in order. Failures are typed:

* ``TransientBackendError``: the request was retried (429, 5xx, timeout, connection error, bad
  body) until the retry budget ran out. Trying again later may succeed.
* ``FatalBackendError``: retrying cannot help (401, 400, 404, ...). Callers should stop early.

``generate`` raises on the first failed conversation; ``generate_settled`` never raises a
``BackendError`` and instead puts the exception in the failed slot, so one bad request cannot sink
a batch of hundreds.
"""
from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import dataclasses
import threading
from typing import Any, Coroutine, Sequence, TypeVar

Message = dict[str, str]
Conversation = list[Message]

T = TypeVar("T")


class BackendError(RuntimeError):
  """Base class of all backend failures; messages never contain credentials."""


class TransientBackendError(BackendError):
  """Retryable failure that persisted after the retry budget was spent."""


class FatalBackendError(BackendError):
  """Non-retryable failure (bad request, bad credentials, unknown model, ...)."""

  def __init__(self, message: str, status: int | None = None):
    super().__init__(message)
    self.status = status

  @property
  def aborts_job(self) -> bool:
    """True when every later request would fail the same way (credentials, URL, model, bugs).

    400/413/422 are per-request (e.g. one over-long prompt) and only fail that record.
    """
    return self.status not in (400, 413, 422)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Sampling settings forwarded to ``LLMBackend.generate``."""
  temperature: float = 0.0
  max_tokens: int = 1024
  stop: tuple[str, ...] | None = None

  def as_kwargs(self) -> dict[str, Any]:
    return {"temperature": self.temperature, "max_tokens": self.max_tokens,
            "stop": list(self.stop) if self.stop else None}


def validate_messages_batch(messages_batch: Sequence[Conversation]) -> None:
  """Raises ValueError naming the first malformed conversation/message."""
  if isinstance(messages_batch, (str, bytes)):
    raise ValueError("messages_batch must be a list of conversations, got a string")
  for i, conversation in enumerate(messages_batch):
    if not isinstance(conversation, (list, tuple)) or not conversation:
      raise ValueError(f"messages_batch[{i}] must be a non-empty list of messages")
    for j, message in enumerate(conversation):
      if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
          or not isinstance(message.get("content"), str)):
        raise ValueError(f"messages_batch[{i}][{j}] must be a dict with str 'role' and 'content', "
                         f"got {type(message).__name__}")


def apply_stop(text: str, stop: Sequence[str] | None) -> str:
  """Cuts ``text`` at the earliest occurrence of any stop string."""
  if not stop:
    return text
  cut = len(text)
  for s in stop:
    if s:
      pos = text.find(s)
      if pos != -1:
        cut = min(cut, pos)
  return text[:cut]


class LLMBackend(abc.ABC):
  """Async batched chat generation; see the module docstring for the error contract."""

  name: str = "llm"

  def __repr__(self) -> str:  # no memory address: it feeds Agent.fingerprint
    return f"{type(self).__name__}()"

  @abc.abstractmethod
  async def generate(self, messages_batch: list[Conversation], *, temperature: float = 0.0,
                     max_tokens: int = 1024, stop: list[str] | None = None) -> list[str]:
    """Returns one reply per conversation, in order; raises ``BackendError`` on failure."""

  def with_response_schema(self, name: str, schema: dict[str, Any]) -> "LLMBackend":
    """This backend asking for replies that follow the JSON Schema ``schema`` where it can
    (``OpenAIChatBackend(structured_output=True)`` sends it as ``response_format``); by default
    the backend itself, unchanged. Replies are parsed robustly either way."""
    del name, schema
    return self

  async def generate_settled(self, messages_batch: list[Conversation], *,
                             temperature: float = 0.0, max_tokens: int = 1024,
                             stop: list[str] | None = None) -> list[str | BackendError]:
    """Like ``generate`` but failed slots hold the ``BackendError`` instead of raising.

    The default implementation fails the whole batch together; backends that send one request
    per conversation override it to isolate failures.
    """
    try:
      return list(await self.generate(messages_batch, temperature=temperature,
                                      max_tokens=max_tokens, stop=stop))
    except BackendError as e:
      return [e] * len(messages_batch)

  def generate_sync(self, messages_batch: list[Conversation], *, temperature: float = 0.0,
                    max_tokens: int = 1024, stop: list[str] | None = None) -> list[str]:
    """Blocking convenience wrapper around ``generate`` (works inside a running loop too)."""
    async def run() -> list[str]:
      try:
        return await self.generate(messages_batch, temperature=temperature,
                                   max_tokens=max_tokens, stop=stop)
      finally:
        await self.aclose()
    return run_sync(run())

  async def aclose(self) -> None:
    """Releases network sessions bound to the current event loop (no-op by default)."""

  async def __aenter__(self) -> "LLMBackend":
    return self

  async def __aexit__(self, *exc_info: Any) -> None:
    await self.aclose()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
  """Runs ``coro`` to completion; uses a helper thread if this thread already runs a loop."""
  try:
    asyncio.get_running_loop()
  except RuntimeError:
    return asyncio.run(coro)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    return pool.submit(asyncio.run, coro).result()


class BackgroundLoop:
  """An event loop on a daemon thread, so sync callers can reuse one aiohttp session.

  Used by ``JudgeScorer``: every ``score`` call of an RL run goes through the same loop, so
  connections to the judge server are kept alive across steps.
  """

  def __init__(self, name: str = "rlaif-judge-loop"):
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
    self._thread.start()

  def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    if self._loop.is_closed():
      raise RuntimeError("BackgroundLoop.run called after close()")
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

  def close(self) -> None:
    if self._loop.is_closed():
      return
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout=10)
    self._loop.close()
