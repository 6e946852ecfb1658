"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, with deterministic judges and
scheduled faults.

It recognises the package's prompt templates by their role lines, pulls the fields out of the
``### title`` + fenced sections, and answers as each role would, deterministically:

* detector / adversarial detector / judge agent: Good (1) iff ``good_rule(response)``
  (default: at least ``min_len`` characters). With ``detector_rule_marker`` set, the detector
  says Good to everything until its principles contain that marker (so the adversarial game
  can be seen to improve the judge).
* reflect agent: keeps the initial judge unless the response contains ``FLIP_MARKER``.
* generator: ``"<query>快乐"`` (short: caught), or a long greeting when the query holds "长"
  (fools the detector).
* reflector: suggests the length rule (with ``detector_rule_marker``).
* optimizer: current rules + feedback lines, deduplicated, the last ``max_rules`` kept.
* positive / negative agents: fixed point lists.

Replies are styled by a hash of the item (plain JSON, fenced JSON in prose, full-width
punctuation, Python-dict quotes) to exercise the parser. Faults are injected by
``fault_fn(role, key, attempt) -> kind | None`` where ``key`` is the judged response (or the
query for the generator) and ``attempt`` counts that key's requests from 0. Kinds: "429"
(Retry-After: ``retry_after``), "500", "503", "timeout" (sleeps ``timeout_sleep_s``), "non_json"
(HTTP 200 with an HTML body), "truncated" (reply cut in half), "garbage" (prose, no JSON),
"400", "401".
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
from typing import Callable

from aiohttp import web

FLIP_MARKER = "【翻转】"
LONG_MARKER = "长"

ROLES = (  # (role, text of its template's role line); more specific first.
    ("adversarial_detector", "祝福语质量评估员（对抗训练）"),
    ("detector", "祝福语质量评估员"),
    ("generator", "“伪”祝福语构造大师"),
    ("reflector", "评估过程纠错与分析师"),
    ("optimizer", "策略优化师"),
    ("positive", "发现祝福语中所有优点"),
    ("negative", "发现祝福语中不足之处"),
    ("judge_agent", "祝福语质量评价师"),
    ("reflect_agent", "祝福语质量反思专家"),
)


def section(prompt: str, title: str) -> str:
  """Text inside the fence under ``### <title>``."""
  m = re.search(r"^### " + re.escape(title) + r"[^\n]*\n```\n(.*?)\n```", prompt, re.S | re.M)
  if not m:
    raise KeyError(f"section {title!r} not found")
  return m.group(1)


def schedule_by_key(plan: dict[str, list[str | None]]) -> Callable[[str, str, int], str | None]:
  """fault_fn from {key: [fault for attempt 0, attempt 1, ...]}."""
  def fault_fn(role: str, key: str, attempt: int) -> str | None:
    faults = plan.get(key, [])
    return faults[attempt] if attempt < len(faults) else None
  return fault_fn


@dataclasses.dataclass
class RequestLog:
  t: float
  role: str
  key: str
  attempt: int
  fault: str | None
  authorization: str | None


