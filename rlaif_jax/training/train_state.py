"""The explicit train state and its shardings on the device mesh.

`TrainState` is a pytree: step, trainable params (an nnx.State of nnx.Param), the rest of the
model's state (non-trainable variables, usually empty), the optax state and the base RNG key. The
model's structure (`graphdef`) is static metadata, so the state passes through `jax.jit` whole,
with one sharding per leaf, and `state.model()` rebuilds the NNX module inside a traced function.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.training.optim import path_name


@struct.dataclass
class TrainState:
  """step: int32[] (updates done); rng: typed PRNG key[] (per-step keys are fold_in(rng, step))."""
  step: jax.Array
  params: nnx.State
  rest: nnx.State
  opt_state: optax.OptState
  rng: jax.Array
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)

  def model(self, params: nnx.State | None = None) -> nnx.Module:
    """The NNX module with `params` (default: the state's own)."""
    return nnx.merge(self.graphdef, self.params if params is None else params, self.rest)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable nnx.Param state, everything else)."""
  return nnx.split(model, nnx.Param, ...)


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def variable_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
  """Like mesh.state_shardings, but each NamedSharding stays wrapped in its nnx.Variable, so the
  result has exactly the pytree structure of `state` (what optax.tree_map_params needs)."""
  def one(v):
    return v.replace(mesh_lib.logical_sharding(mesh, mesh_lib.variable_axes(v),
                                               tuple(v.get_value().shape)))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: TrainState, mesh: Mesh, optimizer: optax.GradientTransformation
                    ) -> TrainState:
  """A TrainState of NamedShardings: params (and their optimizer moments) by their logical axes,
  everything else (step, rng, counters) replicated. Works on concrete or abstract states."""
  param_sh = variable_shardings(state.params, mesh)
  rest_sh = variable_shardings(state.rest, mesh)
  opt_sh = optax.tree_map_params(
      optimizer, lambda _, sh: sh, state.opt_state, param_sh,
      transform_non_params=lambda _: _replicated(mesh))
  return TrainState(step=_replicated(mesh), params=param_sh, rest=rest_sh, opt_state=opt_sh,
                    rng=_replicated(mesh), graphdef=state.graphdef)


def create_train_state(model: nnx.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                       seed: int) -> TrainState:
  """Wraps an (already sharded) model: optimizer moments are created sharded like the params."""
  graphdef, params, rest = split_model(model)
  abstract_opt = jax.eval_shape(optimizer.init, params)
  probe = TrainState(step=None, params=params, rest=rest, opt_state=abstract_opt, rng=None,
                     graphdef=graphdef)
  opt_sh = state_shardings(probe, mesh, optimizer).opt_state
  opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(params)
  # jit with out_shardings (not device_put): the mesh may span devices of other processes.
  step, rng = jax.jit(lambda: (jnp.zeros((), jnp.int32), jax.random.key(seed)),
                      out_shardings=(_replicated(mesh), _replicated(mesh)))()
  return TrainState(step=step, params=params, rest=rest, opt_state=opt_state, rng=rng,
                    graphdef=graphdef)


def abstract_train_state(abstract_model: nnx.Module, optimizer: optax.GradientTransformation,
                         mesh: Mesh) -> TrainState:
  """ShapeDtypeStructs (with shardings) of the state `create_train_state` would build; the
  target a checkpoint is restored into without materialising a random init first."""
  graphdef, params, rest = split_model(abstract_model)
  abstract = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32), params=params, rest=rest,
      opt_state=jax.eval_shape(optimizer.init, params),
      rng=jax.eval_shape(lambda: jax.random.key(0)), graphdef=graphdef)
  shardings = state_shardings(abstract, mesh, optimizer)
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                      abstract, shardings)


def num_params(state: TrainState) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(state.params))


def host_params(state_or_params: Any) -> dict[str, Any]:
  """Params as {'layers/0/attn/wq': np.ndarray} on the host (tests, comparisons)."""
  params = getattr(state_or_params, "params", state_or_params)
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return {path_name(p): jax.device_get(x) for p, x in flat}
