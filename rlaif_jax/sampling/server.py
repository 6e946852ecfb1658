"""An OpenAI-compatible HTTP server over the sampler (non-streaming).

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health.
Honoured request fields: messages / prompt (str or list of str), n, temperature, top_p, top_k
(an extension, as in vLLM), max_tokens (chat also max_completion_tokens), stop (str or list).
Other OpenAI fields are accepted and ignored; `stream: true` is refused.

Concurrent requests are batched: the `BatchingEngine` waits `batch_window_s` after the first
pending request for others (up to `max_batch_rows` rows, a request with n samples counts n), runs
one `Sampler.generate` on a worker thread, and hands each request its rows. Every row keeps its
own temperature, top-p, max_tokens and stop strings. A malformed request gets 400 with
{"error": {"message", "type": "invalid_request_error"}}; a failure while generating gets 500
with type "server_error"; neither stops the server.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid

from aiohttp import web

from rlaif_jax.sampling.completions import Completion, EmptyPromptError, Prompt, encode_prompt
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler

_ROLES = ("system", "user", "assistant")


class RequestError(ValueError):
  """A request the server refuses with HTTP 400; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """model_name: what /v1/models lists and responses echo. max_tokens_limit: largest max_tokens
  accepted; default_max_tokens: used when a request gives none; max_prompt_tokens: longest
  prompt accepted; max_n: largest n; max_batch_rows / batch_window_s: batching (see module)."""
  model_name: str = "rlaif-jax"
  default_max_tokens: int = 256
  max_tokens_limit: int = 2048
  max_prompt_tokens: int = 2048
  max_n: int = 16
  max_batch_rows: int = 64
  batch_window_s: float = 0.005

  def __post_init__(self):
    for name in ("max_tokens_limit", "max_prompt_tokens", "max_n", "max_batch_rows"):
      if getattr(self, name) < 1:
        raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
    if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
      raise ValueError(f"ServerConfig.default_max_tokens must be in [1, max_tokens_limit="
                       f"{self.max_tokens_limit}], got {self.default_max_tokens}")
    if not (math.isfinite(self.batch_window_s) and self.batch_window_s >= 0):
      raise ValueError(f"ServerConfig.batch_window_s must be >= 0, got {self.batch_window_s}")


@dataclasses.dataclass
class _Job:
  prompts: list[Prompt]
  params: SamplingParams
  n: int
  future: asyncio.Future


class BatchingEngine:
  """Queues jobs and runs them in batched `Sampler.generate` calls, one batch at a time."""

  def __init__(self, sampler: Sampler, config: ServerConfig):
    self.sampler = sampler
    self.config = config
    self.stats = {"batches": 0, "requests": 0, "rows": 0}
    self._queue: asyncio.Queue[_Job] = asyncio.Queue()
    self._held: _Job | None = None  # taken from the queue but left for the next batch
    self._task: asyncio.Task | None = None

  def start(self) -> None:
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self) -> None:
    if self._task is not None:
      self._task.cancel()
      try:
        await self._task
      except asyncio.CancelledError:
        pass

  async def submit(self, prompts: list[Prompt], params: SamplingParams, n: int
                   ) -> list[Completion]:
    """Completions for `prompts`, n each, prompt-major (prompt_index/sample_index set)."""
    job = _Job(prompts, params, n, asyncio.get_running_loop().create_future())
    await self._queue.put(job)
    return await job.future

  async def _collect(self) -> list[_Job]:
    """The next batch: at most `max_batch_rows` rows, except that a single larger job runs
    alone. A job that does not fit is held back to start the next batch."""
    first, self._held = self._held, None
    jobs = [first if first is not None else await self._queue.get()]
    rows = len(jobs[0].prompts) * jobs[0].n
    deadline = time.monotonic() + self.config.batch_window_s
    while rows < self.config.max_batch_rows:
      timeout = deadline - time.monotonic()
      if timeout <= 0:
        break
      try:
        job = await asyncio.wait_for(self._queue.get(), timeout)
      except asyncio.TimeoutError:
        break
      if rows + len(job.prompts) * job.n > self.config.max_batch_rows:
        self._held = job
        break
      jobs.append(job)
      rows += len(job.prompts) * job.n
    return jobs

  def _encode(self, job: _Job) -> list[list[int]]:
    """The job's prompt ids; a prompt the tokenizer or chat template refuses (or one with no
    tokens, or too many) raises RequestError for this job alone."""
    out = []
    for i, prompt in enumerate(job.prompts):
      field = ("'messages'" if not isinstance(prompt, str) else
               "'prompt'" if len(job.prompts) == 1 else f"'prompt'[{i}]")
      try:
        ids = encode_prompt(self.sampler.tokenizer, prompt, use_chat_template=False)
      except EmptyPromptError:
        raise RequestError(f"{field} encodes to no tokens; the model needs at least one") from None
      except Exception as e:  # e.g. a chat template that raises for some roles
        raise RequestError(f"{field} cannot be encoded for this model: "
                           f"{type(e).__name__}: {e}") from None
      if len(ids) > self.config.max_prompt_tokens:
        raise RequestError(f"prompt has {len(ids)} tokens; this server accepts at most "
                           f"{self.config.max_prompt_tokens}")
      out.append(ids)
    return out

  def _generate(self, jobs: list[_Job]) -> list[list[Completion] | Exception]:
    """Runs all jobs as one batch of rows (each prompt repeated n times) and splits the result.
    Runs on the worker thread, so the tokenizer is only ever used there. A job whose prompt
    cannot be encoded or is too long gets a RequestError instead of completions; the other jobs
    of the batch are generated as usual."""
    results: list[list[Completion] | Exception] = []
    ids, params, owners = [], [], []
    for j, job in enumerate(jobs):
      try:
        encoded = self._encode(job)
      except RequestError as e:
        results.append(e)
        continue
      results.append([])
      for p, x in enumerate(encoded):
        for s in range(job.n):
          ids.append(x)
          params.append(job.params)
          owners.append((j, p, s))
    if ids:
      max_new = max(p.max_tokens for p in params)
      outs = self.sampler.generate_encoded(ids, max_new, params)
      for (j, p, s), c in zip(owners, outs):
        results[j].append(dataclasses.replace(c, prompt_index=p, sample_index=s))
    return results

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      jobs = await self._collect()
      try:
        results = await loop.run_in_executor(None, self._generate, jobs)
      except Exception as e:  # Failures go to the waiting requests; the loop keeps serving.
        results = [e] * len(jobs)
      else:
        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["rows"] += sum(len(r) for r in results if isinstance(r, list))
      for job, result in zip(jobs, results):
        if job.future.done():  # the client went away
          continue
        if isinstance(result, Exception):
          job.future.set_exception(result)
        else:
          job.future.set_result(result)


