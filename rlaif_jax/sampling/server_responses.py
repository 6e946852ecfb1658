"""Response bodies of the OpenAI-compatible server: completions with log-probs and usage, and
server-sent events for `stream: true` (chunks, the usage chunk, `data: [DONE]`)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from rlaif_jax.sampling.completions import Completion
from rlaif_jax.tokenizers.base import Tokenizer


def usage(outs: list[Completion]) -> dict[str, int]:
  prompt_tokens = sum(c.prompt_tokens for c in outs if c.sample_index == 0)
  completion_tokens = sum(c.completion_tokens for c in outs)
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens}


def logprobs_part(tokenizer: Tokenizer, ids: list[int], lps: list[float],
                  tops: list[list[tuple[int, float]]] | None, chat: bool, top: int,
                  as_ids: bool = False, offset: int = 0) -> dict[str, Any]:
  """The `logprobs` object (OpenAI chat or legacy completions form) of the tokens `ids` with
  their log-probs `lps` and top alternatives `tops` (the first `top` of them); `offset`: the
  completions form's text offset of the first token. `as_ids` (vLLM's
  return_tokens_as_token_ids): tokens are written "token_id:<id>"."""
  def _token(token_id: int) -> str:
    if as_ids:
      return f"token_id:{int(token_id)}"
    return tokenizer.decode([int(token_id)], skip_special_tokens=False)

  tops = tops or [[] for _ in ids]
  if chat:
    def entry(i: int, lp: float) -> dict[str, Any]:
      t = _token(i)
      return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
    return {"content": [{**entry(i, lp), "top_logprobs": [entry(j, v) for j, v in alts[:top]]}
                        for i, lp, alts in zip(ids, lps, tops)]}
  tokens = [_token(i) for i in ids]
  offsets, pos = [], offset
  for t in tokens:
    offsets.append(pos)
    pos += len(t)
  return {"tokens": tokens, "token_logprobs": list(lps), "text_offset": offsets,
          "top_logprobs": [{_token(j): v for j, v in alts[:top]} for alts in tops]}


def logprobs_body(tokenizer: Tokenizer, c: Completion, chat: bool, top: int,
                  as_ids: bool = False) -> dict | None:
  """The `logprobs` object of one choice, from the sampler's recorded log-probabilities of the
  raw model distribution; `top` < 0 (not asked): None."""
  if top < 0:
    return None
  return logprobs_part(tokenizer, c.token_ids, c.logprobs, c.top_logprobs, chat, top, as_ids)


def completion_body(tokenizer: Tokenizer, outs: list[Completion], model: str, chat: bool,
                    top: int, as_ids: bool = False) -> dict[str, Any]:
  """The JSON body of a non-streaming answer."""
  choices = []
  for i, c in enumerate(outs):
    lp = logprobs_body(tokenizer, c, chat, top, as_ids)
    if chat:
      choices.append({"index": i, "message": {"role": "assistant", "content": c.text},
                      "finish_reason": c.finish_reason, "logprobs": lp})
    else:
      choices.append({"index": i, "text": c.text, "finish_reason": c.finish_reason,
                      "logprobs": lp})
  return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
          "object": "chat.completion" if chat else "text_completion",
          "created": int(time.time()), "model": model, "choices": choices,
          "usage": usage(outs)}


class SSEWriter:
  """Writes one streamed answer: `data: {chunk}\\n\\n` events, then `data: [DONE]`."""

  def __init__(self, response: web.StreamResponse, model: str, chat: bool):
    self.response = response
    self.chat = chat
    self.base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                 "object": "chat.completion.chunk" if chat else "text_completion",
                 "created": int(time.time()), "model": model}

  async def _send(self, payload: dict | str) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    await self.response.write(f"data: {data}\n\n".encode())

  async def choice(self, index: int, text: str | None, finish_reason: str | None = None,
                   role: bool = False, logprobs: dict | None = None) -> None:
    if self.chat:
      delta: dict[str, Any] = {"role": "assistant"} if role else {}
      if text is not None:
        delta["content"] = text
      choice = {"index": index, "delta": delta, "logprobs": logprobs,
                "finish_reason": finish_reason}
    else:
      choice = {"index": index, "text": text or "", "logprobs": logprobs,
                "finish_reason": finish_reason}
    await self._send({**self.base, "choices": [choice]})

  async def finish(self, usage_body: dict | None) -> None:
    if usage_body is not None:
      await self._send({**self.base, "choices": [], "usage": usage_body})
    await self._send("[DONE]")


async def stream_answer(writer: SSEWriter, job, first: tuple, choices: int,
                        include_usage: bool, tokenizer: Tokenizer | None = None, top: int = -1,
                        as_ids: bool = False) -> None:
  """Relays `job.events` (server_engine) as chunks: a role chunk per choice (chat), each text
  delta as it is decoded, then per choice the text not streamed yet (the final text is cut at
  its stop string exactly as without streaming) and its finish_reason, the usage chunk when
  asked, and [DONE]. `first`: the job's first event, already taken from the queue. An error
  after the headers went out ends the stream with an error event.

  `top` >= 0 (logprobs asked; needs `tokenizer`): each chunk carries the log-probs of the
  tokens its text completed, and the last chunk of a choice those of its remaining tokens, so
  a choice's chunks together hold exactly the non-streamed answer's log-probs."""
  sent = [""] * choices
  covered = [0] * choices  # tokens whose log-probs went out
  offsets = [0] * choices  # completions form: text offset of the next token

  def part(i: int, ids, lps, tops) -> dict | None:
    if top < 0:
      return None
    body = logprobs_part(tokenizer, ids, lps, tops, writer.chat, top, as_ids, offsets[i])
    covered[i] += len(ids)
    if not writer.chat:
      offsets[i] += sum(map(len, body["tokens"]))
    return body

  if writer.chat:
    for i in range(choices):
      await writer.choice(i, "", role=True)
  event = first
  while True:
    kind, index, text, lp = event if event is not None else await job.events.get()
    event = None
    if kind == "end":
      break
    sent[index] += text
    await writer.choice(index, text, logprobs=part(index, *lp) if lp else part(index, [], [], []))
  try:
    outs = job.future.result()
  except Exception as e:  # headers are out: report in-band, as vLLM does
    await writer._send({"error": {"message": f"{type(e).__name__}: {e}",
                                  "type": "server_error"}})
    await writer._send("[DONE]")
    return
  for i, c in enumerate(outs):
    rest = c.text[len(sent[i]):] if c.text.startswith(sent[i]) else ""
    k = covered[i]
    lp = part(i, c.token_ids[k:], c.logprobs[k:], (c.top_logprobs or [])[k:] or None)
    await writer.choice(i, rest or None, c.finish_reason, logprobs=lp)
  await writer.finish(usage(outs) if include_usage else None)


async def watch_disconnect(request: web.Request, job, interval_s: float = 0.05) -> None:
  """Marks `job.cancelled` when the client's connection closes before the job is done."""
  while not job.future.done():
    transport = request.transport
    if transport is None or transport.is_closing():
      job.cancelled = True
      return
    await asyncio.sleep(interval_s)
