r"""Scores {"id", "query", "response"} records with a trained reward model (resumable).

  python -m launch.score --workdir=/tmp/rm_run --input=IN.jsonl --output=OUT.jsonl

OUT lines are {"id", "query", "response", "score", "scored_with"} (length-debiased with
--debias). The scores come from `RewardModelScorer.score`, the same batch function the RL
trainer calls in-process. A killed run restarted with the same command skips the ids already
written.

`scored_with` is the fingerprint of what made the score: the reward model's checkpoint (its
latest step and the names, sizes and mtimes of that step's files: a model retrained in place
gets a new one), the --debias flag, and the sha256 of the run's length_debiaser.json when
--debias is on. A resume whose fingerprint differs from a line already in OUT (another
--debias, a retrained model or debiaser, or a file written before fingerprints) is refused
before any scoring, naming the file and the differing setting, so raw and debiased scores, or
scores of two models, are never mixed in one file.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
from typing import Any

from absl import app, flags, logging

from launch import common
from rlaif_jax import distributed, storage

_WORKDIR = flags.DEFINE_string("workdir", None, "Reward-model run directory.", required=True)
_INPUT = flags.DEFINE_string("input", None, "Input JSON Lines (local or gs://).", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output JSON Lines.", required=True)
_BATCH = flags.DEFINE_integer("batch_size", 64, "Records per forward pass.")
_DEBIAS = flags.DEFINE_bool("debias", False, "Remove the fitted length trend from the scores.")

distributed.define_flags()  # several processes score one sharded model; process 0 writes

FINGERPRINT_KEY = "scored_with"


class FingerprintError(ValueError):
  """The output file holds scores made by another reward model or debias setting."""


def rm_checkpoint_identity(workdir: str | os.PathLike) -> str:
  """"step S, files H": the latest finished checkpoint step of the run (the one
  `load_reward_model` restores) and a hash of the relative names, sizes and mtime_ns of every
  file under it."""
  from rlaif_jax.training import checkpointing  # Local: JAX after the flags are checked.
  root = pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR
  steps = sorted(int(d.name) for d in root.iterdir() if d.is_dir() and d.name.isdigit()) \
      if root.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"{root}: no checkpoint; is --workdir a reward-model run?")
  step_dir = root / str(steps[-1])
  files = storage.file_stats(step_dir, recursive=True)
  digest = hashlib.sha1(json.dumps(files).encode("utf-8")).hexdigest()[:16]
  return f"step {steps[-1]}, files {digest}"


def scoring_fingerprint(workdir: str | os.PathLike, debias: bool) -> dict[str, Any]:
  """What decides the scores: {"rm_checkpoint", "debias", "debiaser_sha256" (None without
  --debias)}."""
  debiaser = None
  if debias:
    from rlaif_jax.training import reward_model
    path = pathlib.Path(workdir) / reward_model.DEBIASER_FILE
    if not path.exists():
      raise FileNotFoundError(f"{path}: no length debiaser was fitted for this run")
    debiaser = hashlib.sha256(path.read_bytes()).hexdigest()
  return {"rm_checkpoint": rm_checkpoint_identity(workdir), "debias": bool(debias),
          "debiaser_sha256": debiaser}


def check_resume(records: list[dict[str, Any]], fingerprint: dict[str, Any], path: str) -> None:
  """Raises FingerprintError when a line already in the output was scored under another
  fingerprint, naming the file, the line and each differing setting."""
  for n, record in enumerate(records, start=1):
    old = record.get(FINGERPRINT_KEY)
    if old == fingerprint:
      continue
    if not isinstance(old, dict):
      why = "was written without a scoring fingerprint (by an older launch.score)"
    else:
      diffs = [f"{key} {old.get(key)!r} (now {fingerprint[key]!r})" for key in fingerprint
               if old.get(key) != fingerprint[key]]
      diffs += [f"{key} {old[key]!r} (unknown now)" for key in old if key not in fingerprint]
      why = "was scored with " + "; ".join(diffs)
    raise FingerprintError(
        f"{path}: line {n} (id {record.get('id')!r}) {why}; resuming would mix scores of another "
        "reward model or debias setting into this file. Delete it, write to another --output, "
        "or rerun with the settings it was made with.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()
  from rlaif_jax import jsonl_jobs
  records = jsonl_jobs.load_records(_INPUT.value)
  jsonl_jobs.require_fields(records, ("query", "response"), _INPUT.value)
  try:
    fingerprint = scoring_fingerprint(_WORKDIR.value, _DEBIAS.value)
    check_resume(jsonl_jobs.read_output(_OUTPUT.value), fingerprint, _OUTPUT.value)
  except (FingerprintError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  from rlaif_jax.training import reward_model
  scorer = reward_model.load_reward_model(_WORKDIR.value, batch_size=_BATCH.value,
                                          debias=_DEBIAS.value)

  async def score_chunk(chunk):
    scores = scorer.score_texts([r["query"] for r in chunk], [r["response"] for r in chunk])
    return [{"query": r["query"], "response": r["response"], "score": float(s),
             FINGERPRINT_KEY: fingerprint} for r, s in zip(chunk, scores)]

  config = jsonl_jobs.JobConfig(input_path=_INPUT.value, output_path=_OUTPUT.value,
                                chunk_size=_BATCH.value, chunks_in_flight=1, collective=True)
  summary = jsonl_jobs.run_job(config, score_chunk, records)
  from rlaif_jax.sharding import host
  if host.is_main():
    print(summary.table())
  return 0


if __name__ == "__main__":
  common.run(main)
