"""absl flags shared by the judging entry points (backend, sampling, sharding/resume)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable

from absl import app, flags

from rlaif_jax.jsonl_jobs import JobConfig
from rlaif_jax.judging.backends import (FatalBackendError, LLMBackend, RetryPolicy,
                                        SamplingParams, make_backend)


def define_backend_flags() -> None:
  """--backend and its options, the sampling options and --max_parse_attempts."""
  flags.DEFINE_enum("backend", "openai", ["openai", "local"], "LLM backend.")
  flags.DEFINE_string("base_url", None, "openai: server root, e.g. http://127.0.0.1:8000/v1.")
  flags.DEFINE_string("model", None, "openai: model name served at --base_url.")
  flags.DEFINE_string("api_key_env", "OPENAI_API_KEY",
                      "openai: NAME of the environment variable holding the API key.")
  flags.DEFINE_integer("concurrency", 16, "openai: maximum requests in flight.")
  flags.DEFINE_float("timeout_s", 120.0, "openai: timeout per HTTP request, seconds.")
  flags.DEFINE_integer("max_retries", 5, "openai: retries per request on 429/5xx/timeouts.")
  flags.DEFINE_float("retry_base_delay_s", 1.0, "openai: first backoff delay; doubles per retry.")
  flags.DEFINE_float("retry_max_delay_s", 60.0, "openai: cap of the backoff delay.")
  flags.DEFINE_bool("structured_output", False, "openai: the server implements response_format "
                    "json_schema (launch.serve, vLLM, OpenAI): request the verdict schema, so "
                    "verdicts always parse.")
  flags.DEFINE_string("local_fn", None, "local: 'pkg.module:function' generate_fn "
                      "(prompts_messages, max_tokens, temperature) -> list[str], or a factory of "
                      "one when --local_fn_kwargs is given.")
  flags.DEFINE_string("local_fn_kwargs", None, "local: JSON kwargs for the --local_fn factory.")
  flags.DEFINE_integer("local_max_batch_size", None, "local: split calls into batches of this.")
  flags.DEFINE_float("temperature", 0.0, "Judge sampling temperature.")
  flags.DEFINE_integer("max_tokens", 1024, "Maximum tokens per reply.")
  flags.DEFINE_integer("max_parse_attempts", 3, "Tries per item when a reply cannot be parsed.")


def define_job_flags() -> None:
  """Sharding, chunking, resume and progress flags of a batch job."""
  flags.DEFINE_integer("num_shards", 1, "Split the input into this many shards.")
  flags.DEFINE_integer("shard_index", 0, "Which shard this process runs (0-based).")
  flags.DEFINE_enum("shard_by", "hash", ["hash", "index"], "Assign records by id hash or line.")
  flags.DEFINE_integer("chunk_size", 32, "Records per backend batch.")
  flags.DEFINE_integer("chunks_in_flight", 2, "Chunks processed concurrently.")
  flags.DEFINE_bool("retry_errors", False, "Re-process ids whose output line has an error.")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")
  flags.DEFINE_string("staging_dir", None, "Local staging folder for gs:// outputs.")


def backend_from_flags(f: Any = flags.FLAGS) -> LLMBackend:
  if f.backend == "openai":
    missing = [name for name in ("base_url", "model") if not getattr(f, name)]
    if missing:
      raise app.UsageError(f"--backend=openai needs {', '.join('--' + m for m in missing)}")
    return make_backend("openai", base_url=f.base_url, model=f.model, api_key_env=f.api_key_env,
                        concurrency=f.concurrency, timeout_s=f.timeout_s,
                        retry=RetryPolicy(max_attempts=f.max_retries + 1,
                                          base_delay_s=f.retry_base_delay_s,
                                          max_delay_s=f.retry_max_delay_s),
                        structured_output=f.structured_output)
  if not f.local_fn:
    raise app.UsageError("--backend=local needs --local_fn=pkg.module:function")
  return make_backend("local", generate_fn=f.local_fn, factory_kwargs=f.local_fn_kwargs,
                      max_batch_size=f.local_max_batch_size)


def sampling_from_flags(f: Any = flags.FLAGS) -> SamplingParams:
  return SamplingParams(temperature=f.temperature, max_tokens=f.max_tokens)


def job_config_from_flags(input_path: str, output_path: str, f: Any = flags.FLAGS) -> JobConfig:
  return JobConfig(input_path=input_path, output_path=output_path, num_shards=f.num_shards,
                   shard_index=f.shard_index, shard_by=f.shard_by, chunk_size=f.chunk_size,
                   chunks_in_flight=f.chunks_in_flight, retry_errors=f.retry_errors,
                   progress=f.progress, staging_dir=f.staging_dir)


def quiet_http_loggers() -> None:
  """Keeps aiohttp's access/client chatter out of job logs."""
  for name in ("aiohttp.access", "aiohttp.client", "aiohttp.internal"):
    logging.getLogger(name).setLevel(logging.WARNING)


def run_until_fatal(job: Awaitable[Any]) -> tuple[bool, Any]:
  """Runs a batch job's coroutine; (False, None) after logging when the backend failed for
  every request (bad key, URL or model): finished lines are kept and a re-run resumes."""
  try:
    return True, asyncio.run(job)
  except FatalBackendError as e:
    logging.error("stopped: %s (finished lines are kept; re-run to resume)", e)
    return False, None
