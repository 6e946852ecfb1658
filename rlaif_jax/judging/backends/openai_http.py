"""OpenAI-compatible ``/v1/chat/completions`` backend over aiohttp (vLLM, SGLang, OpenAI, ...).

Fault tolerance: at most ``concurrency`` requests in flight; each has a total timeout; 429, 408,
5xx, timeouts, connection errors and unreadable 200 bodies are retried with exponential backoff
and jitter (never sooner than the server's Retry-After); other 4xx fail fast.

Structured output (``structured_output=True``, for servers that implement OpenAI's
``response_format`` json_schema, e.g. ``launch.serve``, vLLM, OpenAI): ``with_response_schema``
gives a view of the backend whose requests carry the caller's JSON Schema, so a judge's verdicts
follow it; the robust parsing stays, for servers without it (flag off: nothing is sent).

The API key is read from the environment variable *named* by ``api_key_env`` and only ever sent
in the Authorization header: it is not stored in reprs, logs or exception text (server replies
quoted in errors are redacted too).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from typing import Any

import aiohttp

from rlaif_jax.judging.backends import base
from rlaif_jax.judging.backends.retry import RetryPolicy, parse_retry_after

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_SNIPPET_CHARS = 300


class _Retryable(Exception):
  """Internal: this attempt failed in a way worth retrying."""

  def __init__(self, message: str, retry_after_s: float | None = None):
    super().__init__(message)
    self.retry_after_s = retry_after_s


def chat_completions_url(base_url: str) -> str:
  """``http://h:p`` or ``http://h:p/v1`` or a full ``.../chat/completions`` URL -> endpoint URL."""
  url = base_url.rstrip("/")
  if url.endswith("/chat/completions"):
    return url
  if url.endswith("/v1"):
    return url + "/chat/completions"
  return url + "/v1/chat/completions"


