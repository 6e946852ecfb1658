"""Supervised fine-tuning (the paper's cold start): loss, dataset wiring and `run_sft`.

The SFT loss is token-level cross entropy on the response tokens (loss_mask = 1, the end-of-turn
id included), averaged over all response tokens of the batch. Data: sft/sft_data.json, a
deterministic held-out split (by example; every prompt is unique), encoded with
`rlaif_jax.data.formatting` and padded to length buckets; the batch for step s is a pure
function of (seed, epoch, s), so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax import hub
from rlaif_jax.data import formatting, greetings
from rlaif_jax.models import checkpoint_bridge, chunked_head, config as config_lib
from rlaif_jax.sharding import mesh as mesh_lib
from rlaif_jax.tokenizers import load_tokenizer
from rlaif_jax.tokenizers.base import Tokenizer
from rlaif_jax.training import checkpointing, optim, trainer as trainer_lib

SAMPLES_FILE = "samples.txt"


def token_cross_entropy(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Next-token CE where the *target* token has loss_mask 1.

  logits f32[B, T, V] (position t predicts token t + 1); tokens, loss_mask int[B, T].
  Returns (mean nll over masked targets, accuracy of the argmax on them, number of them).
  """
  logits = logits[:, :-1].astype(jnp.float32)
  targets = tokens[:, 1:]
  mask = loss_mask[:, 1:].astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
  n = jnp.sum(mask)
  denom = jnp.maximum(n, 1.0)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * mask) / denom, jnp.sum(correct * mask) / denom, n


LOGITS_CHUNK = 256


def sft_loss(model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array,
             logits_chunk: int = LOGITS_CHUNK) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The trainer's loss_fn: batch {tokens, loss_mask, attention_mask, positions} int32[B, T].

  The same quantity as `token_cross_entropy` on the full logits, computed over sequence chunks
  of the LM head (`models.chunked_head`), so [B, T, V] fp32 logits never exist at once.
  aux: accuracy (next-token argmax on response tokens) and loss_weight (their count), which makes
  accumulation and evaluation exact token-level means.
  """
  del rng  # deterministic: no dropout
  h, _ = model.hidden_states(batch["tokens"], batch["positions"],
                             batch["attention_mask"].astype(bool))

  def stats(logits, targets):
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = jax.lax.stop_gradient((jnp.argmax(logits, -1) == targets).astype(jnp.float32))
    return jax.nn.logsumexp(logits, axis=-1) - target_logit, correct

  nll, correct = chunked_head.map_head_over_chunks(model, h[:, :-1], batch["tokens"][:, 1:],
                                                   logits_chunk, stats)
  mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
  n = jnp.sum(mask)
  denom = jnp.maximum(n, 1.0)
  return jnp.sum(nll * mask) / denom, {"accuracy": jnp.sum(correct * mask) / denom,
                                       optim.LOSS_WEIGHT_KEY: n}


# ---------------------------------------------------------------------------------------------
# Data.


def split_holdout(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic (train indices, held-out indices) of n examples; at least one held out."""
  if not 0 < eval_fraction < 1:
    raise ValueError(f"data.eval_fraction must be in (0, 1), got {eval_fraction}")
  order = np.random.default_rng([seed, 0x5F7]).permutation(n)
  n_eval = max(1, int(round(n * eval_fraction)))
  return np.sort(order[n_eval:]), np.sort(order[:n_eval])


@dataclasses.dataclass
class SFTData:
  """Encoded examples ({tokens, loss_mask} int32[T]) and what batching needs."""
  train: list[dict[str, np.ndarray]]
  eval: list[dict[str, np.ndarray]]
  eval_prompts: list[str]
  buckets: tuple[int, ...]
  pad_id: int
  stats: formatting.FormattingStats


def format_config(cfg: Any) -> formatting.FormatConfig:
  """FormatConfig from config.format (a ConfigDict with FormatConfig's field names)."""
  names = {f.name for f in dataclasses.fields(formatting.FormatConfig)}
  return formatting.FormatConfig(**{k: cfg[k] for k in names if k in cfg})


