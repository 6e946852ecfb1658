"""Streaming safetensors reading (memory-mapped, tensor by tensor) and writing.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then raw little-endian bytes. We read with np.memmap so that a 7B load never holds
more than one shard-slice of a tensor in host RAM, and support bf16 through ml_dtypes.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
  """A safetensors file is malformed or a tensor is missing."""


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
  """Returns ({name: info}, byte offset of the data section)."""
  path = pathlib.Path(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise SafetensorsError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", raw)
    if n > 100 * 2**20:
      raise SafetensorsError(f"{path}: header length {n} is implausible (not a safetensors file?)")
    size = os.fstat(f.fileno()).st_size
    if 8 + n > size:
      raise SafetensorsError(f"{path}: the header needs {8 + n} bytes but the file has {size} "
                             "(file truncated? e.g. an interrupted download)")
    try:
      header = json.loads(f.read(n))
    except json.JSONDecodeError as e:
      raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from e
  header.pop("__metadata__", None)
  return header, 8 + n


def open_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Memory-maps every tensor of one safetensors file (no data is read until used)."""
  header, base = read_header(path)
  size = os.path.getsize(path)
  out = {}
  for name, info in header.items():
    if info["dtype"] not in DTYPES:
      raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    dtype = DTYPES[info["dtype"]]
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - start != int(np.prod(shape)) * dtype.itemsize:
      raise SafetensorsError(f"{path}: tensor {name!r} has {end - start} bytes for shape {shape}")
    if start < 0 or base + end > size:
      raise SafetensorsError(
          f"{path}: tensor {name!r} needs bytes {base + start}..{base + end} but the file has "
          f"{size} bytes (file truncated? e.g. an interrupted download)")
    if 0 in shape:
      out[name] = np.zeros(shape, dtype)
      continue
    out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)
  return out


def checkpoint_files(directory: str | os.PathLike) -> list[pathlib.Path]:
  """The safetensors files of a HF checkpoint directory (single file or sharded with an index)."""
  d = pathlib.Path(directory)
  index = d / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not (d / f).exists()]
    if missing:
      raise SafetensorsError(f"{index} names shard files that do not exist: {missing}")
    return [d / f for f in files]
  single = d / "model.safetensors"
  if single.exists():
    return [single]
  found = sorted(d.glob("*.safetensors"))
  if found:
    return found
  bins = sorted(p.name for p in d.glob("*.bin")) + sorted(p.name for p in d.glob("*.pt"))
  hint = (f" (found {bins}: pickled checkpoints are never loaded; convert them to safetensors)"
          if bins else "")
  raise SafetensorsError(f"{d}: no model.safetensors or model.safetensors.index.json{hint}")


def iter_checkpoint(directory: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (tensor name, memory-mapped array) over all shards of a checkpoint directory."""
  for _, name, tensor in iter_checkpoint_with_files(directory):
    yield name, tensor


def iter_checkpoint_with_files(directory: str | os.PathLike
                               ) -> Iterator[tuple[pathlib.Path, str, np.ndarray]]:
  """Like `iter_checkpoint`, with the file each tensor comes from: (file, name, array)."""
  for f in checkpoint_files(directory):
    for name, tensor in open_tensors(f).items():
      yield f, name, tensor


def write_file(path: str | os.PathLike, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype]],
               fetch, metadata: dict[str, str] | None = None) -> None:
  """Writes tensors one at a time: `tensors` gives (name, shape, dtype); `fetch(name)` the array.

  The file is written to a temporary name and renamed, so a crash never leaves a partial file.
  """
  path = pathlib.Path(path)
  specs = list(tensors)
  header: dict = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  for name, shape, dtype in specs:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype in specs:
      arr = np.asarray(fetch(name), dtype=np.dtype(dtype), order="C")  # keeps 0-d as 0-d
      if arr.shape != tuple(shape):
        raise SafetensorsError(f"tensor {name!r}: fetched shape {arr.shape}, declared {shape}")
      f.write(arr.tobytes())
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
