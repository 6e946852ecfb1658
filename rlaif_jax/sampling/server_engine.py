"""The server's batching engine: a bounded request queue, batched `Sampler.generate_encoded`
calls on a worker thread, streaming of text deltas and cancellation of rows whose client left.

Each batch runs with a host step hook (`decode_step`) when one of its jobs streams or may be
cancelled: every decode step it hands each streaming row's new text to the job's event queue
(decoded on the step's thread, holding back a possible stop-string prefix and incomplete UTF-8)
and ends the rows of jobs marked `cancelled` (their client disconnected), so they stop being
decoded; their results are dropped.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from rlaif_jax.sampling import completions as comp
from rlaif_jax.sampling.completions import Completion, EmptyPromptError, Prompt, encode_prompt
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.sampling.server_requests import RequestError, ServerConfig


class QueueFull(Exception):
  """The request queue is at `ServerConfig.max_queue`: answered with 429 + Retry-After."""


@dataclasses.dataclass
class _Job:
  """One request: its prompts, sampling, n and the future its completions are set on.
  `events` (streaming): an asyncio.Queue receiving ("delta", choice index, text, logprobs)
  while decoding, `logprobs` being the (ids, log-probs, top [(id, log-prob)] lists) of the
  tokens whose text is complete in what was sent so far (their number grows with the deltas),
  then ("end", -1, "", None). `cancelled`: set when the client went away; its rows end at the
  next step."""
  prompts: list[Prompt]
  params: SamplingParams
  n: int
  future: asyncio.Future
  events: asyncio.Queue | None = None
  cancelled: bool = False
  enqueued: float = dataclasses.field(default_factory=time.monotonic)


class _StreamHook:
  """Step hook of one batch (see module docstring). `rows[r]` = (job, choice index) of row r."""

  def __init__(self, tokenizer, rows: list[tuple[_Job, int]], loop: asyncio.AbstractEventLoop):
    self.tokenizer = tokenizer
    self.rows = rows
    self.loop = loop
    self.tokens: list[list[int]] = [[] for _ in rows]
    self.logprobs: list[list[float]] = [[] for _ in rows]
    self.tops: list[list[list[tuple[int, float]]]] = [[] for _ in rows]
    self.ends: list[list[int]] = [[] for _ in rows]  # text length through each token
    self.covered = [0] * len(rows)  # tokens whose log-probs went out with a delta
    self.sent = ["" for _ in rows]
    self.ended = [False] * len(rows)

  def _safe_text(self, r: int, job: _Job) -> tuple[str, bool]:
    """(text that will not change, whether a stop string was reached)."""
    text = self.tokenizer.decode(self.tokens[r])
    self.ends[r].append(len(text))
    text = text.rstrip("\ufffd")  # an incomplete UTF-8 sequence: wait for its next token
    stop = job.params.stop
    if stop:
      cut = comp.first_stop(text, stop)
      if cut >= 0:
        return text[:cut], True
      text = text[:max(len(self.sent[r]), len(text) - max(map(len, stop)) + 1)]
    return text, False

  def _newly_covered(self, r: int) -> tuple[list[int], list[float], list] | None:
    """The tokens (ids, log-probs, tops) whose whole text is now in `sent[r]`, not sent yet."""
    k = self.covered[r]
    while k < len(self.ends[r]) and self.ends[r][k] <= len(self.sent[r]):
      k += 1
    start, self.covered[r] = self.covered[r], k
    return self.tokens[r][start:k], self.logprobs[r][start:k], self.tops[r][start:k]

  def __call__(self, step, prev_tokens, lengths, done, bitmask, cancel, prev) -> None:
    del step, bitmask
    for r, (job, choice) in enumerate(self.rows):
      if job.cancelled:
        cancel[r] = True
        continue
      if job.events is None or self.ended[r]:
        continue
      if lengths[r] > len(self.tokens[r]):
        self.tokens[r].append(int(prev_tokens[r]))
        self.logprobs[r].append(float(prev.chosen[r]))
        k = job.params.top_logprobs
        self.tops[r].append(list(zip(prev.top_ids[r, :k].tolist(),
                                     prev.top_logprobs[r, :k].tolist())))
        text, hit = self._safe_text(r, job)
        if hit:  # the text is final; stop decoding the row now
          self.ended[r] = cancel[r] = True
        if len(text) > len(self.sent[r]) and text.startswith(self.sent[r]):
          delta, self.sent[r] = text[len(self.sent[r]):], text
          self.loop.call_soon_threadsafe(job.events.put_nowait,
                                         ("delta", choice, delta, self._newly_covered(r)))


def _sample_params(params: SamplingParams, choice: int) -> SamplingParams:
  """The params of one choice: with a request seed, choice i > 0 gets its own seed derived
  from it (golden-ratio stride), so the n samples differ and still repeat whatever batch the
  request lands in."""
  if params.seed is None or choice == 0:
    return params
  return dataclasses.replace(params, seed=(params.seed + choice * 0x9E3779B9) % (1 << 32))


class BatchingEngine:
  """Queues jobs and runs them in batched `Sampler.generate_encoded` calls, one batch at a
  time. `metrics` (optional, `server_metrics.Metrics`) is updated per batch and request."""

  def __init__(self, sampler: Sampler, config: ServerConfig, metrics: Any = None):
    self.sampler = sampler
    self.config = config
    self.metrics = metrics
    self.stats = {"batches": 0, "requests": 0, "rows": 0, "rejected": 0, "cancelled": 0}
    self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=config.max_queue)
    self._held: _Job | None = None  # taken from the queue but left for the next batch
    self._task: asyncio.Task | None = None
    self.busy = False

  @property
  def queue_depth(self) -> int:
    return self._queue.qsize() + (self._held is not None)

  def start(self) -> None:
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self) -> None:
    if self._task is not None:
      self._task.cancel()
      try:
        await self._task
      except asyncio.CancelledError:
        pass

  def enqueue(self, prompts: list[Prompt], params: SamplingParams, n: int,
              stream: bool = False) -> _Job:
    """Queues a job (raises QueueFull when the queue is full); await `job.future`."""
    job = _Job(prompts, params, n, asyncio.get_running_loop().create_future(),
               asyncio.Queue() if stream else None)
    try:
      self._queue.put_nowait(job)
    except asyncio.QueueFull:
      self.stats["rejected"] += 1
      raise QueueFull(f"{self._queue.qsize()} requests are waiting (the server's max_queue); "
                      "retry later") from None
    self._observe_queue()
    return job

  async def submit(self, prompts: list[Prompt], params: SamplingParams, n: int
                   ) -> list[Completion]:
    """Completions for `prompts`, n each, prompt-major (prompt_index/sample_index set)."""
    job = self.enqueue(prompts, params, n)
    try:
      return await job.future
    except asyncio.CancelledError:
      job.cancelled = True
      raise

  def _observe_queue(self) -> None:
    if self.metrics is not None:
      self.metrics.queue_depth.set(self.queue_depth)

  async def _collect(self) -> list[_Job]:
    """The next batch: at most `max_batch_rows` rows, except that a single larger job runs
    alone. A job that does not fit is held back to start the next batch. Jobs whose client
    already left are dropped."""
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
    self._observe_queue()
    return jobs

  def _encode(self, job: _Job) -> list[list[int]]:
    """The job's prompt ids; a prompt the tokenizer or chat template refuses (or one with no
    tokens, or too many), or a response_format schema the grammar library cannot compile,
    raises RequestError for this job alone."""
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
      keep = self.config.truncate_prompt_tokens
      if keep is not None and len(ids) > keep:  # vLLM's truncate_prompt_tokens: the last ones
        ids = ids[-keep:]
      if len(ids) > self.config.max_prompt_tokens:
        raise RequestError(f"prompt has {len(ids)} tokens; this server accepts at most "
                           f"{self.config.max_prompt_tokens}")
      out.append(ids)
    if job.params.response_format is not None:
      from rlaif_jax.sampling import grammar
      try:
        grammar.compile_format(self.sampler.tokenizer, self.sampler.cfg.vocab_size,
                               self.sampler.stop_ids, job.params.response_format)
      except ValueError as e:
        raise RequestError(str(e)) from None
    return out

  def _generate(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop
                ) -> list[list[Completion] | Exception]:
    """Runs all jobs as one batch of rows (each prompt repeated n times) and splits the result.
    Runs on the worker thread, so the tokenizer is only ever used there (and on the decode
    loop's host callback, while this thread waits). A job whose prompt cannot be encoded gets
    a RequestError instead of completions; the other jobs of the batch are generated."""
    results: list[list[Completion] | Exception] = []
    ids, params, owners, rows = [], [], [], []
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
          params.append(_sample_params(job.params, p * job.n + s))
          owners.append((j, p, s))
          rows.append((job, p * job.n + s))
    if ids:
      max_new = max(p.max_tokens for p in params)
      hook = _StreamHook(self.sampler.tokenizer, rows, loop)
      start = time.monotonic()
      outs = self.sampler.generate_encoded(ids, max_new, params, step_hook=hook)
      if self.metrics is not None:
        self.metrics.observe_batch(len(ids), sum(c.completion_tokens for c in outs),
                                   time.monotonic() - start)
      for (j, p, s), c in zip(owners, outs):
        results[j].append(dataclasses.replace(c, prompt_index=p, sample_index=s))
    return results

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      jobs = [j for j in await self._collect() if not self._drop_cancelled(j)]
      if not jobs:
        continue
      self.busy = True
      try:
        results = await loop.run_in_executor(None, self._generate, jobs, loop)
      except Exception as e:  # Failures go to the waiting requests; the loop keeps serving.
        results = [e] * len(jobs)
      else:
        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["rows"] += sum(len(r) for r in results if isinstance(r, list))
      finally:
        self.busy = False
      for job, result in zip(jobs, results):
        self._finish(job, result)

  def _drop_cancelled(self, job: _Job) -> bool:
    if job.cancelled or job.future.done():
      self.stats["cancelled"] += 1
      return True
    return False

  def _finish(self, job: _Job, result: list[Completion] | Exception) -> None:
    if job.cancelled or job.future.done():  # the client went away: dropped without error
      self.stats["cancelled"] += job.cancelled
      return
    if isinstance(result, Exception):
      job.future.set_exception(result)
    else:
      job.future.set_result(result)
    if job.events is not None:
      job.events.put_nowait(("end", -1, "", None))

