r"""Scores {"id", "query", "response"} records with a trained reward model (resumable).

  python -m launch.score --workdir=/tmp/rm_run --input=IN.jsonl --output=OUT.jsonl

OUT lines are {"id", "query", "response", "score"} (length-debiased with --debias). The scores come
from `RewardModelScorer.score`, the same batch function the RL trainer calls in-process. A killed
run restarted with the same command skips the ids already written.
"""
from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Reward-model run directory.", required=True)
_INPUT = flags.DEFINE_string("input", None, "Input JSON Lines (local or gs://).", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output JSON Lines.", required=True)
_BATCH = flags.DEFINE_integer("batch_size", 64, "Records per forward pass.")
_DEBIAS = flags.DEFINE_bool("debias", False, "Remove the fitted length trend from the scores.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from rlaif_jax.judging import batch_job
  from rlaif_jax.training import reward_model
  records = batch_job.load_records(_INPUT.value)
  batch_job.require_fields(records, ("query", "response"), _INPUT.value)
  scorer = reward_model.load_reward_model(_WORKDIR.value, batch_size=_BATCH.value,
                                          debias=_DEBIAS.value)

  async def score_chunk(chunk):
    scores = scorer.score([r["query"] for r in chunk], [r["response"] for r in chunk])
    return [{"query": r["query"], "response": r["response"], "score": float(s)}
            for r, s in zip(chunk, scores)]

  config = batch_job.JobConfig(input_path=_INPUT.value, output_path=_OUTPUT.value,
                               chunk_size=_BATCH.value, chunks_in_flight=1)
  summary = batch_job.run_job(config, score_chunk, records)
  print(summary.table())


if __name__ == "__main__":
  app.run(main)
