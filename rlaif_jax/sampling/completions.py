"""Host side of text generation: prompts -> left-padded id arrays, sampled ids -> `Completion`s
(decoding, stop strings, finish reasons)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rlaif_jax.tokenizers.base import Tokenizer

Prompt = str | list[dict]


@dataclasses.dataclass
class Completion:
  """One sampled response.

  token_ids: the response ids (a stop id that ended the row is included; with a stop string,
    cut after the shortest prefix whose text contains it).
  logprobs / processed_logprobs: per token of `token_ids` (see `GenerationOutput`).
  text: decoded response (special tokens skipped), cut before the first stop string.
  finish_reason: "stop" (stop id or stop string) or "length".
  prompt_tokens: number of prompt ids the model saw.
  top_logprobs: per token of `token_ids`, the [(id, log-prob)] of the step's most likely
    tokens under the raw logits (`SamplingParams.top_logprobs` of them), or None.
  """
  prompt_index: int
  sample_index: int
  text: str
  token_ids: list[int]
  logprobs: list[float]
  processed_logprobs: list[float]
  finish_reason: str
  prompt_tokens: int
  top_logprobs: list[list[tuple[int, float]]] | None = None

  @property
  def completion_tokens(self) -> int:
    return len(self.token_ids)


def render_prompt(tokenizer: Tokenizer, prompt: Prompt, use_chat_template: bool) -> str:
  """A string prompt becomes one user message under the chat template (or stays as is without
  it); a message list [{role, content}, ...] always goes through the chat template."""
  if isinstance(prompt, str):
    if not use_chat_template:
      return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True)
  return tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)


class EmptyPromptError(ValueError):
  """A prompt that encodes to no tokens (the model needs at least one)."""


def encode_prompt(tokenizer: Tokenizer, prompt: Prompt, use_chat_template: bool = True,
                  add_bos: bool = False) -> list[int]:
  """One prompt's ids (see `encode_prompts`); raises `EmptyPromptError` when there are none."""
  ids = tokenizer.encode(render_prompt(tokenizer, prompt, use_chat_template))
  bos = tokenizer.bos_id
  if add_bos and bos is not None and (not ids or ids[0] != bos):
    ids = [bos] + ids
  if not ids:
    raise EmptyPromptError("prompt encodes to no tokens; the model needs at least one")
  return ids


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[Prompt], use_chat_template: bool = True,
                   add_bos: bool = False) -> list[list[int]]:
  """Prompt ids; with `add_bos`, the tokenizer's BOS is put first when the text did not start
  with it (matching `rlaif_jax.data.formatting.FormatConfig.add_bos`)."""
  out = []
  for i, prompt in enumerate(prompts):
    try:
      out.append(encode_prompt(tokenizer, prompt, use_chat_template, add_bos))
    except EmptyPromptError:
      raise EmptyPromptError(f"prompts[{i}] encodes to no tokens; the model needs at least "
                             "one") from None
  return out


def round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def next_power_of_two(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def left_pad(ids: Sequence[Sequence[int]], pad_id: int, length: int | None = None,
             rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads id lists to int32[rows, length] + bool mask; extra rows are empty (all-False
  mask; the sampler treats them as finished from the start)."""
  length = length or max(len(x) for x in ids)
  rows = rows or len(ids)
  tokens = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  for r, x in enumerate(ids):
    if len(x) > length:
      raise ValueError(f"prompt {r} has {len(x)} tokens, more than the padded length {length}")
    if len(x):
      tokens[r, length - len(x):] = x
      mask[r, length - len(x):] = True
  return tokens, mask


def first_stop(text: str, stop: Sequence[str]) -> int:
  hits = [text.find(s) for s in stop]
  hits = [h for h in hits if h >= 0]
  return min(hits) if hits else -1


def _shortest_prefix_with_stop(tokenizer: Tokenizer, ids: Sequence[int],
                               stop: Sequence[str]) -> int:
  """Smallest m with a stop string in decode(ids[:m]) (containment grows with m)."""
  lo, hi = 1, len(ids)
  while lo < hi:
    mid = (lo + hi) // 2
    if first_stop(tokenizer.decode(ids[:mid]), stop) >= 0:
      hi = mid
    else:
      lo = mid + 1
  return lo


def finish_row(tokenizer: Tokenizer, ids: Sequence[int], logprobs: Sequence[float],
               processed_logprobs: Sequence[float], stopped: bool, stop: Sequence[str]
               ) -> tuple[str, list[int], list[float], list[float], str]:
  """Decodes one row and applies stop strings.

  Returns (text, token_ids, logprobs, processed_logprobs, finish_reason). The stop id that ended
  a row stays in token_ids but never in the text.
  """
  ids = [int(i) for i in ids]
  lps, plps = [float(x) for x in logprobs], [float(x) for x in processed_logprobs]
  text = tokenizer.decode(ids[:-1] if stopped else ids)
  reason = "stop" if stopped else "length"
  cut = first_stop(text, stop) if stop else -1
  if cut >= 0:
    text, reason = text[:cut], "stop"
    m = _shortest_prefix_with_stop(tokenizer, ids, stop)
    ids, lps, plps = ids[:m], lps[:m], plps[:m]
  return text, ids, lps, plps, reason


def completion_from_row(tokenizer: Tokenizer, out, row: int, prompt_index: int,
                        sample_index: int, prompt_tokens: int, params) -> Completion:
  """The Completion of row `row` of a host `GenerationOutput` sampled with SamplingParams
  `params` (stop strings applied; top log-probs cut to the same tokens)."""
  k = int(out.lengths[row])
  text, tok, lps, plps, reason = finish_row(tokenizer, out.tokens[row, :k], out.logprobs[row, :k],
                                            out.processed_logprobs[row, :k],
                                            bool(out.stopped[row]), params.stop)
  top = None
  if params.top_logprobs:
    ids = out.top_ids[row, :len(tok), :params.top_logprobs].tolist()
    values = out.top_logprobs[row, :len(tok), :params.top_logprobs].tolist()
    top = [list(zip(i, v)) for i, v in zip(ids, values)]
  return Completion(prompt_index, sample_index, text, tok, lps, plps, reason, prompt_tokens, top)
