"""The pipeline's bookkeeping: config validation, per-stage config records, "is this stage
done", and the settings the stages share (module docstring of `rlaif_jax.pipeline`)."""
from __future__ import annotations

import importlib.util

import json
import pathlib
from typing import Any


from rlaif_jax import storage
from rlaif_jax.evaluation import harness
from rlaif_jax.models import checkpoint_bridge
from rlaif_jax.rl import run as rl_run
from rlaif_jax.sharding import host, mesh as mesh_lib
from rlaif_jax.tokenizers import load_tokenizer
from rlaif_jax.training import checkpointing, reward_model, sft

RESULTS_FILE = "results.md"
STAGE_CONFIG_FILE = "pipeline_stage.json"
# Config keys (last component) that change how a stage runs, not what it makes: a finished stage
# is reused when only these differ.
RUNTIME_KEYS = frozenset({"mesh", "progress_bar", "async_checkpointing", "remat", "remat_policy",
                          "attention_impl", "on_host", "ref_on_host", "concurrency",
                          "api_key_env", "log_every", "checkpoint_every", "keep_checkpoints"})
STAGE_FOLDERS = ("sft", "initial", "rm", "grpo", "principles", "grpo_b")  # in the order they run
REWARD_PATHS = ("A", "B", "AB")
RM_PAIRS = ("paper", "curated")  # config.rm_pairs: the reward model's training pairs
STAGE_TIME_FILE = "pipeline_stage_time.json"  # {"wall_s": ...} of the invocation that made it
PROMPT_SET_FILES = {"grpo_test": "grpo_data/test.parquet",
                    "eval_queries": "the evaluation set's queries",
                    "both": "grpo_data/test.parquet + the evaluation set's queries"}
RL_FORMAT_KEYS = ("prompt_template", "plain_template", "use_chat_template", "system_prompt",
                  "add_bos", "max_prompt_len")


class StageConfigError(ValueError):
  """The pipeline config is invalid, or differs from the one a finished stage ran under."""


def _stage(name: str, done: bool) -> bool:
  print(f"\n=== {name}: {'done, skipped' if done else 'running'} ===", flush=True)
  return not done


def external_judge(config: Any) -> bool:
  """Whether config.judge names an OpenAI-compatible endpoint (else the pipeline serves the SFT
  checkpoint itself as a stand-in judge)."""
  return bool(config.judge.get("base_url") and config.judge.get("model"))


def validate_config(config: Any) -> None:
  """Refuses, before anything runs, a reward path other than "A"/"B"/"AB", a judge endpoint
  given by half (base_url without model or the reverse), a local stand-in judge in a multi-host
  run, and an unknown evaluation prompt set."""
  path = config.get("reward_path")
  if path not in REWARD_PATHS:
    raise StageConfigError(f"--config.reward_path must be \"A\" (reward model), \"B\" (LLM "
                           f"judge) or \"AB\" (both, the paper's comparison), got {path!r}")
  j = config.judge
  missing = [f"--config.judge.{k}" for k in ("base_url", "model") if not j.get(k)]
  if len(missing) == 1:
    raise StageConfigError(
        f"the LLM judge is an OpenAI-compatible server named by --config.judge.base_url and "
        f"--config.judge.model; set {missing[0]}, e.g. --config.judge.base_url="
        "http://127.0.0.1:8000/v1 --config.judge.model=NAME (or neither: the pipeline then "
        "serves its SFT checkpoint as a stand-in judge)")
  if missing and host.is_multiprocess() and needs_judge(config):
    raise StageConfigError("a multi-host run cannot serve its own stand-in judge (other hosts "
                           "cannot reach it); set --config.judge.base_url and "
                           "--config.judge.model")
  if (missing and needs_judge(config) and j.get("constrained_json")
      and importlib.util.find_spec("xgrammar") is None):
    raise StageConfigError("the stand-in judge decodes verdicts under their JSON schema with "
                           "xgrammar, which is not installed: pip install -e '.[serve]' (or "
                           "--config.judge.constrained_json=false, and most of a tiny model's "
                           "verdicts will not parse)")
  rm_pairs = config.get("rm_pairs", "paper")
  if rm_pairs not in RM_PAIRS:
    raise StageConfigError(f"--config.rm_pairs must be \"paper\" (the authors' released pairs) "
                           f"or \"curated\" (the curator labels SFT samples), got {rm_pairs!r}")
  if rm_pairs == "curated" and config.rm.data.get("train_file"):
    raise StageConfigError("--config.rm_pairs=curated trains the reward model on the curator's "
                           "pairs; it cannot also take --config.rm.data.train_file="
                           f"{config.rm.data.train_file!r}")
  if config.eval.prompt_set not in harness.PROMPT_SETS:
    raise StageConfigError(f"--config.eval.prompt_set must be one of {harness.PROMPT_SETS}, got "
                           f"{config.eval.prompt_set!r}")


