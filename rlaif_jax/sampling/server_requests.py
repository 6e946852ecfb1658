"""Request parsing for the OpenAI-compatible server: configuration, field checks, the unknown
field rule, and the parts of a request that are not sampling settings (prompts, logprobs,
response_format, stream options). `server.sampling_from_request` builds the SamplingParams.

Every field is either honoured or refused with a 400 that names it: nothing is accepted and
silently ignored (besides `model`, which names the one served model, and `user`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import Any

from rlaif_jax.sampling.completions import Prompt

_ROLES = ("system", "user", "assistant")
_COMMON = {"model", "user", "n", "temperature", "top_p", "top_k", "min_p", "max_tokens", "stop",
           "stream", "stream_options", "seed", "presence_penalty", "frequency_penalty",
           "repetition_penalty", "stop_token_ids", "logprobs", "response_format",
           "return_tokens_as_token_ids"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
COMPLETION_FIELDS = _COMMON | {"prompt"}


class RequestError(ValueError):
  """A request the server refuses with HTTP 400; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """model_name: what /v1/models lists and responses echo. max_tokens_limit: largest max_tokens
  accepted; default_max_tokens: used when a request gives none; max_prompt_tokens: longest
  prompt accepted; max_n: largest n; max_batch_rows / batch_window_s: batching (see server).
  max_queue: requests waiting for a batch beyond which new ones get 429 with Retry-After
  `retry_after_s`. max_top_logprobs: largest top_logprobs / completions logprobs.
  sampling_defaults: SamplingParams fields used when a request omits them (the model's
  generation_config.json, `defaults.generation_defaults`). structured_output: honour
  response_format (needs xgrammar); off: such requests get 400. max_schema_string_chars /
  max_schema_items: when set, a json_schema is tightened before it is compiled: every string's
  maxLength (property names included) is at most the first, every array's maxItems and
  object's maxProperties at most the second. A cost cap for a server whose replies are
  throwaway (the pipeline's stand-in judge); None (the default) honours schemas as sent.
  truncate_prompt_tokens: when set, a longer prompt keeps only its last N tokens (vLLM's
  parameter of that name, here for every request; usage counts the tokens kept). None: prompts
  are used whole."""
  model_name: str = "rlaif-jax"
  default_max_tokens: int = 256
  max_tokens_limit: int = 2048
  max_prompt_tokens: int = 2048
  max_n: int = 16
  max_batch_rows: int = 64
  batch_window_s: float = 0.005
  max_queue: int = 1024
  retry_after_s: int = 1
  max_top_logprobs: int = 20
  sampling_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
  structured_output: bool = True
  max_schema_string_chars: int | None = None
  max_schema_items: int | None = None
  truncate_prompt_tokens: int | None = None

  def __post_init__(self):
    for name in ("max_tokens_limit", "max_prompt_tokens", "max_n", "max_batch_rows",
                 "max_queue", "retry_after_s"):
      if getattr(self, name) < 1:
        raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
    if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
      raise ValueError(f"ServerConfig.default_max_tokens must be in [1, max_tokens_limit="
                       f"{self.max_tokens_limit}], got {self.default_max_tokens}")
    for name in ("max_schema_string_chars", "max_schema_items", "truncate_prompt_tokens"):
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f"ServerConfig.{name} must be >= 1 or None, got {getattr(self, name)}")
    if not (math.isfinite(self.batch_window_s) and self.batch_window_s >= 0):
      raise ValueError(f"ServerConfig.batch_window_s must be >= 0, got {self.batch_window_s}")


def check_fields(body: dict, chat: bool) -> None:
  """400 naming the first field this server does not implement."""
  known = CHAT_FIELDS if chat else COMPLETION_FIELDS
  unknown = sorted(k for k in body if k not in known and body[k] is not None)
  if unknown:
    raise RequestError(f"unsupported parameter(s) {unknown}: this server implements "
                       f"{sorted(known)}")


def number(body: dict, name: str, default: float, lo: float, hi: float, lo_open=False) -> float:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise RequestError(f"'{name}' must be a number, got {value!r:.50}")
  if isinstance(value, float) and not math.isfinite(value):
    raise RequestError(f"'{name}' must be a finite number, got {value}")
  if value < lo or value > hi or (lo_open and value == lo):
    raise RequestError(f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}")
  return float(value)


