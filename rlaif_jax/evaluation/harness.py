"""Evaluation harness: generate with every checkpoint on the evaluation prompts, judge the
greetings with every judge, and report excellence rates, diversity and length; plus the
reliability of the judges themselves against the human labels.

`evaluate_checkpoints` writes under OUTPUT_DIR:

  generations/<checkpoint>.jsonl       {id, query, prompt, response, finish_reason,
                                         completion_tokens, prompt_truncated, seed, settings}
  judgements/<checkpoint>/<judge>.jsonl {id, query, response, label (0/1, null if invalid),
                                         valid, score, judge (what decided), reason | error}
  excellence.{md,csv}                  per checkpoint x judge: rate with 95% Wilson CI over the
                                         valid verdicts, n, n_invalid, mean score, Spearman of
                                         score vs length
  diversity.{md,csv}                   per checkpoint: distinct-1/2, self-BLEU-4 (characters,
                                         over the non-empty responses), empty-response rate,
                                         novelty-4 (share of generated character 4-grams never
                                         in the SFT data's responses), length statistics, share
                                         ended by EOS
  plots/excellence.png, plots/length_<checkpoint>.png, report.md, summary.json

Tables, plots, report.md and summary.json are written atomically (temporary file + rename).
`judge_reliability` adds reliability.{md,csv} and reliability/ (see there): a judge whose
threshold was fitted on the labelled items is scored there cross-fitted (out of fold).

Prompts are formatted as in training: `GenerationConfig.prompt_template` (the GRPO template
"请只生成一条祝福语：{query}" by default) inside the tokenizer's chat template
(`rlaif_jax.data.formatting`). Both stages resume: generation batch k (prompts
[k*batch_size, (k+1)*batch_size)) always uses seed + k and is written whole, so a resumed run
writes what an uninterrupted one would; judgements are appended chunk by chunk and only
missing ids are judged. A file written under other prompts, generation settings, checkpoint
weights (`checkpoint_identity`: a checkpoint retrained in place counts as another one) or judge
is never mixed in: it is refused (`StaleOutputError`), or with `on_stale="restart"` moved to
OUTPUT_DIR/stale/<time>/ with a printed note (a checkpoint's judgements with its generations)
and written afresh. Lengths are non-whitespace characters (`diversity.char_length`),
except for the length judge, which thresholds len(response) as the paper's baseline does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import time
from typing import Any, Sequence

import numpy as np
import tqdm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlaif_jax import storage
from rlaif_jax.data import formatting, greetings
from rlaif_jax.data import controls as controls_lib
from rlaif_jax.evaluation import agreement, control_eval, diversity, plots, report, stats
from rlaif_jax.evaluation.judges import EvalJudge
from rlaif_jax.judging.judge_report import json_safe

PROMPT_SETS = ("grpo_test", "eval_queries", "both")
EXCELLENCE_COLUMNS = ("checkpoint", "judge", "rate", "ci_low", "ci_high", "n", "n_invalid",
                      "mean_score", "spearman_score_length")
DIVERSITY_COLUMNS = ("checkpoint", "n", "distinct_1", "distinct_2", "self_bleu", "novelty_4",
                     "empty_rate", "mean_chars", "median_chars", "std_chars", "min_chars",
                     "max_chars", "eos_rate")
RELIABILITY_COLUMNS = ("judge", "kind", "n", "n_invalid", "accuracy", "precision", "recall",
                       "f1", "cohen_kappa", "positive_rate_pred", "threshold", "notes")
CONTROL_COLUMNS = ("judge", "control", "rate", "ci_low", "ci_high", "n", "n_invalid")
RELIABILITY_FOLDS = 5  # cross-fitting folds of a fitted threshold in the reliability table
CROSSFIT_DIR = "crossfit"  # reliability/crossfit/<judge>.jsonl: the out-of-fold verdicts
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
STALE_MODES = ("refuse", "restart")
STALE_DIR = "stale"


class StaleOutputError(storage.InputError):
  """An output file written for other prompts, settings, checkpoint weights or judge.

  `path` is the file, `reason` a short account of the mismatch."""

  def __init__(self, message: str, path: pathlib.Path, reason: str):
    super().__init__(message)
    self.path, self.reason = pathlib.Path(path), reason


def checkpoint_dir(checkpoint: str) -> pathlib.Path:
  """The HF directory a checkpoint spec names (as `sampling.loading` resolves it): `hf:DIR` ->
  DIR; a run directory W -> W/export when it holds export/config.json; else the path itself."""
  if checkpoint.startswith("hf:"):
    return pathlib.Path(checkpoint[3:]).expanduser()
  w = pathlib.Path(checkpoint).expanduser()
  return w / "export" if (w / "export" / "config.json").is_file() else w


def checkpoint_identity(checkpoint: str) -> dict[str, Any]:
  """What tells one set of weights from another under the same path: the sha256 of the HF
  config.json, and the name, size and mtime_ns of every other (non-hidden) file beside it
  (weights, tokenizer, ...). A checkpoint retrained or re-exported in place gets a new one."""
  directory = checkpoint_dir(checkpoint)
  config = directory / "config.json"
  if not config.is_file():
    raise FileNotFoundError(f"checkpoint {checkpoint!r}: no config.json in {directory} (expected "
                            "a run directory with export/, an HF directory, or hf:DIR)")
  files = [s for s in storage.file_stats(directory)
           if not s[0].startswith(".") and s[0] != "config.json"]
  return {"config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(), "files": files}


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """How each checkpoint generates: sampling, batching and prompt formatting."""
  max_new_tokens: int = 128
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  seed: int = 0
  batch_size: int = 32
  prompt_template: str = formatting.GRPO_PROMPT_TEMPLATE
  use_chat_template: bool = True
  system_prompt: str | None = None
  add_bos: bool = False
  max_prompt_len: int = 256
  dtype: str = "float32"
  plain_template: str = "{prompt}\n"

  def __post_init__(self):
    for field in ("max_new_tokens", "batch_size", "max_prompt_len"):
      if getattr(self, field) < 1:
        raise ValueError(f"GenerationConfig.{field} must be >= 1, got {getattr(self, field)}")
    self.sampling()  # validates temperature / top_p / top_k

  def format_config(self) -> formatting.FormatConfig:
    return formatting.FormatConfig(
        max_prompt_len=self.max_prompt_len, use_chat_template=self.use_chat_template,
        prompt_template=self.prompt_template, system_prompt=self.system_prompt,
        add_bos=self.add_bos, plain_template=self.plain_template)

  def fingerprint(self, checkpoint: str) -> str:
    """Short hash of these settings, the checkpoint path and the checkpoint's identity (its
    config and weight files, `checkpoint_identity`), stored with every generation so that a
    resumed run never mixes samples drawn under different settings or from other weights."""
    text = json.dumps([checkpoint, checkpoint_identity(checkpoint), dataclasses.asdict(self)],
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]

  def sampling(self) -> Any:
    from rlaif_jax.sampling.logits_processing import SamplingParams  # Local: pulls in JAX.
    return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


# ---------------------------------------------------------------------------------------------
# Inputs: checkpoints and prompts.


def parse_checkpoints(values: Sequence[str]) -> dict[str, str]:
  """`name=path` or `path` items -> {name: path}; a path is a run directory (with export/), an
  HF directory, or `hf:DIR`. The default name is the directory's basename (its parent's for
  .../export)."""
  out: dict[str, str] = {}
  for value in values:
    m = re.match(r"^([A-Za-z0-9_.\-]+)=(.*)$", value)
    name, path = (m[1], m[2]) if m else (None, value)
    if not path.strip() or path == "hf:":
      raise ValueError(f"checkpoint {value!r}: empty path; expected NAME=PATH or PATH")
    if name is None:
      parts = pathlib.PurePath(path.removeprefix("hf:")).parts
      parts = parts[:-1] if len(parts) > 1 and parts[-1] == "export" else parts
      name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", parts[-1] if parts else "").strip("_")
      if not name:
        raise ValueError(f"checkpoint {value!r}: cannot derive a name; use NAME=PATH")
    if name in out:
      raise ValueError(f"checkpoint name {name!r} is used twice ({out[name]!r} and {path!r}); "
                       "name them with NAME=PATH")
    out[name] = path
  return out


def select_queries(data_dir: str | os.PathLike, prompt_set: str = "grpo_test",
                   max_prompts: int | None = None, seed: int = 0) -> list[str]:
  """Evaluation requests: the GRPO test queries, the evaluation set's queries, or both.

  Duplicates are dropped (first occurrence kept). With `max_prompts` below the count, a seeded
  random subset is taken, kept in file order.
  """
  if prompt_set not in PROMPT_SETS:
    raise ValueError(f"prompt_set must be one of {PROMPT_SETS}, got {prompt_set!r}")
  queries: list[str] = []
  if prompt_set in ("grpo_test", "both"):
    queries += [p.query for p in greetings.load_rl_prompts(data_dir, "test")]
  if prompt_set in ("eval_queries", "both"):
    queries += [r.query for r in greetings.load_evaluation_set(data_dir)]
  queries = list(dict.fromkeys(queries))
  if max_prompts is not None and max_prompts < len(queries):
    if max_prompts < 1:
      raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
    picked = np.random.default_rng(seed).choice(len(queries), size=max_prompts, replace=False)
    queries = [queries[i] for i in sorted(picked)]
  return queries


# ---------------------------------------------------------------------------------------------
# Generation (resumable).


def _recover_generations(path: pathlib.Path, queries: Sequence[str], batch_size: int,
                         fingerprint: str) -> tuple[storage.JsonlAppender, dict[int, dict]]:
  """Records already written for whole batches; records of a cut batch are removed."""
  appender = storage.JsonlAppender(str(path))
  records, done = appender.recover(), {}
  for n, r in enumerate(records, start=1):
    i = r.get("id")
    same_prompt = isinstance(i, int) and 0 <= i < len(queries) and r.get("query") == queries[i]
    if not same_prompt or r.get("settings") != fingerprint:
      raise StaleOutputError(
          f"{path}: record {n} (id {i!r}, query {r.get('query')!r:.40}, settings "
          f"{r.get('settings')!r}) was written for other prompts or generation settings, or by "
          f"other checkpoint weights (now {fingerprint!r}): delete the file or use another "
          "output directory", path,
          "written for other prompts" if not same_prompt else
          "written with other generation settings or checkpoint weights")
    done.setdefault(i, r)
  whole = {i: r for i, r in done.items()
           if all(j in done for j in range(i - i % batch_size,
                                           min(i - i % batch_size + batch_size, len(queries))))}
  if len(whole) < len(records):
    appender.rewrite([whole[i] for i in sorted(whole)])
  return appender, whole


def _load_sampler(path: str, dtype: str, mesh: Any) -> Any:
  from rlaif_jax.sampling.loading import load_policy  # Local: JAX only when generating.
  from rlaif_jax.sampling.sampler import Sampler
  if path.startswith("hf:"):
    policy = load_policy(hf_dir=path[3:], mesh=mesh, param_dtype=dtype, dtype=dtype)
  else:
    policy = load_policy(checkpoint=path, mesh=mesh, param_dtype=dtype, dtype=dtype)
  return Sampler(policy.model, policy.tokenizer, mesh=mesh)


def generate_checkpoint(path: str, queries: Sequence[str], out_path: str | os.PathLike,
                        cfg: GenerationConfig, mesh: Any = None, progress: bool = True
                        ) -> list[dict[str, Any]]:
  """Generates one response per query with the checkpoint at `path` into `out_path` (JSONL,
  resumed; the model is only loaded when something is missing). Returns the records by id.
  Raises StaleOutputError when `out_path` holds other prompts, settings or weights' samples."""
  out_path = pathlib.Path(out_path)
  fingerprint = cfg.fingerprint(path)
  appender, done = _recover_generations(out_path, queries, cfg.batch_size, fingerprint)
  batches = [list(range(s, min(s + cfg.batch_size, len(queries))))
             for s in range(0, len(queries), cfg.batch_size)]
  pending = [k for k, ids in enumerate(batches) if any(i not in done for i in ids)]
  if pending:
    if mesh is None:
      from rlaif_jax.sharding import mesh as mesh_lib
      mesh = mesh_lib.make_mesh((1, -1, 1))
    sampler = _load_sampler(path, cfg.dtype, mesh)
    fmt, sampling = cfg.format_config(), cfg.sampling()
    bar = tqdm.tqdm(total=sum(len(batches[k]) for k in pending), desc=f"generate {out_path.stem}",
                    unit="prompt", dynamic_ncols=True, mininterval=1.0, disable=not progress)
    with appender, bar:
      for k in pending:
        encoded = [formatting.encode_prompt(sampler.tokenizer, queries[i], fmt) for i in batches[k]]
        completions = sampler.generate_encoded([ids for ids, _ in encoded], cfg.max_new_tokens,
                                               sampling, seed=cfg.seed + k)
        for i, (_, cut), c in zip(batches[k], encoded, completions):
          done[i] = {"id": i, "query": queries[i],
                     "prompt": cfg.prompt_template.replace("{query}", queries[i]),
                     "response": c.text.strip(), "finish_reason": c.finish_reason,
                     "completion_tokens": c.completion_tokens, "prompt_truncated": cut,
                     "seed": cfg.seed + k, "settings": fingerprint}
          appender.append(done[i])
        bar.update(len(batches[k]))
  return [done[i] for i in range(len(queries))]


