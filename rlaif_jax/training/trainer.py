"""The one trainer skeleton: jitted sharded train/eval steps around a pluggable loss, and the loop.

The pluggable part is the loss:

    loss_fn(model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array)
        -> (loss f32[], aux: dict[str, f32[]])

`batch` leaves all have a leading batch dimension [B, ...] (sharded over the mesh's data axes).
`aux` holds batch-mean scalars to log; the optional key "loss_weight" is the loss's normaliser
(e.g. the number of response tokens) and makes gradient accumulation and evaluation exact
averages over the whole batch / eval set (see optim.accumulated_value_and_grad).

SFT, the reward model and RL share `make_train_step` / `make_eval_step` and the loop
(`loop.Loop`: schedule, progress bar, metrics rows, NaN guard, checkpoints). `Trainer` plugs SFT
and reward-model steps, eval and resume into that loop; `rl.trainer.RLTrainer` plugs its RL step
(rollout, scoring, updates) into the same one.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlaif_jax import storage
from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.training import checkpointing, loop as loop_lib, metrics as metrics_lib, optim
from rlaif_jax.training import train_state as ts

Batch = dict[str, Any]
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
_EVAL_RNG_SALT = 0x7FFFFFFF


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over the mesh's data axes; the rest replicated. A prefix that fits
  every leaf of a batch whatever its rank."""
  return NamedSharding(mesh, mesh_lib.logical_to_spec(("batch",)))


def _with_mesh(fn: Callable, mesh: Mesh | None) -> Callable:
  """Calls `fn` (tracing included) with `mesh` active, so activation constraints apply."""
  if mesh is None:
    return fn

  def wrapped(*args):
    with jax.set_mesh(mesh):
      return fn(*args)

  def lower(*args):  # ahead-of-time: `.lower(...).compile().memory_analysis()`
    with jax.set_mesh(mesh):
      return fn.lower(*args)
  wrapped.lower = lower
  return wrapped


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None, *, num_microbatches: int = 1,
                    mesh: Mesh | None = None, shardings: ts.TrainState | None = None,
                    donate: bool = True) -> Callable[[ts.TrainState, Batch],
                                                     tuple[ts.TrainState, dict[str, jax.Array]]]:
  """A jitted `(state, batch) -> (state, metrics)`: grad (accumulated over microbatches), clip,
  AdamW update. metrics: loss, grad_norm (before clipping), lr (if `schedule`), aux of loss_fn.

  The step's RNG is fold_in(state.rng, state.step), so a resumed run draws the same keys. With
  `shardings` (train_state.state_shardings) and `mesh`, state and batch are laid out on the mesh;
  with `donate` the input state's buffers are reused for the output (do not use it afterwards).
  """
  def step(state: ts.TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def params_loss(params, mb, key):
      return loss_fn(state.model(params), mb, key)

    loss, aux, grads = optim.accumulated_value_and_grad(
        params_loss, state.params, batch, rng, num_microbatches, mesh)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {**aux, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    if schedule is not None:
      out["lr"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

  jit_kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
  if shardings is not None:
    if mesh is None:
      raise ValueError("make_train_step: `shardings` needs the `mesh` they refer to")
    replicated = NamedSharding(mesh, PartitionSpec())
    jit_kwargs.update(in_shardings=(shardings, batch_sharding(mesh)),
                      out_shardings=(shardings, replicated))
  return _with_mesh(jax.jit(step, **jit_kwargs), mesh)


def make_eval_step(loss_fn: LossFn, *, mesh: Mesh | None = None,
                   shardings: ts.TrainState | None = None
                   ) -> Callable[[ts.TrainState, Batch], dict[str, jax.Array]]:
  """A jitted `(state, batch) -> {loss, loss_weight, aux...}` (no gradient, state not donated)."""
  def step(state: ts.TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, _EVAL_RNG_SALT)
    loss, aux = loss_fn(state.model(), batch, rng)
    return {**aux, "loss": loss,
            optim.LOSS_WEIGHT_KEY: jnp.asarray(aux.get(optim.LOSS_WEIGHT_KEY, 1.0), jnp.float32)}

  jit_kwargs: dict[str, Any] = {}
  if shardings is not None and mesh is not None:
    jit_kwargs.update(in_shardings=(shardings, batch_sharding(mesh)),
                      out_shardings=NamedSharding(mesh, PartitionSpec()))
  return _with_mesh(jax.jit(step, **jit_kwargs), mesh)


def put_batch(host_batch: Batch, mesh: Mesh) -> Batch:
  """A global host batch (the same NumPy arrays on every process) -> global jax Arrays sharded
  over the batch axis; each process hands over only the rows its own devices hold."""
  sharding = batch_sharding(mesh)
  sizes = {k: np.shape(v)[0] for k, v in host_batch.items()}
  size = next(iter(sizes.values()))
  if any(s != size for s in sizes.values()):
    raise ValueError(f"batch leaves disagree on the batch size: {sizes}")
  shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
  if size % shards:
    raise ValueError(f"global batch size {size} is not divisible by the {shards} data-parallel "
                     f"shards of mesh {dict(mesh.shape)}; change the batch size or the mesh")
  index = sharding.addressable_devices_indices_map((size,))
  lo = min(idx[0].start or 0 for idx in index.values())
  hi = max(size if idx[0].stop is None else idx[0].stop for idx in index.values())
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)[lo:hi], np.shape(v))
          for k, v in host_batch.items()}


