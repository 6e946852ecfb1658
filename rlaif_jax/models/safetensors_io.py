"""Safetensors reading (lazy, slice by slice) and writing, through the `safetensors` package.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then raw little-endian bytes. Before the package opens a file we check its header
ourselves, so a truncated download or a wrong size names the file and the tensor. Tensors come
back as `LazyTensor`s over `safe_open(..., framework="numpy").get_slice`: indexing one reads only
that slice, so a 7B load reads each device shard straight from the file; a transposed HF layout
(`hf_params` rules) reads that one tensor whole. bf16 is numpy's `ml_dtypes.bfloat16`.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Any, Iterable, Iterator

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from rlaif_jax import storage

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


class LazyTensor:
  """One tensor of an open safetensors file: `shape`, `dtype`; `t[index]` reads that slice only
  (`get_slice`), `np.asarray(t)` (and `.T`, `.reshape`) the whole tensor."""

  def __init__(self, handle: Any, name: str, shape: tuple[int, ...], dtype: np.dtype):
    self._handle, self.name, self.shape, self.dtype = handle, name, shape, dtype
    self.ndim = len(shape)

  def __getitem__(self, index: Any) -> np.ndarray:
    if self.ndim == 0 or 0 in self.shape:  # get_slice cannot index these
      return np.asarray(self)[index]
    return self._handle.get_slice(self.name)[index]

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    if 0 in self.shape:
      arr = np.zeros(self.shape, self.dtype)
    else:
      arr = np.asarray(self._handle.get_tensor(self.name)).reshape(self.shape)
    return arr if dtype is None else arr.astype(dtype)

  def __float__(self) -> float:
    return float(np.asarray(self))

  @property
  def T(self) -> np.ndarray:  # pylint: disable=invalid-name
    return np.asarray(self).T

  def reshape(self, *shape: Any) -> np.ndarray:
    return np.asarray(self).reshape(*shape)


def open_tensors(path: str | os.PathLike) -> dict[str, LazyTensor]:
  """Every tensor of one safetensors file, unread (`LazyTensor`), after checking the header:
  dtypes we support, byte counts that match the shapes, data inside the file."""
  header, base = read_header(path)
  size = os.path.getsize(path)
  specs = {}
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
    specs[name] = (shape, dtype)
  try:
    handle = safetensors.safe_open(str(path), framework="numpy")
  except Exception as e:  # the package's SafetensorError: what our checks did not catch
    raise SafetensorsError(f"{path}: {e}") from e
  return {name: LazyTensor(handle, name, shape, dtype) for name, (shape, dtype) in specs.items()}


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
  """Writes one safetensors file with `safetensors.numpy.save_file`: `tensors` gives (name,
  shape, dtype), `fetch(name)` the array (checked against them). Holds this file's tensors in
  host memory (an export shard, `max_shard_bytes`), never the whole model; the file is written
  atomically (`storage.atomic_path`), so a crash never leaves a partial one.
  """
  arrays = {}
  for name, shape, dtype in tensors:
    arr = np.asarray(fetch(name), dtype=np.dtype(dtype), order="C")  # 0-d stays 0-d
    if arr.shape != tuple(shape):
      raise SafetensorsError(f"tensor {name!r}: fetched shape {arr.shape}, declared {shape}")
    if arr.dtype not in _NAMES:
      raise SafetensorsError(f"tensor {name!r}: unsupported dtype {arr.dtype}")
    arrays[name] = arr
  with storage.atomic_path(path) as tmp:
    safetensors.numpy.save_file(arrays, tmp, metadata=metadata or {"format": "pt"})
