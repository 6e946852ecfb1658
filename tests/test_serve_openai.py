"""The server as vLLM users meet it (issue 18): the official `openai` client over real HTTP to
the real aiohttp server on localhost (run on a background thread's event loop).

Streaming equals non-streaming for greedy decoding, log-probs included; logprobs equal a full
forward pass of the Hugging Face model; penalties change a looping greedy output; json_schema outputs parse and
validate; a small queue answers 200 or 429 to a burst, loses nothing and stays healthy; a client
that disconnects mid-stream frees its rows; unknown parameters get a 400 naming them.
"""
import asyncio
import json
import threading
import urllib.request

import jsonschema
import numpy as np
import openai
import pytest
import torch
import transformers
from aiohttp import web

from rlaif_jax.sampling import defaults
from rlaif_jax.sampling.server import ENGINE_KEY, ServerConfig, make_app
from tests.test_server import free_port, hf_dir, sampler  # noqa: F401 (module fixtures)

SCHEMA = {"type": "object", "properties": {
    "verdict": {"type": "string", "enum": ["A", "B", "tie"]},
    "score": {"type": "integer", "minimum": 1, "maximum": 9},
    "ok": {"type": "boolean"}}, "required": ["verdict", "score", "ok"],
    "additionalProperties": False}


class Server:
  """An app served on 127.0.0.1 from a thread of its own."""

  def __init__(self, app: web.Application):
    self.app = app
    self.loop = asyncio.new_event_loop()
    self.port = free_port()
    self.runner = web.AppRunner(app)
    ready = threading.Event()

    def run():
      asyncio.set_event_loop(self.loop)
      self.loop.run_until_complete(self.runner.setup())
      self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
      ready.set()
      self.loop.run_forever()

    self.thread = threading.Thread(target=run, daemon=True)
    self.thread.start()
    assert ready.wait(30)
    self.base = f"http://127.0.0.1:{self.port}"

  def client(self, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", **kwargs)

  def get(self, path: str) -> tuple[int, str]:
    try:
      with urllib.request.urlopen(self.base + path, timeout=10) as r:
        return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
      return e.code, e.read().decode()

  def close(self):
    asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
    self.loop.call_soon_threadsafe(self.loop.stop)
    self.thread.join(10)


@pytest.fixture(scope="module")
def server(sampler):
  s = Server(make_app(sampler, ServerConfig(model_name="tiny", batch_window_s=0.05)))
  yield s
  s.close()


def user(text: str) -> list[dict]:
  return [{"role": "user", "content": text}]


def test_streaming_equals_non_streaming_for_greedy(server):
  client = server.client()
  full = client.chat.completions.create(model="tiny", messages=user("新年快乐"), n=2,
                                        temperature=0, max_tokens=12)
  chunks = list(client.chat.completions.create(
      model="tiny", messages=user("新年快乐"), n=2, temperature=0, max_tokens=12, stream=True,
      stream_options={"include_usage": True}))
  texts, reasons = ["", ""], [None, None]
  for chunk in chunks[:-1]:
    for c in chunk.choices:
      texts[c.index] += c.delta.content or ""
      reasons[c.index] = c.finish_reason or reasons[c.index]
  assert len(chunks) > 4  # the text came in pieces
  assert texts == [c.message.content for c in full.choices]
  assert reasons == [c.finish_reason for c in full.choices]
  assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()
  plain = client.completions.create(model="tiny", prompt="hello", temperature=0, max_tokens=10,
                                    stop=["\x11\x11"])
  streamed = "".join(c.choices[0].text for c in client.completions.create(
      model="tiny", prompt="hello", temperature=0, max_tokens=10, stop=["\x11\x11"],
      stream=True))
  assert streamed == plain.choices[0].text
  # The wire format ends with data: [DONE].
  req = urllib.request.Request(f"{server.base}/v1/completions", data=json.dumps(
      {"prompt": "hi", "max_tokens": 3, "stream": True}).encode(),
      headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=60) as r:
    events = [e for e in r.read().decode().split("\n\n") if e]
  assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_logprobs_equal_a_full_forward_pass(server, hf_dir, sampler):
  client = server.client()
  hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
  tok = sampler.tokenizer

  def reference(prompt_ids: list[int], ids: list[int]) -> np.ndarray:
    with torch.no_grad():
      logits = hf(torch.tensor([prompt_ids + ids])).logits[0].double()
    return torch.log_softmax(logits, -1)[len(prompt_ids) - 1:-1].numpy()

  as_id = lambda token: int(token.removeprefix("token_id:"))
  answer = client.chat.completions.create(model="tiny", messages=user("早上好"), temperature=0.8,
                                          max_tokens=8, logprobs=True, top_logprobs=2, seed=3,
                                          extra_body={"return_tokens_as_token_ids": True})
  content = answer.choices[0].logprobs.content
  ids = [as_id(c.token) for c in content]
  assert tok.decode(ids) == answer.choices[0].message.content
  ref = reference(tok.encode(tok.apply_chat_template(user("早上好"))), ids)
  for t, c in enumerate(content):
    assert abs(c.logprob - ref[t, ids[t]]) < 1e-4
    best = np.argsort(-ref[t])[:2]
    assert [as_id(x.token) for x in c.top_logprobs] == best.tolist()
    np.testing.assert_allclose([x.logprob for x in c.top_logprobs], ref[t, best], atol=1e-4)
  legacy = client.completions.create(model="tiny", prompt="hello", max_tokens=6, logprobs=3,
                                     temperature=1.0, seed=1)
  lp = legacy.choices[0].logprobs
  assert "".join(lp.tokens).startswith(legacy.choices[0].text)
  by_id = client.completions.create(
      model="tiny", prompt="hello", max_tokens=6, logprobs=3, temperature=1.0, seed=1,
      extra_body={"return_tokens_as_token_ids": True}).choices[0].logprobs
  ids = [as_id(t) for t in by_id.tokens]
  ref = reference(tok.encode("hello"), ids)
  np.testing.assert_allclose(lp.token_logprobs, ref[np.arange(len(ids)), ids], atol=1e-4)
  for t, alternatives in enumerate(by_id.top_logprobs):
    best = np.argsort(-ref[t])[:3]
    assert [as_id(k) for k in alternatives] == best.tolist()
    np.testing.assert_allclose(list(alternatives.values()), ref[t, best], atol=1e-4)


def test_streamed_logprobs_come_with_their_text_and_equal_the_non_streamed_ones(server):
  client = server.client()
  kw = dict(model="tiny", messages=user("新年快乐"), n=2, temperature=0, max_tokens=12,
            logprobs=True, top_logprobs=2)
  full = client.chat.completions.create(**kw)
  chunks = list(client.chat.completions.create(**kw, stream=True))
  texts, entries = ["", ""], [[], []]
  for chunk in chunks:
    for c in chunk.choices:
      texts[c.index] += c.delta.content or ""
      got = c.logprobs.content if c.logprobs is not None else []
      entries[c.index] += got
      if c.delta.content and c.finish_reason is None:  # a mid-stream delta: its own tokens
        assert "".join(e.token for e in got) == c.delta.content
  assert sum(bool(c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content)
             for c in chunks) > 4  # log-probs came in pieces, with the text
  for i, choice in enumerate(full.choices):
    assert texts[i] == choice.message.content
    assert [e.model_dump() for e in entries[i]] == [
        e.model_dump() for e in choice.logprobs.content]
  # Completions form, with a stop string: offsets continue across chunks.
  kw = dict(model="tiny", prompt="hello", temperature=0, max_tokens=10, logprobs=2,
            stop=["\x11\x11"])
  plain = client.completions.create(**kw).choices[0].logprobs
  tokens, lps, offsets, tops = [], [], [], []
  for chunk in client.completions.create(**kw, stream=True):
    lp = chunk.choices[0].logprobs
    tokens += lp.tokens
    lps += lp.token_logprobs
    offsets += lp.text_offset
    tops += lp.top_logprobs
  assert (tokens, lps, offsets, tops) == (plain.tokens, plain.token_logprobs, plain.text_offset,
                                          plain.top_logprobs)


def test_penalties_change_a_looping_greedy_output_and_seeds_repeat(server):
  client = server.client()
  ask = lambda **kw: client.chat.completions.create(
      model="tiny", messages=user("hello"), max_tokens=16, temperature=0,
      **kw).choices[0].message.content
  looping = ask()
  assert looping.count("\x11") >= 6, repr(looping)  # it loops
  penalized = ask(extra_body={"repetition_penalty": 50.0})
  assert penalized != looping
  assert penalized.count("\x11") <= 1  # a seen token's logit is divided by 50
  assert ask(frequency_penalty=2.0) != looping
  assert ask(presence_penalty=2.0) != looping
  sampled = lambda seed: client.completions.create(model="tiny", prompt="hi", max_tokens=8,
                                                   seed=seed, n=2).choices
  first, again = sampled(11), sampled(11)
  assert [c.text for c in first] == [c.text for c in again]
  assert first[0].text != first[1].text


def test_json_schema_outputs_parse_and_validate(server):
  client = server.client()

  def ask(i: int):
    return client.chat.completions.create(
        model="tiny", messages=user(f"评价 {i}"), max_tokens=48, temperature=1.0, n=2,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "verdict", "schema": SCHEMA}})

  from concurrent.futures import ThreadPoolExecutor
  with ThreadPoolExecutor(10) as pool:
    answers = list(pool.map(ask, range(10)))
  texts = [c.message.content for a in answers for c in a.choices]
  assert len(texts) == 20
  for text in texts:
    jsonschema.validate(json.loads(text), SCHEMA)
  assert len(set(texts)) > 1  # sampled, not a fixed string
  obj = client.chat.completions.create(model="tiny", messages=user("x"), max_tokens=64,
                                       temperature=0, response_format={"type": "json_object"})
  if obj.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
  with pytest.raises(openai.BadRequestError, match="response_format"):
    client.chat.completions.create(model="tiny", messages=user("x"), max_tokens=4,
                                   response_format={"type": "json_schema", "json_schema": {
                                       "name": "bad", "schema": {"type": "nonsense"}}})


