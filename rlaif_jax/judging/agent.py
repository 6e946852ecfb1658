"""One LLM role = a prompt template + a reply parser, called in batches with parse retries.

``Agent.run`` renders the template for every item, sends all conversations at once
(``generate_settled``), parses each reply and re-asks only the unparseable ones, up to
``max_attempts`` tries in all. Every item ends as an ``Outcome`` holding the parsed value or an
``error`` string; a batch never raises for one bad item. Backend failures are not re-asked here
(the backend already retried them), and a ``FatalBackendError`` that ``aborts_job`` (bad key,
wrong URL or model) is raised, because every other item would fail the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

from rlaif_jax.judging import parsing, prompts
from rlaif_jax.judging.backends import base
from rlaif_jax.judging.parsing import ParseError

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Outcome(Generic[T]):
  """Result of one item: ``value`` when parsed, else ``error``; ``raw`` is the last reply."""
  value: T | None
  error: str | None
  raw: str | None
  attempts: int

  @property
  def ok(self) -> bool:
    return self.error is None


async def generate_parsed(backend: base.LLMBackend, conversations: Sequence[base.Conversation],
                          parse: Callable[[str], T], *,
                          sampling: base.SamplingParams = base.SamplingParams(),
                          max_attempts: int = 3,
                          retry_temperature: float | None = None) -> list[Outcome[T]]:
  """Generates and parses a batch; unparseable replies are re-asked (see module docstring).

  Args:
    retry_temperature: temperature for re-asks (a greedy model would repeat its bad reply);
      None keeps ``sampling.temperature``.
  """
  if max_attempts < 1:
    raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
  n = len(conversations)
  values: list[Any] = [None] * n
  errors: list[str | None] = ["not attempted"] * n
  raws: list[str | None] = [None] * n
  attempts = [0] * n
  pending = list(range(n))
  for attempt in range(max_attempts):
    if not pending:
      break
    temperature = sampling.temperature
    if attempt > 0 and retry_temperature is not None:
      temperature = retry_temperature
    replies = await backend.generate_settled(
        [conversations[i] for i in pending], temperature=temperature,
        max_tokens=sampling.max_tokens, stop=list(sampling.stop) if sampling.stop else None)
    if len(replies) != len(pending):
      raise RuntimeError(f"{type(backend).__name__}.generate_settled returned {len(replies)} "
                         f"replies for {len(pending)} conversations")
    still_pending = []
    for i, reply in zip(pending, replies):
      attempts[i] += 1
      if isinstance(reply, base.FatalBackendError) and reply.aborts_job:
        raise reply
      if isinstance(reply, base.BackendError):
        errors[i] = f"backend error: {reply}"
        continue
      raws[i] = reply
      try:
        values[i], errors[i] = parse(reply), None
      except ParseError as e:
        errors[i] = f"unparseable reply after {attempts[i]} attempt(s): {e}"
        still_pending.append(i)
    if still_pending and attempt + 1 < max_attempts:
      logger.info("re-asking %d unparseable repl%s", len(still_pending),
                  "y" if len(still_pending) == 1 else "ies")
    pending = still_pending
  return [Outcome(value=values[i], error=errors[i], raw=raws[i], attempts=attempts[i])
          for i in range(n)]


def template_examples(template: prompts.PromptTemplate, parse: Callable[[str], T]) -> list[T]:
  """What the template's own format examples parse to (``{"judge": 0, "reason": "理由"}``): a
  reply that parses to one of them echoed the example instead of answering."""
  text = template.text.replace("{{", "{").replace("}}", "}")
  examples = []
  for obj in parsing.iter_json_objects(text):
    try:
      value = parse(json.dumps(obj, ensure_ascii=False))
    except ParseError:
      continue  # a placeholder such as "Good 或 Bad" is no answer anyway
    if value:  # an empty example ("{}" when there are no strengths) is a real answer
      examples.append(value)
  return examples


class Agent(Generic[T]):
  """A named role: template + parser + sampling. ``run(items)`` -> one Outcome per item."""

  def __init__(self, backend: base.LLMBackend, template: str, parse: Callable[[str], T], *,
               sampling: base.SamplingParams = base.SamplingParams(), max_attempts: int = 3,
               retry_temperature: float | None = 0.7, system_prompt: str | None = None,
               response_schema: dict[str, Any] | None = None):
    """``response_schema``: the JSON Schema of a reply, requested from backends that support
    structured output (``LLMBackend.with_response_schema``); the reply is parsed as usual."""
    if response_schema is not None:
      backend = backend.with_response_schema(template, response_schema)
    self.backend = backend
    self.template = prompts.load_template(template)
    self.parse = parse
    self.examples = template_examples(self.template, parse)
    self.sampling = sampling
    self.max_attempts = max_attempts
    self.retry_temperature = retry_temperature
    self.system_prompt = system_prompt

  def __repr__(self) -> str:
    return f"Agent(template={self.template.name!r}, backend={self.backend!r})"

  def conversation(self, fields: Mapping[str, Any]) -> base.Conversation:
    return prompts.user_message(self.template.render(**fields), system=self.system_prompt)

  @property
  def fingerprint(self) -> str:
    """What decides this agent's replies besides its inputs (template text, backend, sampling,
    system prompt), as a short hash: stored with results so a resumed job notices a change."""
    text = "\n".join([self.template.text, repr(self.backend), repr(self.sampling),
                      repr(self.max_attempts), repr(self.retry_temperature),
                      repr(self.system_prompt)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

  def parse_reply(self, reply: str) -> T:
    """``parse``, refusing a reply that only repeats the template's format example."""
    value = self.parse(reply)
    if any(value == example for example in self.examples):
      raise ParseError("the reply repeats the prompt's format example instead of answering")
    return value

  async def run(self, items: Sequence[Mapping[str, Any]]) -> list[Outcome[T]]:
    """Renders every item's fields into the template and generates/parses them as one batch."""
    if not items:
      return []
    conversations = [self.conversation(fields) for fields in items]
    return await generate_parsed(self.backend, conversations, self.parse_reply,
                                 sampling=self.sampling,
                                 max_attempts=self.max_attempts,
                                 retry_temperature=self.retry_temperature)