def length_buckets(fmt: formatting.FormatConfig, multiple: int = 0) -> tuple[int, ...]:
  """Padded lengths: formatting.sequence_buckets (powers of two) when multiple is 0, else every
  multiple of `multiple` from fmt.min_bucket up to the maximum length. Short greetings waste
  less compute on padding with multiples (one compile per bucket actually used)."""
  if multiple <= 0:
    return formatting.sequence_buckets(fmt)
  longest = fmt.max_prompt_len + fmt.max_response_len
  start = -(-fmt.min_bucket // multiple) * multiple
  return tuple(range(start, longest, multiple)) + (longest,)


def build_sft_data(tok: Tokenizer, examples: Sequence[greetings.SFTExample],
                   fmt: formatting.FormatConfig, eval_fraction: float, split_seed: int,
                   max_train_examples: int = 0, max_eval_examples: int = 0,
                   bucket_multiple: int = 0) -> SFTData:
  """Splits, then encodes; max_* > 0 keep only the first examples of each split (quick runs);
  bucket_multiple: see length_buckets."""
  train_idx, eval_idx = split_holdout(len(examples), eval_fraction, split_seed)
  if max_train_examples > 0:
    train_idx = train_idx[:max_train_examples]
  if max_eval_examples > 0:
    eval_idx = eval_idx[:max_eval_examples]
  pairs = lambda idx: [(examples[i].prompt, examples[i].response) for i in idx]
  train, stats = formatting.encode_sft_dataset(tok, pairs(train_idx), fmt)
  held, eval_stats = formatting.encode_sft_dataset(tok, pairs(eval_idx), fmt)
  stats.n_examples += eval_stats.n_examples
  stats.n_prompt_truncated += eval_stats.n_prompt_truncated
  stats.n_response_truncated += eval_stats.n_response_truncated
  return SFTData(train=train, eval=held, eval_prompts=[examples[i].prompt for i in eval_idx],
                 buckets=length_buckets(fmt, bucket_multiple), pad_id=tok.pad_id, stats=stats)


def train_batches(data: SFTData, batch_size: int, seed: int
                  ) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
  """start -> global batches for steps start, start + 1, ... (epochs repeat forever).

  Each epoch is a fresh seeded permutation cut into len(train) // batch_size full batches: the
  remainder (e.g. 24 of 3800 examples at batch 32) is left out of that epoch, a different one
  each epoch, so no example is skipped for good over several epochs."""
  if len(data.train) < batch_size:
    raise ValueError(f"{len(data.train)} training examples cannot fill one batch of "
                     f"{batch_size}; lower batch_size or raise data.max_train_examples")

  def make(start: int) -> Iterator[dict[str, np.ndarray]]:
    return formatting.batch_iterator(data.train, batch_size, bucket_lengths=data.buckets,
                                     pad_id=data.pad_id, seed=seed, num_epochs=None,
                                     start_batch=start)
  return make


def eval_batches(data: SFTData, batch_size: int) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
  """The held-out set in order, the last batch filled with rows of zero loss weight (every
  batch has the same size, which must divide over the mesh; the mean is unchanged)."""
  filler = {"tokens": data.eval[0]["tokens"], "loss_mask": np.zeros_like(data.eval[0]["tokens"])}

  def make() -> Iterator[dict[str, np.ndarray]]:
    for lo in range(0, len(data.eval), batch_size):
      rows = list(data.eval[lo:lo + batch_size])
      rows += [filler] * (batch_size - len(rows))
      yield formatting.pad_batch(rows, data.buckets, data.pad_id)
  return make


# ---------------------------------------------------------------------------------------------
# Tokenizer and model.


def prepare_tokenizer(config: Any, workdir: pathlib.Path, data_dir: pathlib.Path
                      ) -> tuple[Tokenizer, pathlib.Path]:
  """config.tokenizer.path if set (HF directory or .model), else the model's HF directory, else
  a sentencepiece model trained on the greetings corpus into WORKDIR/tokenizer/tokenizer.model
  (once; training is deterministic, and each process writes a private file then renames it)."""
  from rlaif_jax.tokenizers import train as tok_train  # Local: sentencepiece only if needed.
  path = config.tokenizer.get("path") or config.model.get("hf_checkpoint")
  if path:
    path = hub.resolve_model_dir(path)  # a hub id becomes its cached snapshot
    return load_tokenizer(path), path
  if config.tokenizer.vocab_size <= 0:
    raise ValueError("no tokenizer: set config.model.hf_checkpoint (a HF model directory with its "
                     "tokenizer) or config.tokenizer.path, or config.tokenizer.vocab_size > 0 to "
                     "train a sentencepiece model on the greetings corpus")
  target = workdir / "tokenizer" / "tokenizer.model"
  if not target.exists():
    tmp = target.parent / f".tmp-{os.getpid()}-{jax.process_index()}"
    try:
      model_file = tok_train.train_sentencepiece(
          greetings.greeting_corpus(data_dir), tmp / "tokenizer",
          vocab_size=config.tokenizer.vocab_size, model_type=config.tokenizer.model_type)
      os.replace(model_file.with_suffix(".vocab"), target.with_suffix(".vocab"))
      os.replace(model_file, target)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return load_tokenizer(target), target


def compute_options(model_config: Any) -> dict[str, Any]:
  """The ModelConfig fields of `config.model` that change how the model runs, not its
  parameters (so a run started from a checkpoint may set them afresh): remat, remat_policy,
  attention_impl."""
  m = model_config
  return dict(remat=bool(m.get("remat", False)), remat_policy=m.get("remat_policy", "full"),
              attention_impl=m.get("attention_impl", "einsum"))


def model_config(config: Any, tok: Tokenizer) -> config_lib.ModelConfig:
  """The ModelConfig of config.model: a HF checkpoint's, or a preset with the tokenizer's vocab."""
  m = config.model
  dtypes = dict(param_dtype=m.param_dtype, dtype=m.dtype, scan_layers=m.get("scan_layers", False),
                **compute_options(m))
  if m.get("hf_checkpoint"):
    return config_lib.from_hf_config(m.hf_checkpoint, **dtypes)
  cfg = config_lib.preset(m.preset, vocab_size=tok.vocab_size, **dict(m.get("overrides", {})),
                          **dtypes)
  return cfg


def init_model_fn(config: Any, cfg: config_lib.ModelConfig, mesh: jax.sharding.Mesh
                  ) -> Callable[[], nnx.Module]:
  """A function building the starting model on `mesh` (HF weights or a random init)."""
  m = config.model
  if m.get("hf_checkpoint"):
    return lambda: checkpoint_bridge.load_hf_checkpoint(
        m.hf_checkpoint, mesh, param_dtype=m.param_dtype, dtype=m.dtype,
        scan_layers=m.get("scan_layers", False), **compute_options(m))
  return lambda: checkpoint_bridge.init_sharded(cfg, mesh, config.seed)


def greedy_samples(model: nnx.Module, tok: Tokenizer, requests: Sequence[str],
                   fmt: formatting.FormatConfig, mesh: jax.sharding.Mesh,
                   max_new_tokens: int) -> list[str]:
  """Greedy responses to `requests`, prompted exactly as in training."""
  from rlaif_jax.sampling.logits_processing import SamplingParams
  from rlaif_jax.sampling.sampler import Sampler
  prompts = [formatting.render_prompt(tok, r, fmt) for r in requests]
  sampler = Sampler(model, tok, mesh=mesh)
  outs = sampler.generate(prompts, max_new_tokens, SamplingParams.greedy(), seed=0,
                          use_chat_template=False, add_bos=fmt.add_bos)
  return [c.text for c in outs]


# ---------------------------------------------------------------------------------------------
# The run.


def _prepare(config: Any, workdir: pathlib.Path, data_dir: pathlib.Path):
  tok, tok_path = prepare_tokenizer(config, workdir, data_dir)
  fmt = format_config(config.format)
  examples = greetings.load_sft(data_dir)
  d = config.data
  data = build_sft_data(tok, examples, fmt, d.eval_fraction, d.split_seed,
                        d.get("max_train_examples", 0), d.get("max_eval_examples", 0),
                        d.get("bucket_multiple", 0))
  print(f"tokenizer {tok_path}: {tok}")
  print(f"sft data: {len(data.train)} train / {len(data.eval)} held out; {data.stats.summary()}")
  return tok, tok_path, fmt, data


def run_sft(config: Any, workdir: str | os.PathLike, data_dir: str | os.PathLike
            ) -> dict[str, Any]:
  """Trains (or resumes) SFT in `workdir`, exports WORKDIR/export, prints greedy samples.

  Returns {"final_eval": {...}, "samples": [(request, response)], "export": path, "wall_s"}.
  """
  t0 = time.perf_counter()
  workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  tok, tok_path, fmt, data = _prepare(config, workdir, data_dir)
  mesh = mesh_lib.mesh_from_config(config)
  cfg = model_config(config, tok)
  print(f"model: {cfg.num_params / 1e6:.2f}M params, mesh {dict(mesh.shape)}")
  total = config.loop.total_steps
  optimizer, schedule = optim.optimizer_from_config(config.optim, total)
  meta = {"model_config": cfg.to_dict(), "tokenizer": str(tok_path.absolute()),
          "config": json.loads(config.to_json())}
  trainer = trainer_lib.Trainer(
      sft_loss, optimizer, schedule, mesh, workdir, trainer_lib.LoopConfig.from_config(config.loop),
      seed=config.seed, meta=meta)
  try:
    state = trainer.init_state(init_model_fn(config, cfg, mesh),
                               checkpoint_bridge.abstract_model(cfg))
    state = trainer.fit(state, train_batches(data, config.batch_size, config.seed),
                        eval_batches(data, config.eval_batch_size))
    final_eval = trainer.last_eval or trainer.evaluate(
        state, eval_batches(data, config.eval_batch_size)())
  finally:
    trainer.close()
  model = state.model()
  export = checkpointing.export_for_inference(workdir, model, tok_path, config.export.dtype)
  requests = data.eval_prompts[:config.samples.num_prompts]
  responses = greedy_samples(model, tok, requests, fmt, mesh, config.samples.max_new_tokens)
  text = "\n".join(f"[{q}] -> {r}" for q, r in zip(requests, responses))
  if jax.process_index() == 0:
    (workdir / SAMPLES_FILE).write_text(text + "\n", encoding="utf-8")
    print(f"greedy samples on held-out requests:\n{text}")
  wall = time.perf_counter() - t0
  print(f"sft done in {wall:.0f}s: {final_eval}; export {export}")
  return {"final_eval": final_eval, "samples": list(zip(requests, responses)),
          "export": export, "wall_s": wall}
