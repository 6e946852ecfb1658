"""Reading and writing files on local disk or Google Cloud Storage (``gs://bucket/path``).

Local paths are the primary target. JSON Lines outputs are append-only and crash-safe
(``JsonlAppender``): each record is one ``write`` of a whole line followed by flush + fsync, and
on reopen a trailing partial line (a write cut by a kill) is truncated away. GCS objects cannot
be appended to, so a ``gs://`` output is staged in a local file and uploaded every
``upload_every_s`` seconds and on close (``StagedGcsAppender``); on restart the staged file is
resumed from if the object is unchanged since our last upload (recorded in a sidecar), else the
object is.

Functions take an optional ``client`` (anything with ``bucket(name).blob(path)`` and
``list_blobs(bucket, prefix=)``); by default a ``google.cloud.storage.Client()`` is made lazily.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import glob as glob_lib
import hashlib
import json
import os
import pathlib
import tempfile
import time
from typing import Any, Iterator

GCS_PREFIX = "gs://"


class StorageError(OSError):
  """A path could not be read or written."""


class OutputLockedError(StorageError):
  """Another process is writing the same output (`output_lock`)."""


class InputError(ValueError):
  """An input file has a malformed line; the message names file and line."""


def is_gcs(path: str) -> bool:
  return path.startswith(GCS_PREFIX)


def split_gcs(path: str) -> tuple[str, str]:
  """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
  if not is_gcs(path):
    raise StorageError(f"not a gs:// path: {path!r}")
  bucket, _, blob = path[len(GCS_PREFIX):].partition("/")
  if not bucket:
    raise StorageError(f"gs:// path without bucket: {path!r}")
  return bucket, blob


@functools.lru_cache(maxsize=1)
def _default_gcs_client() -> Any:
  try:
    from google.cloud import storage as gcs  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise StorageError("gs:// paths need google-cloud-storage "
                       "(pip install google-cloud-storage)") from e
  return gcs.Client()


def _blob(path: str, client: Any | None) -> Any:
  bucket, name = split_gcs(path)
  if not name:
    raise StorageError(f"gs:// path without object name: {path!r}")
  return (client or _default_gcs_client()).bucket(bucket).blob(name)


def as_path(path: str | os.PathLike) -> Any:
  """A path object for a local path or a ``gs://`` URL, never mangled: ``gs://b/x`` becomes an
  ``etils.epath.Path`` (what orbax uses; needs ``gcsfs``, the ``[gcs]`` extra), anything else a
  ``pathlib.Path``. Both support ``/``, ``exists``, ``mkdir``, ``open``, ``read_text`` and
  ``write_text``; ``pathlib.Path("gs://b/x").absolute()`` would give ``$PWD/gs:/b/x``."""
  text = os.fspath(path)
  if is_gcs(text):
    from etils import epath  # pylint: disable=import-outside-toplevel
    return epath.Path(text)
  return pathlib.Path(text)


def join(base: str, *parts: str) -> str:
  if is_gcs(base):
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
  return os.path.join(base, *parts)


def exists(path: str, *, client: Any | None = None) -> bool:
  if is_gcs(path):
    return bool(_blob(path, client).exists())
  return os.path.exists(path)


def makedirs(path: str) -> None:
  """Creates a local directory tree (GCS has no directories: no-op)."""
  if not is_gcs(path) and path:
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str, *, client: Any | None = None) -> bytes:
  if is_gcs(path):
    blob = _blob(path, client)
    if not blob.exists():
      raise StorageError(f"{path} does not exist")
    return blob.download_as_bytes()
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise StorageError(f"cannot read {path}: {e.strerror or e}") from e


def read_text(path: str, *, client: Any | None = None) -> str:
  data = read_bytes(path, client=client)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise InputError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None


def write_text(path: str, text: str, *, client: Any | None = None) -> None:
  """Writes a whole file; local writes are atomic (temp file + fsync + rename)."""
  write_bytes(path, text.encode("utf-8"), client=client)


