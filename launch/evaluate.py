r"""python -m launch.evaluate --checkpoints=sft=runs/sft,grpo=runs/grpo --output_dir=/tmp/eval \
  --judges='rm:runs/rm,llm:openai@http://127.0.0.1:8000/v1#Qwen2.5-72B-Instruct,length' \
  --data_dir=$RLAIF_DATA_DIR --max_prompts=200 --reliability

Generates with every checkpoint on the evaluation prompts, judges the greetings with every
judge, and writes excellence rates (95% Wilson CIs), diversity, length, tables (markdown + CSV)
and plots to --output_dir (layout: rlaif_jax/evaluation/harness.py). Re-running the same
command resumes: finished generations and judgements are kept.

  --checkpoints   comma list of NAME=PATH or PATH (name = the directory's basename). PATH is a
                  trainer run directory with export/, an HF model directory, or hf:DIR.
  --judges        comma list of [NAME=]KIND[:TARGET][?KEY=VALUE&...], KIND in rm, llm,
                  curator, length; e.g. rm:/runs/rm?threshold=0.5,
                  llm:openai@http://127.0.0.1:8000/v1#MODEL?principles=v0, curator:openai@URL#MODEL,
                  length (full format: rlaif_jax/evaluation/judges.py). Quote the value in a
                  shell: it may hold '#', '?' and '&'. Thresholds not given are calibrated on the
                  labelled evaluation set. Without a `length` entry the length baseline
                  (`length`, calibrated) is added, so it is always shown beside the judges.
  --prompt_set    grpo_test (grpo_data/test.parquet), eval_queries (the evaluation set's
                  queries) or both; --max_prompts takes a seeded subset.
  --reliability   also score every judge against the human labels of the evaluation set
                  (accuracy, precision, recall, F1, Cohen's kappa, beside the length baseline).
                  A threshold calibrated on those labels (rm, length, the length baseline) is
                  cross-fitted there: each item's verdict comes from the threshold refitted on
                  the other --reliability_folds folds (out-of-fold figures; the table's notes
                  column says so). The excellence rates use the threshold fitted on all of them.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Any

from absl import app, flags, logging

from launch import common
from rlaif_jax.data import formatting, greetings, paths
from rlaif_jax import storage
from rlaif_jax.evaluation import harness, judges as judges_lib, report
from rlaif_jax.judging.splits import make_splits

_CHECKPOINTS = flags.DEFINE_list("checkpoints", [], "NAME=PATH or PATH items (see docstring).")
_JUDGES = flags.DEFINE_string(
    "judges", None, "Judge spec (see docstring); a calibrated length baseline judge (`length`) is "
    "added when the spec has no `length` entry.", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output folder.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Greetings dataset (default: $RLAIF_DATA_DIR).")
_PROMPT_SET = flags.DEFINE_enum("prompt_set", "grpo_test", list(harness.PROMPT_SETS),
                                "Which requests to generate for.")
_MAX_PROMPTS = flags.DEFINE_integer("max_prompts", 0, "Seeded subset of prompts; 0 = all.")
_LABELLED_SPLIT = flags.DEFINE_enum(
    "labelled_split", "reliability", ["reliability", "all"],
    "Human-labelled records for calibration and --reliability: the reliability_examples split "
    "of rlaif_jax.judging.splits (disjoint from the principle-optimisation examples and from "
    "the curator's retrieval corpus, which the curator judge then uses; written to "
    "OUTPUT_DIR/splits/), or all of evaluate_data.json (curator retrieves from it: leaks).")
_SPLIT_SEED = flags.DEFINE_integer("split_seed", 0, "Seed of the leak-free splits.")
_MAX_LABELLED = flags.DEFINE_integer("max_labelled", 0, "Use the first N labelled records for "
                                     "calibration and reliability; 0 = all.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "New tokens per response.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature (0 = greedy); "
                                  "default: the first checkpoint's generation_config.json, else 1.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus mass in (0, 1]; 1 = off (default: "
                            "generation_config.json, else 1).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens; 0 = off (default: "
                              "generation_config.json, else 0).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed; generation batch k uses seed + k.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Prompts per sampler call.")
_JUDGE_CHUNK = flags.DEFINE_integer("judge_chunk_size", 64, "Items per judge call (resume unit).")
_RELIABILITY_FOLDS = flags.DEFINE_integer(
    "reliability_folds", harness.RELIABILITY_FOLDS, "Cross-fitting folds (>= 2) for the "
    "reliability of judges whose threshold is fitted on the labels.")
_PROMPT_TEMPLATE = flags.DEFINE_string("prompt_template", formatting.GRPO_PROMPT_TEMPLATE,
                                       "User message; must contain {query}.")
_CHAT_TEMPLATE = flags.DEFINE_bool("chat_template", True, "Wrap prompts in the chat template.")
_SYSTEM_PROMPT = flags.DEFINE_string("system_prompt", None, "Optional system message.")
_MAX_PROMPT_LEN = flags.DEFINE_integer("max_prompt_len", 256, "Prompt token budget.")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "Model dtype (auto: bfloat16 on accelerators, float32 on CPU).")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Mesh shape data,fsdp,tensor (-1 = rest).")
_RELIABILITY = flags.DEFINE_bool("reliability", False, "Also write the judge reliability table.")


def _sampling_defaults(checkpoints: dict[str, str]) -> dict[str, Any]:
  """The first checkpoint's generation_config.json sampling values (one setting for all
  checkpoints, so that they are compared alike), logged."""
  from rlaif_jax.sampling import defaults, loading  # Local: JAX after the flags are checked.
  found: dict[str, Any] = {}
  for path in list(checkpoints.values())[:1]:
    try:
      found = defaults.generation_defaults(loading.resolve_checkpoint(path))
    except FileNotFoundError:
      found = {}
  unused = {k: v for k, v in found.items() if k not in ("temperature", "top_p", "top_k")}
  if unused:
    logging.warning("generation_config.json sets %s; the evaluation harness samples with "
                    "temperature / top_p / top_k only, so these are not applied", unused)
  return found


def _generation_config(checkpoints: dict[str, str]) -> harness.GenerationConfig:
  from rlaif_jax.sampling import defaults  # Local: JAX after the flags are checked.
  found = _sampling_defaults(checkpoints)
  pick = lambda flag, key, builtin: (flag.value if flag.value is not None
                                     else found.get(key, builtin))
  config = harness.GenerationConfig(
      max_new_tokens=_MAX_NEW_TOKENS.value, temperature=pick(_TEMPERATURE, "temperature", 1.0),
      top_p=pick(_TOP_P, "top_p", 1.0), top_k=pick(_TOP_K, "top_k", 0), seed=_SEED.value,
      batch_size=_BATCH_SIZE.value, prompt_template=_PROMPT_TEMPLATE.value,
      use_chat_template=_CHAT_TEMPLATE.value, system_prompt=_SYSTEM_PROMPT.value,
      max_prompt_len=_MAX_PROMPT_LEN.value, dtype=defaults.resolve_dtype(_DTYPE.value))
  logging.info("generation: temperature=%s top_p=%s top_k=%s dtype=%s", config.temperature,
               config.top_p, config.top_k, config.dtype)
  return config


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CHECKPOINTS.value and not _RELIABILITY.value:
    raise app.UsageError("nothing to do: pass --checkpoints and/or --reliability")
  for flag, low in ((_MAX_PROMPTS, 0), (_MAX_LABELLED, 0), (_JUDGE_CHUNK, 1),
                    (_RELIABILITY_FOLDS, 2)):
    if flag.value < low:
      raise app.UsageError(f"--{flag.name} must be >= {low}, got {flag.value}")
  try:
    checkpoints = harness.parse_checkpoints(_CHECKPOINTS.value)
    judges_lib.parse_judge_specs(_JUDGES.value)
    generation = _generation_config(checkpoints)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  data_dir = paths.resolve_data_dir(_DATA_DIR.value)
  retrieval_examples = None
  if _LABELLED_SPLIT.value == "reliability":
    splits = make_splits(data_dir, _SPLIT_SEED.value, output_dir=_OUTPUT_DIR.value)
    labelled, retrieval_examples = (splits.labelled("reliability_examples"),
                                    splits.retrieval_corpus)
  else:
    labelled = greetings.load_evaluation_set(data_dir)
  if _MAX_LABELLED.value > 0:
    labelled = labelled[:_MAX_LABELLED.value]
  from rlaif_jax.sharding import mesh as mesh_lib  # Local: JAX after the flags are checked.
  mesh = mesh_lib.make_mesh([int(s) for s in _MESH.value])
  try:
    judges = judges_lib.make_judges(_JUDGES.value, labelled, mesh=mesh,
                                    retrieval_examples=retrieval_examples)
  except judges_lib.JudgeSpecError as e:
    raise app.UsageError(str(e)) from e
  for j in judges:
    print(f"judge {j.name}: {j.signature}")
  try:
    _run(judges, labelled, checkpoints, data_dir, generation, mesh)
  except storage.InputError as e:  # a stale output file from other settings
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {_OUTPUT_DIR.value}")
  return 0


def _run(judges: list[judges_lib.EvalJudge], labelled: list[greetings.LabeledResponse],
         checkpoints: dict[str, str], data_dir: pathlib.Path,
         generation: harness.GenerationConfig, mesh: Any) -> None:
  """Writes the reliability table (--reliability) and the checkpoint evaluation."""
  if _RELIABILITY.value:
    rows = harness.judge_reliability(judges, labelled, _OUTPUT_DIR.value, _JUDGE_CHUNK.value,
                                     folds=_RELIABILITY_FOLDS.value)
    print("Judge reliability vs human labels\n" + report.markdown_table(
        rows, harness.RELIABILITY_COLUMNS))
  if checkpoints:
    result = harness.evaluate_checkpoints(
        checkpoints, judges, _OUTPUT_DIR.value, data_dir=data_dir, prompt_set=_PROMPT_SET.value,
        max_prompts=_MAX_PROMPTS.value or None, generation=generation, mesh=mesh,
        judge_chunk_size=_JUDGE_CHUNK.value)
    print("Excellence rate\n"
          + report.markdown_table(result["excellence"], harness.EXCELLENCE_COLUMNS))
    print("Diversity\n" + report.markdown_table(result["diversity"], harness.DIVERSITY_COLUMNS))


if __name__ == "__main__":
  common.run(main)
