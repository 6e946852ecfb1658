"""The OpenAI-compatible server over real HTTP: batching of concurrent requests, n, stop,
max_tokens, usage, 400s that leave the server running, and `python -m launch.serve`."""
import asyncio
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest
from aiohttp import web

from rlaif_jax.sampling.loading import load_policy
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.sampling.server import ServerConfig, make_app
from tests import tiny_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return tiny_hf.make_tiny_hf_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def sampler(hf_dir):
  policy = load_policy(hf_dir=hf_dir)
  return Sampler(policy.model, policy.tokenizer)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running(app: web.Application):
  runner = web.AppRunner(app)
  await runner.setup()
  port = free_port()
  await web.TCPSite(runner, "127.0.0.1", port).start()
  try:
    yield f"http://127.0.0.1:{port}"
  finally:
    await runner.cleanup()


async def post(session, url, body) -> tuple[int, dict]:
  data = body if isinstance(body, (str, bytes)) else json.dumps(body)
  async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
    return r.status, await r.json()


def chat(content: str, **fields) -> dict:
  return {"model": "x", "messages": [{"role": "user", "content": content}],
          "max_tokens": MAX_TOKENS, **fields}


def test_concurrent_requests_are_batched_and_answered(sampler):
  app = make_app(sampler, ServerConfig(model_name="tiny", batch_window_s=0.3))
  tok = sampler.tokenizer
  greedy_ref = sampler.generate([[{"role": "user", "content": "新年快乐"}]], MAX_TOKENS,
                                SamplingParams.greedy())[0]
  full = greedy_ref.text
  assert len(full) >= 4, f"greedy text too short to pick a stop string: {full!r}"
  stop = full[2:4]

  async def scenario():
    async with running(app) as base, aiohttp.ClientSession() as s:
      requests = [
          (f"{base}/v1/chat/completions", chat("新年快乐", temperature=0)),
          (f"{base}/v1/chat/completions", chat("生日快乐", n=3, temperature=0.9, top_p=0.8)),
          (f"{base}/v1/chat/completions", chat("新年快乐", temperature=0, stop=stop)),
          (f"{base}/v1/completions", {"prompt": ["hello", "早上好"], "n": 2, "max_tokens": 5,
                                      "temperature": 1.0}),
      ]
      answers = await asyncio.gather(*(post(s, url, body) for url, body in requests))
      async with s.get(f"{base}/v1/models") as r:
        models = await r.json()
      async with s.get(f"{base}/health") as r:
        health = await r.json()
      return answers, models, health

  answers, models, health = asyncio.run(scenario())
  assert [status for status, _ in answers] == [200] * 4, answers
  assert health["requests"] == 4 and health["batches"] < 4  # concurrent requests shared batches
  assert models["data"][0]["id"] == "tiny"

  greedy, sampled, stopped, plain = (a for _, a in answers)
  assert greedy["object"] == "chat.completion" and greedy["model"] == "tiny"
  assert greedy["choices"][0]["message"] == {"role": "assistant", "content": full}
  assert greedy["choices"][0]["finish_reason"] == greedy_ref.finish_reason
  prompt_len = len(tok.encode(tok.apply_chat_template([{"role": "user", "content": "新年快乐"}])))
  assert greedy["usage"] == {"prompt_tokens": prompt_len,
                             "completion_tokens": greedy_ref.completion_tokens,
                             "total_tokens": prompt_len + greedy_ref.completion_tokens}

  assert [c["index"] for c in sampled["choices"]] == [0, 1, 2]
  assert len({c["message"]["content"] for c in sampled["choices"]}) > 1

  assert stopped["choices"][0]["message"]["content"] == full[:full.find(stop)]
  assert stopped["choices"][0]["finish_reason"] == "stop"

  assert plain["object"] == "text_completion" and len(plain["choices"]) == 4
  assert plain["usage"]["prompt_tokens"] == len(tok.encode("hello")) + len(tok.encode("早上好"))
  for answer, limit in ((greedy, MAX_TOKENS), (sampled, MAX_TOKENS), (plain, 5)):
    assert answer["usage"]["completion_tokens"] <= limit * len(answer["choices"])
  assert plain["usage"]["total_tokens"] == (plain["usage"]["prompt_tokens"]
                                            + plain["usage"]["completion_tokens"])