def write_bytes(path: str, data: bytes, *, client: Any | None = None) -> None:
  """Writes a whole binary file; local writes are atomic (`atomic_path`)."""
  if is_gcs(path):
    _blob(path, client).upload_from_string(data)
    return
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """The one atomic local write: `with atomic_path(path) as tmp:` write the whole file at `tmp`
  (a fresh empty file beside `path`, parents created) by any means (open, savefig, a download);
  on a clean exit it is fsynced, made 0644 (mkstemp's 0600 would hide it from other users) and
  renamed over `path`; on any exception (KeyboardInterrupt included) it is removed and `path` is
  left as it was. A reader, or a run killed mid-write, sees the old file or the new one whole."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  os.close(fd)
  try:
    yield tmp
    fd = os.open(tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.fchmod(fd, 0o644)
    finally:
      os.close(fd)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


@contextlib.contextmanager
def output_lock(path: str) -> Iterator[None]:
  """Holds an exclusive `fcntl.flock` on `path + ".lock"` (with our pid in it) for the block:
  two batch jobs on one output would both append to it. A second holder gets
  `OutputLockedError` naming the first one's pid at once (no waiting). The kernel drops the lock
  when the holder exits, killed or not; the small .lock file stays. Local paths only (a gs://
  output locks its local staging file), so it guards jobs on one machine."""
  import fcntl  # pylint: disable=import-outside-toplevel  (POSIX only)
  lock_path = path + ".lock"
  os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
      raise OutputLockedError(
          f"{path} is being written by another job (pid {holder}, lock file {lock_path}); wait "
          "for it to finish, stop it, or write to another output") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def file_stats(directory: str | os.PathLike, *, recursive: bool = False) -> list[list[Any]]:
  """`[relative name, size, mtime_ns]` of every file under `directory` (its subfolders too when
  `recursive`), sorted by path: what checkpoint fingerprints hash, so that weights rewritten in
  place (same names, new sizes or times) count as other weights. Local paths only."""
  root = pathlib.Path(directory)
  found = root.rglob("*") if recursive else root.iterdir()
  stats = []
  for f in sorted(found):
    if f.is_file():
      st = f.stat()
      stats.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
  return stats


def glob(pattern: str, *, client: Any | None = None) -> list[str]:
  """Sorted paths matching a shell pattern (``*``, ``?``, ``[..]``), local or gs://."""
  if not is_gcs(pattern):
    return sorted(glob_lib.glob(pattern))
  bucket, name = split_gcs(pattern)
  cut = min([i for i in (name.find(c) for c in "*?[") if i >= 0], default=len(name))
  blobs = (client or _default_gcs_client()).list_blobs(bucket, prefix=name[:cut])
  return sorted(f"{GCS_PREFIX}{bucket}/{b.name}" for b in blobs
                if fnmatch.fnmatchcase(b.name, name))