class FakeOpenAIServer:
  """Start with ``with FakeOpenAIServer(...) as server:``; ``server.base_url`` ends in /v1."""

  def __init__(self, *, min_len: int = 30, good_rule: Callable[[str], bool] | None = None,
               fault_fn: Callable[[str, str, int], str | None] | None = None,
               retry_after: str = "0.05", timeout_sleep_s: float = 1.0, delay_s: float = 0.0,
               expected_key: str | None = None, detector_rule_marker: str | None = None,
               max_rules: int = 10, styled: bool = True):
    self.min_len = min_len
    self.good_rule = good_rule or (lambda r: len(r) >= min_len)
    self.fault_fn = fault_fn or (lambda role, key, attempt: None)
    self.retry_after, self.timeout_sleep_s, self.delay_s = retry_after, timeout_sleep_s, delay_s
    self.expected_key, self.detector_rule_marker = expected_key, detector_rule_marker
    self.max_rules, self.styled = max_rules, styled
    self.log: list[RequestLog] = []
    self.in_flight = self.max_in_flight = 0
    self._attempts: dict[tuple[str, str], int] = {}
    self._lock = threading.Lock()
    self._loop: asyncio.AbstractEventLoop | None = None
    self._thread: threading.Thread | None = None
    self.port = 0

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.port}/v1"

  def requests_for(self, role: str) -> list[RequestLog]:
    with self._lock:
      return [r for r in self.log if r.role == role]

  # ---- deterministic role answers -------------------------------------------------------------
  def _verdict(self, prompt: str, response: str) -> bool:
    if self.detector_rule_marker and self.detector_rule_marker not in section(prompt, "祝福语评估标准"):
      return True
    return self.good_rule(response)

  def answer(self, role: str, prompt: str) -> tuple[str, dict]:
    """(item key, reply object) for a prompt of the given role."""
    if role in ("detector", "adversarial_detector"):
      response = section(prompt, "待评估祝福语")
      good = self._verdict(prompt, response)
      obj = {"verdict": "Good" if good else "Bad", "evaluation_explanation": f"长度{len(response)}"}
      if role == "adversarial_detector":
        obj["suggested_for_G"] = "" if good else "把缺陷藏在更长的句子里"
      return response, obj
    if role == "generator":
      query = section(prompt, "用户请求")
      bad = (f"{query}：愿你天天开心，万事如意，心想事成，岁岁平安，前程似锦，幸福美满。"
             if LONG_MARKER in query else f"{query}快乐")
      return query, {"bad_response": bad, "explanation_of_flaws": "内容空泛，全是套话"}
    if role == "reflector":
      marker = self.detector_rule_marker or "【长度】"
      return section(prompt, "被评估的祝福语"), {
          "reflection_feedback": "评估员忽略了长度",
          "suggested_for_D": f"{marker}少于{self.min_len}字的祝福语判为Bad"}
    if role == "optimizer":
      rules = [re.sub(r"^\d+\.\s*", "", line) for line in section(prompt, "当前策略").splitlines()]
      feedback = [line.lstrip("- ") for line in section(prompt, "优化反馈").splitlines()]
      merged = list(dict.fromkeys(r for r in rules + feedback if r.strip()))
      return section(prompt, "当前策略"), {"optimized_strategy": merged[-self.max_rules:]}
    response = section(prompt, "祝福语 (Response)")
    if role == "positive":
      return response, {"表达流畅": "语句通顺"}
    if role == "negative":
      return response, ({"内容简短": "缺少细节"} if len(response) < self.min_len else {})
    if role == "judge_agent":
      return response, {"judge": int(self.good_rule(response)), "reason": "综合优缺点"}
    if role == "reflect_agent":
      initial = int(section(prompt, "最初判定").strip())
      final = 1 - initial if FLIP_MARKER in response else initial
      return response, {"judge": final, "reason": "复核"}
    raise KeyError(role)

  def route(self, prompt: str) -> tuple[str, str, dict]:
    """(role, item key, reply object) of a prompt; unknown prompts are echoed."""
    head = next((line for line in prompt.splitlines() if "角色" in line or "你是一位" in line), "")
    role = next((r for r, marker in ROLES if marker in head), "unknown")
    if role == "unknown":
      return role, prompt, {"echo": prompt[:50]}
    return (role, *self.answer(role, prompt))

  def reply_text(self, prompt: str) -> str:
    """The (fault-free) reply content for a prompt, as the HTTP server would send it."""
    _, key, obj = self.route(prompt)
    return self._styled(key, obj)

  def _styled(self, key: str, obj: dict) -> str:
    style = int(hashlib.md5(key.encode()).hexdigest(), 16) % 4 if self.styled else 0
    if style == 1:
      return "好的，结果如下：\n```json\n" + json.dumps(obj, ensure_ascii=False, indent=2) + "\n```\n希望有帮助。"
    if style == 2 and all(isinstance(v, (str, int)) for v in obj.values()):
      body = "，".join(f"“{k}”：" + (f"“{v}”" if isinstance(v, str) else str(v))
                      for k, v in obj.items())
      return "｛" + body + "｝"
    if style == 3:
      return repr(obj)
    return json.dumps(obj, ensure_ascii=False)

  # ---- HTTP -----------------------------------------------------------------------------
  async def _handle(self, request: web.Request) -> web.StreamResponse:
    auth = request.headers.get("Authorization")
    if self.expected_key is not None and auth != f"Bearer {self.expected_key}":
      return web.json_response({"error": {"message": f"bad key, got header {auth!r}"}}, status=401)
    payload = await request.json()
    role, key, obj = self.route(payload["messages"][-1]["content"])
    with self._lock:
      attempt = self._attempts.get((role, key), 0)
      self._attempts[(role, key)] = attempt + 1
      fault = self.fault_fn(role, key, attempt)
      self.log.append(RequestLog(time.monotonic(), role, key, attempt, fault, auth))
    with self._lock:
      self.in_flight += 1
      self.max_in_flight = max(self.max_in_flight, self.in_flight)
    try:
      return await self._reply(payload, key, obj, fault)
    finally:
      with self._lock:
        self.in_flight -= 1

  async def _reply(self, payload: dict, key: str, obj: dict, fault: str | None) -> web.Response:
    if self.delay_s:
      await asyncio.sleep(self.delay_s)
    content = self._styled(key, obj)
    if fault == "429":
      return web.json_response({"error": "rate limited"}, status=429,
                               headers={"Retry-After": self.retry_after})
    if fault in ("500", "503", "400", "401"):
      return web.json_response({"error": f"injected {fault}"}, status=int(fault))
    if fault == "timeout":
      await asyncio.sleep(self.timeout_sleep_s)
    if fault == "non_json":
      return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
    finish = "stop"
    if fault == "truncated":
      content, finish = content[:len(content) // 2], "length"
    elif fault == "garbage":
      content = "抱歉，我无法按要求输出。"
    return web.json_response({
        "id": "chatcmpl-fake", "object": "chat.completion", "model": payload.get("model"),
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content}}]})

  def start(self) -> "FakeOpenAIServer":
    ready = threading.Event()
    self._loop = asyncio.new_event_loop()

    def serve() -> None:
      loop = self._loop
      asyncio.set_event_loop(loop)
      app = web.Application()
      app.router.add_post("/v1/chat/completions", self._handle)
      runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
      loop.run_until_complete(runner.setup())
      site = web.TCPSite(runner, "127.0.0.1", 0)
      loop.run_until_complete(site.start())
      self.port = runner.addresses[0][1]
      ready.set()
      loop.run_forever()
      tasks = asyncio.all_tasks(loop)  # Handlers still sleeping in an injected timeout.
      for task in tasks:
        task.cancel()
      loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
      loop.run_until_complete(runner.cleanup())
      loop.close()

    self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
    self._thread.start()
    if not ready.wait(10):
      raise RuntimeError("fake OpenAI server did not start")
    return self

  def stop(self) -> None:
    if self._loop is not None and self._thread is not None:
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(10)

  def __enter__(self) -> "FakeOpenAIServer":
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()


