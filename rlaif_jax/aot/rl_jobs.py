"""The RL run's jitted functions (launch.rl, rl/trainer.py) as AOT Jobs on abstract shapes.

Per RL step the trainer runs, in order: the sampler's prefill and decode (one jitted call over
the growing cache's segments), the old + reference log-probs (`Prepare.log_probs`), the reward
model's forward (path A), for PPO the critic's values (`Prepare.finish`), then per mini-batch
the critic and actor updates. What stays resident beside each call follows the trainer: the
actor's TrainState always, the reference policy unless `rl.ref_on_host`, the reward model unless
`reward.rm.on_host`, the PPO critic's TrainState.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlaif_jax.aot.analysis import Job, per_device_bytes
from rlaif_jax.aot.stages import (_round_rows, _sds, _state, matmul_params, model_config,
                                  model_flops, scoring_job, sft_workdir_model)
from rlaif_jax.data import formatting
from rlaif_jax.models import checkpoint_bridge
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.rl import losses, rollout as rollout_lib
from rlaif_jax.rl.rollout_buffer import RolloutBatch
from rlaif_jax.sampling import sampler as sampler_lib
from rlaif_jax.sampling.logits_processing import SamplingArrays, SamplingParams
from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.training import optim, reward_model, sft, train_state as ts
from rlaif_jax.training import trainer as trainer_lib


def _stage(spec: Any, resolve: Callable[[str], Any] | None, field: str) -> Any:
  from rlaif_jax.rl import run
  return run.stage_config(spec, resolve, field)


def _rollout_batch(mesh: Mesh, rows: int, t: int) -> RolloutBatch:
  sh2, sh1 = mesh_lib.data_sharding(mesh, 2), mesh_lib.data_sharding(mesh, 1)
  f32 = lambda: _sds((rows, t), jnp.float32, sh2)
  return RolloutBatch(tokens=_sds((rows, t), jnp.int32, sh2),
                      positions=_sds((rows, t), jnp.int32, sh2),
                      attention_mask=_sds((rows, t), jnp.bool_, sh2), response_mask=f32(),
                      old_log_probs=f32(), ref_log_probs=f32(), values=f32(),
                      token_rewards=f32(), advantages=f32(), returns=f32(),
                      sequence_rewards=_sds((rows,), jnp.float32, sh1))


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: _sds(x.shape, x.dtype, s), tree, shardings)


def rl_jobs(config: Any, mesh: Mesh, sft_stage: Any = None, rm_stage: Any = None,
            resolve: Callable[[str], Any] | None = None) -> list[Job]:
  """Jobs of one RL step of `config` (a launch.rl config). sft_stage / rm_stage: the stage
  configs the policy and reward model come from (default: config.policy.sft_config and
  config.reward.rm.config, as launch.rl trains them when their runs are missing)."""
  from rlaif_jax.rl import run
  rl = run.rl_config(config)
  sft_stage = (_stage(config.policy.sft_config, resolve, "policy.sft_config") if sft_stage is None
               else sft_stage)
  policy_cfg = (sft_workdir_model(config.policy.get("sft_workdir"))
                or model_config(sft_stage)).replace(**sft.compute_options(config.model))
  total_updates = rl.total_steps * rl.updates_per_step
  actor_opt, actor_sched = optim.optimizer_from_config(config.optim, total_updates)
  abstract_policy = checkpoint_bridge.abstract_model(policy_cfg)
  actor = _state(abstract_policy, actor_opt, mesh)
  params = actor.params
  n_lm = matmul_params(policy_cfg)
  fmt = sft.format_config(config.format)
  p = max(formatting.prompt_buckets(fmt))
  prompts, n, new = rl.prompts_per_step, rl.n_samples, rl.max_new_tokens
  rows, t = prompts * n, p + new

  # What the trainer keeps on the device (per device).
  moments = per_device_bytes(actor.opt_state)
  ref = 0.0 if rl.ref_on_host else per_device_bytes(params)
  uses_rm = "rm" in tuple(config.reward.use)
  critic = None
  if uses_rm:
    rm_stage = (_stage(config.reward.rm.config, resolve, "reward.rm.config") if rm_stage is None
                else rm_stage)
    # launch.rl trains the RM from the SFT run's trunk: the SFT ModelConfig, RM compute options.
    rm_cfg = policy_cfg.replace(**sft.compute_options(rm_stage.model))
    rm_graphdef, rm_params = nnx.split(reward_model.abstract_reward_model(rm_cfg))
    rm_params = _with_shardings(rm_params, ts.variable_shardings(rm_params, mesh))
    rm_fmt = sft.format_config(rm_stage.format)
  rm_bytes = 0.0 if (not uses_rm or config.reward.rm.get("on_host", False)) else (
      per_device_bytes(rm_params))
  if rl.algorithm == "ppo":
    critic_opt, _ = optim.optimizer_from_config(config.critic_optim, total_updates)
    critic = _state(nnx.eval_shape(lambda: ScalarHeadModel(
        checkpoint_bridge.abstract_model(policy_cfg), rngs=nnx.Rngs(0))), critic_opt, mesh)
  critic_bytes = per_device_bytes((critic.params, critic.opt_state)) if critic else 0.0
  others = {"reference": ref, "reward model": rm_bytes, "critic + adamw": critic_bytes}
  others = {k: v for k, v in others.items() if v}
  batch_bytes = per_device_bytes(_rollout_batch(mesh, rows, t))

  # Rollout: prefill, then the decode segments (sampler.generate_ids without a stop check).
  graphdef = nnx.split(abstract_policy)[0]
  sh2 = mesh_lib.data_sharding(mesh, 2)
  sampling = SamplingParams(rl.temperature, rl.top_k, rl.top_p)
  arrays = jax.tree.map(lambda x: _sds(np.shape(x), x.dtype),
                        SamplingArrays.from_params([sampling] * rows, new))
  key = jax.eval_shape(lambda: jax.random.key(0))
  pre_args = (graphdef, params, _sds((prompts, p), jnp.int32, sh2),
              _sds((prompts, p), jnp.bool_, sh2), arrays,
              _sds((sampler_lib._STOP_SLOTS,), jnp.int32), _sds((), jnp.int32), key)
  spans = sampler_lib.cache_spans(new, rl.grow_cache_from)
  pre_kw = dict(max_new_tokens=new, n=n, unstack=rl.unstack_layers_for_decode,
                first_span=spans[0])
  holder: dict[str, Any] = {}

  def lower_prefill():
    with jax.set_mesh(mesh):
      holder["prefill"] = sampler_lib._prefill_jit.lower(*pre_args, **pre_kw)
    return holder["prefill"]

  def lower_decode():
    with jax.set_mesh(mesh):
      state = jax.eval_shape(lambda *a: sampler_lib._prefill(*a, **pre_kw), *pre_args)
      try:  # the prefill's real output shardings (the KV cache over the data axes)
        out_sh = holder["prefill"].compile().output_shardings
        state = _with_shardings(state, out_sh)
      except Exception:  # the prefill did not fit: its traced shardings still place the cache
        pass
      fn, args = sampler_lib.decode_call(graphdef, params, state, rl.unstack_layers_for_decode,
                                         spans)
      return fn.lower(*args)

  resident_rollout = {"adamw moments": moments, **others}
  kv = 2 * policy_cfg.num_layers * rows * policy_cfg.num_kv_heads * policy_cfg.head_dim * (
      p + new - 1) * jnp.dtype(policy_cfg.dtype).itemsize
  # Prefill: the trunk over every prompt token, the LM head at the last one (layers unrolled
  # when unstacked); decode: one token per row per step, XLA counting one step per segment.
  prefill = 2.0 * (matmul_params(policy_cfg, "scalar") * p + (n_lm - matmul_params(
      policy_cfg, "scalar"))) * prompts
  jobs = [Job("rl rollout prefill", lower_prefill, resident_rollout, prefill,
              note=f"{prompts} prompts x {p} tokens, n={n}",
              xla_view_flops=prefill if rl.unstack_layers_for_decode or not policy_cfg.scan_layers
              else prefill / policy_cfg.num_layers),
          Job(f"rl rollout decode (segments {','.join(map(str, spans))})", lower_decode,
              resident_rollout, 2.0 * n_lm * rows * new,
              xla_view_flops=2.0 * n_lm * rows * len(spans),
              note=f"{rows} rows x {new} new tokens; full KV cache {kv / 2**30:.2f} GiB (all "
                   "devices)")]

  # Old + reference log-probs (dispatched before scoring), then the reward model.
  prepare = rollout_lib.make_prepare_fn(actor.graphdef, critic.graphdef if critic else None,
                                        rl.advantage)
  seq = {"tokens": _sds((rows, t), jnp.int32, sh2), "positions": _sds((rows, t), jnp.int32, sh2),
         "attention_mask": _sds((rows, t), jnp.bool_, sh2),
         "response_mask": _sds((rows, t), jnp.float32, sh2)}

  def lower_log_probs():
    with jax.set_mesh(mesh):
      return prepare.log_probs.lower(params, params, seq, None)
  lp_resident = {"adamw moments": moments,
                 **{k: v for k, v in others.items() if k != "reference"}}
  full, seen = model_flops(policy_cfg, rows, t, False, head_chunk=rl.advantage.logits_chunk)
  jobs.append(Job("rl old + ref log-probs", lower_log_probs, lp_resident, 2 * full,
                  xla_view_flops=2 * seen))
  if uses_rm:
    rm_rows = _round_rows(config.reward.rm.batch_size, mesh)
    rm_t = max(formatting.sequence_buckets(rm_fmt))
    res = {"policy + adamw": per_device_bytes((params, actor.opt_state)),
           **{k: v for k, v in others.items() if k != "reward model"}}
    jobs.append(scoring_job("rl reward-model forward", rm_graphdef, rm_params, mesh,
                            rm_rows, rm_t, rm_cfg, res))
  if critic is not None:
    r1 = _sds((rows,), jnp.float32, mesh_lib.data_sharding(mesh, 1))
    lp = _sds((rows, t), jnp.float32, sh2)

    def lower_finish():
      with jax.set_mesh(mesh):
        return prepare.finish.lower(lp, lp, critic.params, seq, r1, None)
    full, seen = model_flops(policy_cfg, rows, t, False, "scalar")
    jobs.append(Job("ppo critic values (finish)", lower_finish,
                    {"policy + adamw": per_device_bytes((params, actor.opt_state)),
                     "critic adamw": per_device_bytes(critic.opt_state),
                     **{k: v for k, v in others.items() if k != "critic + adamw"}},
                    full, xla_view_flops=seen))

  # Updates: per mini-batch the critic (PPO) then the actor (rl/trainer.py::update).
  mb = _rollout_batch(mesh, rl.mini_batch_size, t)
  actor_cfg = rl.actor
  if actor_cfg.loss_scale_factor is None:
    actor_cfg = dataclasses.replace(actor_cfg, loss_scale_factor=float(new))
  upd_resident = {**others, "rollout batch": batch_bytes}
  if critic is not None:
    critic_loss = lambda model, batch, rng: losses.critic_loss(
        model, batch, rl.critic_clip, actor_cfg.agg_mode, actor_cfg.loss_scale_factor)
    critic_step = trainer_lib.make_train_step(
        critic_loss, critic_opt, mesh=mesh, shardings=ts.state_shardings(critic, mesh, critic_opt))
    full, seen = model_flops(policy_cfg, rl.mini_batch_size, t, True, "scalar")
    jobs.append(Job("ppo critic update", lambda: critic_step.lower(critic, mb),
                    {"policy + adamw": per_device_bytes((params, actor.opt_state)),
                     **{k: v for k, v in upd_resident.items() if k != "critic + adamw"}},
                    full, xla_view_flops=seen))
  actor_loss = lambda model, batch, rng: losses.actor_loss(model, batch, actor_cfg)
  actor_step = trainer_lib.make_train_step(
      actor_loss, actor_opt, actor_sched, mesh=mesh,
      shardings=ts.state_shardings(actor, mesh, actor_opt))
  full, seen = model_flops(policy_cfg, rl.mini_batch_size, t, True,
                           head_chunk=actor_cfg.logits_chunk)
  jobs.append(Job("rl actor update", lambda: actor_step.lower(actor, mb), upd_resident,
                  full, xla_view_flops=seen,
                  note=f"{rl.mini_batch_size} rows x {t} tokens"))
  return jobs

