"""Batch scoring with a trained reward model: the one function the CLIs and the RL trainer call.

`RewardModelScorer.score(queries, responses) -> f32[batch]` formats each (query, response) exactly
as in RM training, pads to a bucket (bounded recompiles), and runs one jitted forward per batch.
An optional `LengthDebiaser` removes the linear length trend fitted on training responses.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from rlaif_jax import storage
from rlaif_jax.data import formatting
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.sharding import host, mesh as mesh_lib
from rlaif_jax.tokenizers.base import Tokenizer


@dataclasses.dataclass(frozen=True)
class LengthDebiaser:
  """score - slope * (chars - mean_chars): the least-squares length trend, removed."""
  slope: float
  mean_chars: float

  @classmethod
  def fit(cls, scores: Sequence[float], lengths: Sequence[int]) -> "LengthDebiaser":
    x = np.asarray(lengths, np.float64)
    y = np.asarray(scores, np.float64)
    if len(x) < 2 or np.var(x) == 0:
      raise ValueError("LengthDebiaser.fit needs at least two responses of different lengths")
    slope = float(np.cov(x, y, bias=True)[0, 1] / np.var(x))
    return cls(slope=slope, mean_chars=float(x.mean()))

  def apply(self, scores: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    return (np.asarray(scores, np.float64) - self.slope * (np.asarray(lengths, np.float64)
                                                           - self.mean_chars)).astype(np.float32)

  def save(self, path: str | os.PathLike) -> None:
    storage.write_text(str(path), json.dumps(dataclasses.asdict(self)))

  @classmethod
  def load(cls, path: str | os.PathLike) -> "LengthDebiaser":
    return cls(**json.loads(pathlib.Path(path).read_text()))


class RewardModelScorer:
  """Scores (query, response) texts with a ScalarHeadModel; implements the RewardSource interface.

  on_host: keep the weights in host memory and place them on the devices only for the length
  of each `raw_scores` call (what `RLConfig.ref_on_host` does for the reference policy): a 7B
  reward model then holds no device memory during the policy update, at the cost of one
  host-to-device copy of its weights per RL step.
  """

  def __init__(self, model: ScalarHeadModel, tok: Tokenizer, fmt: formatting.FormatConfig,
               batch_size: int = 32, mesh=None, debiaser: LengthDebiaser | None = None,
               on_host: bool = False):
    self.tok, self.fmt, self.batch_size, self.mesh = tok, fmt, batch_size, mesh
    self.debiaser = debiaser
    self.on_host = on_host
    self.graphdef, state = nnx.split(model)
    self.state = host.offload(state) if on_host else state
    graphdef = self.graphdef

    @jax.jit
    def forward(state, tokens, positions, mask):
      return nnx.merge(graphdef, state)(tokens, positions, mask)
    self._forward = forward

  def update_model(self, model: ScalarHeadModel) -> None:
    state = nnx.state(model)
    self.state = host.offload(state) if self.on_host else state

  def raw_scores(self, queries: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    if len(queries) != len(responses):
      raise ValueError(f"{len(queries)} queries but {len(responses)} responses")
    out = np.zeros(len(responses), np.float32)
    state = host.reload(self.state) if self.on_host else self.state
    buckets = formatting.sequence_buckets(self.fmt)
    rows_per_call = self.batch_size
    if self.mesh is not None:  # the batch must divide over the data axes
      n_data = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
      rows_per_call = -(-rows_per_call // n_data) * n_data
    for start in range(0, len(responses), rows_per_call):
      chunk = list(range(start, min(start + rows_per_call, len(responses))))
      rows = [{"tokens": formatting.encode_sft_example(self.tok, queries[i], responses[i],
                                                       self.fmt)["tokens"]} for i in chunk]
      rows += [rows[-1]] * (rows_per_call - len(rows))  # fixed batch shape: one compile
      batch = formatting.pad_batch(rows, buckets, self.tok.pad_id)
      arrays = [batch["tokens"], batch["positions"], batch["attention_mask"].astype(bool)]
      if self.mesh is not None:
        arrays = [jax.device_put(a, mesh_lib.data_sharding(self.mesh, 2)) for a in arrays]
      scores = host.to_host(self._forward(state, *arrays))
      out[start:start + len(chunk)] = scores[:len(chunk)]
    return out

  def score(self, queries: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    scores = self.raw_scores(queries, responses)
    if self.debiaser is not None:
      scores = self.debiaser.apply(scores, [len(r) for r in responses])
    return scores