BAD_REQUESTS = [
    ("/v1/chat/completions", "{not json", "not valid JSON"),
    ("/v1/chat/completions", "[1, 2]", "JSON object"),
    ("/v1/chat/completions", {"max_tokens": 4}, "'messages'"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("/v1/chat/completions", chat("x", temperature="hot"), "'temperature' must be a number"),
    ("/v1/chat/completions", chat("x", top_p=0), "'top_p'"),
    ("/v1/chat/completions", chat("x", n=0), "'n'"),
    ("/v1/chat/completions", chat("x", n=True), "'n' must be an integer"),
    ("/v1/chat/completions", chat("x", max_tokens=10**6), "'max_tokens'"),
    ("/v1/chat/completions", chat("x", stop=[1]), "'stop'"),
    ("/v1/chat/completions", chat("x", stream=True), "stream"),
    ("/v1/completions", {"prompt": ""}, "'prompt'"),
    ("/v1/completions", {"prompt": "长" * 200}, "at most 64"),
    ("/v1/completions", {"prompt": ["a"] * 5, "n": 16}, "max_batch_rows=64"),
]


def test_bad_requests_get_400_and_the_server_keeps_serving(sampler, monkeypatch):
  app = make_app(sampler, ServerConfig(max_prompt_tokens=64, batch_window_s=0.0))
  real_generate = sampler.generate_encoded

  def fail_once(*args, **kwargs):
    monkeypatch.setattr(sampler, "generate_encoded", real_generate)
    raise RuntimeError("device fell over")

  async def scenario():
    async with running(app) as base, aiohttp.ClientSession() as s:
      bad = [await post(s, base + path, body) for path, body, _ in BAD_REQUESTS]
      async with s.get(f"{base}/v1/nothing") as r:
        missing = (r.status, await r.json())
      monkeypatch.setattr(sampler, "generate_encoded", fail_once)
      failed = await post(s, f"{base}/v1/chat/completions", chat("你好", temperature=0))
      ok = await post(s, f"{base}/v1/chat/completions", chat("你好", temperature=0))
      return bad, missing, failed, ok

  bad, missing, failed, ok = asyncio.run(scenario())
  for (path, body, fragment), (status, answer) in zip(BAD_REQUESTS, bad):
    assert status == 400, (body, answer)
    assert answer["error"]["type"] == "invalid_request_error"
    assert fragment in answer["error"]["message"], (fragment, answer)
  assert missing[0] == 404 and "error" in missing[1]
  assert failed[0] == 500 and failed[1]["error"]["type"] == "server_error"
  assert "device fell over" in failed[1]["error"]["message"]
  assert ok[0] == 200 and ok[1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_launch_serve_answers_urllib(hf_dir):
  port = free_port()
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "launch.serve", f"--hf_dir={hf_dir}",
                           f"--port={port}", "--model_name=tiny-cli"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline, models = time.time() + 90, None
    while models is None:
      assert proc.poll() is None, proc.stdout.read()[-3000:]
      assert time.time() < deadline, "server did not come up in 90 s"
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
          models = json.loads(r.read())
      except OSError:
        time.sleep(0.5)
    assert models["data"][0]["id"] == "tiny-cli"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps({"prompt": "hi", "max_tokens": 3, "n": 2}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
      answer = json.loads(r.read())
    assert len(answer["choices"]) == 2 and answer["usage"]["completion_tokens"] <= 6
  finally:
    proc.terminate()
    proc.wait(timeout=30)
    proc.stdout.close()
