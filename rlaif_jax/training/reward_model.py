"""Path A's scalar reward model: Bradley–Terry training on (prompt, chosen, rejected) pairs.

`run_train_rm` plugs `rm_loss` into the shared Trainer (checkpoints, exact resume, metrics.jsonl,
TensorBoard, progress bar); `load_reward_model` restores a run for scoring. The trunk starts from
an SFT run (`config.init.sft_workdir`), a HF checkpoint (`config.model.hf_checkpoint`), or random.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from rlaif_jax import storage
from rlaif_jax.data import controls, formatting, greetings, paths
from rlaif_jax.models import Decoder
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.sharding import host, mesh as mesh_lib
from rlaif_jax.tokenizers import load_tokenizer
from rlaif_jax.tokenizers.base import Tokenizer
from rlaif_jax.training import checkpointing, optim, reward_data, sft
from rlaif_jax.training import trainer as trainer_lib
from rlaif_jax.training.reward_losses import bradley_terry_loss
from rlaif_jax.training.reward_scoring import LengthDebiaser, RewardModelScorer

DEBIASER_FILE = "length_debiaser.json"
REPORT_FILE = "rm_report.json"  # written last (atomically): the run's done-marker
PAIR_WEIGHT_KEY = "pair_weight"


def rm_loss(model: ScalarHeadModel, batch: dict[str, jax.Array], rng: jax.Array,
            center_coef: float = 0.0, margin: float = 0.0
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """batch: 2B rows (chosen rows first) of tokens/positions/attention_mask int32[2B, T], and
  optionally `pair_weight` f32[2B] (a pair's weight is its chosen row's: 0 for eval filler).

  The chosen-first layout survives `optim.split_microbatches` (strided rows) only when B is a
  multiple of the number of microbatches: `check_pair_microbatches` enforces it for a run.
  """
  del rng
  scores = model(batch["tokens"], batch["positions"], batch["attention_mask"].astype(bool))
  b = scores.shape[0] // 2
  chosen, rejected = scores[:b], scores[b:]
  m = None if not margin else jnp.full((b,), margin, jnp.float32)
  weights = batch.get(PAIR_WEIGHT_KEY)
  weights = None if weights is None else jnp.asarray(weights[:b], jnp.float32)
  loss, metrics = bradley_terry_loss(chosen, rejected, m, center_coef, weights)
  total = jnp.asarray(b, jnp.float32) if weights is None else jnp.sum(weights)
  return loss, {**metrics, optim.LOSS_WEIGHT_KEY: total}


def check_pair_microbatches(batch_size: int, num_microbatches: int) -> None:
  """Refuses a pair batch that strided microbatches would split off-pair.

  A batch is 2B rows, chosen rows [0, B) then rejected rows [B, 2B); microbatch j takes rows
  j, M + j, ... so it holds pair i's chosen row i and rejected row B + i together only when
  B % M == 0. Otherwise chosen and rejected responses of different pairs would be compared.
  """
  if num_microbatches < 1 or batch_size % num_microbatches:
    raise ValueError(
        f"reward model: batch_size={batch_size} pairs is not a multiple of "
        f"loop.num_microbatches={num_microbatches}; each microbatch must hold whole "
        f"(chosen, rejected) pairs, so pick a batch_size divisible by num_microbatches")


def _rm_loss_fn(config: Any) -> trainer_lib.LossFn:
  center, margin = float(config.loss.center_coef), float(config.loss.margin)
  return lambda model, batch, rng: rm_loss(model, batch, rng, center, margin)


def _trunk(config: Any, workdir: pathlib.Path, data_dir: pathlib.Path, mesh
           ) -> tuple[Callable[[], Decoder], ModelConfig, Tokenizer, pathlib.Path]:
  """(build the trunk, its config, tokenizer, tokenizer path) for the configured init."""
  sft_dir = config.init.get("sft_workdir")
  if sft_dir:
    meta = checkpointing.Checkpointer(pathlib.Path(sft_dir) / checkpointing.CHECKPOINT_DIR,
                                      async_save=False)
    try:
      m = meta.restore_meta()
    finally:
      meta.close()
    cfg = ModelConfig.from_dict(m["model_config"]).replace(**sft.compute_options(config.model))
    tok_path = pathlib.Path(m["tokenizer"])
    options = sft.compute_options(config.model)
    return (lambda: checkpointing.load_model_from_workdir(sft_dir, mesh, **options),
            cfg, load_tokenizer(tok_path), tok_path)
  tok, tok_path = sft.prepare_tokenizer(config, workdir, data_dir)
  cfg = sft.model_config(config, tok)
  return sft.init_model_fn(config, cfg, mesh), cfg, tok, tok_path


def _with_head(trunk: Callable[[], Decoder], seed: int) -> Callable[[], ScalarHeadModel]:
  return lambda: ScalarHeadModel(trunk(), rngs=nnx.Rngs(params=seed + 1))


def abstract_reward_model(cfg: ModelConfig) -> ScalarHeadModel:
  return nnx.eval_shape(lambda: ScalarHeadModel(Decoder(cfg, rngs=nnx.Rngs(0)),
                                                rngs=nnx.Rngs(1)))


def _batches(encoded, batch_size, buckets, pad_id, seed) -> Callable[[int], Iterator[dict]]:
  if len(encoded) < batch_size:
    raise ValueError(f"{len(encoded)} training pairs cannot fill a batch of {batch_size} pairs")
  return lambda start: reward_data.pair_batches(encoded, batch_size, buckets=buckets,
                                                pad_id=pad_id, seed=seed, start_batch=start)


def _eval_batches(encoded, batch_size, buckets, pad_id) -> Callable[[], Iterator[dict]]:
  """Every eval pair exactly once, in order; the last batch is filled to the fixed batch size
  with copies of its first pair at `pair_weight` 0, so they change no mean (as SFT's eval)."""
  def make():
    for lo in range(0, len(encoded), batch_size):
      rows = list(encoded[lo:lo + batch_size])
      n = len(rows)
      rows += [rows[0]] * (batch_size - n)
      batch = reward_data.pair_batch(rows, buckets, pad_id)
      weight = (np.arange(batch_size) < n).astype(np.float32)
      batch[PAIR_WEIGHT_KEY] = np.concatenate([weight, weight])
      yield batch
  return make


def load_pairs(config: Any, data_dir: pathlib.Path):
  train_file = config.data.get("train_file") or paths.dataset_file(data_dir, "reward_train")
  test_file = config.data.get("test_file") or paths.dataset_file(data_dir, "reward_test")
  train = greetings.read_pair_file(train_file)
  test = greetings.read_pair_file(test_file)
  if config.data.get("length_balanced"):
    train = reward_data.length_balanced(train, config.seed)
  if config.data.get("max_train_pairs"):
    train = train[:config.data.max_train_pairs]
  frac = config.data.get("synthetic_negatives", 0.0)
  if frac < 0:
    raise ValueError(f"config.data.synthetic_negatives={frac}: must be >= 0 (a fraction of the "
                     "training pairs to add as synthetic-negative pairs)")
  if frac > 0:  # (request, its SFT greeting, a control response): byte soup, repeats, wrong occasion
    train = train + controls.synthetic_negative_pairs(
        greetings.load_sft(data_dir), round(frac * len(train)), config.seed)
  return train, test, pathlib.Path(test_file)


def run_train_rm(config: Any, workdir: str | os.PathLike, data_dir: str | os.PathLike
                 ) -> dict[str, Any]:
  """Trains (or resumes) the reward model in `workdir`; evaluates on the test pairs.

  Returns {"pair_accuracy", "length_baseline_accuracy", "spearman_score_length", ...} as also
  written to WORKDIR/rm_report.json (atomically, last: a run with that file is finished).
  """
  t0 = time.perf_counter()
  workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = mesh_lib.mesh_from_config(config)
  trunk, cfg, tok, tok_path = _trunk(config, workdir, data_dir, mesh)
  fmt = sft.format_config(config.format)
  train_pairs, test_pairs, test_file = load_pairs(config, data_dir)
  stats = formatting.FormattingStats()
  train_enc = reward_data.encode_pairs(tok, train_pairs, fmt, stats)
  test_enc = reward_data.encode_pairs(tok, test_pairs, fmt, stats)
  buckets = sft.length_buckets(fmt, config.data.get("bucket_multiple", 0))
  print(f"reward pairs: {len(train_enc)} train / {len(test_enc)} test; {stats.summary()}")
  print(f"model: {cfg.num_params / 1e6:.2f}M params + scalar head, mesh {dict(mesh.shape)}")
  loop = trainer_lib.LoopConfig.from_config(config.loop)
  check_pair_microbatches(config.batch_size, loop.num_microbatches)
  optimizer, schedule = optim.optimizer_from_config(config.optim, config.loop.total_steps)
  meta = {"model_config": cfg.to_dict(), "tokenizer": str(tok_path.absolute()),
          "config": json.loads(config.to_json()), "kind": "reward_model"}
  trainer = trainer_lib.Trainer(
      _rm_loss_fn(config), optimizer, schedule, mesh, workdir,
      loop, seed=config.seed, meta=meta)
  try:
    state = trainer.init_state(_with_head(trunk, config.seed), abstract_reward_model(cfg))
    eval_every = _eval_batches(test_enc[:config.data.get("max_eval_pairs") or None],
                               config.eval_batch_size, buckets, tok.pad_id)
    state = trainer.fit(state, _batches(train_enc, config.batch_size, buckets, tok.pad_id,
                                        config.seed), eval_every)
  finally:
    trainer.close()
  model = state.model()
  scorer = RewardModelScorer(model, tok, fmt, batch_size=config.eval_batch_size, mesh=mesh)
  # Every process scores (the forward is one sharded program); process 0 writes the files.
  progress = host.is_main()
  debiaser = fit_debiaser(scorer, train_pairs, config.seed, progress=progress)
  if host.is_main():
    debiaser.save(workdir / DEBIASER_FILE)
  report = evaluate_pairs(scorer, test_pairs, debiaser, progress=progress)
  report.update(test_file=str(test_file), wall_s=time.perf_counter() - t0)
  if host.is_main():
    storage.write_text(str(workdir / REPORT_FILE), json.dumps(report, indent=2))
    print(format_pair_report(report))
  host.barrier(f"train_rm:{workdir}")  # later stages (RL, the pipeline) read the two files
  return report


def raw_scores_with_progress(scorer: RewardModelScorer, jobs, desc: str, progress: bool = True
                             ) -> list[np.ndarray]:
  """[scorer.raw_scores(queries, responses) for (queries, responses) in jobs], with one progress
  bar (sequences, ETA) over them all; each job is scored in the batches raw_scores would use."""
  if not progress:
    return [scorer.raw_scores(q, r) for q, r in jobs]
  rows = scorer.batch_size
  if scorer.mesh is not None:  # as raw_scores rounds it, so the batches are the same
    n_data = scorer.mesh.shape["data"] * scorer.mesh.shape["fsdp"]
    rows = -(-rows // n_data) * n_data
  per_call = rows * (8 if getattr(scorer, "on_host", False) else 1)
  results = []
  with tqdm(total=sum(len(r) for _, r in jobs), desc=desc, unit="seq", dynamic_ncols=True,
            mininterval=1.0) as bar:
    for queries, responses in jobs:
      out = [np.zeros(0, np.float32)]
      for start in range(0, len(responses), per_call):
        out.append(scorer.raw_scores(queries[start:start + per_call],
                                     responses[start:start + per_call]))
        bar.update(len(out[-1]))
      results.append(np.concatenate(out))
  return results


def fit_debiaser(scorer: RewardModelScorer, pairs, seed: int, n: int = 400,
                 progress: bool = False) -> LengthDebiaser:
  """The length trend of the RM's scores on (up to n) training pairs' responses."""
  rng = np.random.default_rng(seed)
  pick = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
  queries = [pairs[i].prompt for i in pick] * 2
  responses = [pairs[i].chosen for i in pick] + [pairs[i].rejected for i in pick]
  scores, = raw_scores_with_progress(scorer, [(queries, responses)], "RM report: debiaser fit",
                                     progress)
  return LengthDebiaser.fit(scores, [len(r) for r in responses])


def evaluate_pairs(scorer: RewardModelScorer, pairs, debiaser: LengthDebiaser | None = None,
                   progress: bool = False) -> dict[str, Any]:
  """Pair accuracy beside the "longer wins" baseline, the accuracy where the chosen response is
  not longer (split into chosen strictly shorter and equal length), and the score/length
  Spearman correlation; with a debiaser, the same after it (`pair_report_from_scores`)."""
  queries = [p.prompt for p in pairs]
  chosen_t, rejected_t = [p.chosen for p in pairs], [p.rejected for p in pairs]
  c, r = raw_scores_with_progress(scorer, [(queries, chosen_t), (queries, rejected_t)],
                                  "RM report: test pairs", progress)
  return pair_report_from_scores(c, r, chosen_t, rejected_t, debiaser)


PAIR_REPORT_VERSION = 2  # 2: non-whitespace lengths throughout, ties split from shorter pairs


def pair_report_from_scores(c: np.ndarray, r: np.ndarray, chosen_t: list[str],
                            rejected_t: list[str], debiaser: LengthDebiaser | None = None
                            ) -> dict[str, Any]:
  """The RM report's figures from the scores of the chosen (c) and rejected (r) responses.

  Every length in it is the non-whitespace character count (`diversity.char_length`), the one
  the "longer wins" baseline and the chosen-not-longer split use. The debiaser is applied as the
  scorer applies it (`RewardModelScorer.score`), so the debiased row is what `--debias` scoring
  gives.
  """
  from rlaif_jax.metrics import diversity, length_bias, stats as stats_lib
  c, r = np.asarray(c), np.asarray(r)
  lengths = [diversity.char_length(t) for t in chosen_t + rejected_t]

  def summary(cs, rs):
    hard = length_bias.accuracy_where_chosen_not_longer(cs, rs, chosen_t, rejected_t)
    return {"pair_accuracy": float(np.mean(cs > rs)),
            "accuracy_chosen_not_longer": hard["accuracy"], "n_chosen_not_longer": hard["n"],
            "accuracy_chosen_shorter": hard["accuracy_shorter"],
            "n_chosen_shorter": hard["n_shorter"],
            "accuracy_equal_length": hard["accuracy_ties"], "n_equal_length": hard["n_ties"],
            "spearman_score_length": stats_lib.spearman(np.concatenate([cs, rs]), lengths)}

  baseline = length_bias.longer_wins_accuracy(chosen_t, rejected_t)
  out = {"n_pairs": len(chosen_t), "pair_report_version": PAIR_REPORT_VERSION, **summary(c, r),
         "length_baseline_accuracy": baseline["accuracy"],
         "length_baseline": {"pair_accuracy": baseline["accuracy"],
                             **{k: baseline[k] for k in (
                                 "accuracy_chosen_not_longer", "n_chosen_not_longer",
                                 "accuracy_chosen_shorter", "n_chosen_shorter",
                                 "accuracy_equal_length", "n_equal_length")},
                             "spearman_score_length": 1.0}}
  if debiaser is not None:
    # As RewardModelScorer.score applies it (the debiaser's own length unit, len(response)).
    dc = debiaser.apply(c, [len(t) for t in chosen_t])
    dr = debiaser.apply(r, [len(t) for t in rejected_t])
    out["debiased"] = summary(dc, dr)
    out["debiaser_slope_per_char"] = debiaser.slope
  out["chosen_scores"], out["rejected_scores"] = c.tolist(), r.tolist()
  return out


def complete_pair_report(report: dict[str, Any]) -> dict[str, Any]:
  """A report written before `PAIR_REPORT_VERSION` 2, recomputed from its stored scores and the
  texts of its `test_file` (the debiased row from `debiaser_slope_per_char`: the debiaser's mean
  length cancels in every pair comparison and rank); returned unchanged when it is current, or
  when the test file is gone or no longer matches the stored scores."""
  if report.get("pair_report_version", 1) >= PAIR_REPORT_VERSION:
    return report
  c, r = report.get("chosen_scores"), report.get("rejected_scores")
  try:
    pairs = greetings.read_pair_file(report["test_file"])
  except (KeyError, OSError, ValueError):
    return report
  if c is None or r is None or not len(pairs) == len(c) == len(r):
    return report
  slope = report.get("debiaser_slope_per_char")
  debiaser = None if slope is None else LengthDebiaser(slope=float(slope), mean_chars=0.0)
  out = pair_report_from_scores(np.asarray(c, np.float32), np.asarray(r, np.float32),
                                [p.chosen for p in pairs], [p.rejected for p in pairs], debiaser)
  return {**report, **out}


def _split_cells(r: dict[str, Any]) -> str:
  def cell(acc_key: str, n_key: str) -> str:
    if n_key not in r:
      return "-"
    acc = r[acc_key]
    return f"{'-' if acc is None or acc != acc else f'{acc:.4f}'} ({r[n_key]})"
  return " | ".join(cell(a, n) for a, n in (
      ("accuracy_chosen_not_longer", "n_chosen_not_longer"),
      ("accuracy_chosen_shorter", "n_chosen_shorter"),
      ("accuracy_equal_length", "n_equal_length")))


def format_pair_report(report: dict[str, Any]) -> str:
  """The RM report as a markdown table: pair accuracy, then accuracy where the chosen response
  is not longer, split into chosen strictly shorter and equal length (n of each), and
  Spearman(score, length); lengths are non-whitespace characters. The "longer wins" baseline
  credits an equal-length pair 0.5, so it is 0 on the shorter pairs and 0.5 on the ties."""
  rows = [("reward model", report), ("reward model, length-debiased", report.get("debiased"))]
  lines = ["| scorer | pair accuracy | accuracy where chosen is not longer (n) | "
           "chosen shorter (n) | equal length (n) | Spearman(score, length) |",
           "|---|---|---|---|---|---|"]
  for name, r in rows:
    if r:
      lines.append(f"| {name} | {r['pair_accuracy']:.4f} | {_split_cells(r)} | "
                   f"{r['spearman_score_length']:.3f} |")
  baseline = report.get("length_baseline") or {}
  lines.append(f"| longer response wins (baseline) | "
               f"{report['length_baseline_accuracy']:.4f} | {_split_cells(baseline)} | 1 |")
  return "\n".join(lines)


def load_reward_model(workdir: str | os.PathLike, mesh=None, batch_size: int = 32,
                      debias: bool = False, on_host: bool = False,
                      name: str = "rm") -> RewardModelScorer:
  """A scorer over a reward-model run's latest checkpoint (and its length debiaser if asked);
  `on_host` keeps its weights in host memory between scoring calls."""
  workdir = pathlib.Path(workdir)
  model, meta = checkpointing.restore_module(workdir, abstract_reward_model, mesh)
  if meta.get("kind") != "reward_model":
    raise ValueError(f"{workdir}: not a reward-model run (checkpoint kind={meta.get('kind')!r})")
  tok = load_tokenizer(meta["tokenizer"])
  fmt = sft.format_config(meta["config"]["format"])
  debiaser = None
  if debias:
    path = workdir / DEBIASER_FILE
    if not path.exists():
      raise FileNotFoundError(f"{path}: no length debiaser was fitted for this run")
    debiaser = LengthDebiaser.load(path)
  return RewardModelScorer(model, tok, fmt, batch_size=batch_size, mesh=mesh, debiaser=debiaser,
                           on_host=on_host, name=name)
