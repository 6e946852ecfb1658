"""Checkpoints of the train state (orbax) and the inference export of a run directory.

Layout of a run directory WORKDIR:
  checkpoints/<step>/params   the trainable params (restorable alone: RM / RL init)
  checkpoints/<step>/train    optimizer state, step, RNG key data, non-trainable variables
  checkpoints/<step>/meta     JSON: step, data position, model config, tokenizer path, run config
  export/                     HF-format directory for the sampler (see `export_for_inference`)

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed at any moment (SIGKILL included) leaves only whole checkpoints; `latest_step` never sees a
partial one. Saves are asynchronous: device arrays are copied to the host before `save` returns,
the file writes finish in a background thread (`wait` blocks until they are durable).

Trees are stored as nested dicts keyed by the path components of the pytree ("layers", "0",
"attn", "wq", "value"), so any NNX module and any optax state round-trips, restored straight into
the shardings of an abstract target.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from rlaif_jax import storage
from rlaif_jax.models import checkpoint_bridge
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.models.decoder import Decoder
from rlaif_jax.sharding import host, mesh as mesh_lib
from rlaif_jax.training import train_state as ts

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
MODEL_CONFIG_FILE = "model_config.json"
_ITEMS = ("params", "train", "meta")


class NoCheckpointError(FileNotFoundError):
  """A run directory holds no (finished) checkpoint."""


def _key_name(k: Any) -> str:
  return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))


def tree_to_nested_dict(tree: Any) -> dict[str, Any]:
  """{path component: ... leaf} for every leaf of `tree` (empty subtrees vanish)."""
  out: dict[str, Any] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    node = out
    names = [_key_name(k) for k in path] or ["leaf"]
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = leaf
  return out


def nested_dict_to_tree(template: Any, nested: dict[str, Any], where: str) -> Any:
  """Inverse of tree_to_nested_dict: the leaves of `nested` in the structure of `template`."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, _ in paths:
    node = nested
    names = [_key_name(k) for k in path] or ["leaf"]
    for name in names:
      if not isinstance(node, dict) or name not in node:
        raise KeyError(f"{where}: checkpoint has no entry {'/'.join(names)}; it was written for a "
                       "different model or optimizer")
      node = node[name]
    leaves.append(node)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _train_item(state: ts.TrainState, rng_data: Any) -> dict[str, Any]:
  item = {"step": state.step, "rng": rng_data, "opt_state": tree_to_nested_dict(state.opt_state)}
  rest = tree_to_nested_dict(state.rest)
  if rest:
    item["rest"] = rest
  return item


def _abstract_key_data(abstract_rng: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  data = jax.eval_shape(jax.random.key_data, abstract_rng)
  return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=abstract_rng.sharding)