def test_unknown_parameters_are_refused_by_name(server):
  client = server.client()
  for extra in ({"best_of": 2}, {"ignore_eos": True}, {"logit_bias": {"5": 1}}):
    with pytest.raises(openai.BadRequestError, match=next(iter(extra))):
      client.chat.completions.create(model="tiny", messages=user("x"), max_tokens=2,
                                     extra_body=extra)
  with pytest.raises(openai.BadRequestError, match="stream"):
    client.chat.completions.create(model="tiny", messages=user("x"), max_tokens=2,
                                   stream_options={"include_usage": True})


def test_disconnected_stream_frees_its_rows(server):
  engine = server.app[ENGINE_KEY]
  before = dict(engine.stats)
  client = server.client()
  stream = client.completions.create(model="tiny", prompt="hello", max_tokens=2000,
                                     temperature=1.0, stream=True, seed=0)
  next(iter(stream))
  stream.close()  # the client goes away after its first chunk
  for _ in range(600):
    if engine.stats["batches"] > before["batches"] and not engine.busy:
      break
    threading.Event().wait(0.1)
  assert engine.stats["cancelled"] > before["cancelled"]
  ok = client.completions.create(model="tiny", prompt="hi", max_tokens=2)
  assert ok.choices[0].finish_reason in ("stop", "length")
  status, health = server.get("/health")
  assert status == 200 and json.loads(health)["status"] == "ok"
  status, metrics = server.get("/metrics")
  assert status == 200
  for name in ("rlaif_queue_depth", "rlaif_batch_rows_bucket", "rlaif_tokens_per_second",
               "rlaif_request_latency_seconds_bucket", "rlaif_generated_tokens_total"):
    assert name in metrics


