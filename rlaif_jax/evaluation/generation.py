"""The evaluation's generation step: checkpoints and prompts in (`parse_checkpoints`,
`select_queries`), one response per prompt out, resumable (`generate_checkpoint`; the JSONL
layout and the resume rules are in `harness.py`'s docstring)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Sequence

import numpy as np

from rlaif_jax import jsonl_jobs, storage
from rlaif_jax.data import formatting, greetings
from rlaif_jax.evaluation import processes
from rlaif_jax.evaluation.stale import StaleOutputError

PROMPT_SETS = ("grpo_test", "eval_queries", "both")


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


def _stale_check(path: pathlib.Path, queries: Sequence[str], fingerprint: str):
  """keep(line, line_no) of a generations file: raises StaleOutputError for a record written
  for other prompts, settings or weights."""
  def keep(r: dict[str, Any], n: int) -> bool:
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
    return True
  return keep


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
  Raises StaleOutputError when `out_path` holds other prompts, settings or weights' samples.

  A `jsonl_jobs` job whose ids are the batches (batch k is resumed whole: seed + k), its output
  locked. Multi-host: process 0 reads and writes the file (its records reach every process);
  every process runs the sampler."""
  out_path = pathlib.Path(out_path)
  fingerprint = cfg.fingerprint(path)
  size = cfg.batch_size
  batches = [list(range(s, min(s + size, len(queries)))) for s in range(0, len(queries), size)]
  # The job's input ids are the batches: batch k is done when all its prompts are written.
  config = jsonl_jobs.JobConfig(
      output_path=str(out_path), chunk_size=1, chunks_in_flight=1, progress=progress,
      progress_desc=f"generate {out_path.stem}", progress_unit="batch",
      lines_per_id=lambda k: len(batches[k]), line_of=lambda r: (r["id"] // size, r["id"]),
      keep=_stale_check(out_path, queries, fingerprint), collective=True,
      agree=processes.on_main)
  units = [{"id": k, "_line": k} for k in range(len(batches))]
  with jsonl_jobs.open_job(config, units, keep_existing=True) as job:
    done = {r["id"]: r for r in job.existing}
    if job.todo:
      if mesh is None:
        from rlaif_jax.sharding import mesh as mesh_lib
        mesh = mesh_lib.make_mesh((1, -1, 1))
      sampler = _load_sampler(path, cfg.dtype, mesh)
      fmt, sampling = cfg.format_config(), cfg.sampling()
    for unit in job.todo:
      k = unit["id"]
      encoded = [formatting.encode_prompt(sampler.tokenizer, queries[i], fmt) for i in batches[k]]
      completions = sampler.generate_encoded([ids for ids, _ in encoded], cfg.max_new_tokens,
                                             sampling, seed=cfg.seed + k)
      for i, (_, cut), c in zip(batches[k], encoded, completions):
        done[i] = {"id": i, "query": queries[i],
                   "prompt": cfg.prompt_template.replace("{query}", queries[i]),
                   "response": c.text.strip(), "finish_reason": c.finish_reason,
                   "completion_tokens": c.completion_tokens, "prompt_truncated": cut,
                   "seed": cfg.seed + k, "settings": fingerprint}
      job.write([unit], [done[i] for i in batches[k]])
  return [done[i] for i in range(len(queries))]