class Checkpointer:
  """An orbax CheckpointManager over WORKDIR/checkpoints keeping the newest `max_to_keep`."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = storage.as_path(directory)
    if isinstance(self.directory, pathlib.Path):
      self.directory = self.directory.absolute()
    # Orbax names its multi-process barriers after the step directory ("async_write_complete.3"):
    # two managers saving the same step (PPO's actor and critic) would meet at each other's
    # barriers, and process 0 could finalize one checkpoint before process 1 wrote its part.
    # A prefix per checkpoint directory keeps every manager's barriers its own; it is made of
    # the directory's last two names ("grpo/critic_checkpoints"), the same on every host even
    # where hosts mount the work directory at different places.
    parts = str(self.directory).rstrip("/").split("/")[-2:]
    prefix = "ckpt_" + "_".join(re.sub(r"[^A-Za-z0-9_.-]", "_", p) for p in parts)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=prefix))
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, state: ts.TrainState, meta: dict[str, Any]) -> int:
    """Saves `state` at step int(state.step); `meta` must be JSON-serialisable."""
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(tree_to_nested_dict(state.params)),
        train=ocp.args.StandardSave(_train_item(state, jax.random.key_data(state.rng))),
        meta=ocp.args.JsonSave({**meta, "step": step}))
    self.manager.save(step, args=args, force=True)
    return step

  def _step_or_latest(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise NoCheckpointError(f"{self.directory}: no finished checkpoint to restore")
    return step

  def restore(self, abstract_state: ts.TrainState, step: int | None = None
              ) -> tuple[ts.TrainState, dict[str, Any]]:
    """Restores into `abstract_state` (train_state.abstract_train_state): (state, meta)."""
    step = self._step_or_latest(step)
    target_train = _train_item(abstract_state, _abstract_key_data(abstract_state.rng))
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(tree_to_nested_dict(abstract_state.params)),
        train=ocp.args.StandardRestore(target_train),
        meta=ocp.args.JsonRestore()))
    where = f"{self.directory}/{step}"
    train = restored["train"]
    state = abstract_state.replace(
        step=train["step"],
        params=nested_dict_to_tree(abstract_state.params, restored["params"], where + "/params"),
        rest=nested_dict_to_tree(abstract_state.rest, train.get("rest", {}), where + "/train"),
        opt_state=nested_dict_to_tree(abstract_state.opt_state, train["opt_state"],
                                      where + "/train"),
        rng=jax.random.wrap_key_data(train["rng"]))
    return state, dict(restored["meta"])

  def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
    """Only the params item, into `abstract_params` (ShapeDtypeStructs with shardings)."""
    step = self._step_or_latest(step)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(tree_to_nested_dict(abstract_params))))
    return nested_dict_to_tree(abstract_params, restored["params"],
                               f"{self.directory}/{step}/params")

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self._step_or_latest(step)
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are durable."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_module(workdir: str | os.PathLike,
                   build_abstract: Callable[[ModelConfig], nnx.Module], mesh: Mesh | None = None,
                   step: int | None = None, **config_overrides: Any
                   ) -> tuple[nnx.Module, dict[str, Any]]:
  """(module, checkpoint meta) of a run's latest (or `step`) checkpoint, restored straight into
  its shardings. `build_abstract(cfg)` gives the module's shape (e.g. `nnx.eval_shape` of a
  Decoder or a ScalarHeadModel); cfg is the saved ModelConfig with `config_overrides` applied
  (e.g. dtype="bfloat16", remat=True; a changed param_dtype casts the stored weights).
  """
  ckpt = Checkpointer(storage.as_path(workdir) / CHECKPOINT_DIR, async_save=False)
  try:
    meta = ckpt.restore_meta(step)
    if "model_config" not in meta:
      raise ValueError(f"{ckpt.directory}: checkpoint meta has no 'model_config'; it was not "
                       "written by a model run (use Checkpointer.restore_params)")
    cfg = ModelConfig.from_dict(meta["model_config"]).replace(**config_overrides)
    mesh = mesh or mesh_lib.make_mesh((1, -1, 1))
    graphdef, params, rest = ts.split_model(build_abstract(cfg))
    shardings = ts.variable_shardings(params, mesh)
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                            params, shardings)
    restored = ckpt.restore_params(abstract, meta["step"])
  finally:
    ckpt.close()
  return nnx.merge(graphdef, restored, rest), meta


def load_model_from_workdir(workdir: str | os.PathLike, mesh: Mesh | None = None,
                            step: int | None = None, **config_overrides: Any) -> Decoder:
  """The Decoder of a run's latest (or `step`) checkpoint (see `restore_module`). Used to start
  the reward model from SFT and the RL policy."""
  model, _ = restore_module(workdir, checkpoint_bridge.abstract_model, mesh, step,
                            **config_overrides)
  return model


def _host_copy(model: Decoder) -> Decoder:
  """The model with every parameter gathered to a host NumPy array (all processes take part);
  needed before export when params span several processes."""
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, host.to_host(state))


def export_for_inference(workdir: str | os.PathLike, model: Decoder | None = None,
                         tokenizer_path: str | os.PathLike | None = None,
                         dtype: str = "float32", mesh: Mesh | None = None) -> pathlib.Path:
  """Writes WORKDIR/export/: HF config.json + safetensors, model_config.json, the tokenizer.

  model: default the latest checkpoint's (load_model_from_workdir). tokenizer_path: default the
  "tokenizer" recorded in the checkpoint meta; a sentencepiece `.model` file is copied to
  export/tokenizer.model, a HF tokenizer directory's files are copied beside the weights. The
  directory is written under a temporary name and swapped in, so readers never see half of it.
  """
  workdir = pathlib.Path(workdir)
  if model is None or tokenizer_path is None:
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, async_save=False)
    try:
      meta = ckpt.restore_meta()
    finally:
      ckpt.close()
    tokenizer_path = tokenizer_path or meta.get("tokenizer")
    model = model or load_model_from_workdir(workdir, mesh, meta["step"])
  if jax.process_count() > 1:
    model = _host_copy(model)
  final = workdir / EXPORT_DIR
  if host.is_main():
    _write_export(workdir, final, model, tokenizer_path, dtype)
  host.barrier(f"export_for_inference:{final}")  # other processes may read it next
  return final


def _write_export(workdir: pathlib.Path, final: pathlib.Path, model: Decoder,
                  tokenizer_path: str | os.PathLike | None, dtype: str) -> None:
  """Process 0's part of `export_for_inference`: write under a temporary name, swap in."""
  tmp = workdir / f".{EXPORT_DIR}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tok = pathlib.Path(tokenizer_path) if tokenizer_path else None
  tok_dir = tok if tok is not None and tok.is_dir() else None
  tokenizer = None  # a HF directory's tokenizer is loaded by export_hf_checkpoint
  if tok is not None and tok.is_file():
    from rlaif_jax.tokenizers import load_tokenizer
    try:  # its bos/eos/pad and stop ids go into config.json / generation_config.json
      tokenizer = load_tokenizer(tok)
    except FileNotFoundError:
      tokenizer = None
  checkpoint_bridge.export_hf_checkpoint(model, tmp, dtype=dtype, tokenizer_dir=tok_dir,
                                         tokenizer=tokenizer)
  if tok is not None and tok.is_file():
    shutil.copy(tok, tmp / "tokenizer.model")
  (tmp / MODEL_CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=2))
  old = workdir / f".{EXPORT_DIR}.old-{os.getpid()}"
  if final.exists():
    os.replace(final, old)
  os.replace(tmp, final)
  shutil.rmtree(old, ignore_errors=True)