class OpenAIChatBackend(base.LLMBackend):
  """Chat completions against an OpenAI-compatible server; one request per conversation."""

  name = "openai"

  def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
               require_api_key: bool = False, concurrency: int = 16, timeout_s: float = 120.0,
               retry: RetryPolicy | None = None, extra_body: dict[str, Any] | None = None,
               seed: int | None = None, structured_output: bool = False):
    """Args:
      base_url: server root, e.g. ``http://127.0.0.1:8000/v1`` (see ``chat_completions_url``).
      model: model name sent in each request.
      api_key_env: NAME of the environment variable holding the key (the key itself is never
        passed in code, so it cannot end up in configs or command lines).
      require_api_key: fail at construction if that variable is unset or empty.
      concurrency: maximum requests in flight from this backend.
      timeout_s: total time allowed per HTTP request (connect + reply).
      retry: backoff policy; ``RetryPolicy()`` by default.
      extra_body: extra JSON fields merged into every request (e.g. ``{"top_p": 0.9}``).
      seed: seeds the backoff jitter (tests).
      structured_output: the server implements ``response_format`` json_schema; callers' schemas
        (``with_response_schema``) are then sent with their requests.
    """
    if not base_url:
      raise ValueError("OpenAIChatBackend: base_url is empty; pass e.g. "
                       "--base_url=http://host:8000/v1")
    if not model:
      raise ValueError("OpenAIChatBackend: model is empty; pass the served model name (--model)")
    if concurrency < 1:
      raise ValueError(f"OpenAIChatBackend: concurrency must be >= 1, got {concurrency}")
    if timeout_s <= 0:
      raise ValueError(f"OpenAIChatBackend: timeout_s must be > 0, got {timeout_s}")
    self.base_url = base_url
    self.url = chat_completions_url(base_url)
    self.model = model
    self.api_key_env = api_key_env
    self.concurrency = concurrency
    self.timeout_s = timeout_s
    self.retry = retry or RetryPolicy()
    self._extra_body = dict(extra_body or {})
    self.structured_output = structured_output
    # Keys pasted with a trailing newline are common; inner control characters or spaces would
    # make aiohttp refuse the header on the first request, so they are refused here instead.
    self._api_key = os.environ.get(api_key_env, "").strip() if api_key_env else ""
    if any(c.isspace() or not c.isprintable() for c in self._api_key):
      raise ValueError(f"OpenAIChatBackend: environment variable {api_key_env} holds whitespace "
                       "or control characters inside the key")
    if require_api_key and not self._api_key:
      raise ValueError(f"OpenAIChatBackend: environment variable {api_key_env} is not set "
                       "(require_api_key=True)")
    if api_key_env and not self._api_key:
      logger.info("%s is not set; sending requests without an Authorization header", api_key_env)
    self._rng = random.Random(seed)
    self._session: aiohttp.ClientSession | None = None
    self._semaphore: asyncio.Semaphore | None = None
    self._loop: asyncio.AbstractEventLoop | None = None

  def __repr__(self) -> str:
    return (f"OpenAIChatBackend(url={self.url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency}, "
            f"timeout_s={self.timeout_s}"
            + (", structured_output=True)" if self.structured_output else ")"))

  def _redact(self, text: str) -> str:
    if self._api_key and len(self._api_key) >= 4:
      text = text.replace(self._api_key, "***")
    return text

  def _snippet(self, body: str) -> str:
    body = self._redact(body.strip())
    return body[:_SNIPPET_CHARS] + ("..." if len(body) > _SNIPPET_CHARS else "")

  def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
    loop = asyncio.get_running_loop()
    if self._session is None or self._loop is not loop or self._session.closed:
      # A session is bound to the loop that created it; asyncio.run() per sync call makes a
      # new loop, so a new session (and semaphore) is made for it.
      self._session = aiohttp.ClientSession(
          connector=aiohttp.TCPConnector(limit=self.concurrency))
      self._semaphore = asyncio.Semaphore(self.concurrency)
      self._loop = loop
    assert self._semaphore is not None
    return self._session, self._semaphore

  async def aclose(self) -> None:
    if self._session is not None and not self._session.closed:
      try:
        if self._loop is asyncio.get_running_loop():
          await self._session.close()
      except RuntimeError:
        pass
    self._session, self._semaphore, self._loop = None, None, None

  def _headers(self) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if self._api_key:
      headers["Authorization"] = f"Bearer {self._api_key}"
    return headers

  def with_response_schema(self, name: str, schema: dict[str, Any]) -> base.LLMBackend:
    if not self.structured_output:
      return self
    return _SchemaView(self, {"type": "json_schema", "json_schema": {
        "name": name, "schema": schema, "strict": _closed_objects(schema)}})

  def _payload(self, conversation: base.Conversation, temperature: float, max_tokens: int,
               stop: list[str] | None,
               response_format: dict[str, Any] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": self.model, "messages": conversation,
                               "temperature": temperature, "max_tokens": max_tokens}
    if stop:
      payload["stop"] = list(stop)
    if response_format is not None:
      payload["response_format"] = response_format
    payload.update(self._extra_body)
    return payload

  def _content_from_body(self, body: str) -> str:
    try:
      data = json.loads(body)
      content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
      raise _Retryable(f"HTTP 200 with an unreadable body ({type(e).__name__}): "
                       f"{self._snippet(body)!r}") from None
    if not isinstance(content, str):
      raise _Retryable(f"HTTP 200 without text content: {self._snippet(body)!r}")
    return content

  async def _attempt(self, payload: dict[str, Any]) -> str:
    session, semaphore = self._ensure_session()
    async with semaphore:
      async with session.post(self.url, json=payload, headers=self._headers(),
                              timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
        body = await resp.text(errors="replace")
        if resp.status == 200:
          return self._content_from_body(body)
        message = f"HTTP {resp.status}: {self._snippet(body)!r}"
        if resp.status in _RETRYABLE_STATUS or resp.status >= 500:
          raise _Retryable(message, parse_retry_after(resp.headers.get("Retry-After")))
        raise base.FatalBackendError(
            f"{self.url} (model {self.model!r}) rejected the request with {message}; "
            "this is not retried (check model name, request fields and the key in "
            f"${self.api_key_env})", status=resp.status)

  async def complete(self, conversation: base.Conversation, *, temperature: float = 0.0,
                     max_tokens: int = 1024, stop: list[str] | None = None,
                     response_format: dict[str, Any] | None = None) -> str:
    """One conversation -> reply text, with retries; raises ``BackendError``."""
    payload = self._payload(conversation, temperature, max_tokens, stop, response_format)
    last_error = "no attempt made"
    for attempt in range(self.retry.max_attempts):
      retry_after = None
      try:
        return await self._attempt(payload)
      except _Retryable as e:
        last_error, retry_after = str(e), e.retry_after_s
      except aiohttp.InvalidURL as e:
        raise base.FatalBackendError(f"invalid URL {self.url!r}: {e}") from None
      except asyncio.TimeoutError:
        last_error = f"timed out after {self.timeout_s:g}s"
      except aiohttp.ClientError as e:
        last_error = f"{type(e).__name__}: {self._redact(str(e))}"
      if attempt + 1 < self.retry.max_attempts:
        delay = self.retry.delay_s(attempt, retry_after, self._rng)
        logger.warning("%s attempt %d/%d failed (%s); retrying in %.2fs", self.url, attempt + 1,
                       self.retry.max_attempts, last_error, delay)
        await asyncio.sleep(delay)
    raise base.TransientBackendError(
        f"{self.url} (model {self.model!r}): gave up after {self.retry.max_attempts} attempts; "
        f"last error: {last_error}")

  async def generate(self, messages_batch: list[base.Conversation], *, temperature: float = 0.0,
                     max_tokens: int = 1024, stop: list[str] | None = None,
                     response_format: dict[str, Any] | None = None) -> list[str]:
    base.validate_messages_batch(messages_batch)
    return list(await asyncio.gather(*[
        self.complete(c, temperature=temperature, max_tokens=max_tokens, stop=stop,
                      response_format=response_format) for c in messages_batch]))

  async def generate_settled(self, messages_batch: list[base.Conversation], *,
                             temperature: float = 0.0, max_tokens: int = 1024,
                             stop: list[str] | None = None,
                             response_format: dict[str, Any] | None = None
                             ) -> list[str | base.BackendError]:
    base.validate_messages_batch(messages_batch)

    async def one(conversation: base.Conversation) -> str | base.BackendError:
      try:
        return await self.complete(conversation, temperature=temperature, max_tokens=max_tokens,
                                   stop=stop, response_format=response_format)
      except base.BackendError as e:
        return e
    return list(await asyncio.gather(*[one(c) for c in messages_batch]))


class _SchemaView(base.LLMBackend):
  """An OpenAIChatBackend whose requests carry one ``response_format`` (same session, limits
  and retries as the backend it views)."""

  name = "openai"

  def __init__(self, backend: OpenAIChatBackend, response_format: dict[str, Any]):
    self.backend = backend
    self.response_format = response_format

  def __repr__(self) -> str:
    schema = json.dumps(self.response_format, sort_keys=True, ensure_ascii=False)
    return f"{self.backend!r}.with_response_schema({schema})"

  async def generate(self, messages_batch: list[base.Conversation], *, temperature: float = 0.0,
                     max_tokens: int = 1024, stop: list[str] | None = None) -> list[str]:
    return await self.backend.generate(messages_batch, temperature=temperature,
                                       max_tokens=max_tokens, stop=stop,
                                       response_format=self.response_format)

  async def generate_settled(self, messages_batch: list[base.Conversation], *,
                             temperature: float = 0.0, max_tokens: int = 1024,
                             stop: list[str] | None = None) -> list[str | base.BackendError]:
    return await self.backend.generate_settled(messages_batch, temperature=temperature,
                                               max_tokens=max_tokens, stop=stop,
                                               response_format=self.response_format)

  async def aclose(self) -> None:
    await self.backend.aclose()


def _closed_objects(schema: Any) -> bool:
  """Whether every object in `schema` lists its properties and forbids others: what OpenAI's
  `strict` mode accepts. Open objects (the debaters' {"point": "reason"} maps) are sent with
  strict false, which every server honours as a grammar all the same."""
  if isinstance(schema, list):
    return all(_closed_objects(s) for s in schema)
  if not isinstance(schema, dict):
    return True
  if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
    return False
  return all(_closed_objects(v) for k, v in schema.items() if k not in ("enum", "const"))