def needs_judge(config: Any) -> bool:
  """Whether any stage asks an LLM judge: path B, the curated RM pairs, or the evaluation's
  Signal-1/Signal-2."""
  return ("B" in config.reward_path or config.get("rm_pairs", "paper") == "curated"
          or bool(config.eval.get("llm_signals", True)))


def _plain(cfg: Any) -> Any:
  """A ConfigDict (or dict) as plain JSON values (tuples become lists, placeholders None)."""
  if hasattr(cfg, "to_json"):
    return json.loads(cfg.to_json())
  return json.loads(json.dumps(cfg))


def _rl_record(config: Any, scorer: str) -> dict[str, Any]:
  """config.rl with only the reward block the path uses (path A's GRPO does not depend on the
  judge block, nor path B's on the reward model's)."""
  rl_cfg = _plain(config.rl)
  rl_cfg["reward"] = {scorer: rl_cfg["reward"][scorer]}
  return rl_cfg


def stage_records(config: Any) -> dict[str, dict[str, Any]]:
  """folder -> the config that decides what the stage makes: its own and those of the stages it
  is built on (so a stage redone under a new config makes the later ones count as changed)."""
  sft_cfg, rm_cfg = _plain(config.sft), _plain(config.rm)
  records = {"sft": {"sft": sft_cfg}}
  if not config.sft.model.get("hf_checkpoint"):
    records["initial"] = {"sft": {k: sft_cfg.get(k) for k in ("seed", "model", "tokenizer")}}
  records["rm"] = {"sft": sft_cfg, "rm": rm_cfg}
  if config.get("rm_pairs", "paper") == "curated":
    records["curated"] = {"sft": sft_cfg, **_judge_record(config),
                          "curate": _plain(config.curate)}
    records["rm"] = {**records["curated"], "rm": rm_cfg, "rm_pairs": "curated"}
  if "A" in config.reward_path:
    records["grpo"] = {**records["rm"], "rl": _rl_record(config, "rm"), "reward_path": "A"}
  if "B" in config.reward_path:
    records["principles"] = {"sft": sft_cfg, **_judge_record(config),
                             "principles": _plain(config.principles)}
    records["grpo_b"] = {**records["principles"], "rl": _rl_record(config, "judge"),
                         "rl_b": _plain(config.rl_b), "reward_path": "B"}
  return records


def _judge_record(config: Any) -> dict[str, Any]:
  judge = {"judge": _plain(config.judge)}
  if not external_judge(config):  # the stand-in judge is the SFT checkpoint
    judge["judge_checkpoint"] = "sft"
  return judge


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(value, dict):
    out: dict[str, Any] = {}
    for k, v in value.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out or {prefix[:-1]: {}}
  return {prefix[:-1]: value}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """'key: old -> new' for every leaf that differs, except RUNTIME_KEYS."""
  a, b = _flatten(old), _flatten(new)
  missing = object()

  def show(v: Any) -> str:
    return "(absent)" if v is missing else f"{json.dumps(v, ensure_ascii=False):.60}"
  lines = []
  for key in sorted(set(a) | set(b)):
    if key.rsplit(".", 1)[-1] in RUNTIME_KEYS:
      continue
    x, y = a.get(key, missing), b.get(key, missing)
    if x != y:
      lines.append(f"{key}: {show(x)} -> {show(y)}")
  return lines


