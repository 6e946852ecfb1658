r"""The main job on the tiny CPU default, the paper's experiment at toy size: tokenizer -> SFT ->
reward model -> GRPO with the RM reward (path A); adversarial principle optimisation -> GRPO with
the optimised principle judge's verdict as the reward (path B); evaluation of initial / SFT /
SFT+GRPO(A) / SFT+GRPO(B) under Signal-1 (the multi-agent curator), Signal-2 (the optimised
principle judge), the reward model and the length baseline, plus controls and efficiency.

  python -m launch.pipeline --config=configs/tiny_cpu.py --workdir=runs/tiny --data_dir=$RLAIF_DATA_DIR

Sub-configs are the stage configs (configs/sft_tiny_cpu.py, rm_tiny_cpu.py, grpo_tiny_cpu.py),
overridable as `--config.sft.loop.total_steps=100`, `--config.rl.loop.total_steps=20`, ...
`--config.reward_path=A|B|AB` (default AB: both paths). The LLM judge (path B's reward,
Signal-1, Signal-2) is one block, `config.judge` (the same ConfigDict as GRPO's
`config.rl.reward.judge`): `--config.judge.base_url=http://127.0.0.1:8000/v1 --config.judge.model=NAME`
(any OpenAI-compatible server: vLLM, SGLang, OpenAI, `python -m launch.serve`); without them the
pipeline serves its own SFT checkpoint as a stand-in judge (results.md says its figures mean
nothing about judge quality). `--config.eval.llm_signals=false` leaves Signal-1/2 out.
`--config.rm_pairs=curated` trains the reward model on pairs the multi-agent curator makes from
SFT samples (`config.curate`) instead of the authors' released pairs.
"""
import ml_collections

from configs import grpo_tiny_cpu, rm_tiny_cpu, sft_tiny_cpu


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.sft = sft_tiny_cpu.get_config()
  config.rm = rm_tiny_cpu.get_config()
  config.rl = grpo_tiny_cpu.get_config()
  config.reward_path = "AB"  # "A": reward model; "B": principle judge; "AB": both (the paper)
  # The reward model's pairs: "paper" (the authors' released pairs) or "curated" (the
  # multi-agent curator labels SFT samples through the judge endpoint; pipeline/curation_stage).
  config.rm_pairs = "paper"
  config.curate = ml_collections.ConfigDict(dict(
      max_queries=64, samples_per_query=4, temperature=1.0, num_examples=2,
      max_pairs_per_query=0, seed=0))  # max_pairs_per_query 0: every combination
  # The LLM judge: one definition, GRPO's reward block (scoring.config.LLMJudgeConfig). With
  # constrained_json the verdict schemas (judging/parsing.py) are requested as `response_format`
  # (vLLM, SGLang, OpenAI, launch.serve and the stand-in implement it), so verdicts parse; a
  # schema reply with its explanation needs room: max_tokens 512.
  config.judge = config.rl.reward.judge
  config.judge.update(dict(concurrency=32, max_tokens=512, max_attempts=2, temperature=0.0,
                           constrained_json=True))
  # The stand-in judge server (the SFT checkpoint) when no endpoint is given. The tiny policy
  # cannot follow a judge's instructions, so its calls are made cheap: it reads the last 256
  # tokens of each prompt (the judges' prompts have ~1,100; the prefill is most of a call's
  # cost) and its verdict schemas are tightened (explanations <= 32 characters, at most 2
  # debater points or rules): tens of decode steps per call, not hundreds.
  config.local_judge = ml_collections.ConfigDict(dict(
      max_batch_rows=64, prompt_bucket=128, truncate_prompt_tokens=256,
      max_schema_string_chars=32, max_schema_items=2))
  # Path B's offline stage: the adversarial game on the principle_examples split.
  config.principles = ml_collections.ConfigDict(dict(
      iterations=1, max_examples=48, holdout_size=16, adversarial_batch=2, reflect_batch=4,
      max_attempts=2, max_tokens=512, split_seed=0, seed=0))
  # Path B's GRPO: config.rl with these config.rl.loop overrides (judge calls cost more than the
  # reward model's, so fewer steps at this size).
  config.rl_b = ml_collections.ConfigDict(dict(total_steps=12))
  config.eval = ml_collections.ConfigDict(dict(
      prompt_set="grpo_test", max_prompts=64, max_new_tokens=64, temperature=0.7, top_p=0.95,
      seed=0, batch_size=64, max_labelled=200, split_seed=0, controls=True, llm_signals=True,
      curator_examples=2,
      human_sheet_per_checkpoint=16))  # eval/human_eval/sheet.csv: N generations per checkpoint
  return config
