"""Backends against a real local HTTP server with injected faults, and the local backend."""
import asyncio
import logging
import socket
import threading

import pytest

from fake_openai_server import FakeOpenAIServer, make_local_generate_fn, schedule_by_key
from rlaif_jax.judging.backends import (FatalBackendError, LocalSamplerBackend, OpenAIChatBackend,
                                        RetryPolicy, TransientBackendError, make_backend,
                                        parse_retry_after)
from rlaif_jax.judging.judge import PrincipleJudge

FAST_RETRY = RetryPolicy(max_attempts=6, base_delay_s=0.005, max_delay_s=0.02)
SECRET = "sk-test-SECRET-0123456789"


def _responses(n):
  return [f"第{i}条：" + ("愿你前程似锦，万事顺意，岁岁平安，笑口常开，幸福美满！" if i % 2 else "生日快乐")
          for i in range(n)]


def _backend(server, **kwargs):
  kwargs.setdefault("retry", FAST_RETRY)
  kwargs.setdefault("timeout_s", 0.3)
  return OpenAIChatBackend(server.base_url, "fake-model", seed=0, **kwargs)


def test_every_item_gets_the_intended_verdict_despite_faults():
  responses = _responses(24)
  kinds = ["429", "500", "503", "timeout", "non_json", "truncated", "garbage"]
  plan = {r: [kinds[i % len(kinds)]] for i, r in enumerate(responses[:14])}
  plan[responses[14]] = ["429", "timeout", "truncated", "500"]  # Several faults in a row.
  with FakeOpenAIServer(fault_fn=schedule_by_key(plan), timeout_sleep_s=0.6) as server:
    judge = PrincipleJudge(_backend(server, concurrency=6), "v0")
    verdicts = judge.judge_sync(["请写祝福"] * len(responses), responses)
    injected = {r.fault for r in server.log if r.fault}
  assert injected == set(kinds)
  for response, v in zip(responses, verdicts):
    assert v.error is None, v.error
    assert v.verdict == int(len(response) >= 30), response
  by_response = dict(zip(responses, verdicts))
  assert by_response[responses[5]].attempts == 2  # Truncated reply -> parsed on the re-ask.
  assert by_response[responses[6]].attempts == 2  # Garbage prose -> re-asked.
  assert by_response[responses[0]].attempts == 1  # HTTP faults are retried by the backend.


def test_retry_after_is_honoured():
  plan = {"生日快乐": ["429"]}
  with FakeOpenAIServer(fault_fn=schedule_by_key(plan), retry_after="0.4") as server:
    judge = PrincipleJudge(_backend(server), "v0")
    [v] = judge.judge_sync(["q"], ["生日快乐"])
    times = [r.t for r in server.log]
  assert v.verdict == 0
  assert len(times) == 2 and times[1] - times[0] >= 0.39


def test_parse_retry_after_forms():
  assert parse_retry_after("3") == 3.0
  assert parse_retry_after("0.25") == 0.25
  assert parse_retry_after(None) is None and parse_retry_after("soon") is None
  date = "Wed, 21 Oct 2015 07:28:00 GMT"
  assert parse_retry_after(date, now=1445412480.0 - 10) == pytest.approx(10.0)
  assert parse_retry_after(date, now=1445412480.0 + 10) == 0.0
  policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, jitter=0.0, max_retry_after_s=30)
  assert [policy.delay_s(i, None) for i in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
  assert policy.delay_s(0, 5.0) == 5.0 and policy.delay_s(0, 999.0) == 30.0


def test_gives_up_after_max_attempts_without_sinking_the_batch():
  responses = _responses(4)
  plan = {responses[1]: ["500"] * 10}
  with FakeOpenAIServer(fault_fn=schedule_by_key(plan)) as server:
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.001)
    verdicts = PrincipleJudge(_backend(server, retry=retry), "v0").judge_sync(["q"] * 4, responses)
    tries = [r for r in server.log if r.key == responses[1]]
  assert "gave up after 3 attempts" in verdicts[1].error and verdicts[1].verdict is None
  assert len(tries) == 3
  assert [v.verdict for i, v in enumerate(verdicts) if i != 1] == [0, 0, 1]


def test_client_errors_fail_fast():
  responses = _responses(3)
  plan = {responses[0]: ["400"] * 5}
  with FakeOpenAIServer(fault_fn=schedule_by_key(plan)) as server:
    verdicts = PrincipleJudge(_backend(server), "v0").judge_sync(["q"] * 3, responses)
    assert len([r for r in server.log if r.key == responses[0]]) == 1  # Not retried.
  assert "HTTP 400" in verdicts[0].error and verdicts[1].error is None
  with FakeOpenAIServer(fault_fn=lambda role, key, attempt: "401") as server:
    with pytest.raises(FatalBackendError, match="HTTP 401"):
      PrincipleJudge(_backend(server), "v0").judge_sync(["q"], ["r"])  # Aborts the job.
    assert len(server.log) == 1


def test_connection_refused_is_transient():
  sock = socket.socket()
  sock.bind(("127.0.0.1", 0))
  port = sock.getsockname()[1]
  sock.close()
  backend = OpenAIChatBackend(f"http://127.0.0.1:{port}", "m", timeout_s=1.0,
                              retry=RetryPolicy(max_attempts=2, base_delay_s=0.001))
  with pytest.raises(TransientBackendError, match="gave up after 2 attempts"):
    backend.generate_sync([[{"role": "user", "content": "hi"}]])