# ---------------------------------------------------------------------------------------------
# Judging (resumable).


def _backend_failure(record: dict[str, Any]) -> bool:
  """An invalid judgement caused by the LLM backend (not by the judge's own reply)."""
  return not record.get("valid") and "backend error" in str(record.get("error", ""))


def judge_records(judge: EvalJudge, items: Sequence[dict[str, Any]], path: str | os.PathLike,
                  chunk_size: int = 64, progress: bool = True) -> list[dict[str, Any]]:
  """Judges items {id, query, response, [human_label]} into `path` (JSONL), `chunk_size` per
  judge call; ids already in the file are kept, except those a backend failure left invalid
  (an LLM server that was down), which are judged again. Returns one record per item, in
  order. Raises StaleOutputError when the file holds verdicts on other responses or by another
  judge."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  appender = storage.JsonlAppender(str(path))
  by_id = {it["id"]: it for it in items}
  done: dict[Any, dict[str, Any]] = {}
  existing = appender.recover()
  for n, r in enumerate(existing, start=1):
    item = by_id.get(r.get("id"))
    if item is None or r.get("response") != item["response"] or r.get("judge") != judge.signature:
      raise StaleOutputError(
          f"{path}: record {n} (id {r.get('id')!r}) was judged on another response or with "
          f"other settings ({r.get('judge')!r}, now {judge.signature!r}); delete the file to "
          "judge again", pathlib.Path(path),
          "judged on other responses" if r.get("judge") == judge.signature else
          f"judged with other settings ({r.get('judge')!r:.60}, now {judge.signature!r:.60})")
    if not _backend_failure(r):
      done[r["id"]] = r
  if len(done) < len(existing):
    appender.rewrite([r for r in existing if not _backend_failure(r)])
    print(f"{path}: judging {len(existing) - len(done)} record(s) again that failed on a "
          "backend error", flush=True)
  pending = [it for it in items if it["id"] not in done]
  bar = tqdm.tqdm(total=len(pending), desc=f"judge {pathlib.Path(path).parent.name}/"
                  f"{judge.name}", unit="item", dynamic_ncols=True, mininterval=1.0,
                  disable=not progress or not pending)
  with appender, bar:
    for start in range(0, len(pending), chunk_size):
      chunk = pending[start:start + chunk_size]
      result = judge.judge([c["query"] for c in chunk], [c["response"] for c in chunk])
      for k, c in enumerate(chunk):
        valid = bool(result.valid[k])
        record = {"id": c["id"], "query": c["query"], "response": c["response"],
                  "label": int(result.labels[k]) if valid else None, "valid": valid,
                  "score": float(result.scores[k]) if valid else None,
                  "judge": judge.signature, **result.details[k]}
        if "human_label" in c:
          record["human_label"] = c["human_label"]
        appender.append(record)
        done[c["id"]] = record
      bar.update(len(chunk))
  return [done[it["id"]] for it in items]


def _check_on_stale(on_stale: str) -> None:
  if on_stale not in STALE_MODES:
    raise ValueError(f"on_stale must be one of {STALE_MODES}, got {on_stale!r}")


def set_aside(output_dir: pathlib.Path, paths: Sequence[pathlib.Path], reason: str) -> list[str]:
  """Moves the existing `paths` (under output_dir) to output_dir/stale/<time>/<same relative
  path>, printing a note; returns the new locations."""
  root = output_dir / STALE_DIR / time.strftime("%Y%m%d-%H%M%S")
  moved, names = [], []
  for p in paths:
    if not p.exists():
      continue
    dest, n = root / p.relative_to(output_dir), 1
    while dest.exists():
      dest, n = dest.with_name(f"{p.name}.{n}"), n + 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(p, dest)
    moved.append(str(dest))
    names.append(str(p.relative_to(output_dir)))
  if moved:
    print(f"note: {paths[0]} was {reason}; moved {' and '.join(names)} to {root}, starting "
          "afresh", flush=True)
  return moved


def _fresh_if_stale(output_dir: pathlib.Path, on_stale: str, fn, also: Sequence = ()):
  """fn(); on a StaleOutputError with on_stale="restart", sets its file (and `also`) aside and
  calls fn() once more."""
  try:
    return fn()
  except StaleOutputError as e:
    if on_stale != "restart":
      raise
    set_aside(output_dir, [e.path, *also], e.reason)
    return fn()


# ---------------------------------------------------------------------------------------------
# Metrics, tables and plots.


def excellence_row(checkpoint: str, judge: str, records: Sequence[dict[str, Any]]
                   ) -> dict[str, Any]:
  """Excellence rate with its 95% Wilson CI over the valid verdicts, the invalid count, the mean
  score and Spearman(score, length) of one checkpoint under one judge."""
  valid = [r for r in records if r["valid"]]
  scores = np.array([r["score"] for r in valid], dtype=np.float64)
  lengths = [diversity.char_length(r["response"]) for r in valid]
  return {"checkpoint": checkpoint, "judge": judge,
          **stats.excellence_rate(np.array([r["label"] for r in valid], dtype=np.int64)),
          "n_invalid": len(records) - len(valid),
          "mean_score": float(scores.mean()) if scores.size else float("nan"),
          "spearman_score_length": stats.spearman(scores, lengths)}


def diversity_row(checkpoint: str, generations: Sequence[dict[str, Any]], seed: int = 0,
                  novelty_reference: set[str] | None = None) -> dict[str, Any]:
  """Diversity and length statistics of one checkpoint's responses; novelty-4 against
  `novelty_reference` (`sft_ngrams`; NaN without one)."""
  texts = [g["response"] for g in generations]
  eos = np.mean([g["finish_reason"] == "stop" for g in generations]) if generations else np.nan
  return {"checkpoint": checkpoint,
          **diversity.diversity_report(texts, seed=seed, novelty_reference=novelty_reference),
          "eos_rate": float(eos)}


def sft_ngrams(data_dir: str | os.PathLike, n: int = 4) -> set[str]:
  """The character n-grams of every response of the SFT data (sft/sft_data.json, all
  examples: the SFT run's small held-out split included), the reference of novelty-n."""
  return diversity.char_ngram_set((e.response for e in greetings.load_sft(data_dir)), n)


def plot_length_histogram(lengths: Sequence[int], title: str, path: str | os.PathLike) -> str:
  """Histogram PNG of response lengths (characters)."""
  fig = Figure(figsize=(6.4, 4.0))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  values = np.asarray(lengths, dtype=np.int64)
  bins = int(min(30, max(1, np.unique(values).size)))
  ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
  if values.size:
    ax.axvline(values.mean(), color="tab:red", linestyle="--", label=f"mean {values.mean():.1f}")
    ax.legend()
  ax.set_title(title)
  ax.set_xlabel("response length (non-whitespace characters)")
  ax.set_ylabel("responses")
  fig.tight_layout()
  return report.save_figure(fig, path, dpi=100)


def _check_names(kind: str, names: Sequence[str]) -> None:
  for name in names:
    if not _NAME.match(name):
      raise ValueError(f"{kind} name {name!r} may only hold letters, digits, '_', '.', '-'")
  if len(set(names)) != len(names):
    raise ValueError(f"{kind} names must be unique, got {list(names)}")


def _write_summary(out: pathlib.Path, settings: dict[str, Any], tables: dict[str, str],
                   rows: dict[str, Any]) -> None:
  text = "# Evaluation\n\n" + "\n".join(f"- {k}: {v}" for k, v in settings.items()) + "\n"
  for title, table in tables.items():
    text += f"\n## {title}\n\n{table}"
  storage.write_text(str(out / "report.md"), text)
  summary = json.dumps(json_safe({"settings": settings, **rows}), ensure_ascii=False, indent=2)
  storage.write_text(str(out / "summary.json"), summary + "\n")


def evaluate_checkpoints(checkpoints: dict[str, str], judges: Sequence[EvalJudge],
                         output_dir: str | os.PathLike, *, queries: Sequence[str] | None = None,
                         data_dir: str | os.PathLike | None = None,
                         prompt_set: str = "grpo_test", max_prompts: int | None = None,
                         generation: GenerationConfig = GenerationConfig(), mesh: Any = None,
                         judge_chunk_size: int = 64, on_stale: str = "refuse",
                         progress: bool = True, novelty_reference: set[str] | None = None
                         ) -> dict[str, list[dict[str, Any]]]:
  """Generates, judges and reports (module docstring) for every checkpoint.

  Args:
    checkpoints: name -> run directory (with export/), HF directory, or "hf:DIR".
    judges: built with `judges.make_judges` (calibrated).
    queries: the evaluation requests; when None, `select_queries(data_dir, prompt_set,
      max_prompts, generation.seed)`.
    on_stale: "refuse" raises StaleOutputError on a generations or judgements file written for
      other prompts, settings, weights or judge; "restart" moves it aside (a checkpoint's
      judgements go with its generations) and writes it afresh.
    novelty_reference: the character 4-grams novelty-4 is measured against; when None,
      `sft_ngrams(data_dir)` if data_dir holds the SFT data, else novelty-4 is NaN.
  Returns:
    {"excellence": rows, "diversity": rows} as written to the tables.
  """
  _check_names("checkpoint", list(checkpoints))
  _check_names("judge", [j.name for j in judges])
  _check_on_stale(on_stale)
  source = prompt_set if queries is None else "given"
  if queries is None:
    if data_dir is None:
      raise ValueError("evaluate_checkpoints needs queries= or data_dir= (see select_queries)")
    queries = select_queries(data_dir, prompt_set, max_prompts, generation.seed)
  elif max_prompts is not None:
    queries = list(queries)[:max_prompts]
  if not queries:
    raise ValueError("evaluate_checkpoints: no evaluation prompts")
  out = pathlib.Path(output_dir)
  if novelty_reference is None and data_dir is not None:
    try:
      novelty_reference = sft_ngrams(data_dir)
    except FileNotFoundError as e:
      print(f"note: novelty-4 is left out (NaN): no SFT data to compare with ({e})", flush=True)
  excellence, diversity_rows = [], []
  for name, path in checkpoints.items():
    gens = _fresh_if_stale(
        out, on_stale, lambda: generate_checkpoint(
            path, queries, out / "generations" / f"{name}.jsonl", generation, mesh, progress),
        also=[out / "judgements" / name])
    diversity_rows.append(diversity_row(name, gens, generation.seed, novelty_reference))
    plot_length_histogram([diversity.char_length(g["response"]) for g in gens],
                          f"Response length: {name}", out / "plots" / f"length_{name}.png")
    for judge in judges:
      j_path = out / "judgements" / name / f"{judge.name}.jsonl"
      records = _fresh_if_stale(out, on_stale, lambda: judge_records(
          judge, gens, j_path, judge_chunk_size, progress))
      excellence.append(excellence_row(name, judge.name, records))
  tables = {
      "Excellence rate (95% Wilson CI)": report.write_table(
          excellence, EXCELLENCE_COLUMNS, out / "excellence.md", out / "excellence.csv"),
      "Diversity and length": report.write_table(
          diversity_rows, DIVERSITY_COLUMNS, out / "diversity.md", out / "diversity.csv")}
  plots.plot_bars(excellence, out / "plots" / "excellence.png")
  settings = {"checkpoints": dict(checkpoints), "judges": [j.signature for j in judges],
              "n_prompts": len(queries), "prompt_set": source,
              "generation": dataclasses.asdict(generation),
              "novelty_reference": (None if novelty_reference is None else
                                    f"{len(novelty_reference)} distinct character 4-grams")}
  rows = {"excellence": excellence, "diversity": diversity_rows}
  _write_summary(out, settings, tables, rows)
  return rows


def _crossfit_row(name: str, kind: str, ids: Sequence[Any], scores: np.ndarray,
                  human: np.ndarray, fit, threshold: Any, in_sample: np.ndarray,
                  folds: int, fold_seed: int, out: pathlib.Path) -> dict[str, Any]:
  """Agreement of out-of-fold verdicts "score >= t", t refitted by `fit` without the item's
  fold (`agreement.cross_fit_threshold`); the verdicts go to reliability/crossfit/<name>.jsonl.
  `threshold` (fitted on all items) and the in-sample accuracy of `in_sample` verdicts are only
  reported beside them."""
  row: dict[str, Any] = {"judge": name, "kind": kind, "n": int(human.size),
                         "threshold": threshold, "folds": None}
  k = min(folds, int(human.size))
  if k < 2:
    row["notes"] = (f"threshold fitted on all {human.size} labelled item(s) and scored on them "
                    "(too few valid items to cross-fit; in-sample)")
    if human.size:
      row.update(agreement.binary_agreement(human, in_sample))
    return row
  cv = agreement.cross_fit_threshold(scores, human, fit, k=k, seed=fold_seed)
  row.update(agreement.binary_agreement(human, cv["predictions"]))
  row["folds"] = k
  fold_t = [float(t) for t in cv["thresholds"]]
  row["notes"] = (
      f"threshold cross-fitted, {k} folds (stratified, seed {fold_seed}): out-of-fold "
      f"verdicts; fold thresholds {min(fold_t):.4g}..{max(fold_t):.4g}; in-sample accuracy "
      f"{np.mean(in_sample == human):.4f} with the threshold column's threshold, fitted on all "
      f"{human.size} labelled items (used for the excellence rates)")
  lines = [{"id": i, "fold": int(f), "threshold": fold_t[int(f)], "score": float(s),
            "label": int(p), "human_label": int(y)}
           for i, f, s, p, y in zip(ids, cv["folds"], scores, cv["predictions"], human)]
  storage.write_text(str(out / "reliability" / CROSSFIT_DIR / f"{name}.jsonl"),
                     "".join(storage.dumps_line(json_safe(r)).decode("utf-8") for r in lines))
  return row


def judge_reliability(judges: Sequence[EvalJudge], labelled: Sequence[greetings.LabeledResponse],
                      output_dir: str | os.PathLike, chunk_size: int = 64,
                      on_stale: str = "refuse", progress: bool = True,
                      folds: int = RELIABILITY_FOLDS, fold_seed: int = 0
                      ) -> list[dict[str, Any]]:
  """Agreement of every judge with the human labels (the paper's Table 1, extended).

  Per judge: accuracy, precision, recall, F1 and Cohen's kappa over its valid verdicts, and the
  invalid count; then the best length-threshold baseline. A judge whose threshold was fitted on
  labelled items (`rm`, `length` without ?threshold=), and the length baseline, are not scored
  on the items their threshold was fitted on: their rows are cross-fitted (`folds` stratified
  folds shuffled with `fold_seed`; each item's verdict comes from the threshold refitted on the
  other folds), so they are honest held-out figures. The `threshold` column is still the one
  fitted on all labelled items (what the excellence rates use), and `notes` says how each row
  was computed. Writes reliability.{md,csv}, the judges' verdicts to reliability/<judge>.jsonl
  (resumed; a file by another judge is refused or, with on_stale="restart", moved aside and
  judged afresh) and the out-of-fold verdicts to reliability/crossfit/<judge>.jsonl.
  """
  if not labelled:
    raise ValueError("judge_reliability needs labelled records")
  if folds < 2:
    raise ValueError(f"judge_reliability: folds must be >= 2, got {folds}")
  _check_names("judge", [j.name for j in judges])
  _check_on_stale(on_stale)
  out = pathlib.Path(output_dir)
  items = [{"id": i, "query": r.query, "response": r.response, "human_label": r.label}
           for i, r in enumerate(labelled)]
  rows = []
  for judge in judges:
    path = out / "reliability" / f"{judge.name}.jsonl"
    records = _fresh_if_stale(out, on_stale, lambda: judge_records(judge, items, path, chunk_size,
                                                                   progress))
    valid = [r for r in records if r["valid"]]
    human = np.array([r["human_label"] for r in valid], dtype=np.int64)
    if judge.threshold_fitted:
      row = _crossfit_row(judge.name, judge.kind, [r["id"] for r in valid],
                          np.array([r["score"] for r in valid], dtype=np.float64), human,
                          judge.fit_threshold, judge.threshold,
                          np.array([r["label"] for r in valid], dtype=np.int64), folds,
                          fold_seed, out)
    else:
      row = {"judge": judge.name, "kind": judge.kind, "n": 0, "threshold": judge.threshold,
             "notes": ("no fitted parameters" if judge.threshold is None else
                       "threshold given, not fitted on these labels")}
      if valid:
        row.update(agreement.binary_agreement(human, [r["label"] for r in valid]))
    row["n_invalid"] = len(records) - len(valid)
    rows.append(row)
  lengths = np.array([len(r.response) for r in labelled], dtype=np.float64)
  human = np.array([r.label for r in labelled], dtype=np.int64)
  fit_length = lambda s, y: int(agreement.best_length_threshold_baseline(
      s.astype(np.int64), y)["threshold"])
  threshold = fit_length(lengths, human)
  row = _crossfit_row("length_baseline", "baseline", list(range(len(labelled))), lengths, human,
                      fit_length, threshold, (lengths >= threshold).astype(np.int64), folds,
                      fold_seed, out)
  rows.append({**row, "n_invalid": 0})
  report.write_table(rows, RELIABILITY_COLUMNS, out / "reliability.md", out / "reliability.csv")
  return rows


def evaluate_controls(judges: Sequence[EvalJudge], queries: Sequence[str],
                      output_dir: str | os.PathLike, data_dir: str | os.PathLike,
                      seed: int = 0) -> list[dict[str, Any]]:
  """Each judge's excellence rate on the control sets every judge must fail
  (`data.controls.make_controls` over `queries` and the SFT corpus of good greetings): rows
  (judge, control, rate with 95% Wilson CI, n, n_invalid), written to controls.{md,csv} and
  controls/<kind>.jsonl (the control items)."""
  if not queries:
    raise ValueError("evaluate_controls: no queries to build the control sets from")
  out = pathlib.Path(output_dir)
  sets = controls_lib.make_controls(queries, greetings.load_sft(data_dir), seed=seed)
  for kind, items in sets.items():
    storage.write_text(str(out / "controls" / f"{kind}.jsonl"), "".join(
        storage.dumps_line(dataclasses.asdict(it)).decode("utf-8") for it in items))
  rows = control_eval.control_rows(judges, sets)
  report.write_table(rows, CONTROL_COLUMNS, out / "controls.md", out / "controls.csv")
  return rows
