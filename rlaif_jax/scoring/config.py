"""Typed scorer configs: one shape for RL rewards and evaluation judges.

A scorer block (a ConfigDict or dict) has a `kind` and that kind's fields; the RL reward is
the weighted sum of the blocks named in `reward.use`, an evaluation judge is a block plus a
threshold (calibrated on the labelled set when not given). Example (configs/grpo_tiny_cpu.py):

    config.reward.use = ("rm",)             # --config.reward.use=judge for path B
    config.reward.rm = dict(kind="rm", weight=1.0, workdir=None, batch_size=32, ...)
    config.reward.judge = dict(kind="llm", weight=1.0, base_url=..., model=..., ...)

`scorer_config` and `reward_config` turn them into the frozen dataclasses below and refuse an
unknown key or kind, naming it. `parse_judge_specs` reads the `launch.evaluate --judges`
shorthand `[NAME=]KIND[:TARGET][?KEY=VALUE&...]` into the same dataclasses (TARGET: the RM run
directory for rm, `BACKEND@BASE_URL#MODEL` for llm and curator; KEY any field of the kind).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence


class ScorerConfigError(ValueError):
  """A scorer config (or one of its keys) is malformed; the message says where."""


class JudgeSpecError(ScorerConfigError):
  """A --judges shorthand string (or one of its entries) is malformed."""


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
  """Fields every scorer has. name labels it (metrics, reports, file names); weight is its
  factor in an RL reward sum; threshold (evaluation only) turns its value into a verdict
  (1 iff value >= threshold), None = calibrated on labelled items; `where` says where the
  config came from, for error messages."""
  kind: str = ""
  name: str = ""
  weight: float = 1.0
  where: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class RewardModelConfig(ScorerConfig):
  """A trained reward model. config: the stage config that trains it first when `workdir`
  holds none (RL only; a name resolved by the entry point, e.g. "rm_tiny_cpu")."""
  kind: str = "rm"
  workdir: str | None = None
  config: str | None = None
  batch_size: int = 32
  debias: bool = False
  on_host: bool = False
  threshold: float | None = None


@dataclasses.dataclass(frozen=True)
class EndpointConfig(ScorerConfig):
  """An OpenAI-compatible server (vLLM, SGLang, OpenAI) and how it is asked. fallback: the
  placeholder value of a row whose verdict failed (such rows are not valid: never trained on,
  never counted in rates)."""
  backend: str = "openai"
  base_url: str | None = None
  model: str | None = None
  api_key_env: str = "OPENAI_API_KEY"
  concurrency: int = 16
  timeout_s: float = 120.0
  max_attempts: int = 3
  temperature: float = 0.0
  max_tokens: int = 512
  fallback: float = 0.0
  constrained_json: bool = False  # request the verdict schema (servers with structured output)


@dataclasses.dataclass(frozen=True)
class LLMJudgeConfig(EndpointConfig):
  """The principle-guided judge (path B): Good -> 1, Bad -> 0."""
  kind: str = "llm"
  principles: str = "v0"
  template: str = "detector"


@dataclasses.dataclass(frozen=True)
class CuratorConfig(EndpointConfig):
  """The multi-agent curator; num_examples labelled examples retrieved per item."""
  kind: str = "curator"
  max_tokens: int = 1024
  num_examples: int = 3
  retriever: str = "bm25"
  retrieval_model: str | None = None


@dataclasses.dataclass(frozen=True)
class LengthConfig(ScorerConfig):
  """The length baseline: len(completion) characters."""
  kind: str = "length"
  threshold: int | None = None


@dataclasses.dataclass(frozen=True)
class OfflineConfig(ScorerConfig):
  """An external batch job reached through files (default exchange_dir: WORKDIR/exchange)."""
  kind: str = "offline"
  exchange_dir: str | None = None
  timeout_s: float = 3600.0
  poll_s: float = 1.0
  fallback: float = 0.0


@dataclasses.dataclass(frozen=True)
class CallableConfig(ScorerConfig):
  """A Python function 'package.module:function', called fn(prompts, completions, **columns)."""
  kind: str = "callable"
  fn: str | None = None


KINDS: dict[str, type[ScorerConfig]] = {c.kind: c for c in (
    RewardModelConfig, LLMJudgeConfig, CuratorConfig, LengthConfig, OfflineConfig,
    CallableConfig)}
JUDGE_KINDS = ("curator", "length", "llm", "rm")  # kinds that can judge an evaluation
REQUIRED = {"llm": ("base_url", "model"), "curator": ("base_url", "model"), "callable": ("fn",)}


def _bool(value: str) -> bool:
  table = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
  if value.lower() not in table:
    raise ValueError(value)
  return table[value.lower()]


_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "bool": (_bool, "boolean (true/false)"), "int": (int, "integer"), "float": (float, "number"),
    "str": (str, "string")}


def _field_parser(cls: type[ScorerConfig], key: str) -> tuple[Callable[[str], Any], str]:
  base = {f.name: f for f in dataclasses.fields(cls)}[key].type.split("|")[0].strip()
  return _PARSERS[base]


def _options(cls: type[ScorerConfig]) -> list[str]:
  return sorted(f.name for f in dataclasses.fields(cls) if f.name not in ("kind", "where"))


def _finish(cls: type[ScorerConfig], values: dict[str, Any], where: str) -> ScorerConfig:
  for key, value in values.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ScorerConfigError(f"{where}: {key}={value!r} must be finite")
  if cls.kind == "length" and values.get("threshold") is not None:
    values["threshold"] = int(values["threshold"])
  return cls(**values, where=where)


def scorer_config(block: Mapping[str, Any], name: str, where: str) -> ScorerConfig:
  """A scorer block (ConfigDict or dict with `kind`) as its dataclass; ScorerConfigError names
  an unknown kind or key (`where` e.g. "config.reward.scorers.rm")."""
  values = dict(block.items())
  kind = values.pop("kind", None)
  if kind not in KINDS:
    raise ScorerConfigError(f"{where}.kind={kind!r}: expected one of {sorted(KINDS)}")
  cls = KINDS[kind]
  unknown = sorted(set(values) - set(_options(cls)))
  if unknown:
    raise ScorerConfigError(f"{where}: unknown key(s) {unknown} for kind {kind!r}; known: "
                            f"{_options(cls)}")
  values.setdefault("name", name)
  return _finish(cls, values, where)


def check_required(cfg: ScorerConfig) -> None:
  """Raises ScorerConfigError when a field the scorer cannot run without is unset."""
  missing = [k for k in REQUIRED.get(cfg.kind, ()) if not getattr(cfg, k)]
  if missing:
    raise ScorerConfigError(f"{cfg.where}: set {', '.join(missing)} (scorer {cfg.name!r}, kind "
                            f"{cfg.kind})")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """The RL reward: the weighted sum of `scorers` (each with its weight)."""
  scorers: tuple[ScorerConfig, ...]


def reward_config(reward: Mapping[str, Any], where: str = "config.reward") -> RewardConfig:
  """`config.reward` ({use: names, <name>: scorer block, ...}) as a RewardConfig. Every block is
  checked (an unknown key or kind anywhere is refused, not only in the blocks in use); `use`
  must name blocks, each once."""
  use = reward.get("use")
  use = (use,) if isinstance(use, str) else tuple(use or ())
  names = [k for k in reward.keys() if k != "use"]
  parsed = {}
  for n in names:
    block = reward[n]
    if not hasattr(block, "keys"):
      raise ScorerConfigError(f"{where}.{n}={block!r}: expected a scorer block (with kind) or "
                              "`use`")
    parsed[n] = scorer_config(block, n, f"{where}.{n}")
  if not use or len(set(use)) != len(use):
    raise ScorerConfigError(f"{where}.use={use!r}: name each scorer of the reward once")
  missing = [n for n in use if n not in parsed]
  if missing:
    raise ScorerConfigError(f"{where}.use names {missing}; the scorer blocks are {names}")
  return RewardConfig(tuple(parsed[n] for n in use))


# ---------------------------------------------------------------------------------------------
# The --judges shorthand.

_ENTRY = re.compile(r"^(?:(?P<name>[A-Za-z0-9_.\-]+)=)?(?P<kind>[a-z]+)"
                    r"(?::(?P<target>[^?]*))?(?:\?(?P<options>.*))?$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")
NEEDS_TARGET = {"rm": "a reward-model run directory", "llm": "BACKEND@BASE_URL#MODEL",
                "curator": "BACKEND@BASE_URL#MODEL"}
_TARGET_FIELDS = ("workdir", "backend", "base_url", "model")


def parse_endpoint(target: str, where: str) -> tuple[str, str, str]:
  """`BACKEND@BASE_URL#MODEL` -> (backend, base_url, model)."""
  backend, at, rest = target.partition("@")
  url, hash_, model = rest.rpartition("#")
  if not at or not hash_ or not backend or not url or not model:
    raise JudgeSpecError(f"{where}: target {target!r} must be BACKEND@BASE_URL#MODEL, e.g. "
                         "openai@http://127.0.0.1:8000/v1#Qwen2.5-72B-Instruct")
  if backend != "openai":
    raise JudgeSpecError(f"{where}: unknown backend {backend!r}; supported: openai")
  return backend, url, model


def _parse_options(text: str | None, cls: type[ScorerConfig], where: str) -> dict[str, Any]:
  allowed = [k for k in _options(cls) if k not in _TARGET_FIELDS + ("name",)]
  options: dict[str, Any] = {}
  for item in (text or "").split("&"):
    if not item:
      continue
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise JudgeSpecError(f"{where}: option {item!r} must be KEY=VALUE")
    if key not in allowed:
      raise JudgeSpecError(f"{where}: unknown option {key!r} for {cls.kind}; known: {allowed}")
    parse, type_name = _field_parser(cls, key)
    try:
      options[key] = parse(value)
    except ValueError:
      raise JudgeSpecError(f"{where}: option {key}={value!r} is not a valid {type_name}") from None
  return options


def _target_fields(kind: str, target: str, where: str) -> dict[str, Any]:
  if kind == "rm":
    return {"workdir": target}
  if kind in ("llm", "curator"):
    return dict(zip(("backend", "base_url", "model"), parse_endpoint(target, where)))
  return {}


def _default_name(kind: str, target: str, where: str) -> str:
  if kind == "rm":
    base = os.path.basename(os.path.normpath(target))
  elif kind in ("llm", "curator"):
    base = parse_endpoint(target, where)[2]
  else:
    return kind
  return f"{kind}_{_NAME_CHARS.sub('_', base).strip('_') or kind}"


def _parse_entry(entry: str, where: str) -> ScorerConfig:
  m = _ENTRY.match(entry)
  if m is None or m["kind"] not in JUDGE_KINDS:
    raise JudgeSpecError(f"{where}: expected [NAME=]KIND[:TARGET][?OPTIONS] with KIND one of "
                         f"{list(JUDGE_KINDS)}")
  kind, target = m["kind"], m["target"] or ""
  if kind in NEEDS_TARGET and not target:
    raise JudgeSpecError(f"{where}: {kind} needs :TARGET ({NEEDS_TARGET[kind]})")
  if kind not in NEEDS_TARGET and target:
    raise JudgeSpecError(f"{where}: {kind} takes no target, got {target!r}")
  values = {**_target_fields(kind, target, where), **_parse_options(m["options"], KINDS[kind],
                                                                     where)}
  values["name"] = m["name"] or _default_name(kind, target, where)
  try:
    return _finish(KINDS[kind], values, where)
  except ScorerConfigError as e:
    raise JudgeSpecError(str(e)) from None


def parse_judge_specs(spec: str) -> list[ScorerConfig]:
  """The `--judges` shorthand (module docstring) as scorer configs; raises JudgeSpecError."""
  entries = [e.strip() for e in spec.split(",")]
  if not spec.strip() or any(not e for e in entries):
    raise JudgeSpecError(f"judge spec {spec!r} has an empty entry; expected e.g. "
                         "'rm:/runs/rm,llm:openai@http://127.0.0.1:8000/v1#MODEL,length'")
  parsed: list[ScorerConfig] = []
  names: dict[str, int] = {}
  for i, entry in enumerate(entries):
    cfg = _parse_entry(entry, f"judge entry {i + 1} {entry!r}")
    if cfg.name in names:
      raise JudgeSpecError(f"{cfg.where}: judge name {cfg.name!r} is already used by entry "
                           f"{names[cfg.name]}; prefix one entry with NAME=")
    names[cfg.name] = i + 1
    parsed.append(cfg)
  return parsed


def judge_configs(judges: str | Sequence[Any]) -> list[ScorerConfig]:
  """Evaluation judges from the shorthand string, scorer configs, or scorer blocks (dicts /
  ConfigDicts with a `name` or named by position); names must be distinct."""
  if isinstance(judges, str):
    return parse_judge_specs(judges)
  out = []
  for i, j in enumerate(judges):
    if isinstance(j, ScorerConfig):
      out.append(j)
    else:
      name = dict(j.items()).get("name") or f"judge{i + 1}"
      out.append(scorer_config(j, name, f"judge {i + 1} ({name})"))
  names = [c.name for c in out]
  if len(set(names)) != len(names):
    raise JudgeSpecError(f"judge names {names} must be distinct")
  return out
