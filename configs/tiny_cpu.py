r"""The main job on the tiny CPU default: tokenizer -> SFT -> reward model -> GRPO -> evaluation.

  python -m launch.pipeline --config=configs/tiny_cpu.py --workdir=runs/tiny --data_dir=$RLAIF_DATA_DIR

Sub-configs are the stage configs (configs/sft_tiny_cpu.py, rm_tiny_cpu.py, grpo_tiny_cpu.py),
overridable as `--config.sft.loop.total_steps=100`, `--config.rl.loop.total_steps=20`, ...
Path B (LLM-judge reward instead of the reward model): `--config.reward_path=B
--config.judge.base_url=http://127.0.0.1:8000/v1 --config.judge.model=NAME` (any
OpenAI-compatible server, e.g. vLLM or `python -m launch.serve`); the judge then also scores the
evaluation beside the reward model and the length baseline.
"""
import ml_collections

from configs import grpo_tiny_cpu, rm_tiny_cpu, sft_tiny_cpu


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.sft = sft_tiny_cpu.get_config()
  config.rm = rm_tiny_cpu.get_config()
  config.rl = grpo_tiny_cpu.get_config()
  config.reward_path = "A"  # "A": reward model; "B": LLM judge (needs config.judge)
  config.judge = config.rl.reward.judge  # one judge definition: GRPO's reward and evaluation
  config.eval = ml_collections.ConfigDict(dict(
      prompt_set="grpo_test", max_prompts=64, max_new_tokens=64, temperature=0.7, top_p=0.95,
      seed=0, batch_size=64, max_labelled=400))
  return config