def integer(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, int):
    raise RequestError(f"'{name}' must be an integer, got {value!r:.50}")
  if not lo <= value <= hi:
    raise RequestError(f"'{name}' must be in [{lo}, {hi}], got {value}")
  return value


def stop_strings(body: dict) -> tuple[str, ...]:
  stop = body.get("stop")
  if stop is None:
    return ()
  stop = [stop] if isinstance(stop, str) else stop
  if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
    raise RequestError("'stop' must be a non-empty string or a list of at most 4 of them")
  return tuple(stop)


def stop_token_ids(body: dict, vocab_size: int) -> tuple[int, ...]:
  ids = body.get("stop_token_ids")
  if ids is None:
    return ()
  if not isinstance(ids, list) or not all(
      isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids):
    raise RequestError(f"'stop_token_ids' must be a list of token ids in [0, {vocab_size})")
  return tuple(ids)


def top_logprobs(body: dict, config: ServerConfig, chat: bool) -> int:
  """How many top log-probs per token to return (0: none; chat `logprobs: true` alone gives the
  chosen tokens' log-probs with an empty top list). -1 (chat): `logprobs` off."""
  limit = config.max_top_logprobs
  if chat:
    on = body.get("logprobs")
    if on is not None and not isinstance(on, bool):
      raise RequestError(f"'logprobs' must be a boolean for chat completions, got {on!r:.50}")
    k = integer(body, "top_logprobs", 0, 0, limit)
    if k and not on:
      raise RequestError("'top_logprobs' needs 'logprobs': true")
    return k if on else -1
  k = integer(body, "logprobs", None, 0, limit)
  return -1 if k is None else k


def flag(body: dict, name: str) -> bool:
  value = body.get(name)
  if value is not None and not isinstance(value, bool):
    raise RequestError(f"'{name}' must be a boolean, got {value!r:.50}")
  return bool(value)


def response_format(body: dict, config: ServerConfig) -> tuple[str, str] | None:
  """None, ("json_object", "") or ("json_schema", canonical schema JSON)."""
  fmt = body.get("response_format")
  if fmt is None:
    return None
  if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
    raise RequestError("'response_format' must be {\"type\": \"text\" | \"json_object\" | "
                       "\"json_schema\", ...}")
  if fmt["type"] == "text":
    return None
  if not config.structured_output or importlib.util.find_spec("xgrammar") is None:
    raise RequestError("'response_format' (structured output) is not enabled on this server "
                       "(needs the xgrammar package and --structured_output)")
  if fmt["type"] == "json_object":
    return ("json_object", "")
  spec = fmt.get("json_schema")
  if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
    raise RequestError("'response_format.json_schema.schema' must be a JSON Schema object")
  from rlaif_jax.sampling import grammar
  schema = grammar.limit_schema(spec["schema"], config.max_schema_string_chars,
                                config.max_schema_items)
  return ("json_schema", grammar.check_schema(schema))


def stream_options(body: dict) -> tuple[bool, bool]:
  """(stream, include_usage)."""
  stream = body.get("stream")
  if stream is not None and not isinstance(stream, bool):
    raise RequestError(f"'stream' must be a boolean, got {stream!r:.50}")
  options = body.get("stream_options")
  if options is None:
    return bool(stream), False
  if not stream:
    raise RequestError("'stream_options' needs 'stream': true")
  if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(
      options.get("include_usage", False), bool):
    raise RequestError("'stream_options' must be {\"include_usage\": true | false}")
  return True, bool(options.get("include_usage", False))


def prompts_from_request(body: dict, chat: bool) -> list[Prompt]:
  """Chat: one message list; completions: the prompt string(s), used verbatim."""
  if chat:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
      raise RequestError("'messages' must be a non-empty list of {role, content}")
    for i, m in enumerate(messages):
      if not isinstance(m, dict) or m.get("role") not in _ROLES:
        raise RequestError(f"messages[{i}].role must be one of {list(_ROLES)}")
      if not isinstance(m.get("content"), str):
        raise RequestError(f"messages[{i}].content must be a string")
    return [[{"role": m["role"], "content": m["content"]} for m in messages]]
  prompt = body.get("prompt")
  prompts = [prompt] if isinstance(prompt, str) else prompt
  if not isinstance(prompts, list) or not prompts or not all(
      isinstance(p, str) and p for p in prompts):
    raise RequestError("'prompt' must be a non-empty string or a list of non-empty strings")
  return prompts
