"""Model directories named by a local path or a Hugging Face hub id.

Pod users name checkpoints the way they find them: `Qwen/Qwen2.5-7B-Instruct`. Every place that
takes a Hugging Face model directory (`config.model.hf_checkpoint`, `--hf_dir`, tokenizer paths)
passes it through `resolve_model_dir`: an existing local path is used as it is; otherwise a
string shaped like a hub id (`owner/name`, optionally `@revision`) is fetched with
`huggingface_hub.snapshot_download`, restricted to what this project loads (safetensors weights
and their index, JSON configs, tokenizer files). Pickled weights (`*.bin`, `*.pt`) are never
downloaded. `HF_HUB_OFFLINE=1` resolves from the local hub cache only (`HF_HUB_CACHE`/`HF_HOME`),
and `HF_TOKEN` authenticates gated repositories; both are read by huggingface_hub itself.

Multi-host: each process resolves for itself (each TPU VM host has its own disk and cache).
"""
from __future__ import annotations

import os
import pathlib
import re

# What a model directory of this project needs; nothing else is downloaded.
ALLOW_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "config.json",
                  "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                  "tokenizer.model", "chat_template.jinja", "chat_template.json")

# owner/name[@revision]: hub naming rules (letters, digits, '-', '_', '.'; no '--' or '..').
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})"
                     r"(?:@(?P<rev>[\w./-]+))?$")


class HubResolveError(FileNotFoundError):
  """A model reference is neither a local directory nor a hub id that could be fetched."""


def parse_hub_id(reference: str) -> tuple[str, str | None] | None:
  """`"owner/name@rev"` -> ("owner/name", "rev"); None when `reference` is not shaped like one."""
  m = _HUB_ID.match(reference)
  if m is None or "--" in m["repo"] or ".." in m["repo"]:
    return None
  return m["repo"], m["rev"]


def looks_like_hub_id(reference: str | os.PathLike) -> bool:
  """True for a string shaped like a hub id that is not an existing local path."""
  text = os.fspath(reference)
  return (not os.path.exists(os.path.expanduser(text))) and parse_hub_id(text) is not None


def resolve_model_dir(reference: str | os.PathLike) -> pathlib.Path:
  """A local directory (or file) for `reference`: the path itself when it exists, else the hub
  snapshot of `owner/name[@revision]` (downloaded unless HF_HUB_OFFLINE=1 and cached)."""
  text = os.fspath(reference)
  local = pathlib.Path(text).expanduser()
  if local.exists():
    return local
  parsed = parse_hub_id(text)
  if parsed is None:
    raise HubResolveError(f"{text}: no such file or directory, and not a Hugging Face hub id "
                          "(owner/name[@revision])")
  repo, revision = parsed
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
    from huggingface_hub import errors as hub_errors  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise HubResolveError(f"{text}: not a local path; resolving it as a hub id needs "
                          "huggingface_hub (pip install huggingface_hub)") from e
  try:
    path = huggingface_hub.snapshot_download(repo, revision=revision,
                                             allow_patterns=list(ALLOW_PATTERNS))
  except (hub_errors.LocalEntryNotFoundError, hub_errors.RepositoryNotFoundError,
          hub_errors.RevisionNotFoundError, hub_errors.GatedRepoError, OSError) as e:
    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    hint = (f"HF_HUB_OFFLINE is set and the hub cache ({huggingface_hub.constants.HF_HUB_CACHE}) "
            "has no snapshot of it" if offline else "check the id, network access and HF_TOKEN")
    raise HubResolveError(f"{text}: not a local path, and the hub id {repo!r}"
                          f"{'@' + revision if revision else ''} could not be resolved ({hint}): "
                          f"{type(e).__name__}: {e}") from e
  path = pathlib.Path(path)
  if not (path / "config.json").is_file():
    raise HubResolveError(f"{text}: hub snapshot {path} has no config.json (not a model repository?)")
  return path
