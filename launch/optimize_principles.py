r"""python -m launch.optimize_principles --data_dir=$RLAIF_DATA_DIR \
  --queries=$RLAIF_DATA_DIR/random_query.txt --iterations=5 --output_dir=/tmp/principles_run \
  --backend=openai --base_url=http://127.0.0.1:8000/v1 --model=Qwen2.5-72B-Instruct

Refines the judge's principles with the adversarial game (Generator, Detector, Reflector,
Strategy Optimizer).

Labelled examples: --labeled=FILE, or (default) the ``principle_examples`` split of
`rlaif_jax.judging.splits.make_splits(--data_dir, --split_seed)`, written to
OUTPUT_DIR/splits/ and disjoint from the curator's retrieval corpus and from the judge
reliability examples (launch.evaluate --reliability uses the same --split_seed).

Writes OUTPUT_DIR/iter_{k}/{principles.json, strategy.json, update_log.jsonl, metrics.json}
(metrics: held-out judge accuracy before/after the iteration) and
OUTPUT_DIR/final_principles.json (the set with the best held-out accuracy, the initial set
included; OUTPUT_DIR/best.json says which, OUTPUT_DIR/last_principles.json is the last set),
usable as ``python -m launch.judge --principles=OUTPUT_DIR/final_principles.json``.
After each iteration OUTPUT_DIR/summary.tsv and OUTPUT_DIR/accuracy.png are rewritten.
Re-running the same command skips finished iterations.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

from absl import app, flags

from launch import common
from rlaif_jax import storage
from rlaif_jax.data.paths import resolve_data_dir
from rlaif_jax.judging import cli
from rlaif_jax.judging.adversarial import AdversarialGame, GameConfig
from rlaif_jax.judging.adversarial_run import (check_run_config, count_distinct, load_labelled,
                                               load_queries, run_optimization)
from rlaif_jax.judging.backends import FatalBackendError, SamplingParams
from rlaif_jax.judging.principles import MAX_RULES, load_principles
from rlaif_jax.judging.splits import make_splits

FLAGS = flags.FLAGS
flags.DEFINE_string("labeled", None, "Human-labelled JSON Lines {query, response, label}; "
                    "default: the principle_examples split of --data_dir.")
flags.DEFINE_string("data_dir", None, "Greetings dataset (else env RLAIF_DATA_DIR) for the "
                    "default splits.")
flags.DEFINE_integer("split_seed", 0, "Seed of the leak-free splits (rlaif_jax.judging.splits).")
flags.DEFINE_string("queries", None, "Queries for the Generator: text lines or JSONL {query}.",
                    required=True)
flags.DEFINE_string("output_dir", None, "Output folder (local or gs://).", required=True)
flags.DEFINE_integer("iterations", 5, "Game iterations K.")
flags.DEFINE_string("principles", "v0", "Initial principle set (name or JSON path).")
flags.DEFINE_integer("holdout_size", 200, "Labelled records held out for accuracy.")
flags.DEFINE_integer("adversarial_batch", 4, "Generator queries per iteration.")
flags.DEFINE_integer("reflect_batch", 4, "Labelled examples judged per reflection phase "
                     "(4 as in the authors' code).")
flags.DEFINE_integer("max_rules", MAX_RULES, "Rule cap of S_D and S_G (at most 10).")
flags.DEFINE_float("generator_temperature", 0.9, "Generator sampling temperature.")
flags.DEFINE_float("optimizer_temperature", 0.3, "Strategy optimizer temperature.")
flags.DEFINE_integer("seed", 0, "Seed of the split and of the per-iteration sampling.")
cli.define_backend_flags()


def _fmt(value: Any) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def write_summary(output_dir: str, metrics: list[dict[str, Any]]) -> None:
  """summary.tsv (one row per iteration) and accuracy.png (held-out accuracy per iteration)."""
  rows = ["iteration\taccuracy_before\taccuracy_after\tn_errors_before\tn_errors_after\t"
          "heldout\tnum_principles\tnum_bad_strategies"]
  for m in metrics:
    n_before = m.get("n_errors_before", (m.get("before") or {}).get("n_errors"))
    n_after = m.get("n_errors_after", (m.get("after") or {}).get("n_errors"))
    rows.append("\t".join("" if v is None else str(v) for v in (
        m["iteration"], m["accuracy_before"], m["accuracy_after"], n_before, n_after,
        m.get("heldout"), m.get("num_principles"), m.get("num_bad_strategies"))))
  storage.write_text(storage.join(output_dir, "summary.tsv"), "\n".join(rows) + "\n")
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    logging.warning("matplotlib is not installed; no accuracy.png")
    return
  points = ([(0, metrics[0]["accuracy_before"])] if metrics else []) + [
      (m["iteration"], m["accuracy_after"]) for m in metrics]
  points = [(k, a) for k, a in points if a is not None]
  fig, ax = plt.subplots(figsize=(6, 4))
  try:
    ax.plot([k for k, _ in points], [a for _, a in points], marker="o")
    ax.set_xlabel("iteration (0 = initial principles)")
    ax.set_ylabel("held-out accuracy (failures count as wrong)")
    ax.set_ylim(0.0, 1.05)
    ax.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
  finally:
    plt.close(fig)
  storage.write_bytes(storage.join(output_dir, "accuracy.png"), buffer.getvalue())


def _principle_split() -> str:
  """Writes the splits under --output_dir; returns the principle_examples file."""
  splits = make_splits(resolve_data_dir(FLAGS.data_dir), FLAGS.split_seed,
                       output_dir=FLAGS.output_dir)
  logging.info("labelled examples: principle_examples split (%d records, seed %d)",
               len(splits.principle_examples), FLAGS.split_seed)
  return splits.files["principle_examples"]


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_http_loggers()
  if not 1 <= FLAGS.max_rules <= MAX_RULES:
    raise app.UsageError(f"--max_rules must be in [1, {MAX_RULES}]")
  try:
    labeled_path = FLAGS.labeled or _principle_split()
    labelled, queries = load_labelled(labeled_path), load_queries(FLAGS.queries)
    initial = load_principles(FLAGS.principles)
  except (storage.InputError, storage.StorageError, ValueError, OSError) as e:
    logging.error("bad input: %s", e)
    return 1
  distinct = count_distinct(labelled)
  if not 0 < FLAGS.holdout_size < distinct:
    raise app.UsageError(f"--holdout_size must be in (0, {distinct}) for {labeled_path} "
                         "(distinct query/response pairs)")
  backend = cli.backend_from_flags()
  tokens = FLAGS.max_tokens
  game = AdversarialGame(backend, GameConfig(
      adversarial_batch=FLAGS.adversarial_batch, reflect_batch=FLAGS.reflect_batch,
      max_rules=FLAGS.max_rules, max_attempts=FLAGS.max_parse_attempts,
      judge_sampling=SamplingParams(temperature=FLAGS.temperature, max_tokens=tokens),
      generator_sampling=SamplingParams(temperature=FLAGS.generator_temperature, max_tokens=tokens),
      optimizer_sampling=SamplingParams(temperature=FLAGS.optimizer_temperature,
                                        max_tokens=tokens)))
  run_config = {"labeled": labeled_path,
                "split_seed": None if FLAGS.labeled else FLAGS.split_seed, "queries": FLAGS.queries, "seed": FLAGS.seed,
                "holdout_size": FLAGS.holdout_size, "initial_principles": initial.version,
                "iterations": FLAGS.iterations, "backend": repr(backend)}

  try:
    storage.makedirs(FLAGS.output_dir)
    check_run_config(FLAGS.output_dir, run_config)
  except ValueError as e:
    logging.error("%s", e)
    return 1

  async def run() -> list[dict]:
    try:
      return await run_optimization(game, initial=initial, labelled=labelled, queries=queries,
                                    output_dir=FLAGS.output_dir, iterations=FLAGS.iterations,
                                    holdout_size=FLAGS.holdout_size, seed=FLAGS.seed,
                                    run_config=run_config,
                                    on_iteration=lambda m: write_summary(FLAGS.output_dir, m))
    finally:
      await backend.aclose()

  try:
    metrics = asyncio.run(run())
  except FatalBackendError as e:
    logging.error("stopped: %s (finished iterations are kept; re-run to resume)", e)
    return 2
  print(f"{'iter':>4} {'acc before':>11} {'acc after':>10} {'err after':>9} {'|S_D|':>6} "
        f"{'|S_G|':>6}")
  for m in metrics:
    n_errors = m.get("n_errors_after", (m.get("after") or {}).get("n_errors"))
    print(f"{m['iteration']:>4} {_fmt(m['accuracy_before']):>11} {_fmt(m['accuracy_after']):>10} "
          f"{'n/a' if n_errors is None else n_errors:>9} {m['num_principles']:>6} "
          f"{m['num_bad_strategies']:>6}")
  best = json.loads(storage.read_text(storage.join(FLAGS.output_dir, "best.json")))
  chosen = ("the initial set" if best["best_iteration"] == 0
            else f"iteration {best['best_iteration']}")
  print(f"final principles: {storage.join(FLAGS.output_dir, 'final_principles.json')} "
        f"= {chosen} ({best['best_version']}, held-out accuracy {_fmt(best['best_accuracy'])}); "
        f"last iteration's set: {storage.join(FLAGS.output_dir, 'last_principles.json')}")
  return 0


if __name__ == "__main__":
  common.run(main)
