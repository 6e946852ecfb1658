"""An OpenAI-compatible HTTP server over the sampler.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus).

Honoured request fields: messages / prompt (str or list of str), n, temperature, top_p, top_k,
min_p, repetition_penalty, presence_penalty, frequency_penalty, seed, stop (str or list),
stop_token_ids, max_tokens (chat also max_completion_tokens), logprobs (+ top_logprobs for chat;
an int for completions; vLLM's return_tokens_as_token_ids), response_format (json_object / json_schema: grammar-constrained, see
`grammar`), stream (+ stream_options.include_usage; log-probs stream with the text that their
tokens complete). Any other field gets a 400 that names it
(`server_requests.check_fields`). Fields a request omits take the model's generation_config.json
values (`ServerConfig.sampling_defaults`), else OpenAI's defaults.

Concurrent requests are batched: the `BatchingEngine` (server_engine) waits `batch_window_s`
after the first pending request for others (up to `max_batch_rows` rows, a request with n samples
counts n), runs one `Sampler.generate_encoded` on a worker thread, and hands each request its
rows. Every row keeps its own sampling settings. At most `max_queue` requests wait; beyond that
a request gets 429 with Retry-After. A client that disconnects has its rows ended at the next
decode step and its results dropped. A malformed request gets 400 with {"error": {"message",
"type": "invalid_request_error"}}; a failure while generating gets 500 with type "server_error";
neither stops the server. On shutdown (SIGTERM under `launch.serve`) the listening socket closes,
requests in flight are finished, new ones get 503.
"""
from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from rlaif_jax.sampling.completions import Prompt
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.sampling.server_engine import BatchingEngine, QueueFull, _Job  # noqa: F401
from rlaif_jax.sampling import server_requests as req
from rlaif_jax.sampling.server_requests import RequestError, ServerConfig, prompts_from_request
from rlaif_jax.sampling.server_metrics import Metrics
from rlaif_jax.sampling import server_responses as resp

__all__ = ["BatchingEngine", "RequestError", "ServerConfig", "make_app", "prompts_from_request",
           "sampling_from_request"]


def sampling_from_request(body: dict, config: ServerConfig,
                          chat: bool, vocab_size: int = 1 << 31) -> tuple[SamplingParams, int]:
  """(SamplingParams, n) from the OpenAI / vLLM fields of `body`; omitted fields take
  `config.sampling_defaults`."""
  d = config.sampling_defaults
  max_tokens = body.get("max_completion_tokens") if chat else None
  key = "max_completion_tokens" if max_tokens is not None else "max_tokens"
  max_tokens = req.integer(body, key, config.default_max_tokens, 1, config.max_tokens_limit)
  top = req.top_logprobs(body, config, chat)
  seed = req.integer(body, "seed", None, -(1 << 63), (1 << 64) - 1)
  fields = dict(temperature=req.number(body, "temperature", d.get("temperature", 1.0), 0.0, 2.0),
                top_p=req.number(body, "top_p", d.get("top_p", 1.0), 0.0, 1.0, lo_open=True),
                top_k=req.integer(body, "top_k", d.get("top_k", 0), -1, 1 << 30),
                min_p=req.number(body, "min_p", d.get("min_p", 0.0), 0.0, 1.0),
                repetition_penalty=req.number(body, "repetition_penalty",
                                              d.get("repetition_penalty", 1.0), 0.0, 1e4,
                                              lo_open=True),
                presence_penalty=req.number(body, "presence_penalty", 0.0, -2.0, 2.0),
                frequency_penalty=req.number(body, "frequency_penalty", 0.0, -2.0, 2.0),
                max_tokens=max_tokens, stop=req.stop_strings(body),
                stop_token_ids=req.stop_token_ids(body, vocab_size), top_logprobs=max(top, 0),
                seed=None if seed is None else seed % (1 << 32),
                response_format=req.response_format(body, config))
  fields["top_k"] = max(fields["top_k"], 0)  # vLLM: -1 = off
  try:
    params = SamplingParams(**fields)
  except ValueError as e:
    raise RequestError(str(e)) from None
  return params, req.integer(body, "n", 1, 1, config.max_n)


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
  return web.json_response({"error": {"message": message, "type": kind}}, status=status,
                           headers=headers)


