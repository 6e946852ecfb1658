"""The jitted functions a config's run executes, as AOT `Job`s on abstract shapes.

`jobs_for(config, mesh)` reads the config as `launch.sft`, `launch.train_rm`, `launch.rl` or
`launch.pipeline` would (the stage is decided by the config's fields, `stage_of`) and returns one
Job per jitted function, at the run's largest shapes: SFT train and eval steps; RM train and eval
steps and the scoring forward; RL rollout prefill and decode (the growing cache's segments),
old + reference log-probs, the reward-model forward, the actor update and (PPO) the critic's
values and update. Model shapes come from the config's preset (or a HF config.json that exists),
never from weights: every state is `jax.eval_shape`d with its shardings on `mesh`.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from rlaif_jax.aot.analysis import Job, per_device_bytes
from rlaif_jax.data import formatting
from rlaif_jax.models import checkpoint_bridge, config as config_lib
from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.training import optim, reward_model, sft, train_state as ts
from rlaif_jax.training import trainer as trainer_lib


def stage_of(config: Any) -> str:
  """'pipeline' (sft + rm + rl sub-configs), 'rl' (policy + rl), 'rm' (loss + init) or 'sft'."""
  keys = set(config.keys())
  if {"sft", "rm", "rl"} <= keys:
    return "pipeline"
  if {"policy", "rl", "reward"} <= keys:
    return "rl"
  if {"loss", "init"} <= keys:
    return "rm"
  if {"model", "batch_size", "loop"} <= keys:
    return "sft"
  raise ValueError(f"config with fields {sorted(keys)} is no SFT, RM, RL or pipeline config")


def model_config(config: Any) -> config_lib.ModelConfig:
  """The ModelConfig a stage config's run would build, without weights or tokenizer: a HF
  config.json when `model.hf_checkpoint` exists here, else the preset with the tokenizer's
  vocab size (`tokenizer.vocab_size` > 0: the sentencepiece model the run trains) or the
  preset's own."""
  m = config.model
  opts = dict(param_dtype=m.param_dtype, dtype=m.dtype, scan_layers=m.get("scan_layers", False),
              **sft.compute_options(m))
  hf = m.get("hf_checkpoint")
  if hf and (pathlib.Path(hf) / "config.json").exists():
    return config_lib.from_hf_config(hf, **opts)
  vocab = config.get("tokenizer", {}).get("vocab_size", 0)
  return config_lib.preset(m.preset, **({"vocab_size": vocab} if vocab else {}),
                           **dict(m.get("overrides", {})), **opts)


def matmul_params(cfg: config_lib.ModelConfig, head: str = "lm") -> int:
  """Parameters in a matmul per token: the trunk plus the LM head ("lm") or a D -> 1 head."""
  d, v = cfg.hidden_size, cfg.vocab_size
  trunk = cfg.num_params - v * d * (1 if cfg.tie_embeddings else 2)
  return trunk + (v * d if head == "lm" else d)


