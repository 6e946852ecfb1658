"""A resumable prompts.jsonl -> completions.jsonl generation job (used by `launch.generate`).

Input lines: {"id": any JSON scalar (optional; default the 0-based line number),
              "prompt": str or a chat message list [{"role", "content"}, ...]}.
Output lines: {"id", "prompt", "completion", "completion_token_ids", "finish_reason"}, plus
"sample_index" when n > 1. The job is a `jsonl_jobs.open_job` with n lines per id: each batch's
lines are appended and fsynced; on restart a trailing partial line is truncated, ids with all n
samples written are skipped, and ids with only some samples (a kill mid-batch) are removed and
generated again, so the output never holds duplicates.
Every pending prompt is checked and encoded before anything is generated: a malformed record
(NaN, a prompt with no tokens, ...) fails up front with an InputError naming file:line.
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

from rlaif_jax import jsonl_jobs, storage
from rlaif_jax.sampling import completions as comp
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler


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
    key = jsonl_jobs.id_key(pid)
    if key in seen:
      raise storage.InputError(f"{where}: duplicate id {pid!r} (first on line {seen[key]})")
    seen[key] = index + 1
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
        use_chat_template: bool = True, progress: bool = False) -> dict[str, float]:
  """Generates every pending prompt of `prompts_path` into `output_path` (a
  `jsonl_jobs.open_job`: locked, resumed, n lines per id).

  Prompt number i of the file (0-based, in file order) draws with a key derived from (`seed`,
  i), whatever batch it lands in: a rerun from scratch with the same flags writes the same
  file, and a resumed run writes for the pending ids what an uninterrupted run would have.
  `progress`: a tqdm bar with tokens/s (process 0). Returns {"prompts", "skipped", "tokens",
  "seconds"}. Multi-host: every process samples (one sharded model); process 0 resumes, locks
  and writes.
  """
  if sampler.tokenizer is None:
    raise ValueError("jsonl_job.run needs a sampler with a tokenizer")
  records = [{"id": pid, "prompt": prompt, "_line": line - 1, "position": i}
             for i, (pid, prompt, line) in enumerate(read_prompts(prompts_path))]
  config = jsonl_jobs.JobConfig(output_path=output_path, input_path=prompts_path,
                                chunk_size=batch_size, chunks_in_flight=1, progress=progress,
                                progress_desc="generate", progress_unit="prompt",
                                lines_per_id=n, collective=True)
  with jsonl_jobs.open_job(config, records) as job:
    pending = job.todo
    encoded = encode_pending(sampler.tokenizer,
                             [(r["id"], r["prompt"], r["_line"] + 1) for r in pending],
                             prompts_path, use_chat_template)
    tokens, start = 0, time.perf_counter()
    for at in range(0, len(pending), batch_size):
      batch = pending[at:at + batch_size]
      completions = sampler.generate_encoded(encoded[at:at + batch_size], max_new_tokens,
                                             sampling, n=n, seed=seed,
                                             prompt_seeds=[r["position"] for r in batch])
      job.write(batch, output_records([r["id"] for r in batch], [r["prompt"] for r in batch],
                                      completions, n))
      tokens += sum(c.completion_tokens for c in completions)
      job.bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):.1f} tok/s")
  return {"prompts": len(pending), "skipped": len(records) - len(pending), "tokens": tokens,
          "seconds": time.perf_counter() - start}
