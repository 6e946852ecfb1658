"""Path A's reward-model data from the multi-agent curator (`config.rm_pairs="curated"`).

The SFT checkpoint samples `config.curate.samples_per_query` greetings for
`config.curate.max_queries` requests of grpo_data/train (a seeded choice); the curator
(Retrieval -> Positive / Negative debaters -> Judge -> Reflect, through the judge endpoint, its
few-shot examples retrieved from the retrieval_corpus split) labels each 0/1; and
`curator.build_preference_pairs` turns every (approved, rejected) combination of a request into
the paper's RM pair format. The reward model then trains on WORKDIR/curated/pairs.json (its test
file stays the paper's reward_data_test.json). The default, `rm_pairs="paper"`, trains on the
authors' released pairs and runs none of this.

Files (WORKDIR/curated/): samples.jsonl (the SFT samples, resumed), labelled.jsonl (the
curator's verdicts, resumed), pairs.json, usage.json (samples, verdicts, pairs, LLM calls, wall
time). Multi-host: every process samples (one sharded model); the curator is asked by process 0
and its verdicts broadcast (`evaluation.judging_io`); process 0 writes the files.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np

from rlaif_jax import storage
from rlaif_jax.data import greetings
from rlaif_jax.evaluation import generation, judges as judges_lib, judging_io
from rlaif_jax.judging.curator import build_preference_pairs
from rlaif_jax.judging.splits import make_splits
from rlaif_jax.pipeline.local_judge import JudgeEndpoint
from rlaif_jax.pipeline.stages import eval_generation_config
from rlaif_jax.scoring import config as cfg_lib
from rlaif_jax.sharding import host

CURATED_DIR, PAIRS_FILE, USAGE_FILE = "curated", "pairs.json", "usage.json"
CURATOR_CALLS_PER_ITEM = 4  # positive, negative, judge, reflect (retrieval is local)


class NoCuratedPairsError(ValueError):
  """The curator's verdicts gave no request both an approved and a rejected sample."""


def curator_config(config: Any, endpoint: JudgeEndpoint, num_examples: int
                   ) -> cfg_lib.CuratorConfig:
  """The curator as a scorer config on the judge endpoint, with config.judge's settings."""
  j = config.judge
  return cfg_lib.CuratorConfig(
      name="curator", where="the curator (config.judge)", base_url=endpoint.base_url,
      model=endpoint.model, api_key_env=endpoint.api_key_env, concurrency=j.concurrency,
      max_tokens=j.max_tokens, max_attempts=j.max_attempts,
      constrained_json=bool(j.get("constrained_json")), num_examples=num_examples)


def curate_pairs(config: Any, out: pathlib.Path, data_dir: pathlib.Path,
                 sft_dir: pathlib.Path, endpoint: JudgeEndpoint) -> pathlib.Path:
  """Samples, labels and pairs (module docstring); returns the pairs file. Raises
  NoCuratedPairsError, naming the counts, when no request got both verdicts."""
  t0, c = time.perf_counter(), config.curate
  queries = sorted({p.query for p in greetings.load_rl_prompts(data_dir, "train")})
  rng = np.random.default_rng(c.seed)
  chosen = [queries[i] for i in sorted(rng.choice(len(queries), min(c.max_queries, len(queries)),
                                                  replace=False))]
  repeated = [q for q in chosen for _ in range(c.samples_per_query)]
  gen = dataclasses.replace(eval_generation_config(config), temperature=c.temperature,
                            seed=c.seed)
  samples = generation.generate_checkpoint(str(sft_dir), repeated, out / "samples.jsonl", gen)
  splits = make_splits(data_dir, config.eval.split_seed)
  [judge] = judges_lib.make_judges([curator_config(config, endpoint, c.num_examples)], None,
                                   retrieval_examples=splits.retrieval_corpus,
                                   length_baseline=False)
  items = [{"id": s["id"], "query": s["query"], "response": s["response"]} for s in samples]
  labelled = judging_io.judge_records(judge, items, out / "labelled.jsonl")
  pairs = build_preference_pairs(labelled, max_pairs_per_query=c.max_pairs_per_query or None,
                                 seed=c.seed)
  verdicts = [r["label"] for r in labelled if r.get("valid")]
  usage = {"queries": len(chosen), "samples": len(samples), "valid_verdicts": len(verdicts),
           "approved": int(sum(verdicts)), "pairs": len(pairs),
           "llm_calls": CURATOR_CALLS_PER_ITEM * len(samples), "human_labelled_examples": 0,
           "retrieval_corpus": len(splits.retrieval_corpus),
           "wall_s": round(time.perf_counter() - t0, 1)}
  if not pairs:
    raise NoCuratedPairsError(
        f"{out / 'labelled.jsonl'}: the curator approved {usage['approved']} and rejected "
        f"{len(verdicts) - usage['approved']} of {len(samples)} samples ({len(samples) - len(verdicts)} "
        "invalid), and no request got both an approved and a rejected sample, so there are no "
        "pairs to train on; raise config.curate.samples_per_query or max_queries, or use "
        "config.rm_pairs='paper'")
  path = out / PAIRS_FILE
  if host.is_main():
    storage.write_text(str(path), json.dumps(pairs, ensure_ascii=False, indent=1))
    storage.write_text(str(out / USAGE_FILE), json.dumps(usage, indent=2))
  host.barrier("pipeline_curated_pairs")  # every process's RM reads the file next
  print(f"curated RM pairs: {len(pairs)} from {len(samples)} SFT samples of {len(chosen)} "
        f"requests ({usage['approved']} approved, {len(verdicts)} valid verdicts)", flush=True)
  return path


def read_usage(out: pathlib.Path) -> dict[str, Any] | None:
  """WORKDIR/curated/usage.json, or None when the stage did not run."""
  path = out / USAGE_FILE
  return json.loads(path.read_text()) if path.exists() else None