def test_concurrency_limit_is_respected():
  with FakeOpenAIServer(delay_s=0.1) as server:
    backend = _backend(server, concurrency=3, timeout_s=5)
    PrincipleJudge(backend, "v0").judge_sync(["q"] * 12, _responses(12))
    assert 2 <= server.max_in_flight <= 3


def test_api_key_is_sent_but_never_logged_or_raised(monkeypatch, caplog, capsys):
  monkeypatch.setenv("FAKE_JUDGE_KEY", SECRET)
  caplog.set_level(logging.DEBUG)
  with FakeOpenAIServer(expected_key=SECRET, fault_fn=schedule_by_key({"生日快乐": ["429"]})) as server:
    backend = _backend(server, api_key_env="FAKE_JUDGE_KEY")
    [v] = PrincipleJudge(backend, "v0").judge_sync(["q"], ["生日快乐"])
    assert v.verdict == 0 and server.log[-1].authorization == f"Bearer {SECRET}"
  texts = [repr(backend), str(backend.__dict__.keys())]
  # The server rejects the key and echoes the Authorization header back in its error body.
  with FakeOpenAIServer(expected_key="another-key") as server:
    backend = _backend(server, api_key_env="FAKE_JUDGE_KEY")
    with pytest.raises(FatalBackendError) as info:
      backend.generate_sync([[{"role": "user", "content": "hi"}]])
    texts += [str(info.value), repr(info.value), repr(backend)]
    assert "Bearer ***" in str(info.value)
  captured = capsys.readouterr()
  texts += [caplog.text, captured.out, captured.err]
  assert all(SECRET not in t for t in texts)
  assert "FAKE_JUDGE_KEY" in repr(backend)
  monkeypatch.delenv("FAKE_JUDGE_KEY")
  with pytest.raises(ValueError, match="FAKE_JUDGE_KEY is not set"):
    OpenAIChatBackend("http://x", "m", api_key_env="FAKE_JUDGE_KEY", require_api_key=True)
  monkeypatch.setenv("FAKE_JUDGE_KEY", SECRET + "\n")  # pasted with a newline: stripped
  with FakeOpenAIServer(expected_key=SECRET) as server:
    backend = _backend(server, api_key_env="FAKE_JUDGE_KEY")
    assert backend.generate_sync([[{"role": "user", "content": "hi"}]])
  monkeypatch.setenv("FAKE_JUDGE_KEY", SECRET[:3] + "\n" + SECRET[3:])
  with pytest.raises(ValueError, match="FAKE_JUDGE_KEY holds whitespace") as info:
    OpenAIChatBackend("http://x", "m", api_key_env="FAKE_JUDGE_KEY")
  assert SECRET[3:] not in str(info.value)


def test_local_backend_batches_in_a_worker_thread():
  threads = []

  def generate_fn(prompts_messages, max_tokens, temperature):
    threads.append(threading.current_thread().name)
    return [f"{m[-1]['content']}|{max_tokens}|{temperature}|END|tail" for m in prompts_messages]

  backend = LocalSamplerBackend(generate_fn, max_batch_size=2)
  batch = [[{"role": "user", "content": f"p{i}"}] for i in range(5)]
  out = backend.generate_sync(batch, max_tokens=7, temperature=0.5, stop=["|END"])
  assert out == [f"p{i}|7|0.5" for i in range(5)]
  assert len(threads) == 3 and threading.main_thread().name not in threads

  async def inside_a_loop():
    return backend.generate_sync(batch[:1])  # Must not deadlock a running loop.
  assert asyncio.run(inside_a_loop()) == ["p0|1024|0.0|END|tail"]


def test_local_backend_failures_are_typed():
  wrong = LocalSamplerBackend(lambda msgs, max_tokens, temperature: ["only one"])
  with pytest.raises(FatalBackendError, match="returned 1 outputs for 2 prompts"):
    wrong.generate_sync([[{"role": "user", "content": "a"}]] * 2)

  def broken(msgs, max_tokens, temperature):
    raise RuntimeError("device on fire")
  settled = asyncio.run(LocalSamplerBackend(broken).generate_settled(
      [[{"role": "user", "content": "a"}]] * 2))
  assert all(isinstance(e, TransientBackendError) and "device on fire" in str(e) for e in settled)
  with pytest.raises(ValueError, match=r"messages_batch\[0\]\[0\]"):
    LocalSamplerBackend(broken).generate_sync([[{"role": "user"}]])


def test_make_backend_factory_and_local_judge():
  with pytest.raises(ValueError, match="unknown backend 'nope'"):
    make_backend("nope")
  with pytest.raises(TypeError, match="make_backend\\('openai'\\)"):
    make_backend("openai", base_url="http://x", model="m", bogus=1)
  backend = make_backend("local", generate_fn="fake_openai_server:make_local_generate_fn",
                         factory_kwargs='{"min_len": 10}')
  assert isinstance(backend, LocalSamplerBackend)
  responses = ["短", "这一条足足有十多个字的祝福语哦"]
  verdicts = PrincipleJudge(backend, "v0").judge_sync(["q", "q"], responses)
  assert [v.verdict for v in verdicts] == [0, 1]
  fn = make_local_generate_fn()
  PrincipleJudge(LocalSamplerBackend(fn), "v0").judge_sync(["q"] * 5, ["r"] * 5)
  assert fn.batches == [5]  # All prompts of the call in one sampler batch.
  with pytest.raises(ValueError, match="has no attribute 'missing'"):
    make_backend("local", generate_fn="fake_openai_server:missing")
