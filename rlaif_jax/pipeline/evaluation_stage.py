"""The pipeline's evaluation stage: every checkpoint generates on the evaluation prompts and
is judged by Signal-1 (the multi-agent curator), Signal-2 (the principle judge: the optimised
principles when path B ran), the reward model and the length baseline; then each judge's
agreement with humans on the `reliability_examples` split (thresholds calibrated there,
cross-fitted) and its excellence on the control sets. Every judge is called through
`judges.make_judges` / `EvalJudge.judge`.

Multi-host: generation runs through the sharded sampler on every process; files are written
by process 0 (`harness`), and stale/resume decisions are process 0's.
"""
from __future__ import annotations

import pathlib
from typing import Any

from rlaif_jax.evaluation import harness, human_eval, judges as judges_lib
from rlaif_jax.judging.splits import make_splits
from rlaif_jax.pipeline.local_judge import JudgeEndpoint
from rlaif_jax.pipeline.stages import eval_generation_config
from rlaif_jax.scoring import config as cfg_lib
from rlaif_jax.sharding import host

SIGNAL_NAMES = {"signal1": "Signal-1 (curator)", "signal2": "Signal-2 (principle judge)",
                "rm": "reward model", "length": "length baseline"}


def judge_configs(config: Any, rm_dir: pathlib.Path, endpoint: JudgeEndpoint | None,
                  principles: str | None) -> list[cfg_lib.ScorerConfig]:
  """The evaluation's judges as typed scorer configs (`scoring.config`): Signal-1 (the curator)
  and Signal-2 (the principle judge) through the judge endpoint (when there is one and
  `config.eval.llm_signals`), the reward model and the length baseline."""
  out: list[cfg_lib.ScorerConfig] = []
  if endpoint is not None and config.eval.get("llm_signals", True):
    j = config.judge
    backend = dict(base_url=endpoint.base_url, model=endpoint.model,
                   api_key_env=endpoint.api_key_env, concurrency=j.concurrency,
                   max_tokens=j.max_tokens, max_attempts=j.max_attempts,
                   constrained_json=bool(j.get("constrained_json")))
    out.append(cfg_lib.CuratorConfig(name="signal1", where="Signal-1 (config.judge)",
                                     num_examples=config.eval.curator_examples, **backend))
    out.append(cfg_lib.LLMJudgeConfig(name="signal2", where="Signal-2 (config.judge)",
                                      principles=principles or j.principles, **backend))
  return out + [cfg_lib.RewardModelConfig(name="rm", workdir=str(rm_dir), where="rm"),
                cfg_lib.LengthConfig(name="length", where="length")]


def run_evaluation(config: Any, workdir: pathlib.Path, data_dir: pathlib.Path,
                   checkpoints: dict[str, str], endpoint: JudgeEndpoint | None,
                   principles: str | None) -> dict[str, Any]:
  """Writes WORKDIR/eval/ (layout: `evaluation/harness.py`) and returns {"rows" (excellence,
  diversity), "reliability", "controls", "judges" (name -> signature)}."""
  e, out = config.eval, workdir / "eval"
  splits = make_splits(data_dir, e.split_seed,
                       output_dir=str(out) if host.is_main() else None)
  labelled = splits.labelled("reliability_examples")[:e.max_labelled or None]
  configs = judge_configs(config, workdir / "rm", endpoint, principles)
  print(f"judges {', '.join(f'{c.name} ({c.kind})' for c in configs)}: calibrating on "
        f"{len(labelled)} labelled responses (the reliability_examples split)", flush=True)
  judges = judges_lib.make_judges(configs, labelled, retrieval_examples=splits.retrieval_corpus)
  gen = eval_generation_config(config)
  queries = harness.select_queries(data_dir, e.prompt_set, e.max_prompts, gen.seed)
  rows = harness.evaluate_checkpoints(checkpoints, judges, out, queries=queries,
                                      data_dir=data_dir, generation=gen, on_stale="restart")
  rows["prompt_set"] = e.prompt_set
  reliability = harness.judge_reliability(judges, labelled, out, on_stale="restart")
  controls = (harness.evaluate_controls(judges, queries, out, data_dir, seed=gen.seed)
              if e.controls else [])
  if host.is_main() and e.get("human_sheet_per_checkpoint", 0):
    write_human_sheet(out, list(checkpoints), min(e.human_sheet_per_checkpoint, len(queries)),
                      gen.seed)
  return {"rows": rows, "reliability": reliability, "controls": controls,
          "judges": {j.name: j.signature for j in judges}}


def write_human_sheet(out: pathlib.Path, names: list[str], n: int, seed: int) -> str:
  """WORKDIR/eval/human_eval/{sheet.csv, key.json}: a blinded annotation sheet of `n`
  generations per checkpoint (`launch.human_eval import --key=... --sheets=...` reads it back
  filled). Rewritten from the current generations on every evaluation."""
  folder = out / "human_eval"
  folder.mkdir(parents=True, exist_ok=True)
  generations = {name: str(out / "generations" / f"{name}.jsonl") for name in names}
  human_eval.export_sheet(generations, n, seed, str(folder / "sheet.csv"),
                          str(folder / "key.json"), human_eval.load_rubric())
  return str(folder / "sheet.csv")