def test_a_full_queue_answers_429_and_loses_nothing(sampler):
  server = Server(make_app(sampler, ServerConfig(max_queue=4, max_batch_rows=8,
                                                 batch_window_s=0.01, retry_after_s=2)))
  try:
    client = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0,
                                timeout=300)

    async def one(i: int):
      try:
        r = await client.completions.create(model="tiny", prompt=f"p{i}", max_tokens=2)
        return 200, len(r.choices)
      except openai.RateLimitError as e:
        return 429, e.response.headers.get("retry-after")

    async def burst():
      return await asyncio.gather(*(one(i) for i in range(200)))

    answers = asyncio.run(burst())
    assert len(answers) == 200
    assert {a[0] for a in answers} == {200, 429}
    assert all(a == (200, 1) or a == (429, "2") for a in answers)
    status, health = server.get("/health")
    health = json.loads(health)
    assert status == 200 and health["queue_depth"] == 0
    assert health["rejected"] == sum(a[0] == 429 for a in answers)
    assert health["requests"] == sum(a[0] == 200 for a in answers)
    assert server.client().completions.create(model="tiny", prompt="x", max_tokens=1).choices
  finally:
    server.close()


def test_generation_config_defaults_apply(hf_dir, sampler, tmp_path):
  (tmp_path / "generation_config.json").write_text(json.dumps(
      {"temperature": 0.0, "top_k": 20, "top_p": 0.8, "repetition_penalty": 50.0,
       "do_sample": True}))
  found = defaults.generation_defaults(tmp_path)
  assert found == {"temperature": 0.0, "top_k": 20, "top_p": 0.8, "repetition_penalty": 50.0}
  server = Server(make_app(sampler, ServerConfig(sampling_defaults=found)))
  try:
    client = server.client()
    ask = lambda **kw: client.chat.completions.create(
        model="tiny", messages=user("hello"), max_tokens=16, **kw).choices[0].message.content
    # The defaults make it greedy with the penalty: the same text twice, and not the plain
    # greedy loop; an explicit field overrides them.
    assert ask() == ask() == ask(temperature=0, extra_body={"repetition_penalty": 50.0})
    assert ask() != ask(temperature=0, extra_body={"repetition_penalty": 1.0})
  finally:
    server.close()


