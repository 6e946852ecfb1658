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
from rlaif_jax.sampling import server
from rlaif_jax.sampling.server import BatchingEngine, RequestError, ServerConfig, make_app
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
    ("/v1/chat/completions", json.dumps(chat("x"))[:-1] + ', "temperature": NaN}',
     "'temperature' must be a finite number"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": 2, "top_p": NaN}',
     "'top_p' must be a finite number"),
    ("/v1/completions", "[" * 100_000, "not valid JSON"),
    ("/v1/chat/completions", chat("x", n=0), "'n'"),
    ("/v1/chat/completions", chat("x", n=True), "'n' must be an integer"),
    ("/v1/chat/completions", chat("x", max_tokens=10**6), "'max_tokens'"),
    ("/v1/chat/completions", chat("x", stop=[1]), "'stop'"),
    ("/v1/chat/completions", chat("x", stream="yes"), "'stream' must be a boolean"),
    ("/v1/chat/completions", chat("x", logit_bias={"1": 5}), "logit_bias"),
    ("/v1/chat/completions", chat("x", top_logprobs=2), "needs 'logprobs'"),
    ("/v1/completions", {"prompt": "x", "response_format": {"type": "xml"}}, "response_format"),
    ("/v1/chat/completions", chat("x", repetition_penalty=0), "repetition_penalty"),
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


# A chat template that refuses system messages (as several real ones do) and renders nothing
# when the last message is empty.
PICKY_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                  "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}"
                  "{% if messages[-1]['content'] %}" + tiny_hf.CHAT_TEMPLATE + "{% endif %}")


def test_a_prompt_that_cannot_be_encoded_fails_only_its_own_request(sampler, monkeypatch):
  monkeypatch.setattr(sampler.tokenizer.hf, "chat_template", PICKY_TEMPLATE)
  app = make_app(sampler, ServerConfig(batch_window_s=0.5))

  async def scenario():
    async with running(app) as base, aiohttp.ClientSession() as s:
      system = {"messages": [{"role": "system", "content": "be nice"},
                             {"role": "user", "content": "hi"}], "max_tokens": 2}
      answers = await asyncio.gather(
          post(s, f"{base}/v1/chat/completions", system),
          post(s, f"{base}/v1/chat/completions", chat("", max_tokens=2)),
          post(s, f"{base}/v1/completions", {"prompt": "innocent", "max_tokens": 2}),
          post(s, f"{base}/v1/chat/completions", chat("hi", max_tokens=2)))
      async with s.get(f"{base}/health") as r:
        return answers, await r.json()

  (refused, empty, plain, ok), health = asyncio.run(scenario())
  assert refused[0] == 400 and refused[1]["error"]["type"] == "invalid_request_error"
  assert "'messages'" in refused[1]["error"]["message"]
  assert "System role not supported" in refused[1]["error"]["message"]
  assert empty[0] == 400 and "encodes to no tokens" in empty[1]["error"]["message"]
  assert plain[0] == 200 and len(plain[1]["choices"]) == 1
  assert ok[0] == 200 and len(ok[1]["choices"]) == 1
  assert health["batches"] == 1 and health["requests"] == 4  # all four shared one batch


def test_batches_never_exceed_max_batch_rows():
  async def scenario():
    engine = BatchingEngine(None, ServerConfig(max_batch_rows=4, batch_window_s=0.05))
    loop = asyncio.get_running_loop()
    for n in (3, 3, 1, 5, 2):
      engine._queue.put_nowait(server._Job(["p"], SamplingParams(), n, loop.create_future()))
    # A job that does not fit starts the next batch; one larger than the cap runs alone.
    return [[j.n for j in await asyncio.wait_for(engine._collect(), 2)] for _ in range(4)]

  assert asyncio.run(scenario()) == [[3], [3, 1], [5], [2]]


def test_sampling_params_errors_are_request_errors(monkeypatch):
  def refuse(**_):
    raise ValueError("SamplingParams.top_k must be an integer >= 0")

  monkeypatch.setattr(server, "SamplingParams", refuse)
  with pytest.raises(RequestError, match="top_k"):
    server.sampling_from_request(chat("x"), ServerConfig(), chat=True)


def test_default_max_tokens_must_respect_the_limit(hf_dir):
  with pytest.raises(ValueError, match=r"default_max_tokens must be in \[1, max_tokens_limit=64"):
    ServerConfig(default_max_tokens=256, max_tokens_limit=64)
  for bad in (dict(max_batch_rows=0), dict(max_n=0), dict(batch_window_s=-1.0),
              dict(truncate_prompt_tokens=0), dict(max_schema_string_chars=0)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      ServerConfig(**bad)
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "launch.serve", f"--hf_dir={hf_dir}",
                         "--default_max_tokens=100", "--max_tokens_limit=50"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "default_max_tokens must be in" in proc.stderr
  proc = subprocess.run([sys.executable, "-m", "launch.serve", f"--hf_dir={hf_dir}",
                         "--truncate_prompt_tokens=0"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "truncate_prompt_tokens must be >= 1" in proc.stderr