def count_tokens(host_batch: Batch) -> int:
  """Real tokens in a batch (attention_mask ones), else its number of rows."""
  if "attention_mask" in host_batch:
    return int(np.asarray(host_batch["attention_mask"]).sum())
  return int(np.shape(next(iter(host_batch.values())))[0])


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The loop's schedule. eval_every / checkpoint_every / log_every = 0 disables the periodic
  action (the final step still logs, evaluates and checkpoints)."""
  total_steps: int
  log_every: int = 10
  eval_every: int = 100
  eval_at_start: bool = True
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  num_microbatches: int = 1
  progress_bar: bool = True

  @classmethod
  def from_config(cls, cfg: Any) -> "LoopConfig":
    """From a ConfigDict with these field names (missing ones keep their defaults); a key that
    is not a field is refused, naming it (a typo would otherwise be silently ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in cfg.keys() if k not in names)
    if unknown:
      raise ValueError(f"config.loop: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: cfg[k] for k in names if k in cfg})


def _postfix(row: dict[str, float]) -> dict[str, str]:
  return {"loss": f"{row['loss']:.4f}", "tok_s": f"{row['tokens_per_sec']:.0f}"}


class Trainer:
  """Runs `loss_fn` training on `mesh`, writing metrics and checkpoints under `workdir`.

  meta: JSON-serialisable facts stored with every checkpoint (model_config, tokenizer, config).
  """

  def __init__(self, loss_fn: LossFn, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule | None, mesh: Mesh, workdir: str | pathlib.Path,
               loop: LoopConfig, *, seed: int = 0, eval_loss_fn: LossFn | None = None,
               meta: dict[str, Any] | None = None,
               tokens_in: Callable[[Batch], int] = count_tokens):
    self.loss_fn, self.eval_loss_fn = loss_fn, eval_loss_fn or loss_fn
    self.optimizer, self.schedule, self.mesh, self.loop = optimizer, schedule, mesh, loop
    self.workdir = storage.as_path(workdir)  # gs:// kept as it is (etils.epath)
    self.seed, self.meta, self.tokens_in = seed, dict(meta or {}), tokens_in
    self.checkpointer = checkpointing.Checkpointer(
        self.workdir / checkpointing.CHECKPOINT_DIR, loop.keep_checkpoints,
        loop.async_checkpointing)
    self.writer = metrics_lib.MetricWriter(self.workdir)
    self._train_step = self._eval_step = None
    self.last_eval: dict[str, float] = {}

  # -- state -------------------------------------------------------------------------------

  def init_state(self, init_model: Callable[[], nnx.Module],
                 abstract_model: nnx.Module | None = None) -> ts.TrainState:
    """The latest checkpoint's state if WORKDIR has one (restored straight into its shardings
    when `abstract_model` is given), else a fresh state around `init_model()`."""
    latest = self.checkpointer.latest_step()
    if latest is None:
      return ts.create_train_state(init_model(), self.optimizer, self.mesh, self.seed)
    if abstract_model is None:
      abstract_model = nnx.eval_shape(init_model)
    abstract = ts.abstract_train_state(abstract_model, self.optimizer, self.mesh)
    state, meta = self.checkpointer.restore(abstract, latest)
    saved_seed = meta.get("data", {}).get("seed")
    if saved_seed is not None and saved_seed != self.seed:
      raise ValueError(f"{self.checkpointer.directory}/{latest}: checkpoint was written with "
                       f"seed={saved_seed} but this run has seed={self.seed}; the data order "
                       "would not continue. Use the original seed or a new workdir")
    print(f"resumed from {self.checkpointer.directory}/{latest} (step {int(state.step)})")
    return state

  def _compile(self, state: ts.TrainState) -> None:
    if self._train_step is not None:
      return
    shardings = ts.state_shardings(state, self.mesh, self.optimizer)
    self._train_step = make_train_step(
        self.loss_fn, self.optimizer, self.schedule, num_microbatches=self.loop.num_microbatches,
        mesh=self.mesh, shardings=shardings)
    self._eval_step = make_eval_step(self.eval_loss_fn, mesh=self.mesh, shardings=shardings)

  # -- evaluation --------------------------------------------------------------------------

  def evaluate(self, state: ts.TrainState, eval_batches: Iterable[Batch]) -> dict[str, float]:
    """Loss-weighted means over every eval batch: {eval_loss, eval_<aux>...}."""
    self._compile(state)
    sums: dict[str, float] = {}
    total_w = 0.0
    for host in eval_batches:
      out = metrics_lib.to_python_scalars(self._eval_step(state, put_batch(host, self.mesh)))
      w = out.pop(optim.LOSS_WEIGHT_KEY)
      total_w += w
      for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + w * v
    if total_w <= 0:
      raise ValueError("evaluate: the eval batches carry no loss weight (empty eval set?)")
    return {f"eval_{k}": v / total_w for k, v in sums.items()}

  # -- the loop ----------------------------------------------------------------------------

  def _meta(self, step: int) -> dict[str, Any]:
    return {**self.meta, "data": {"batches_consumed": step, "seed": self.seed}}

  def fit(self, state: ts.TrainState, train_batches: Callable[[int], Iterator[Batch]],
          eval_batches: Callable[[], Iterable[Batch]] | None = None) -> ts.TrainState:
    """Trains from state.step to loop.total_steps.

    train_batches(start) yields the global host batches for steps start, start + 1, ... (a pure
    function of the step: resume is exact). eval_batches() yields the eval set afresh each call.
    Returns the final state (already checkpointed; pending writes finished).
    """
    self._compile(state)
    start = int(jax.device_get(state.step))
    batches = train_batches(start)

    def train_step(step: int) -> tuple[dict[str, jax.Array], int]:
      nonlocal state
      try:
        host_batch = next(batches)
      except StopIteration:
        raise ValueError(f"train_batches({start}) ran out before step {step} of "
                         f"{self.loop.total_steps}; make it repeat over epochs") from None
      state, out = self._train_step(state, put_batch(host_batch, self.mesh))
      return out, self.tokens_in(host_batch)

    def evaluate() -> dict[str, float]:
      self.last_eval = self.evaluate(state, eval_batches())
      return self.last_eval

    loop_lib.Loop(
        what="training", desc="train", total_steps=self.loop.total_steps,
        checkpointer=self.checkpointer, writer=self.writer,
        save=lambda step: self.checkpointer.save(state, self._meta(step)), close=self.close,
        watched=("loss", "grad_norm"), postfix=_postfix, log_every=self.loop.log_every,
        checkpoint_every=self.loop.checkpoint_every,
        evaluate=evaluate if eval_batches is not None else None,
        eval_every=self.loop.eval_every, eval_at_start=self.loop.eval_at_start,
        progress_bar=self.loop.progress_bar, read_late=True).run(start, train_step)
    return state

  def close(self) -> None:
    """Finishes pending checkpoint writes and closes the writers (idempotent)."""
    if self.checkpointer is not None:
      self.checkpointer.close()
      self.checkpointer = None
    self.writer.close()