# ---------------------------------------------------------------------------------------------
# Request parsing.


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open=False) -> float:
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


def _integer(body: dict, name: str, default: int, lo: int, hi: int) -> int:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, int):
    raise RequestError(f"'{name}' must be an integer, got {value!r:.50}")
  if not lo <= value <= hi:
    raise RequestError(f"'{name}' must be in [{lo}, {hi}], got {value}")
  return value


def _stop(body: dict) -> tuple[str, ...]:
  stop = body.get("stop")
  if stop is None:
    return ()
  stop = [stop] if isinstance(stop, str) else stop
  if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
    raise RequestError("'stop' must be a non-empty string or a list of at most 4 of them")
  return tuple(stop)


def sampling_from_request(body: dict, config: ServerConfig,
                          chat: bool) -> tuple[SamplingParams, int]:
  """(SamplingParams, n) from the OpenAI fields of `body`."""
  if body.get("stream"):
    raise RequestError("'stream': true is not supported by this server")
  max_tokens = body.get("max_completion_tokens") if chat else None
  key = "max_completion_tokens" if max_tokens is not None else "max_tokens"
  max_tokens = _integer(body, key, config.default_max_tokens, 1, config.max_tokens_limit)
  fields = dict(temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                top_k=_integer(body, "top_k", 0, 0, 1 << 30), max_tokens=max_tokens,
                stop=_stop(body))
  try:
    params = SamplingParams(**fields)
  except ValueError as e:
    raise RequestError(str(e)) from None
  return params, _integer(body, "n", 1, 1, config.max_n)


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


# ---------------------------------------------------------------------------------------------
# HTTP.


def _error(status: int, message: str, kind: str) -> web.Response:
  return web.json_response({"error": {"message": message, "type": kind}}, status=status)


@web.middleware
async def _errors_as_json(request: web.Request, handler):
  try:
    return await handler(request)
  except RequestError as e:
    return _error(400, str(e), "invalid_request_error")
  except web.HTTPException as e:
    return _error(e.status, e.reason, "invalid_request_error")
  except Exception as e:  # Never let one request take the server down.
    return _error(500, f"{type(e).__name__}: {e}", "server_error")


ENGINE_KEY = web.AppKey("engine", BatchingEngine)


def make_app(sampler: Sampler, config: ServerConfig = ServerConfig()) -> web.Application:
  """The aiohttp application; its BatchingEngine starts and stops with the app."""
  app = web.Application(middlewares=[_errors_as_json], client_max_size=8 * 2**20)
  engine = BatchingEngine(sampler, config)
  app[ENGINE_KEY] = engine

  async def on_startup(_):
    engine.start()

  async def on_cleanup(_):
    await engine.stop()

  app.on_startup.append(on_startup)
  app.on_cleanup.append(on_cleanup)

  async def read_body(request: web.Request) -> dict:
    try:
      body = json.loads(await request.text())
    except RecursionError:
      raise RequestError("request body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, over-long integers
      raise RequestError(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
      raise RequestError("request body must be a JSON object")
    return body

  async def complete(request: web.Request, chat: bool) -> web.Response:
    body = await read_body(request)
    prompts = prompts_from_request(body, chat)
    params, n = sampling_from_request(body, config, chat)
    if len(prompts) * n > config.max_batch_rows:
      raise RequestError(f"{len(prompts)} prompts x n={n} is more than this server's "
                         f"max_batch_rows={config.max_batch_rows}")
    outs = await engine.submit(prompts, params, n)
    prompt_tokens = sum(c.prompt_tokens for c in outs if c.sample_index == 0)
    completion_tokens = sum(c.completion_tokens for c in outs)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if chat:
      choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                  "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(outs)]
    else:
      choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                 for i, c in enumerate(outs)]
    return web.json_response({
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
        "model": config.model_name, "choices": choices, "usage": usage})

  async def chat_completions(request: web.Request) -> web.Response:
    return await complete(request, chat=True)

  async def completions(request: web.Request) -> web.Response:
    return await complete(request, chat=False)

  async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": config.model_name, "object": "model", "created": 0, "owned_by": "rlaif_jax"}]})

  async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok", **engine.stats})

  app.router.add_post("/v1/chat/completions", chat_completions)
  app.router.add_post("/v1/completions", completions)
  app.router.add_get("/v1/models", models)
  app.router.add_get("/health", health)
  return app