def test_judge_verdicts_follow_the_schema_with_structured_output(sampler, monkeypatch):
  from rlaif_jax.judging import parsing
  from rlaif_jax.judging.backends import OpenAIChatBackend, SamplingParams
  from rlaif_jax.judging.judge import PrincipleJudge
  # A random model writes strings up to their cap: a short cap keeps this test fast.
  short = json.loads(json.dumps(parsing.DETECTOR_SCHEMA))
  short["properties"]["evaluation_explanation"]["maxLength"] = 16
  monkeypatch.setattr(parsing, "DETECTOR_SCHEMA", short)
  server = Server(make_app(sampler, ServerConfig(max_prompt_tokens=8192, batch_window_s=0.05)))
  try:
    plain = OpenAIChatBackend(f"{server.base}/v1", "tiny", api_key_env="")
    backend = OpenAIChatBackend(f"{server.base}/v1", "tiny", api_key_env="",
                                structured_output=True)
    assert plain.with_response_schema("x", parsing.DETECTOR_SCHEMA) is plain
    judge = PrincipleJudge(backend, "v0", max_attempts=1,
                           sampling=SamplingParams(temperature=0.0, max_tokens=200))
    queries, responses = ["给妈妈写一句新年祝福"] * 3, ["妈妈新年快乐！", "好", "祝您健康"]
    verdicts = judge.judge_sync(queries, responses)
    assert all(v.error is None and v.verdict in (0, 1) for v in verdicts), verdicts
    unconstrained = PrincipleJudge(plain, "v0", max_attempts=1,
                                   sampling=SamplingParams(temperature=0.0, max_tokens=8))
    assert unconstrained.fingerprint != judge.fingerprint
  finally:
    server.close()