ENGINE_KEY = web.AppKey("engine", BatchingEngine)
METRICS_KEY = web.AppKey("metrics", Metrics)


def make_app(sampler: Sampler, config: ServerConfig = ServerConfig()) -> web.Application:
  """The aiohttp application; its BatchingEngine starts and stops with the app."""
  metrics = Metrics()
  draining = []  # non-empty once shutdown began

  @web.middleware
  async def errors_as_json(request: web.Request, handler):
    start = time.monotonic()
    try:
      response = await handler(request)
    except RequestError as e:
      response = _error(400, str(e), "invalid_request_error")
    except QueueFull as e:
      response = _error(429, str(e), "rate_limit_error",
                        {"Retry-After": str(config.retry_after_s)})
    except web.HTTPException as e:
      response = _error(e.status, e.reason, "invalid_request_error")
    except Exception as e:  # Never let one request take the server down.
      response = _error(500, f"{type(e).__name__}: {e}", "server_error")
    if request.path.startswith("/v1/"):
      metrics.requests.labels(request.path, str(response.status)).inc()
      metrics.latency.labels(request.path).observe(time.monotonic() - start)
    return response

  app = web.Application(middlewares=[errors_as_json], client_max_size=8 * 2**20)
  engine = BatchingEngine(sampler, config, metrics)
  app[ENGINE_KEY] = engine
  app[METRICS_KEY] = metrics

  async def on_startup(_):
    engine.start()

  async def on_shutdown(_):
    draining.append(True)

  async def on_cleanup(_):
    await engine.stop()

  app.on_startup.append(on_startup)
  app.on_shutdown.append(on_shutdown)
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

  async def complete(request: web.Request, chat: bool) -> web.StreamResponse:
    if draining:
      return _error(503, "the server is shutting down", "server_error")
    body = await read_body(request)
    req.check_fields(body, chat)
    prompts: list[Prompt] = prompts_from_request(body, chat)
    params, n = sampling_from_request(body, config, chat, sampler.cfg.vocab_size)
    stream, include_usage = req.stream_options(body)
    top = req.top_logprobs(body, config, chat)
    if len(prompts) * n > config.max_batch_rows:
      raise RequestError(f"{len(prompts)} prompts x n={n} is more than this server's "
                         f"max_batch_rows={config.max_batch_rows}")
    job = engine.enqueue(prompts, params, n, stream=stream)
    watcher = asyncio.get_running_loop().create_task(resp.watch_disconnect(request, job))
    try:
      if not stream:
        outs = await job.future
        return web.json_response(resp.completion_body(
            sampler.tokenizer, outs, config.model_name, chat, top,
            req.flag(body, "return_tokens_as_token_ids")))
      first = await job.events.get()
      if first[0] == "end":
        job.future.result()  # a request error found while encoding: a plain 400 / 500
      response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                             "Cache-Control": "no-cache"})
      await response.prepare(request)
      writer = resp.SSEWriter(response, config.model_name, chat)
      metrics.first_token.observe(time.monotonic() - job.enqueued)
      try:
        await resp.stream_answer(writer, job, first, len(prompts) * n, include_usage,
                                 sampler.tokenizer, top, req.flag(body, "return_tokens_as_token_ids"))
      except (ConnectionResetError, asyncio.CancelledError):
        job.cancelled = True  # the client went away mid-stream: its rows end next step
        raise
      await response.write_eof()
      return response
    except asyncio.CancelledError:
      job.cancelled = True
      raise
    finally:
      watcher.cancel()

  async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await complete(request, chat=True)

  async def completions(request: web.Request) -> web.StreamResponse:
    return await complete(request, chat=False)

  async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": config.model_name, "object": "model", "created": 0, "owned_by": "rlaif_jax"}]})

  async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "draining" if draining else "ok",
                              "queue_depth": engine.queue_depth, "busy": engine.busy,
                              **engine.stats}, status=503 if draining else 200)

  async def metrics_endpoint(_: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})

  app.router.add_post("/v1/chat/completions", chat_completions)
  app.router.add_post("/v1/completions", completions)
  app.router.add_get("/v1/models", models)
  app.router.add_get("/health", health)
  app.router.add_get("/metrics", metrics_endpoint)
  return app
