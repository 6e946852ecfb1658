"""A resumable prompts.jsonl -> completions.jsonl generation job (used by `launch.generate`).

Input lines: {"id": any JSON scalar (optional; default the 0-based line number),
              "prompt": str or a chat message list [{"role", "content"}, ...]}.
Output lines: {"id", "prompt", "completion", "completion_token_ids", "finish_reason"}, plus
"sample_index" when n > 1. Each batch's lines are appended and fsynced; on restart a trailing
partial line is truncated, ids with all n samples written are skipped, and ids with only some
samples (a kill mid-batch) are removed and generated again, so the output never holds duplicates.
Every pending prompt is checked and encoded before anything is generated: a malformed record
(NaN, a prompt with no tokens, ...) fails up front with an InputError naming file:line.
"""
from __future__ import annotations

import collections
import contextlib
import json
import time
from typing import Any, Callable, Sequence

import numpy as np

from rlaif_jax import storage
from rlaif_jax.sampling import completions as comp
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.sharding import host


def _key(value: Any) -> str:
  return json.dumps(value, sort_keys=True, ensure_ascii=False)


def read_prompts(path: str) -> list[tuple[Any, Any, int]]:
  """(id, prompt, 1-based line number) of each record of a prompts JSONL file; errors name
  file:line."""
  out, seen = [], {}
  for index, record in storage.read_jsonl(path):
    where = f"{path}:{index + 1}"
    try:  # the output repeats id and prompt, and JSON output cannot hold NaN or Infinity
      json.dumps(record, allow_nan=False)
    except ValueError:
      raise storage.InputError(f"{where}: record holds NaN or Infinity, which is not valid "
                               "JSON") from None
    prompt = record.get("prompt")
    ok_messages = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
        for m in prompt)
    if not (isinstance(prompt, str) or ok_messages):
      raise storage.InputError(f"{where}: field 'prompt' must be a string or a list of "
                               f"{{role, content}} messages, got {prompt!r:.80}")
    pid = record.get("id", index)
    if isinstance(pid, (dict, list)):
      raise storage.InputError(f"{where}: field 'id' must be a JSON scalar, got {pid!r:.80}")
    if _key(pid) in seen:
      raise storage.InputError(f"{where}: duplicate id {pid!r} (first on line {seen[_key(pid)]})")
    seen[_key(pid)] = index + 1
    out.append((pid, prompt, index + 1))
  return out


def encode_pending(tokenizer, items: Sequence[tuple[Any, Any, int]], path: str,
                   use_chat_template: bool) -> list[list[int]]:
  """Prompt ids of `items` (from `read_prompts`); a prompt that cannot be encoded, or encodes
  to no tokens, raises InputError naming file:line, before anything is generated."""
  out = []
  for _, prompt, line in items:
    try:
      out.append(comp.encode_prompt(tokenizer, prompt, use_chat_template))
    except comp.EmptyPromptError:
      raise storage.InputError(f"{path}:{line}: field 'prompt' encodes to no tokens") from None
    except Exception as e:  # e.g. a chat template that raises for some roles
      raise storage.InputError(f"{path}:{line}: field 'prompt' cannot be encoded: "
                               f"{type(e).__name__}: {e}") from None
  return out


def recover_done_ids(appender: storage.JsonlAppender, n: int) -> set[str]:
  """Keys of ids whose n samples are all in the output; drops partial ids from the file."""
  records = appender.recover()
  samples = collections.defaultdict(set)
  for r in records:
    samples[_key(r.get("id"))].add(r.get("sample_index", 0))
  done = {k for k, s in samples.items() if len(s) >= n}
  if len(done) < len(samples):
    appender.rewrite([r for r in records if _key(r.get("id")) in done])
  return done


def output_records(ids: Sequence[Any], prompts: Sequence[Any], completions, n: int
                   ) -> list[dict[str, Any]]:
  out = []
  for c in completions:
    record = {"id": ids[c.prompt_index], "prompt": prompts[c.prompt_index],
              "completion": c.text, "completion_token_ids": c.token_ids,
              "finish_reason": c.finish_reason}
    if n > 1:
      record["sample_index"] = c.sample_index
    out.append(record)
  return out


def run(sampler: Sampler, prompts_path: str, output_path: str, *, max_new_tokens: int,
        sampling: SamplingParams, n: int = 1, seed: int = 0, batch_size: int = 32,
        use_chat_template: bool = True,
        progress: Callable[[int, int], Any] | None = None) -> dict[str, float]:
  """Generates every pending prompt of `prompts_path` into `output_path`.

  Prompt number i of the file (0-based, in file order) draws with a key derived from (`seed`,
  i), whatever batch it lands in: a rerun from scratch with the same flags writes the same
  file, and a resumed run writes for the pending ids what an uninterrupted run would have. `progress(total_prompts, done_prompts)` is
  called with the counts first and returns an object with `update(k)` and `set_postfix_str(s)`
  (a tqdm bar). Returns {"prompts", "skipped", "tokens", "seconds"}. The output is locked for the
  whole job (`storage.output_lock`).
  """
  if sampler.tokenizer is None:
    raise ValueError("jsonl_job.run needs a sampler with a tokenizer")
  items = read_prompts(prompts_path)
  # Multi-host: every process samples (one sharded model); process 0 resumes, locks and writes.
  appender = storage.open_appender(output_path) if host.is_main() else None
  lock = storage.output_lock(appender.path) if appender is not None else contextlib.nullcontext()
  with lock:  # a second job on this output is refused
    done = recover_done_ids(appender, n) if appender is not None else set()
    position = {_key(item[0]): i for i, item in enumerate(items)}
    is_pending = host.broadcast(np.array([_key(item[0]) not in done for item in items], bool))
    pending = [item for item, p in zip(items, is_pending) if p]
    encoded = encode_pending(sampler.tokenizer, pending, prompts_path, use_chat_template)
    bar = (progress(len(items), len(items) - len(pending)) if progress and appender is not None
           else None)
    tokens, start = 0, time.perf_counter()
    with appender or contextlib.nullcontext():
      for at in range(0, len(pending), batch_size):
        batch = pending[at:at + batch_size]
        ids, prompts = [b[0] for b in batch], [b[1] for b in batch]
        completions = sampler.generate_encoded(encoded[at:at + batch_size], max_new_tokens,
                                               sampling, n=n, seed=seed,
                                               prompt_seeds=[position[_key(i)] for i in ids])
        for record in output_records(ids, prompts, completions, n):
          if appender is not None:
            appender.append(record)
        tokens += sum(c.completion_tokens for c in completions)
        if bar is not None:
          bar.update(len(batch))
          bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):.1f} tok/s")
    if bar is not None:
      bar.close()
    return {"prompts": len(pending), "skipped": len(items) - len(pending), "tokens": tokens,
            "seconds": time.perf_counter() - start}