def model_flops(cfg: config_lib.ModelConfig, rows: int, t: int, train: bool, head: str = "lm",
                head_chunk: int = 0) -> tuple[float, float]:
  """(model FLOPs of a call over rows x t tokens, the same as XLA's cost analysis counts them).

  Model FLOPs: 6 N tokens for a train step, 2 N tokens for a forward (N: `matmul_params`).
  XLA counts the body of a while loop once, so the second figure counts one layer of a scanned
  stack (`cfg.scan_layers`) and one chunk of a chunked LM head (`head_chunk` tokens of t - 1):
  XLA's FLOPs over it are 1 + the recomputation (remat) and the non-matmul work."""
  mult, tokens = (6.0 if train else 2.0), rows * t
  d, v, layers = cfg.hidden_size, cfg.vocab_size, cfg.num_layers
  trunk = cfg.num_params - v * d * (1 if cfg.tie_embeddings else 2) - d  # less the final norm
  head_n = v * d if head == "lm" else d
  chunks = -(-(t - 1) // max(1, min(head_chunk, t - 1))) if head_chunk else 1
  seen = trunk / layers * (1 if cfg.scan_layers else layers) + head_n / chunks
  return mult * (trunk + head_n) * tokens, mult * seen * tokens


def _sds(shape, dtype, sharding=None) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _rows(mesh: Mesh, b: int, t: int, keys: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
  sh = mesh_lib.data_sharding(mesh, 2)
  return {k: _sds((b, t), dt, sh) for k, dt in keys.items()}


def _data_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def _round_rows(rows: int, mesh: Mesh) -> int:
  n = _data_shards(mesh)
  return -(-rows // n) * n


def _state(abstract_module: nnx.Module, optimizer, mesh: Mesh) -> ts.TrainState:
  return ts.abstract_train_state(abstract_module, optimizer, mesh)


def _train_jobs(prefix: str, loss_fn, eval_loss_fn, optimizer, schedule, state, mesh: Mesh,
                train_batch, eval_batch, loop, train_flops: tuple[float, float],
                eval_flops: tuple[float, float]) -> list[Job]:
  """The Trainer's train and eval steps (trainer.Trainer._compile) as Jobs."""
  shardings = ts.state_shardings(state, mesh, optimizer)
  train = trainer_lib.make_train_step(loss_fn, optimizer, schedule, mesh=mesh,
                                      shardings=shardings,
                                      num_microbatches=loop.get("num_microbatches", 1))
  evaluate = trainer_lib.make_eval_step(eval_loss_fn, mesh=mesh, shardings=shardings)
  return [Job(f"{prefix} train step", lambda: train.lower(state, train_batch),
              model_flops=train_flops[0], xla_view_flops=train_flops[1]),
          Job(f"{prefix} eval step", lambda: evaluate.lower(state, eval_batch),
              model_flops=eval_flops[0], xla_view_flops=eval_flops[1])]


def _longest(fmt: formatting.FormatConfig, multiple: int) -> int:
  return max(sft.length_buckets(fmt, multiple))


def sft_jobs(config: Any, mesh: Mesh) -> list[Job]:
  """SFT (launch.sft): the train step at batch_size x the longest bucket, the eval step."""
  cfg = model_config(config)
  optimizer, schedule = optim.optimizer_from_config(config.optim, config.loop.total_steps)
  state = _state(checkpoint_bridge.abstract_model(cfg), optimizer, mesh)
  t = _longest(sft.format_config(config.format), config.data.get("bucket_multiple", 0))
  keys = dict(tokens=jnp.int32, loss_mask=jnp.int32, attention_mask=jnp.int32,
              positions=jnp.int32)
  b, be = config.batch_size, config.eval_batch_size
  return _train_jobs("sft", sft.sft_loss, sft.sft_loss, optimizer, schedule, state, mesh,
                     _rows(mesh, b, t, keys), _rows(mesh, be, t, keys), config.loop,
                     model_flops(cfg, b, t, True, head_chunk=sft.LOGITS_CHUNK),
                     model_flops(cfg, be, t, False, head_chunk=sft.LOGITS_CHUNK))


def rm_jobs(config: Any, mesh: Mesh, trunk: config_lib.ModelConfig | None = None,
            resident_after: str = "adamw moments") -> list[Job]:
  """Reward model (launch.train_rm): train and eval steps on 2 x batch_size pair rows, and the
  scoring forward of its report (RewardModelScorer at eval_batch_size rows) with the AdamW
  moments still on the device. `trunk`: the SFT ModelConfig the RM starts from."""
  cfg = model_config(config) if trunk is None else trunk.replace(
      **sft.compute_options(config.model))
  optimizer, schedule = optim.optimizer_from_config(config.optim, config.loop.total_steps)
  state = _state(reward_model.abstract_reward_model(cfg), optimizer, mesh)
  fmt = sft.format_config(config.format)
  t = _longest(fmt, config.data.get("bucket_multiple", 0))
  keys = dict(tokens=jnp.int32, positions=jnp.int32, attention_mask=jnp.int32)
  b, be = 2 * config.batch_size, 2 * config.eval_batch_size
  eval_batch = {**_rows(mesh, be, t, keys), reward_model.PAIR_WEIGHT_KEY:
                _sds((be,), jnp.float32, mesh_lib.data_sharding(mesh, 1))}
  loss = reward_model._rm_loss_fn(config)
  jobs = _train_jobs("rm", loss, loss, optimizer, schedule, state, mesh, _rows(mesh, b, t, keys),
                     eval_batch, config.loop, model_flops(cfg, b, t, True, "scalar"),
                     model_flops(cfg, be, t, False, "scalar"))
  rows = _round_rows(config.eval_batch_size, mesh)
  score = scoring_job("rm scoring forward", state.graphdef, state.params, mesh, rows,
                      max(formatting.sequence_buckets(fmt)), cfg,
                      {resident_after: per_device_bytes(state.opt_state)})
  return jobs + [score]


def scoring_job(name: str, graphdef, params, mesh: Mesh, rows: int, t: int,
                cfg: config_lib.ModelConfig, resident: dict[str, float]) -> Job:
  """RewardModelScorer's jitted forward (training/reward_scoring.py) on [rows, t]."""
  @jax.jit
  def forward(state, tokens, positions, mask):
    return nnx.merge(graphdef, state)(tokens, positions, mask)

  sh = mesh_lib.data_sharding(mesh, 2)
  args = (params, _sds((rows, t), jnp.int32, sh), _sds((rows, t), jnp.int32, sh),
          _sds((rows, t), jnp.bool_, sh))

  def lower():
    with jax.set_mesh(mesh):
      return forward.lower(*args)
  full, seen = model_flops(cfg, rows, t, False, "scalar")
  return Job(name, lower, resident, full, xla_view_flops=seen)


def sft_workdir_model(sft_workdir: str | None) -> config_lib.ModelConfig | None:
  """The ModelConfig an existing SFT run exported (what launch.rl loads), else None."""
  if not sft_workdir:
    return None
  path = pathlib.Path(sft_workdir) / "export" / "model_config.json"
  return config_lib.ModelConfig.from_dict(json.loads(path.read_text())) if path.exists() else None


def first_stage(config: Any) -> Any:
  """The stage config whose mesh a report names (the SFT stage of a pipeline config)."""
  return config.sft if stage_of(config) == "pipeline" else config


def jobs_for(config: Any, mesh_fn: Callable[[Any], Mesh],
             resolve: Callable[[str], Any] | None = None) -> list[Job]:
  """Every jitted function of the config's run, in the order the run executes them;
  mesh_fn(stage_config) builds that stage's mesh (from its `mesh` field) on the topology."""
  from rlaif_jax.aot import rl_jobs
  stage = stage_of(config)
  if stage == "sft":
    return sft_jobs(config, mesh_fn(config))
  if stage == "rm":
    return rm_jobs(config, mesh_fn(config))
  if stage == "rl":
    return rl_jobs.rl_jobs(config, mesh_fn(config), resolve=resolve)
  sft_cfg = model_config(config.sft)
  return (sft_jobs(config.sft, mesh_fn(config.sft))
          + rm_jobs(config.rm, mesh_fn(config.rm), trunk=sft_cfg)
          + rl_jobs.rl_jobs(config.rl, mesh_fn(config.rl), sft_stage=config.sft,
                            rm_stage=config.rm, resolve=resolve))