def test_sigterm_finishes_requests_in_flight(hf_dir):
  import os
  import signal
  import subprocess
  import sys
  import time
  from tests.test_server import ROOT
  port = free_port()
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "launch.serve", f"--hf_dir={hf_dir}",
                           f"--port={port}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + 90
    while True:
      assert proc.poll() is None and time.time() < deadline
      try:
        urllib.request.urlopen(f"{base}/health", timeout=2).read()
        break
      except OSError:
        time.sleep(0.3)
    result = {}

    def ask():
      client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0,
                             timeout=120)
      result["answer"] = client.completions.create(model="x", prompt="hello", max_tokens=64)
    thread = threading.Thread(target=ask)
    thread.start()
    while json.loads(urllib.request.urlopen(f"{base}/health", timeout=5).read())["busy"] is False:
      assert time.time() < deadline
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    thread.join(120)
    assert result["answer"].choices[0].finish_reason in ("stop", "length")
    assert proc.wait(60) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait(30)
    proc.stdout.close()


def test_schema_limits_bound_every_reply_of_a_throwaway_judge(sampler):
  """A server with max_schema_string_chars / max_schema_items (the pipeline's stand-in judge)
  answers the debaters' open {"point": "reason"} schema and the judge schema within the caps,
  and the replies parse with the project's own parsers."""
  from rlaif_jax.judging import parsing
  s = Server(make_app(sampler, ServerConfig(model_name="tiny", batch_window_s=0.05,
                                            max_schema_string_chars=6, max_schema_items=2)))
  try:
    client = s.client()
    for schema, parse in ((parsing.POINTS_SCHEMA, parsing.parse_points),
                          (parsing.JUDGE_SCHEMA, parsing.parse_judge)):
      answer = client.chat.completions.create(
          model="tiny", messages=user("评价"), max_tokens=200, temperature=1.0, n=4, seed=3,
          response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
      for choice in answer.choices:
        assert choice.finish_reason == "stop", choice.message.content
        # strict=False: xgrammar's length-counted strings admit raw control characters (tab,
        # \x01, ...), which strict JSON forbids; the project's parsers read them (strict=False).
        obj = json.loads(choice.message.content, strict=False)
        jsonschema.validate(obj, schema)  # still the schema the client asked for
        assert len(obj) <= 2 and all(len(str(k)) <= 6 for k in obj)
        assert all(len(v) <= 6 for v in obj.values() if isinstance(v, str))
        parse(choice.message.content)
  finally:
    s.close()


def test_truncate_prompt_tokens_keeps_the_last_tokens(sampler):
  """ServerConfig.truncate_prompt_tokens (vLLM's parameter, server-wide): a prompt longer than
  max_prompt_tokens is served from its last N tokens instead of refused, usage counts them, and
  greedy output equals the output for those N tokens given alone."""
  s = Server(make_app(sampler, ServerConfig(model_name="tiny", batch_window_s=0.0,
                                            max_prompt_tokens=8, truncate_prompt_tokens=6)))
  try:
    client = s.client()
    prompt = "一二三四五六七八九十 hello world, a prompt longer than eight tokens"
    ids = sampler.tokenizer.encode(prompt)
    assert len(ids) > 8
    long = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0)
    assert long.usage.prompt_tokens == 6
    tail = client.completions.create(model="tiny", prompt=sampler.tokenizer.decode(ids[-6:]),
                                     max_tokens=5, temperature=0)
    assert tail.usage.prompt_tokens == 6  # the tail re-encodes to the same tokens
    assert long.choices[0].text == tail.choices[0].text
  finally:
    s.close()
