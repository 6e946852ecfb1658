r"""python -m launch.judge --input=$RLAIF_DATA_DIR/evaluation_set/evaluate_data.json \
  --output=/tmp/judged.jsonl --backend=openai --base_url=http://127.0.0.1:8000/v1 \
  --model=Qwen2.5-72B-Instruct --principles=v0 --concurrency=32 --api_key_env=OPENAI_API_KEY

Judges (query, response) records with the principle-guided LLM judge (resumable, shardable).

Input: JSON Lines {id?, query, response, label?}. Output: one line per id
{"id", "query", "response", "verdict": 1 (Good) | 0 (Bad) | null, "reason", "label"?, "error"?}.
Re-running the same command resumes (add --retry_errors to redo failed ids); shard with
--num_shards/--shard_index (outputs get a -0000i-of-0000n suffix). When inputs carry ``label``,
OUTPUT.report.json and a printed table give accuracy/precision/recall/F1/Cohen's kappa against
the labels, beside the best "len(response) >= t" baseline on the same records.
"""
from __future__ import annotations

import logging

from absl import app, flags

from launch import common
from rlaif_jax import jsonl_jobs, storage
from rlaif_jax.judging import cli, parsing
from rlaif_jax.judging.judge import PrincipleJudge
from rlaif_jax.judging.judge_report import agreement_report, dumps_report, format_report
from rlaif_jax.judging.principles import load_principles

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Input JSON Lines (local path or gs://).", required=True)
flags.DEFINE_string("output", None, "Output JSON Lines (local path or gs://).", required=True)
flags.DEFINE_string("principles", "v0", "Principle set name (e.g. v0) or path to a JSON file.")
flags.DEFINE_string("template", "detector", "Prompt template name or .txt path.")
cli.define_backend_flags()
cli.define_job_flags()


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_http_loggers()
  backend = cli.backend_from_flags()
  judge = PrincipleJudge(backend, load_principles(FLAGS.principles), template=FLAGS.template,
                         sampling=cli.sampling_from_flags(),
                         max_attempts=FLAGS.max_parse_attempts)
  config = cli.job_config_from_flags(FLAGS.input, FLAGS.output)
  try:
    records = jsonl_jobs.load_records(FLAGS.input)
    jsonl_jobs.require_fields(records, ("query", "response"), FLAGS.input)
    parsing.require_binary_labels(records, FLAGS.input)
  except (storage.InputError, storage.StorageError) as e:
    logging.error("bad input: %s", e)
    return 1

  async def process(chunk: list[dict]) -> list[dict]:
    verdicts = await judge.judge([r["query"] for r in chunk], [r["response"] for r in chunk])
    outs = []
    for r, v in zip(chunk, verdicts):
      out = {"query": r["query"], "response": r["response"], **v.to_json()}
      if "label" in r:
        out["label"] = r["label"]
      outs.append(out)
    return outs

  async def run() -> jsonl_jobs.JobSummary:
    try:
      return await jsonl_jobs.run_job_async(config, process, records)
    finally:
      await backend.aclose()

  ok, summary = cli.run_until_fatal(run())
  if not ok:
    return 2
  print(summary.table())
  report = agreement_report(jsonl_jobs.read_output(summary.output_path))
  if report is not None:
    storage.write_text(summary.output_path + ".report.json", dumps_report(report))
    print(format_report(report))
    print(f"report: {summary.output_path}.report.json")
  return 0


if __name__ == "__main__":
  common.run(main)
