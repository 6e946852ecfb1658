r"""Scores a file of preference pairs (the paper's RM format) with a trained reward model.

  python -m launch.score_pairs --workdir=/tmp/rm_run --pairs=$RLAIF_DATA_DIR/reward_model/reward_data_test.json --output=/tmp/rm_pairs.jsonl

Writes OUT lines {"index", "chosen_score", "rejected_score"} and prints the pair accuracy beside
the "longer response wins" baseline, the accuracy on pairs whose chosen response is not longer,
and the score/length Spearman correlation (also after length-debiasing with --debias).
"""
import json
import os

from absl import app, flags, logging

from launch import common
from rlaif_jax import distributed, storage

_WORKDIR = flags.DEFINE_string("workdir", None, "Reward-model run directory.", required=True)
_PAIRS = flags.DEFINE_string("pairs", None, "Pair file (JSON list in the paper's RM format).",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output JSON Lines file.", required=True)
_BATCH = flags.DEFINE_integer("batch_size", 64, "Sequences per forward pass.")
_DEBIAS = flags.DEFINE_bool("debias", True, "Also report length-debiased figures.")
distributed.define_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()  # several processes score; process 0 writes
  from rlaif_jax.data import greetings
  from rlaif_jax.sharding import host
  from rlaif_jax.training import reward_model
  pairs = greetings.read_pair_file(_PAIRS.value)  # malformed -> error naming file and index
  scorer = reward_model.load_reward_model(_WORKDIR.value, batch_size=_BATCH.value)
  debiaser = None
  if _DEBIAS.value:
    path = os.path.join(_WORKDIR.value, reward_model.DEBIASER_FILE)
    if os.path.exists(path):
      debiaser = reward_model.LengthDebiaser.load(path)
  report = reward_model.evaluate_pairs(scorer, pairs, debiaser)
  if not host.is_main():
    return
  storage.write_text(_OUTPUT.value, "".join(
      json.dumps({"index": i, "chosen_score": c, "rejected_score": r}) + "\n"
      for i, (c, r) in enumerate(zip(report["chosen_scores"], report["rejected_scores"]))))
  print(f"{len(pairs)} pairs from {_PAIRS.value}")
  print(reward_model.format_pair_report(report))


if __name__ == "__main__":
  common.run(main)