def parse_jsonl(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields ``(0-based line index, object)`` for each non-blank line; errors name source:line."""
  for index, line in enumerate(text.split("\n")):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise InputError(
          f"{source}:{index + 1}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
      raise InputError(f"{source}:{index + 1}: expected a JSON object, got {type(record).__name__}")
    yield index, record


def read_jsonl(path: str, *, client: Any | None = None) -> list[tuple[int, dict[str, Any]]]:
  """All ``(0-based line index, object)`` pairs of a JSON Lines file."""
  return list(parse_jsonl(read_text(path, client=client), path))


def dumps_line(record: dict[str, Any]) -> bytes:
  """One JSON Lines line (UTF-8, newline-terminated, no NaN)."""
  return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


class JsonlAppender:
  """Crash-safe append-only JSON Lines writer for a local file."""

  def __init__(self, path: str, *, fsync: bool = True):
    self.path = path
    self._fsync = fsync
    self._fd: int | None = None

  def recover(self) -> list[dict[str, Any]]:
    """Truncates a trailing partial line and returns the records already written."""
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb+") as f:
      data = f.read()
      end = data.rfind(b"\n") + 1
      if end < len(data):
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    try:
      text = data[:end].decode("utf-8")
    except UnicodeDecodeError as e:
      line = data[:e.start].count(b"\n") + 1
      raise InputError(f"{self.path}:{line}: not valid UTF-8 ({e.reason})") from None
    return [record for _, record in parse_jsonl(text, self.path)]

  def rewrite(self, records: list[dict[str, Any]]) -> None:
    """Atomically replaces the whole file with ``records`` (file must not be open)."""
    if self._fd is not None:
      raise StorageError(f"{self.path}: rewrite() while open for appending")
    write_text(self.path, "".join(dumps_line(r).decode("utf-8") for r in records))

  def open(self) -> "JsonlAppender":
    if self._fd is None:
      directory = os.path.dirname(os.path.abspath(self.path))
      os.makedirs(directory, exist_ok=True)
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return self

  def append(self, record: dict[str, Any]) -> None:
    """Writes the whole line with one ``write`` (retried for short writes), then fsyncs."""
    if self._fd is None:
      self.open()
    assert self._fd is not None
    view = memoryview(dumps_line(record))
    while view:
      written = os.write(self._fd, view)
      view = view[written:]
    if self._fsync:
      os.fsync(self._fd)

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "JsonlAppender":
    return self.open()

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


class StagedGcsAppender(JsonlAppender):
  """``JsonlAppender`` on a local staging file, mirrored to a ``gs://`` object."""

  def __init__(self, gcs_path: str, *, staging_dir: str | None = None, client: Any | None = None,
               upload_every_s: float = 30.0, fsync: bool = True):
    split_gcs(gcs_path)
    staging_dir = staging_dir or os.path.join(tempfile.gettempdir(), "rlaif_jax_gcs_staging")
    digest = hashlib.sha1(gcs_path.encode("utf-8")).hexdigest()[:16]
    super().__init__(os.path.join(staging_dir, f"{digest}-{os.path.basename(gcs_path)}"),
                     fsync=fsync)
    self.gcs_path = gcs_path
    self._client = client
    self._upload_every_s = upload_every_s
    self._last_upload = time.monotonic()
    self._dirty = False

  @property
  def sidecar_path(self) -> str:
    """Small JSON file next to the staging file: what our last upload(s) put in the object."""
    return self.path + ".uploaded.json"

  def _read_sidecar(self) -> dict[str, Any] | None:
    try:
      with open(self.sidecar_path, encoding="utf-8") as f:
        state = json.load(f)
    except (OSError, ValueError):
      return None
    return state if isinstance(state, dict) else None

  def _write_sidecar(self, hashes: list[str], size: int, generation: Any) -> None:
    write_text(self.sidecar_path, json.dumps(
        {"gcs_path": self.gcs_path, "sha256": hashes, "size": size, "generation": generation}))

  def recover(self) -> list[dict[str, Any]]:
    """Resumes from the staging file if the object is unchanged since our last upload.

    The sidecar records the sha256 (and size, generation) of what we last uploaded (plus the
    upload in flight, if a kill cut it). If the remote object still matches, the local staging
    file is newer or equal and is kept, even when shorter (a ``rewrite`` that dropped lines);
    otherwise the remote object wins (another writer, or the user deleted it to start over).
    Without a sidecar (never uploaded from here) the longer copy is kept. Afterwards the object
    is brought up to date with the recovered local content.
    """
    blob = _blob(self.gcs_path, self._client)
    remote_exists = bool(blob.exists())
    remote = blob.download_as_bytes() if remote_exists else b""
    local = None
    if os.path.exists(self.path):
      with open(self.path, "rb") as f:
        local = f.read()
    sidecar = self._read_sidecar()
    if sidecar is not None and sidecar.get("gcs_path", self.gcs_path) == self.gcs_path:
      known = sidecar.get("sha256") or []
      take_remote = not (remote_exists and hashlib.sha256(remote).hexdigest() in known)
    else:
      take_remote = len(remote) > (len(local) if local is not None else -1)
    if take_remote and remote != local:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      with open(self.path, "wb") as f:
        f.write(remote)
        f.flush()
        os.fsync(f.fileno())
    records = super().recover()
    with open(self.path, "rb") as f:
      local = f.read()
    if take_remote and remote_exists:
      self._write_sidecar([hashlib.sha256(remote).hexdigest()], len(remote),
                          getattr(blob, "generation", None))
    elif take_remote and os.path.exists(self.sidecar_path):
      os.unlink(self.sidecar_path)  # nothing of ours is in the bucket any more
    if local != remote:
      # Lines recovered from the staging file that never reached the object (kill before the
      # final upload): upload now, so the object is complete even if nothing new is appended.
      self._dirty = True
      self.upload()
    return records

  def rewrite(self, records: list[dict[str, Any]]) -> None:
    super().rewrite(records)
    self._dirty = True

  def upload(self) -> None:
    with open(self.path, "rb") as f:
      data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    previous = self._read_sidecar() or {}
    # Record the upload before it happens, so a kill mid-upload leaves both the old and the
    # new content recognised as ours.
    self._write_sidecar(list(previous.get("sha256") or [])[-1:] + [digest], len(data),
                        previous.get("generation"))
    blob = _blob(self.gcs_path, self._client)
    blob.upload_from_string(data)
    self._write_sidecar([digest], len(data), getattr(blob, "generation", None))
    self._last_upload = time.monotonic()
    self._dirty = False

  def append(self, record: dict[str, Any]) -> None:
    super().append(record)
    self._dirty = True
    if time.monotonic() - self._last_upload >= self._upload_every_s:
      self.upload()

  def close(self) -> None:
    super().close()
    if self._dirty:
      self.upload()


def open_appender(path: str, *, staging_dir: str | None = None, client: Any | None = None,
                  upload_every_s: float = 30.0) -> JsonlAppender:
  """The right appender for a local or gs:// output path."""
  if is_gcs(path):
    return StagedGcsAppender(path, staging_dir=staging_dir, client=client,
                             upload_every_s=upload_every_s)
  return JsonlAppender(path)