def stage_done(workdir: pathlib.Path, folder: str, note: bool = True) -> bool:
  """Whether the stage in WORKDIR/folder finished (its last output exists and, for the reward
  model's report, reads back: a report cut short is redone, with a printed note)."""
  d = workdir / folder
  if folder == "principles":
    return (d / "final_principles.json").exists()
  if folder == "rm":
    report = d / reward_model.REPORT_FILE
    if not report.exists():
      return False
    try:
      json.loads(report.read_text(encoding="utf-8"))
      return True
    except (ValueError, OSError) as e:
      if note:
        print(f"note: {report} does not read back ({e}); redoing the reward model's report",
              flush=True)
      return False
  return (d / checkpointing.EXPORT_DIR / "config.json").exists()


def check_stage_configs(workdir: pathlib.Path, records: dict[str, dict[str, Any]]) -> None:
  """Raises StageConfigError when a finished stage ran under another config (naming the stages,
  the keys, and what to do). A finished stage without a record (made before records were kept)
  gets the current config recorded, with a note."""
  changed = []
  for folder, record in records.items():
    if not stage_done(workdir, folder, note=False):
      continue
    path = workdir / folder / STAGE_CONFIG_FILE
    if not path.exists():
      print(f"note: {workdir / folder} is finished but has no {STAGE_CONFIG_FILE}; recording the "
            "current config as the one it ran under", flush=True)
      write_stage_record(workdir, folder, record)
      continue
    diff = config_diff(json.loads(path.read_text(encoding="utf-8")), record)
    if diff:
      changed.append((folder, diff))
  if not changed:
    return
  lines = ["the config differs from the one these finished stages ran under, and a rerun would "
           "reuse them as they are:"]
  for folder, diff in changed:
    lines.append(f"  {folder} ({workdir / folder}):")
    lines += [f"    {d}" for d in diff[:12]]
    if len(diff) > 12:
      lines.append(f"    ... and {len(diff) - 12} more")
  folders = " ".join(str(workdir / f) for f, _ in changed)
  lines.append(f"Use a new --workdir, or delete {folders} to redo "
               f"{'that stage' if len(changed) == 1 else 'those stages'} under the new config (or "
               "rerun with the old values). --config.eval.* may change freely: the evaluation is "
               "redone.")
  raise StageConfigError("\n".join(lines))


def write_stage_record(workdir: pathlib.Path, folder: str, record: dict[str, Any]) -> None:
  if not host.is_main():  # one writer in a multi-host run
    return
  storage.write_text(str(workdir / folder / STAGE_CONFIG_FILE),
                     json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def write_stage_time(workdir: pathlib.Path, folder: str, wall_s: float) -> None:
  """Records how long the stage took when it was made (read by the efficiency table)."""
  if host.is_main():
    storage.write_text(str(workdir / folder / STAGE_TIME_FILE),
                       json.dumps({"wall_s": round(wall_s, 1)}) + "\n")


def stage_time(workdir: pathlib.Path, folder: str) -> float | None:
  """The wall time recorded by `write_stage_time`, None when the stage has none."""
  path = workdir / folder / STAGE_TIME_FILE
  try:
    return float(json.loads(path.read_text(encoding="utf-8"))["wall_s"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def eval_generation_config(config: Any) -> harness.GenerationConfig:
  """The evaluation's sampling (config.eval) with the GRPO prompt format (config.rl.format), so
  evaluation prompts are formatted as the training prompts were."""
  e, fmt = config.eval, config.rl.format
  return harness.GenerationConfig(
      max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
      top_k=e.get("top_k", 0), seed=e.seed, batch_size=e.batch_size,
      **{k: fmt[k] for k in RL_FORMAT_KEYS if k in fmt})


def export_initial(config: Any, workdir: pathlib.Path, sft_dir: pathlib.Path) -> str:
  """The policy before SFT, as an evaluation checkpoint ("hf:DIR" for a HF start)."""
  if config.sft.model.get("hf_checkpoint"):
    return "hf:" + config.sft.model.hf_checkpoint
  out = workdir / "initial"
  export = out / checkpointing.EXPORT_DIR
  if not host.agreed_flag((export / "config.json").exists()):
    tok_path = rl_run._sft_tokenizer(sft_dir)
    cfg = sft.model_config(config.sft, load_tokenizer(tok_path))
    model = checkpoint_bridge.init_sharded(cfg, mesh_lib.make_mesh(tuple(config.sft.mesh)),
                                           config.sft.seed)
    checkpointing.export_for_inference(out, model, tok_path)
  return str(out)
