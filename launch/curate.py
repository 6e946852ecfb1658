r"""python -m launch.curate --input=candidates.jsonl --output_dir=/tmp/curated \
  --examples=splits --data_dir=$RLAIF_DATA_DIR --backend=openai \
  --base_url=http://127.0.0.1:8000/v1 --model=Qwen2.5-72B-Instruct --concurrency=32

Labels candidate greetings with the multi-agent curator and builds reward-model pairs.

Input: JSON Lines {id?, query, response}. Stages: Retrieval (of the --examples pool: sentence
embeddings + faiss with the [retrieval] extra, else BM25 over character n-grams; --retriever)
-> Positive + Negative agents -> Judge agent -> Reflect agent. --examples=splits is the
leak-free SFT corpus of `rlaif_jax.judging.splits.make_splits(--data_dir, --split_seed)`
(written to OUTPUT_DIR/splits/; no query of the evaluation set is in it).
Writes OUTPUT_DIR/labeled.jsonl (one line per id: every agent's output, final ``label``,
``overturned`` = Reflect changed the Judge's label, ``error`` if a stage failed) and
OUTPUT_DIR/pairs.json (the paper's RM pair format: chosen = approved, rejected = rejected
response of the same query), rebuilt from every labeled*.jsonl in OUTPUT_DIR (so after the last
shard finishes it covers all shards; --pairs_only rebuilds it alone). Re-running resumes.
"""
from __future__ import annotations

import json
import logging

from absl import app, flags

from launch import common
from rlaif_jax import jsonl_jobs, storage
from rlaif_jax.data.paths import resolve_data_dir
from rlaif_jax.judging import cli
from rlaif_jax.judging.adversarial_run import load_labelled
from rlaif_jax.judging.curator import MultiAgentCurator, build_preference_pairs
from rlaif_jax.judging.retrieval import BACKENDS, DEFAULT_EMBEDDING_MODEL, ExampleRetriever
from rlaif_jax.judging.splits import make_splits

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Candidate records, JSON Lines {id?, query, response}.")
flags.DEFINE_string("output_dir", None, "Output folder (local or gs://).", required=True)
flags.DEFINE_string("examples", None, "'splits' (the SFT retrieval corpus of --data_dir) or a "
                    "labelled pool file {query, response, label[, click_num]}; none = no "
                    "few-shot examples.")
flags.DEFINE_string("data_dir", None, "Greetings dataset (else env RLAIF_DATA_DIR) for "
                    "--examples=splits.")
flags.DEFINE_integer("split_seed", 0, "Seed of the leak-free splits (rlaif_jax.judging.splits).")
flags.DEFINE_enum("retriever", "auto", list(BACKENDS), "auto: embeddings if sentence-transformers "
                  "and faiss are installed, else BM25.")
flags.DEFINE_string("retrieval_model", None, "Embedding model, hub id or local directory "
                    f"(default {DEFAULT_EMBEDDING_MODEL}).")
flags.DEFINE_integer("num_examples", 3, "Few-shot examples retrieved per candidate.")
flags.DEFINE_integer("max_pairs_per_query", 0, "Cap of RM pairs per query (0 = all combos).")
flags.DEFINE_integer("pairs_seed", 0, "Seed of the pair subsampling.")
flags.DEFINE_bool("pairs_only", False, "Only rebuild pairs.json from existing labeled*.jsonl.")
cli.define_backend_flags()
cli.define_job_flags()


def write_pairs(output_dir: str) -> int:
  """Rebuilds pairs.json from every labeled*.jsonl in output_dir; returns the pair count."""
  labelled = []
  for path in storage.glob(storage.join(output_dir, "labeled*.jsonl")):
    labelled.extend(jsonl_jobs.read_output(path))
  cap = FLAGS.max_pairs_per_query or None
  pairs = build_preference_pairs(labelled, max_pairs_per_query=cap, seed=FLAGS.pairs_seed)
  storage.write_text(storage.join(output_dir, "pairs.json"),
                     json.dumps(pairs, ensure_ascii=False, indent=1) + "\n")
  return len(pairs)


def _retriever() -> ExampleRetriever | None:
  """The Retrieval agent over --examples (none without it)."""
  if not FLAGS.examples:
    if FLAGS.retrieval_model:
      raise ValueError("--retrieval_model is given but --examples is not")
    return None
  if FLAGS.examples == "splits":
    pool = make_splits(resolve_data_dir(FLAGS.data_dir), FLAGS.split_seed,
                       output_dir=FLAGS.output_dir).retrieval_corpus
  else:
    pool = load_labelled(FLAGS.examples)
  return ExampleRetriever(pool, backend=FLAGS.retriever, model=FLAGS.retrieval_model)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_http_loggers()
  storage.makedirs(FLAGS.output_dir)
  if FLAGS.pairs_only:
    pairs_path = storage.join(FLAGS.output_dir, "pairs.json")
    print(f"pairs: {write_pairs(FLAGS.output_dir)} -> {pairs_path}")
    return 0
  if not FLAGS.input:
    raise app.UsageError("--input is required unless --pairs_only")
  try:
    records = jsonl_jobs.load_records(FLAGS.input)
    jsonl_jobs.require_fields(records, ("query", "response"), FLAGS.input)
    retriever = _retriever()
  except (storage.InputError, storage.StorageError, OSError, ValueError, ImportError) as e:
    logging.error("bad input: %s", e)
    return 1
  backend = cli.backend_from_flags()
  curator = MultiAgentCurator(backend, retriever, num_examples=FLAGS.num_examples,
                              sampling=cli.sampling_from_flags(),
                              max_attempts=FLAGS.max_parse_attempts)
  config = cli.job_config_from_flags(FLAGS.input, storage.join(FLAGS.output_dir, "labeled.jsonl"))

  async def run() -> jsonl_jobs.JobSummary:
    try:
      return await jsonl_jobs.run_job_async(config, curator.curate, records)
    finally:
      await backend.aclose()

  ok, summary = cli.run_until_fatal(run())
  if not ok:
    return 2
  print(summary.table())
  labelled = jsonl_jobs.read_output(summary.output_path)
  overturned = sum(bool(r.get("overturned")) for r in labelled)
  approved = sum(r.get("label") == 1 for r in labelled)
  print(f"approved {approved} / {len(labelled)}, reflect overturned {overturned}")
  print(f"pairs: {write_pairs(FLAGS.output_dir)} -> {storage.join(FLAGS.output_dir, 'pairs.json')}")
  return 0


if __name__ == "__main__":
  common.run(main)
