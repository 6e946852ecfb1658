"""Resumable, shardable JSON Lines batch jobs: one output line per input id, crash-safe.

``run_job`` reads the input (local or gs://), gives records without ``id`` their 0-based line
number, keeps this shard's records (``hash`` of the id or line ``index`` modulo ``num_shards``),
skips ids already in the output (after truncating a partial trailing line left by a kill), and
feeds the rest to ``process_chunk`` in chunks, several chunks in flight. Each result line is
appended atomically as soon as its chunk finishes, so a killed job loses at most the chunks in
flight and never writes a duplicate. With ``retry_errors`` the output is first rewritten
(atomically) without its ``error`` lines so those ids are processed again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any, Awaitable, Callable, Sequence

import tqdm

from rlaif_jax import storage
from rlaif_jax.judging import parsing

logger = logging.getLogger(__name__)

Record = dict[str, Any]
ProcessChunk = Callable[[list[Record]], Awaitable[list[Record]]]


@dataclasses.dataclass(frozen=True)
class JobConfig:
  """Where to read/write and how to split and pace the work."""
  input_path: str
  output_path: str
  num_shards: int = 1
  shard_index: int = 0
  shard_by: str = "hash"
  chunk_size: int = 32
  chunks_in_flight: int = 2
  retry_errors: bool = False
  progress: bool = True
  staging_dir: str | None = None
  upload_every_s: float = 30.0
  gcs_client: Any = None
  # process_chunk is a collective over every JAX process (a sharded model): process 0 recovers
  # and writes the output, every process runs the same chunks in the same order.
  collective: bool = False

  def __post_init__(self):
    if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
      raise ValueError(f"need 0 <= shard_index < num_shards, got shard_index={self.shard_index}, "
                       f"num_shards={self.num_shards}")
    if self.shard_by not in ("hash", "index"):
      raise ValueError(f"shard_by must be 'hash' or 'index', got {self.shard_by!r}")
    if self.chunk_size < 1 or self.chunks_in_flight < 1:
      raise ValueError("chunk_size and chunks_in_flight must be >= 1")
    if self.collective and self.chunks_in_flight != 1:
      raise ValueError("a collective job runs one chunk at a time (chunks_in_flight=1)")

  @property
  def shard_output_path(self) -> str:
    return shard_path(self.output_path, self.shard_index, self.num_shards)


@dataclasses.dataclass
class JobSummary:
  """Counts of one run, printed at the end."""
  output_path: str
  input_records: int
  shard_records: int
  already_done: int
  processed: int
  errors: int
  retried_errors: int
  elapsed_s: float

  def table(self) -> str:
    rows = [("output", self.output_path), ("input records", self.input_records),
            ("this shard", self.shard_records), ("already done", self.already_done),
            ("errors re-queued", self.retried_errors), ("processed now", self.processed),
            ("errors now", self.errors), ("elapsed", f"{self.elapsed_s:.1f}s")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def shard_path(path: str, shard_index: int, num_shards: int) -> str:
  """``out.jsonl`` -> ``out-00001-of-00004.jsonl`` when sharded; unchanged otherwise."""
  if num_shards == 1:
    return path
  stem, ext = os.path.splitext(path)
  return f"{stem}-{shard_index:05d}-of-{num_shards:05d}{ext}"


def id_key(value: Any) -> str:
  """Canonical text of an id (1 and "1" are different ids)."""
  return json.dumps(value, ensure_ascii=False)


def load_records(path: str, *, client: Any = None) -> list[Record]:
  """Input records with ``id`` filled in; duplicate or non-scalar ids name file and lines."""
  records, seen = [], {}
  for index, record in storage.read_jsonl(path, client=client):
    if "id" not in record:
      record = {"id": index, **record}
    rid = record["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
      raise storage.InputError(f"{path}:{index + 1}: field 'id' must be a string or integer, "
                               f"got {rid!r}")
    key = id_key(rid)
    if key in seen:
      raise storage.InputError(f"{path}:{index + 1}: duplicate id {rid!r} (first at line "
                               f"{seen[key] + 1}); ids must be unique")
    seen[key] = index
    records.append({**record, "_line": index})
  return records


def require_fields(records: Sequence[Record], fields: Sequence[str], path: str) -> None:
  """Every record must have the given string fields; the error names file:line and field."""
  for record in records:
    for field in fields:
      if not isinstance(record.get(field), str):
        got = "missing" if field not in record else type(record[field]).__name__
        raise storage.InputError(f"{path}:{record['_line'] + 1}: field {field!r} must be a "
                                 f"string ({got})")


def require_binary_labels(records: Sequence[Record], path: str, field: str = "label") -> None:
  """Where present (and not null), ``field`` must be 0/1 or a Good/Bad-style word; it is
  normalised to 0/1 in place. The error names file:line, so no label is dropped silently."""
  for record in records:
    if record.get(field) is None:
      continue
    try:
      record[field] = parsing.normalise_binary(record[field], field)
    except parsing.ParseError as e:
      raise storage.InputError(f"{path}:{record['_line'] + 1}: {e}") from None


def in_shard(record: Record, config: JobConfig) -> bool:
  if config.num_shards == 1:
    return True
  if config.shard_by == "index":
    return record["_line"] % config.num_shards == config.shard_index
  digest = hashlib.sha1(id_key(record["id"]).encode("utf-8")).hexdigest()
  return int(digest[:12], 16) % config.num_shards == config.shard_index


def _recover_output(appender: storage.JsonlAppender, retry_errors: bool) -> tuple[set[str], int]:
  """Done ids in the output (and how many error lines were dropped for re-processing).

  An id written twice (two writers before the output lock, or a hand-merged file) keeps one
  line, the last complete one (the last without an error, else the last), and the file is
  rewritten with one line per id, so reports over it never count an item twice."""
  existing = appender.recover()
  chosen: dict[str, tuple[int, Record]] = {}
  dropped = duplicates = 0
  for line_no, record in enumerate(existing, start=1):
    if "id" not in record:
      raise storage.InputError(f"{appender.path}:{line_no}: output line without 'id'; "
                               "this file was not written by this job")
    if retry_errors and record.get("error") is not None:
      dropped += 1
      continue
    key = id_key(record["id"])
    if key in chosen:
      duplicates += 1
      earlier_line, earlier = chosen[key]
      if record.get("error") is not None and earlier.get("error") is None:
        logger.warning("%s:%d: duplicate id %r in output (kept the complete line %d)",
                       appender.path, line_no, record["id"], earlier_line)
        continue
      logger.warning("%s:%d: duplicate id %r in output (kept this line, dropped line %d)",
                     appender.path, line_no, record["id"], earlier_line)
    chosen[key] = (line_no, record)
  if dropped or duplicates:
    appender.rewrite([record for _, record in sorted(chosen.values(), key=lambda x: x[0])])
  return set(chosen), dropped


def _output_line(record: Record, result: Record) -> Record:
  out = {"id": record["id"]}
  out.update({k: v for k, v in result.items() if k != "id"})
  return out


async def run_job_async(config: JobConfig, process_chunk: ProcessChunk,
                        records: Sequence[Record] | None = None) -> JobSummary:
  """Runs the job (see module docstring); ``records`` may be pre-loaded with ``load_records``.

  ``process_chunk`` gets records (with ``id`` and ``_line``) and must return one dict per
  record, in order; a dict with a non-null ``error`` counts as failed but is still final.
  The output is locked for the whole job (`storage.output_lock`): a second job started on it
  fails with `storage.OutputLockedError` naming the first one's pid.
  """
  if config.collective and not _is_main_process():  # multi-host: process 0 writes
    return await _run_locked(config, process_chunk, records, None)
  appender = storage.open_appender(config.shard_output_path, staging_dir=config.staging_dir,
                                   client=config.gcs_client, upload_every_s=config.upload_every_s)
  with storage.output_lock(appender.path):
    return await _run_locked(config, process_chunk, records, appender)


async def _run_locked(config: JobConfig, process_chunk: ProcessChunk,
                      records: Sequence[Record] | None,
                      appender: storage.JsonlAppender | None) -> JobSummary:
  start = time.monotonic()
  if records is None:
    records = load_records(config.input_path, client=config.gcs_client)
  shard = [r for r in records if in_shard(r, config)]
  out_path = config.shard_output_path
  writer = appender is not None
  done, dropped = (_recover_output(appender, config.retry_errors) if writer else (set(), 0))
  todo = [r for r in shard if id_key(r["id"]) not in done]
  if config.collective:  # process 0's resume point, on every process
    todo, dropped = _agree_on_todo(shard, todo, dropped)
  summary = JobSummary(output_path=out_path, input_records=len(records), shard_records=len(shard),
                       already_done=len(shard) - len(todo), processed=0, errors=0,
                       retried_errors=dropped, elapsed_s=0.0)
  chunks = [todo[i:i + config.chunk_size] for i in range(0, len(todo), config.chunk_size)]
  bar = tqdm.tqdm(total=len(todo), disable=not (config.progress and writer), file=sys.stderr,
                  unit="rec",
                  desc=os.path.basename(out_path), dynamic_ncols=True)

  async def run_chunk(chunk: list[Record]) -> tuple[list[Record], list[Record]]:
    results = await process_chunk([dict(r) for r in chunk])
    if len(results) != len(chunk):
      raise RuntimeError(f"process_chunk returned {len(results)} results for {len(chunk)} records")
    return chunk, results

  pending: set[asyncio.Task] = set()
  next_chunk = 0
  try:
    if appender is not None:
      appender.open()
    while next_chunk < len(chunks) or pending:
      while next_chunk < len(chunks) and len(pending) < config.chunks_in_flight:
        pending.add(asyncio.ensure_future(run_chunk(chunks[next_chunk])))
        next_chunk += 1
      finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
      for task in finished:
        chunk, results = task.result()
        for record, result in zip(chunk, results):
          if appender is not None:
            appender.append(_output_line(record, result))
          summary.processed += 1
          summary.errors += int(result.get("error") is not None)
        bar.update(len(chunk))
        bar.set_postfix(errors=summary.errors)
  finally:
    for task in pending:
      task.cancel()
    if pending:
      await asyncio.gather(*pending, return_exceptions=True)
    bar.close()
    if appender is not None:
      appender.close()
    summary.elapsed_s = time.monotonic() - start
  return summary


def _is_main_process() -> bool:
  from rlaif_jax.sharding import host  # Local: judging jobs need no JAX.
  return host.is_main()


def _agree_on_todo(shard: Sequence[Record], todo: Sequence[Record], dropped: int
                   ) -> tuple[list[Record], int]:
  """Process 0's (todo records, dropped error lines) on every process of a collective job."""
  import numpy as np
  from rlaif_jax.sharding import host
  todo_ids = {id_key(r["id"]) for r in todo}
  keep, dropped = host.broadcast((np.array([id_key(r["id"]) in todo_ids for r in shard], bool),
                                  np.int64(dropped)))
  return [r for r, k in zip(shard, keep) if k], int(dropped)


def run_job(config: JobConfig, process_chunk: ProcessChunk,
            records: Sequence[Record] | None = None) -> JobSummary:
  """Blocking ``run_job_async``."""
  return asyncio.run(run_job_async(config, process_chunk, records))


def read_output(path: str, *, client: Any = None) -> list[Record]:
  """All records of an output file (a partial trailing line is ignored, not an error)."""
  if not storage.exists(path, client=client):
    return []
  text = storage.read_text(path, client=client)
  text = text[:text.rfind("\n") + 1]
  return [r for _, r in storage.parse_jsonl(text, path)]
