"""The one resumable, crash-safe JSON Lines job: input records with an ``id`` in, output lines
appended as each chunk finishes, a killed job resumed where it stopped.

``open_job`` locks the output (`storage.output_lock`: a second job on it is refused, naming the
first one's pid), truncates a partial trailing line left by a kill, and keeps this shard's input
records (``hash`` of the id or line ``index`` modulo ``num_shards``) whose id is not done yet
(``Job.todo``). An id may own several output lines (``lines_per_id``, told apart by
``line_index``, e.g. ``sample_index``): it is done only when all of them are there, and the lines
of a partly written id (a kill mid-chunk) are removed, so it is redone whole. A caller's ``keep``
predicate drops existing lines to redo (``retry_errors`` drops ``error`` lines) or raises for a
file written under other settings. An id written twice keeps one line, the last complete one.
Whenever lines are dropped the file is rewritten atomically, so it never holds duplicates.
``Job.write`` appends (one fsynced write per line) and moves the progress bar.

``run_job`` / ``run_job_async`` drive it with an async ``process_chunk`` (one result per record,
several chunks in flight). Collective jobs (``collective=True``, a model sharded over every JAX
process): process 0 locks, recovers and writes; every process gets its resume point (``agree``)
and so runs the same chunks in the same order.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any, Awaitable, Callable, Iterator, Sequence

import tqdm

from rlaif_jax import storage

logger = logging.getLogger(__name__)

Record = dict[str, Any]
ProcessChunk = Callable[[list[Record]], Awaitable[list[Record]]]
# keep(existing output line, its 1-based line number) -> False to drop it and redo its id.
KeepLine = Callable[[Record, int], bool]


@dataclasses.dataclass(frozen=True)
class JobConfig:
  """Where to read/write, how to split and pace the work, and which existing lines count."""
  output_path: str
  input_path: str = ""
  num_shards: int = 1
  shard_index: int = 0
  shard_by: str = "hash"
  chunk_size: int = 32
  chunks_in_flight: int = 2
  retry_errors: bool = False
  progress: bool = True
  progress_desc: str | None = None  # default: the output's file name
  progress_unit: str = "rec"
  staging_dir: str | None = None
  upload_every_s: float = 30.0
  gcs_client: Any = None
  # Output lines per input id: an int, or a function of the id. An id's lines are told apart by
  # `line_of(line) -> (input id, index)`; by default (line["id"], line[line_index] or 0).
  lines_per_id: int | Callable[[Any], int] = 1
  line_index: str = "sample_index"
  line_of: Callable[[Record], tuple[Any, Any]] | None = None
  keep: KeepLine | None = None
  # A collective process_chunk (a sharded model): process 0 recovers and writes the output,
  # every process runs the same chunks in the same order. `agree(fn)` runs fn on process 0 and
  # returns its JSON-ready result on every process (default: `sharding.host.broadcast_json`).
  collective: bool = False
  agree: Callable[[Callable[[], Any]], Any] | None = None

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

  def keeps(self, line: Record, line_no: int) -> bool:
    """Whether an existing output line stays (`keep`, then `retry_errors`)."""
    if self.keep is not None and not self.keep(line, line_no):
      return False
    return not (self.retry_errors and line.get("error") is not None)

  def expected_lines(self, rid: Any) -> int:
    return self.lines_per_id(rid) if callable(self.lines_per_id) else self.lines_per_id


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
  return json.dumps(value, sort_keys=True, ensure_ascii=False)


def load_records(path: str, *, client: Any = None) -> list[Record]:
  """Input records with ``id`` filled in (default: the 0-based line number) and ``_line``;
  duplicate or non-scalar ids name file and lines."""
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


def in_shard(record: Record, config: JobConfig) -> bool:
  if config.num_shards == 1:
    return True
  if config.shard_by == "index":
    return record["_line"] % config.num_shards == config.shard_index
  digest = hashlib.sha1(id_key(record["id"]).encode("utf-8")).hexdigest()
  return int(digest[:12], 16) % config.num_shards == config.shard_index


def read_output(path: str, *, client: Any = None) -> list[Record]:
  """All records of an output file (a partial trailing line is ignored, not an error)."""
  if not storage.exists(path, client=client):
    return []
  text = storage.read_text(path, client=client)
  text = text[:text.rfind("\n") + 1]
  return [r for _, r in storage.parse_jsonl(text, path)]


def _choose(path: str, line_no: int, record: Record, earlier: tuple[int, Record]) -> bool:
  """Whether a repeated (id, index) line replaces the earlier one: the last complete line wins
  (the last without an error, else the last)."""
  earlier_no, earlier_line = earlier
  if record.get("error") is not None and earlier_line.get("error") is None:
    logger.warning("%s:%d: duplicate id %r in output (kept the complete line %d)", path, line_no,
                   record["id"], earlier_no)
    return False
  logger.warning("%s:%d: duplicate id %r in output (kept this line, dropped line %d)", path,
                 line_no, record["id"], earlier_no)
  return True


def recover_output(appender: storage.JsonlAppender, config: JobConfig
                   ) -> tuple[list[Record], set[str], int]:
  """(kept lines, keys of done ids, lines `config.keeps` dropped) of an existing output.

  A repeated (id, index) line (two writers before the output lock, a hand-merged file) keeps
  one (`_choose`); an id short of its lines loses them all. When anything was dropped the file
  is rewritten with the kept lines, in file order."""
  chosen: dict[tuple[str, str], tuple[int, Record]] = {}
  ids: dict[str, Any] = {}
  dropped = duplicates = 0
  for line_no, record in enumerate(appender.recover(), start=1):
    if not config.keeps(record, line_no):
      dropped += 1
      continue
    if "id" not in record:
      raise storage.InputError(f"{appender.path}:{line_no}: output line without 'id'; "
                               "this file was not written by this job")
    rid, index = (config.line_of(record) if config.line_of is not None
                  else (record["id"], record.get(config.line_index, 0)))
    key = (id_key(rid), id_key(index))
    ids[key[0]] = rid
    if key in chosen:
      duplicates += 1
      if not _choose(appender.path, line_no, record, chosen[key]):
        continue
    chosen[key] = (line_no, record)
  counts = collections.Counter(k for k, _ in chosen)
  done = {k for k, n in counts.items() if n >= config.expected_lines(ids[k])}
  kept = sorted(v for k, v in chosen.items() if k[0] in done)
  if len(kept) < len(chosen):
    logger.warning("%s: removed %d line(s) of %d id(s) written only in part; they are redone",
                   appender.path, len(chosen) - len(kept), len(counts) - len(done))
  if dropped or duplicates or len(kept) < len(chosen):
    appender.rewrite([record for _, record in kept])
  return [record for _, record in kept], done, dropped


def loaded_host():
  """`sharding.host` once JAX is loaded, else None: one process (judging jobs and an
  evaluation with LLM judges only need no JAX, and load none for this)."""
  if "jax" not in sys.modules:
    return None
  from rlaif_jax.sharding import host  # Local: only once JAX is loaded anyway.
  return host


def is_main() -> bool:
  """Whether this process writes the outputs (always, in a single-process run)."""
  host = loaded_host()
  return host is None or host.is_main()


def _agree(config: JobConfig, fn: Callable[[], Any]) -> Any:
  """fn() of the writing process, on every process of a collective job."""
  if not config.collective:
    return fn()
  if config.agree is not None:
    return config.agree(fn)
  host = loaded_host()
  if host is None or not host.is_multiprocess():
    return fn()
  return host.broadcast_json(fn() if host.is_main() else None)


class Job:
  """An open job (`open_job`): `todo` (this shard's records still to do, in input order),
  `existing` (the kept output lines: on every process of a collective job), `summary`, `bar`."""

  def __init__(self, config: JobConfig, appender: storage.JsonlAppender | None,
               records: Sequence[Record], shard: Sequence[Record], state: dict[str, Any]):
    self.config, self.appender = config, appender
    done = set(state["done"])
    self.existing: list[Record] = state["existing"]
    self.todo = [r for r in shard if id_key(r["id"]) not in done]
    self.summary = JobSummary(
        output_path=config.shard_output_path, input_records=len(records),
        shard_records=len(shard), already_done=len(shard) - len(self.todo), processed=0,
        errors=0, retried_errors=state["dropped"], elapsed_s=0.0)
    self.bar = tqdm.tqdm(
        total=len(shard), initial=self.summary.already_done, file=sys.stderr,
        disable=not (config.progress and appender is not None and self.todo),
        unit=config.progress_unit, dynamic_ncols=True, mininterval=1.0,
        desc=config.progress_desc or os.path.basename(config.shard_output_path))

  def write(self, records: Sequence[Record], lines: Sequence[Record]) -> None:
    """Appends the output `lines` of the finished input `records` (process 0 of a collective
    job; the others only count)."""
    for line in lines:
      if self.appender is not None:
        self.appender.append(line)
    errors = sum(line.get("error") is not None for line in lines)
    self.summary.processed += len(records)
    self.summary.errors += errors
    self.bar.update(len(records))
    if self.summary.errors:
      self.bar.set_postfix(errors=self.summary.errors)


@contextlib.contextmanager
def open_job(config: JobConfig, records: Sequence[Record] | None = None,
             keep_existing: bool = False) -> Iterator[Job]:
  """The job on `config.shard_output_path` (see the module docstring), locked and resumed;
  `records` default to `load_records(config.input_path)`. `keep_existing`: `Job.existing`
  holds the kept output lines (else it is empty)."""
  start = time.monotonic()
  writer = not config.collective or is_main()
  appender = (storage.open_appender(config.shard_output_path, staging_dir=config.staging_dir,
                                    client=config.gcs_client,
                                    upload_every_s=config.upload_every_s) if writer else None)
  lock = storage.output_lock(appender.path) if writer else contextlib.nullcontext()
  with lock:
    if records is None:
      records = load_records(config.input_path, client=config.gcs_client)
    shard = [r for r in records if in_shard(r, config)]

    def recover() -> dict[str, Any]:
      existing, done, dropped = recover_output(appender, config)
      return {"done": sorted(done), "dropped": dropped,
              "existing": existing if keep_existing else []}
    job = Job(config, appender, records, shard, _agree(config, recover))
    try:
      if appender is not None:
        appender.open()
      yield job
    finally:
      job.bar.close()
      if appender is not None:
        appender.close()
      job.summary.elapsed_s = time.monotonic() - start


def _output_line(record: Record, result: Record) -> Record:
  out = {"id": record["id"]}
  out.update({k: v for k, v in result.items() if k != "id"})
  return out


async def run_job_async(config: JobConfig, process_chunk: ProcessChunk,
                        records: Sequence[Record] | None = None) -> JobSummary:
  """Runs the job (`open_job`); ``records`` may be pre-loaded with ``load_records``.

  ``process_chunk`` gets copies of `config.chunk_size` records (with ``id`` and ``_line``) and
  must return one dict per record, in order, written as ``{"id", **result}``; a dict with a
  non-null ``error`` counts as failed but is still final (``retry_errors`` redoes it).
  """
  with open_job(config, records) as job:
    todo, size = job.todo, config.chunk_size
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]

    async def run_chunk(chunk: list[Record]) -> tuple[list[Record], list[Record]]:
      results = await process_chunk([dict(r) for r in chunk])
      if len(results) != len(chunk):
        raise RuntimeError(f"process_chunk returned {len(results)} results for {len(chunk)} "
                           "records")
      return chunk, results

    pending: set[asyncio.Task] = set()
    next_chunk = 0
    try:
      while next_chunk < len(chunks) or pending:
        while next_chunk < len(chunks) and len(pending) < config.chunks_in_flight:
          pending.add(asyncio.ensure_future(run_chunk(chunks[next_chunk])))
          next_chunk += 1
        finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
          chunk, results = task.result()
          job.write(chunk, [_output_line(r, res) for r, res in zip(chunk, results)])
    finally:
      for task in pending:
        task.cancel()
      if pending:
        await asyncio.gather(*pending, return_exceptions=True)
  return job.summary


def run_job(config: JobConfig, process_chunk: ProcessChunk,
            records: Sequence[Record] | None = None) -> JobSummary:
  """Blocking ``run_job_async``."""
  return asyncio.run(run_job_async(config, process_chunk, records))
