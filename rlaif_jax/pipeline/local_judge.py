"""The judge endpoint of a pipeline run: the configured OpenAI-compatible server
(`--config.judge.base_url/model`: vLLM, SGLang, OpenAI, `launch.serve`), or, with none given, a
stand-in the pipeline serves itself: its SFT checkpoint behind `sampling/server.py` (the code of
`launch.serve`), in this process on a background thread, bound to 127.0.0.1 on a free port and
stopped when the `with` block ends (an error included).

The stand-in makes path B run end to end anywhere; it is the policy's own starting point, so
its verdicts say nothing about judge quality (results.md says so).

Constrained verdicts: with `config.judge.constrained_json` (default on) the judge's backends
are built with `structured_output=True`, so every agent with a reply schema
(`judging/parsing.py`: the detector's verdict, the curator's Judge/Reflect replies) sends it as
`response_format` json_schema. Servers with structured output (vLLM, SGLang, OpenAI, this
stand-in: `sampling/server.py` decodes under an xgrammar grammar) then return verdicts that
parse unless cut at max_tokens; turn it off for a server without it (it would answer 400).
Every agent (the curator's four, the principle judge, the adversarial game's Generator, Reflector
and Optimizer) has a reply schema, so the stand-in's
`config.local_judge.max_schema_string_chars` / `max_schema_items` bound every reply.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
from typing import Any, Iterator

LOCAL_MODEL_NAME = "sft-stand-in-judge"


@dataclasses.dataclass(frozen=True)
class JudgeEndpoint:
  """Where the LLM judge answers; `local` when the pipeline serves the SFT checkpoint."""
  base_url: str
  model: str
  api_key_env: str
  local: bool


class _ServerThread:
  """An aiohttp app on its own event loop in a daemon thread."""

  def __init__(self, app: Any):
    from aiohttp import web  # Local: only when serving.
    self._web, self._app = web, app
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                    name="local-judge-server")
    self._runner = None

  def start(self) -> int:
    self._thread.start()

    async def up() -> int:
      self._runner = self._web.AppRunner(self._app, access_log=None)
      await self._runner.setup()
      site = self._web.TCPSite(self._runner, "127.0.0.1", 0)
      await site.start()
      return int(self._runner.addresses[0][1])
    return asyncio.run_coroutine_threadsafe(up(), self._loop).result(timeout=120)

  def stop(self) -> None:
    """Stops serving; requests still in flight after 60 s are dropped (a warning, not an
    error: the `with` block may be ending on an error of its own, which must surface)."""
    if self._runner is not None:
      try:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=60)
      except concurrent.futures.TimeoutError:
        print("local stand-in judge: requests still in flight after 60 s were dropped",
              flush=True)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout=60)
    self._loop.close()


@contextlib.contextmanager
def serve_checkpoint(checkpoint: str, max_batch_rows: int = 64, max_prompt_tokens: int = 4096,
                     max_schema_string_chars: int | None = None,
                     max_schema_items: int | None = None,
                     prompt_bucket: int = 128,
                     truncate_prompt_tokens: int | None = None) -> Iterator[str]:
  """Serves the exported checkpoint in WORKDIR `checkpoint` on 127.0.0.1:<free port>; yields
  the base URL (".../v1"). The model sits on this process's first device only, so a sampler
  call never waits on other processes. `max_schema_string_chars` / `max_schema_items` tighten
  the verdict schemas (`ServerConfig`): the stand-in's explanations are throwaway text, so
  they are kept short to bound the cost of each call. Prompts are padded to a multiple of
  `prompt_bucket` tokens, not to a power of two: the judges' prompts (~1,100 tokens with the
  agents' templates) would pad to 2,048, which nearly triples the prefill's attention.
  `truncate_prompt_tokens`: the stand-in reads only the last N tokens of each prompt (the
  request, the greeting under review and the reply's opening; the tiny policy cannot follow the
  agents' instructions anyway), which divides the cost of the prefills, most of a call's."""
  import jax  # Local: JAX only when serving.
  from rlaif_jax.sampling.loading import load_policy
  from rlaif_jax.sampling.sampler import Sampler
  from rlaif_jax.sampling.server import ServerConfig, make_app
  from rlaif_jax.sharding import mesh as mesh_lib
  mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.local_devices()[:1])
  policy = load_policy(checkpoint=checkpoint, mesh=mesh)
  config = ServerConfig(model_name=LOCAL_MODEL_NAME, max_batch_rows=max_batch_rows,
                        max_prompt_tokens=max_prompt_tokens, batch_window_s=0.02,
                        max_schema_string_chars=max_schema_string_chars,
                        max_schema_items=max_schema_items,
                        truncate_prompt_tokens=truncate_prompt_tokens)
  server = _ServerThread(make_app(Sampler(policy.model, policy.tokenizer, mesh=mesh,
                                       prompt_bucket=prompt_bucket), config))
  port = server.start()
  url = f"http://127.0.0.1:{port}/v1"
  print(f"local stand-in judge: {checkpoint} served at {url}", flush=True)
  try:
    yield url
  finally:
    server.stop()
    print("local stand-in judge stopped", flush=True)


@contextlib.contextmanager
def judge_endpoint(config: Any, sft_dir: str, needed: bool) -> Iterator[JudgeEndpoint | None]:
  """The configured endpoint, or the SFT checkpoint served for the duration of the block when
  none is configured; None when no stage needs a judge."""
  j = config.judge
  if not needed:
    yield None
  elif j.get("base_url") and j.get("model"):
    yield JudgeEndpoint(j.base_url, j.model, j.api_key_env, local=False)
  else:
    lj = config.local_judge
    with serve_checkpoint(sft_dir, max_batch_rows=lj.max_batch_rows,
                          max_schema_string_chars=lj.get("max_schema_string_chars"),
                          max_schema_items=lj.get("max_schema_items"),
                          prompt_bucket=lj.get("prompt_bucket", 128),
                          truncate_prompt_tokens=lj.get("truncate_prompt_tokens")) as url:
      yield JudgeEndpoint(url, LOCAL_MODEL_NAME, j.api_key_env, local=True)
