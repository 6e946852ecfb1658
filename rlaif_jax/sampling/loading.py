"""Finds and loads a policy (Decoder + Tokenizer) for generation.

Two sources:

  * `hf_dir`: a Hugging Face model directory: config.json + *.safetensors (+ index) and a
    tokenizer, either HF files (tokenizer.json + tokenizer_config.json) or a sentencepiece
    `tokenizer.model` in the same directory.

  * `checkpoint`: a trainer work directory W. The convention every rlaif_jax trainer follows so
    that its results can be sampled from, served and evaluated:

        W/export/config.json            HF config   } written by
        W/export/model.safetensors      weights     } checkpoint_bridge.export_hf_checkpoint(
        W/export/tokenizer.json ...     HF tokenizer}   model, W / "export",
          or W/export/tokenizer.model   sentencepiece   tokenizer_dir=<tokenizer directory>)

    i.e. W/export is itself an `hf_dir`. For a sentencepiece tokenizer put (or copy) the `.model`
    file into the tokenizer directory under the name `tokenizer.model`; `export_hf_checkpoint`
    copies it. The trainer's own orbax state (optimizer etc.) may live elsewhere in W; it is not
    read here. `checkpoint` may also point straight at the export directory.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from jax.sharding import Mesh

from rlaif_jax import hub
from rlaif_jax.models import checkpoint_bridge
from rlaif_jax.models.decoder import Decoder
from rlaif_jax.tokenizers import load_tokenizer
from rlaif_jax.tokenizers.base import Tokenizer

EXPORT_SUBDIR = "export"


@dataclasses.dataclass
class Policy:
  """A loaded model, its tokenizer, and the HF directory both came from."""
  model: Decoder
  tokenizer: Tokenizer
  source: pathlib.Path


def tokenizer_path(directory: pathlib.Path) -> pathlib.Path:
  """The tokenizer inside a model directory: the directory itself when it holds tokenizer.json,
  else its `tokenizer.model` (sentencepiece)."""
  if (directory / "tokenizer.json").is_file():
    return directory
  if (directory / "tokenizer.model").is_file():
    return directory / "tokenizer.model"
  raise FileNotFoundError(f"{directory}: no tokenizer (expected tokenizer.json + "
                          "tokenizer_config.json or a sentencepiece tokenizer.model); export "
                          "with checkpoint_bridge.export_hf_checkpoint(..., tokenizer_dir=...)")


def resolve_checkpoint(checkpoint: str | os.PathLike) -> pathlib.Path:
  """The HF directory of a trainer work directory (see the module docstring)."""
  w = pathlib.Path(checkpoint).expanduser()
  if (w / EXPORT_SUBDIR / "config.json").is_file():
    return w / EXPORT_SUBDIR
  if (w / "config.json").is_file():
    return w
  raise FileNotFoundError(f"{w}: no {EXPORT_SUBDIR}/config.json; a trainer work directory must "
                          f"hold an HF export in {w / EXPORT_SUBDIR} (written by "
                          "checkpoint_bridge.export_hf_checkpoint)")


def load_policy(hf_dir: str | os.PathLike | None = None,
                checkpoint: str | os.PathLike | None = None, mesh: Mesh | None = None,
                **config_overrides: Any) -> Policy:
  """Loads a model and its tokenizer from exactly one of `hf_dir` / `checkpoint`.

  `config_overrides` go to the ModelConfig (e.g. param_dtype="bfloat16", dtype="bfloat16").
  """
  if (hf_dir is None) == (checkpoint is None):
    raise ValueError("load_policy: pass exactly one of hf_dir= or checkpoint= "
                     f"(got hf_dir={hf_dir!r}, checkpoint={checkpoint!r})")
  directory = (hub.resolve_model_dir(hf_dir) if hf_dir is not None
               else resolve_checkpoint(checkpoint))
  tokenizer = load_tokenizer(tokenizer_path(directory))
  model = checkpoint_bridge.load_hf_checkpoint(directory, mesh, **config_overrides)
  if tokenizer.vocab_size > model.cfg.vocab_size:
    raise ValueError(f"{directory}: tokenizer has {tokenizer.vocab_size} ids but the model's "
                     f"vocab_size is {model.cfg.vocab_size}")
  return Policy(model=model, tokenizer=tokenizer, source=directory)
