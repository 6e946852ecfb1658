r"""GRPO (the paper's RL stage) on the tiny decoder, with the tiny reward model as reward, on CPU.

  python -m launch.rl --config=configs/grpo_tiny_cpu.py --workdir=/tmp/grpo_run --data_dir=$RLAIF_DATA_DIR

The policy starts from the SFT run in `policy.sft_workdir` (default WORKDIR/sft; trained first
with configs/sft_tiny_cpu.py when it has no export) and the reward model from `reward.rm.workdir`
(default WORKDIR/rm; trained first with configs/rm_tiny_cpu.py from the SFT trunk). The paper's
GRPO settings are kept where they make sense at this size (n=4, k3 KL loss 0.001, clip 0.2,
token-mean, entropy 0, "请只生成一条祝福语：" prompts); the learning rate is larger than the
paper's 3e-7 because the model is tiny and trained for minutes. Path B: set
`--config.reward.use=judge --config.reward.judge.base_url=... --config.reward.judge.model=...`
(`--config.reward.use="('rm','judge')"` sums both, each with its `weight`).

`config.reward`: `use` names the scorers summed into the reward; every other key is a scorer
block (`kind` + the fields of its `rlaif_jax.scoring.config` dataclass). `judge` here is the one
definition of the LLM judge: configs/tiny_cpu.py evaluates with this same block.
"""
import ml_collections
from ml_collections import config_dict

from configs import common
from rlaif_jax.data import formatting


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(remat=False))
  config.policy = ml_collections.ConfigDict(dict(
      sft_workdir=config_dict.placeholder(str), sft_config="sft_tiny_cpu"))
  config.format = common.format_config(max_prompt_len=64, max_response_len=64)
  config.format.prompt_template = formatting.GRPO_PROMPT_TEMPLATE
  config.data = ml_collections.ConfigDict(dict(max_prompts=0))
  config.reward = reward_config()
  config.loop = ml_collections.ConfigDict(dict(
      total_steps=60, log_every=1, checkpoint_every=20, keep_checkpoints=2))
  config.rl = ml_collections.ConfigDict(dict(
      algorithm="grpo", prompts_per_step=8, n_samples=4, mini_batch_size=16,
      epochs=1, max_new_tokens=64, temperature=1.0, top_p=1.0, top_k=0, seed=0,
      ref_on_host=False, critic_clip=0.5,
      unstack_layers_for_decode=True, grow_cache_from=64, old_log_probs_from_sampler=False,
      actor=ml_collections.ConfigDict(dict(
          clip_ratio=0.2, kl_coef=0.001, kl_kind="low_var_kl", entropy_coef=0.0,
          agg_mode="token-mean", logits_chunk=256)),
      advantage=ml_collections.ConfigDict(dict(estimator="grpo", gamma=1.0, lam=1.0,
                                               kl_in_reward_coef=0.0))))
  config.optim = common.optim_config(lr=2e-5, warmup_steps=0, decay="constant",
                                     weight_decay=0.0, max_grad_norm=1.0)
  config.critic_optim = common.optim_config(lr=1e-4, warmup_steps=0, decay="constant")
  config.mesh = (1, -1, 1)
  config.export = ml_collections.ConfigDict(dict(dtype="float32"))
  return config


def reward_config() -> ml_collections.ConfigDict:
  """The reward: `use` + one block per scorer (`rlaif_jax.scoring.config`). fallback: the
  placeholder value of a row the judge / offline job failed to score; such rows are masked out
  of the update (logged as reward_invalid_frac), never trained on."""
  return ml_collections.ConfigDict(dict(
      use=("rm",),
      rm=dict(kind="rm", weight=1.0, workdir=config_dict.placeholder(str), config="rm_tiny_cpu",
              batch_size=32, debias=False, on_host=False),
      judge=dict(kind="llm", weight=1.0, base_url=config_dict.placeholder(str),
                 model=config_dict.placeholder(str), api_key_env="OPENAI_API_KEY",
                 concurrency=16, principles="v0", fallback=0.0, max_tokens=512, max_attempts=3,
                 temperature=0.0, constrained_json=False),
      offline=dict(kind="offline", weight=1.0, timeout_s=3600.0, fallback=0.0),
      callable=dict(kind="callable", weight=1.0, fn=config_dict.placeholder(str))))