def make_local_generate_fn(**kwargs):
  """A deterministic ``generate_fn`` for ``LocalSamplerBackend`` answering like the server.

  ``generate_fn.batches`` records the batch size of every call.
  """
  answers = FakeOpenAIServer(**kwargs)

  def generate_fn(prompts_messages, max_tokens, temperature):
    generate_fn.batches.append(len(prompts_messages))
    return [answers.reply_text(m[-1]["content"]) for m in prompts_messages]

  generate_fn.batches = []
  return generate_fn


# ---- running the launch/ entry points as subprocesses -------------------------------------------
REPO = pathlib.Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
  """Environment for a launch/ subprocess: repo + tests importable, no real API key."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
  env.pop("OPENAI_API_KEY", None)
  env.update(extra)
  return env


def launch_args(module: str, **flags) -> list[str]:
  """``python -m launch.<module> --flag=value ...`` (bools as --flag / --noflag)."""
  args = [sys.executable, "-m", f"launch.{module}"]
  for name, value in flags.items():
    if isinstance(value, bool):
      args.append(f"--{name}" if value else f"--no{name}")
    else:
      args.append(f"--{name}={value}")
  return args


def run_launch(module: str, timeout: float = 60, env: dict | None = None,
               **flags) -> subprocess.CompletedProcess:
  return subprocess.run(launch_args(module, **flags), cwd=REPO, env=env or cli_env(),
                        capture_output=True, text=True, timeout=timeout)
