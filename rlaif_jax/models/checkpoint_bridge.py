"""Hugging Face checkpoint directories <-> sharded NNX decoders.

Loading streams tensor by tensor from memory-mapped safetensors straight into sharded device
arrays (`jax.make_array_from_callback` reads only each device's slice), so host RAM never holds a
second full copy of the model. Exporting gathers one tensor at a time.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlaif_jax import hub
from rlaif_jax.models import config as config_lib
from rlaif_jax.models import hf_params, safetensors_io
from rlaif_jax.models.decoder import Decoder
from rlaif_jax.sharding import mesh as mesh_lib

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json",
                   "chat_template.jinja", "chat_template.json")


class CheckpointMismatchError(ValueError):
  """A HF checkpoint does not fit the model: missing/unexpected tensor or wrong shape."""


def _path_str(path: tuple) -> str:
  return ".".join(str(p) for p in path)


def abstract_model(cfg: config_lib.ModelConfig) -> Decoder:
  return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def init_sharded(cfg: config_lib.ModelConfig, mesh: Mesh | None = None, seed: int = 0) -> Decoder:
  """A randomly initialised decoder whose parameters are created already sharded on `mesh`."""
  mesh = mesh or mesh_lib.make_mesh((1, -1, 1))
  graphdef, abstract_state = nnx.split(abstract_model(cfg))
  shardings = mesh_lib.state_shardings(abstract_state, mesh)

  @jax.jit
  def make(key):
    return nnx.state(Decoder(cfg, rngs=nnx.Rngs(params=key)))

  state = jax.jit(make, out_shardings=shardings)(jax.random.key(seed))
  return nnx.merge(graphdef, state)


def _split_layer(path: str) -> tuple[str, int] | None:
  """'layers.3.mlp.w_up' -> ('layers.mlp.w_up', 3): the stacked path and the layer index."""
  parts = path.split(".")
  if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit():
    return ".".join([parts[0]] + parts[2:]), int(parts[1])
  return None


def _place_stacked(parts: list, cfg, shape: tuple, sharding, dtype) -> jax.Array:
  """A [num_layers, ...] array from per-layer (memory-mapped HF tensor, rule) pairs.

  Each device's callback converts the layers of its slice (a whole layer tensor at a time, then
  cuts its part), so host memory stays at one layer tensor plus one device shard; a tensor
  sharded over k local devices is converted k times (CPU time, not memory).
  """
  def slice_for(index):
    layers = range(shape[0])[index[0]]
    return np.stack([np.asarray(parts[i][1].to_ours(parts[i][0], cfg)[index[1:]]).astype(dtype)
                     for i in layers])
  return jax.make_array_from_callback(shape, sharding, slice_for)


def _place(array: np.ndarray, sharding, dtype) -> jax.Array:
  """Copies a host (memory-mapped) array to devices slice by slice."""
  def slice_for(index):
    return np.asarray(array[index]).astype(dtype)
  return jax.make_array_from_callback(array.shape, sharding, slice_for)


def load_hf_checkpoint(directory: str | os.PathLike, mesh: Mesh | None = None,
                       **config_overrides: Any) -> Decoder:
  """Loads `config.json` + safetensors from a HF directory into a sharded Decoder.

  `config_overrides` (e.g. param_dtype="bfloat16", dtype="bfloat16", remat=True) adjust the
  ModelConfig built from `config.json`.
  """
  directory = hub.resolve_model_dir(directory)
  if not (directory / "config.json").exists():
    raise FileNotFoundError(f"{directory}: no config.json (is this a Hugging Face model directory?)")
  cfg = config_lib.from_hf_config(directory, **config_overrides)
  mesh = mesh or mesh_lib.make_mesh((1, -1, 1))
  graphdef, abstract_state = nnx.split(abstract_model(cfg))
  flat = dict(nnx.to_flat_state(abstract_state))
  by_path = {_path_str(p): p for p in flat}
  filled: dict[tuple, jax.Array] = {}
  stacked: dict[tuple, dict[int, tuple]] = {}  # scan_layers: path -> {layer: (tensor, rule)}
  for file, name, tensor in safetensors_io.iter_checkpoint_with_files(directory):
    if hf_params.IGNORED_HF.match(name):
      continue
    hit = hf_params.hf_to_ours(name)
    layer = _split_layer(hit[0]) if hit is not None and cfg.scan_layers else None
    if layer is not None and layer[1] >= cfg.num_layers:
      hit = None
    key = hit and (layer[0] if layer is not None else hit[0])
    if hit is None or (key not in by_path and not (name == "lm_head.weight"
                                                   and cfg.tie_embeddings)):
      raise CheckpointMismatchError(
          f"{directory}: unexpected tensor {name!r} shape {tuple(tensor.shape)} for a "
          f"{cfg.architecture} model with {cfg.num_layers} layers")
    ours, rule = key, hit[1]
    if ours not in by_path:  # tied embeddings: HF sometimes also stores lm_head.weight
      continue
    path = by_path[ours]
    var = flat[path]
    want = tuple(var.get_value().shape)
    if layer is not None:
      want = want[1:]
    # The HF tensor's own shape first: a transposed tensor (same size, wrong layout) would
    # otherwise reshape into `want` without error.
    hf_want = tuple(rule.to_hf(np.empty(want, np.int8), cfg).shape)
    if tuple(tensor.shape) != hf_want:
      raise CheckpointMismatchError(
          f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}; the HF "
          f"layout is {hf_want} (parameter {ours} expects {want})")
    try:  # a stacked layer is converted later, slice by slice: only its shape is checked here
      converted = rule.to_ours(np.empty(tensor.shape, np.int8) if layer else tensor, cfg)
    except ValueError as e:
      raise CheckpointMismatchError(
          f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}; "
          f"expected the HF layout of {ours} {want} ({e})") from e
    if tuple(converted.shape) != want:
      raise CheckpointMismatchError(
          f"{file}: tensor {name!r} has shape {tuple(tensor.shape)} -> "
          f"{tuple(converted.shape)}; parameter {ours} expects {want}")
    if layer is not None:
      stacked.setdefault(path, {})[layer[1]] = (tensor, rule)
      continue
    sharding = mesh_lib.logical_sharding(mesh, mesh_lib.variable_axes(var), want)
    filled[path] = _place(converted, sharding, var.get_value().dtype)
  missing = []
  for path, var in flat.items():
    if path in filled:
      continue
    parts = stacked.get(path, {})
    if not cfg.scan_layers or path[0] != "layers" or len(parts) < cfg.num_layers:
      names = _path_str(path).split(".", 1)
      missing += ([f"{names[0]}.{i}.{names[1]}" for i in range(cfg.num_layers) if i not in parts]
                  if cfg.scan_layers and path[0] == "layers" else [_path_str(path)])
      continue
    shape = tuple(var.get_value().shape)
    sharding = mesh_lib.logical_sharding(mesh, mesh_lib.variable_axes(var), shape)
    filled[path] = _place_stacked(parts, cfg, shape, sharding, var.get_value().dtype)
  if missing:
    names = [hf_params.ours_to_hf(m)[0] for m in missing]
    raise CheckpointMismatchError(f"{directory}: missing tensors {names[:8]}"
                                  f"{' and %d more' % (len(names) - 8) if len(names) > 8 else ''}")
  for path, var in flat.items():
    var.set_value(filled[path])
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


_WEIGHT_FILE = re.compile(r"model(-\d+-of-\d+)?\.safetensors\Z")
INDEX_FILE = "model.safetensors.index.json"


def _remove_stale_weights(directory: pathlib.Path) -> None:
  """Deletes the weight files and index of an earlier export in `directory` (nothing else):
  a stale index would make loaders read the old shards instead of the new model.safetensors."""
  stale = {p.name for p in directory.iterdir() if _WEIGHT_FILE.match(p.name)}
  index = directory / INDEX_FILE
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, AttributeError):  # unreadable: only the regular names are removed
      weight_map = None
    if isinstance(weight_map, dict):  # shards of the old index, in this directory only
      stale |= {f for f in weight_map.values() if isinstance(f, str)
                and f.endswith(".safetensors") and pathlib.Path(f).name == f}
    index.unlink()
  for name in sorted(stale):
    (directory / name).unlink(missing_ok=True)


def _special_ids(tokenizer: Any) -> dict[str, Any]:
  """bos/eos/pad ids of a `Tokenizer` (all None without one), for config.json."""
  if tokenizer is None:
    return dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
  return dict(bos_token_id=tokenizer.bos_id, eos_token_id=int(tokenizer.eos_id),
              pad_token_id=int(tokenizer.pad_id))


def export_hf_checkpoint(model: Decoder, directory: str | os.PathLike, dtype: str = "float32",
                         max_shard_bytes: int = 5 * 2**30,
                         tokenizer_dir: str | os.PathLike | None = None,
                         tokenizer: Any = None) -> pathlib.Path:
  """Writes config.json + safetensors (sharded with an index above `max_shard_bytes`).

  Weight files and index of an earlier export in `directory` are removed first. The files of
  `tokenizer_dir` (a HF tokenizer directory) are copied beside the weights. The bos/eos/pad ids of
  `tokenizer` (a `rlaif_jax.tokenizers.Tokenizer`; default: loaded from `tokenizer_dir`) go into
  config.json, and, unless `tokenizer_dir` has its own generation_config.json, a
  generation_config.json whose eos_token_id lists the tokenizer's stop ids (eos first) is written,
  so that `transformers` generate() stops where our sampler does.
  """
  cfg = model.cfg
  directory = pathlib.Path(directory)
  if tokenizer is None and tokenizer_dir is not None:
    from rlaif_jax.tokenizers import load_tokenizer  # Local: HF tokenizers import transformers.
    try:
      tokenizer = load_tokenizer(tokenizer_dir)
    except FileNotFoundError:
      tokenizer = None  # not a tokenizer directory: its files (if any) are still copied
  # Validates before anything is written (e.g. a llama model with QKV biases is refused).
  hf_cfg = config_lib.to_hf_config(cfg, torch_dtype=str(np.dtype(jnp.dtype(dtype)).name),
                                   **_special_ids(tokenizer))
  directory.mkdir(parents=True, exist_ok=True)
  _remove_stale_weights(directory)
  np_dtype = np.dtype(jnp.dtype(dtype))
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  entries = []  # (hf name, shape, dtype, path, rule, layer of a stacked parameter or None)
  for path, var in flat.items():
    shape = tuple(var.get_value().shape)
    layers = [None]
    if cfg.scan_layers and path[0] == "layers":
      layers, shape = list(range(shape[0])), shape[1:]
    for i in layers:
      ours = _path_str(path) if i is None else f"layers.{i}.{_path_str(path[1:])}"
      hf_name, rule = hf_params.ours_to_hf(ours)
      hf_shape = tuple(rule.to_hf(np.empty(shape, np.int8), cfg).shape)
      entries.append((hf_name, hf_shape, np_dtype, path, rule, i))
  shards, current, size = [], [], 0
  for e in entries:
    nbytes = int(np.prod(e[1])) * np_dtype.itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(e)
    size += nbytes
  shards.append(current)
  lookup = {e[0]: e for e in entries}

  def fetch(name):
    _, _, _, path, rule, layer = lookup[name]
    value = flat[path].get_value()
    if layer is not None:
      value = value[layer]
    return rule.to_hf(np.asarray(jax.device_get(value)).astype(np_dtype), cfg)

  weight_map = {}
  for k, shard in enumerate(shards):
    fname = ("model.safetensors" if len(shards) == 1
             else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
    safetensors_io.write_file(directory / fname, [(e[0], e[1], e[2]) for e in shard], fetch)
    weight_map.update({e[0]: fname for e in shard})
  if len(shards) > 1:
    total = sum(int(np.prod(e[1])) * np_dtype.itemsize for e in entries)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
  (directory / "config.json").write_text(json.dumps(hf_cfg, indent=2))
  if tokenizer_dir is not None:
    for name in TOKENIZER_FILES:
      src = pathlib.Path(tokenizer_dir) / name
      if src.exists():
        shutil.copy(src, directory / name)
  has_gen_config = (tokenizer_dir is not None
                    and (pathlib.Path(tokenizer_dir) / "generation_config.json").exists())
  if tokenizer is not None and not has_gen_config:
    stop = list(dict.fromkeys([int(tokenizer.eos_id)] + [int(i) for i in tokenizer.stop_ids]))
    gen = dict(_special_ids(tokenizer), eos_token_id=stop if len(stop) > 1 else stop[0])
    (directory / "generation_config.json").write_text(json.dumps(gen, indent=2))
  return directory
