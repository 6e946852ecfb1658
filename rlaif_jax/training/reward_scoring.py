"""Batch scoring with a trained reward model: the one scorer the CLIs and the RL trainer call.

`RewardModelScorer` is a `scoring.Scorer` (`score(rollout) -> Scores`) and scores texts
(`score_texts(queries, responses, stopped=None) -> f32[batch]`): each (query, response) is
formatted exactly as in RM training, padded to a bucket (bounded recompiles), and run through
one jitted forward per batch. A finished response ends with the end-of-turn id; a response cut
at the policy's token limit (`stopped` False) does not, so it is scored as unfinished. When the
rollout's ids come from the RM's own tokenizer (`Rollout.token_space`), the response ids are
scored as they are, on the devices, with no decode and re-encode. An optional `LengthDebiaser`
removes the linear length trend fitted on training responses.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Sequence

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from rlaif_jax import storage
from rlaif_jax.data import formatting
from rlaif_jax.models.scalar_head import ScalarHeadModel
from rlaif_jax.scoring.contract import Rollout, Scores, checked, token_space_id
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
  """Scores (query, response) pairs with a ScalarHeadModel; a `scoring.Scorer`.

  on_host: keep the weights in host memory and place them on the devices only for the length
  of each `raw_scores` call (what `RLConfig.ref_on_host` does for the reference policy): a 7B
  reward model then holds no device memory during the policy update, at the cost of one
  host-to-device copy of its weights per RL step.
  """

  def __init__(self, model: ScalarHeadModel, tok: Tokenizer, fmt: formatting.FormatConfig,
               batch_size: int = 32, mesh=None, debiaser: LengthDebiaser | None = None,
               on_host: bool = False, name: str = "rm"):
    self.tok, self.fmt, self.batch_size, self.mesh = tok, fmt, batch_size, mesh
    self.name = name
    self._token_space: str | None = None
    self._prompt_cache: dict[str, list[int]] = {}
    self.debiaser = debiaser
    self.on_host = on_host
    self.graphdef, state = nnx.split(model)
    self.state = host.offload(state) if on_host else state
    graphdef = self.graphdef

    @jax.jit
    def forward(state, tokens, positions, mask):
      return nnx.merge(graphdef, state)(tokens, positions, mask)
    self._forward = forward
    end_id = tok.eot_id if fmt.use_chat_template else tok.eos_id

    @jax.jit
    def forward_ids(state, rows, prompt_tokens, prompt_mask, ids, ids_mask, stopped):
      take = lambda x: jnp.take(x, rows, axis=0)
      tokens, positions, mask = response_id_sequences(
          take(prompt_tokens), take(prompt_mask), take(ids), take(ids_mask), take(stopped),
          end_id, fmt.max_response_len, tok.pad_id)
      return nnx.merge(graphdef, state)(tokens, positions, mask)
    self._forward_ids = forward_ids

  def update_model(self, model: ScalarHeadModel) -> None:
    state = nnx.state(model)
    self.state = host.offload(state) if self.on_host else state

  @property
  def token_space(self) -> str:
    """The RM tokenizer's `token_space_id` (computed once)."""
    if self._token_space is None:
      self._token_space = token_space_id(self.tok)
    return self._token_space

  def _rows_per_call(self) -> int:
    rows = self.batch_size
    if self.mesh is not None:  # the batch must divide over the data axes
      n_data = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
      rows = -(-rows // n_data) * n_data
    return rows

  def _place(self, arrays):
    if self.mesh is None:
      return arrays
    return [jax.device_put(a, mesh_lib.data_sharding(self.mesh, np.ndim(a))) for a in arrays]

  def _encode(self, query: str, response: str, finished: bool) -> np.ndarray:
    """As in RM training; a cut (unfinished) response gets no end id."""
    if finished:
      return formatting.encode_sft_example(self.tok, query, response, self.fmt)["tokens"]
    prompt_ids, _ = formatting.encode_prompt(self.tok, query, self.fmt)
    response_ids = self.tok.encode(response)[:self.fmt.max_response_len]
    return np.asarray(prompt_ids + response_ids, np.int32)

  def raw_scores(self, queries: Sequence[str], responses: Sequence[str],
                 stopped: Sequence[bool] | None = None) -> np.ndarray:
    """f32[n] scores of the texts; stopped: bool[n], False for a response cut at a token limit
    (scored without the end id), None = all finished."""
    if len(queries) != len(responses):
      raise ValueError(f"{len(queries)} queries but {len(responses)} responses")
    finished = np.ones(len(responses), bool) if stopped is None else np.asarray(stopped, bool)
    out = np.zeros(len(responses), np.float32)
    state = host.reload(self.state) if self.on_host else self.state
    buckets = formatting.sequence_buckets(self.fmt)
    rows_per_call = self._rows_per_call()
    for start in range(0, len(responses), rows_per_call):
      chunk = list(range(start, min(start + rows_per_call, len(responses))))
      rows = [{"tokens": self._encode(queries[i], responses[i], finished[i])} for i in chunk]
      rows += [rows[-1]] * (rows_per_call - len(rows))  # fixed batch shape: one compile
      batch = formatting.pad_batch(rows, buckets, self.tok.pad_id)
      arrays = self._place([batch["tokens"], batch["positions"],
                            batch["attention_mask"].astype(bool)])
      scores = host.to_host(self._forward(state, *arrays))
      out[start:start + len(chunk)] = scores[:len(chunk)]
    return out

  def id_scores(self, queries: Sequence[str], ids, ids_mask, stopped) -> np.ndarray:
    """f32[n] scores of response ids from the RM's own tokenizer (`Rollout.completion_ids`,
    int32[n, R] right-padded, device or host, the end id included where `stopped`); the query
    prompts are encoded on the host, the sequences assembled on the devices
    (`response_id_sequences`). Equal to `raw_scores` on the decoded texts when the ids are
    what encoding those texts gives."""
    n = len(queries)
    prompts = []
    for q in queries:
      if q not in self._prompt_cache:
        self._prompt_cache[q] = formatting.encode_prompt(self.tok, q, self.fmt)[0]
      prompts.append({"tokens": np.asarray(self._prompt_cache[q], np.int32)})
    batch = formatting.pad_batch(prompts, formatting.prompt_buckets(self.fmt), self.tok.pad_id,
                                 left_pad=True)
    state = host.reload(self.state) if self.on_host else self.state
    p_tok, p_mask, stop = self._place([batch["tokens"], batch["attention_mask"].astype(bool),
                                       np.asarray(stopped, bool)])
    out = np.zeros(n, np.float32)
    rows_per_call = self._rows_per_call()
    for start in range(0, n, rows_per_call):
      count = min(rows_per_call, n - start)
      rows = np.minimum(np.arange(start, start + rows_per_call), n - 1).astype(np.int32)
      (rows,) = self._place([rows])  # a global array in a multi-host run, as the others
      scores = host.to_host(self._forward_ids(state, rows, p_tok, p_mask, ids, ids_mask, stop))
      out[start:start + count] = scores[:count]
    return out

  def score_texts(self, queries: Sequence[str], responses: Sequence[str],
                  stopped: Sequence[bool] | None = None) -> np.ndarray:
    """f32[n] `raw_scores`, debiased when the scorer has a debiaser."""
    return self._debiased(self.raw_scores(queries, responses, stopped), responses)

  def _debiased(self, scores: np.ndarray, responses: Sequence[str]) -> np.ndarray:
    if self.debiaser is not None:
      scores = self.debiaser.apply(scores, [len(r) for r in responses])
    return scores

  def score(self, rollout: Rollout) -> Scores:
    """The Scorer contract: the ids when the rollout carries ids of this tokenizer, else the
    texts; a cut completion (`rollout.stopped` False) is scored unfinished either way."""
    if rollout.completion_ids is not None and rollout.token_space == self.token_space:
      raw = self.id_scores(rollout.prompts, rollout.completion_ids, rollout.completion_mask,
                           rollout.stopped)
    else:
      raw = self.raw_scores(rollout.prompts, rollout.completions, rollout.stopped)
    return checked(self.name, self._debiased(raw, rollout.completions), rollout.size)


def response_id_sequences(prompt_tokens, prompt_mask, ids, ids_mask, stopped, end_id: int,
                          max_response_len: int, pad_id: int):
  """RM input rows from left-padded prompts int32/bool[B, P] and response ids int32/bool[B, R]
  (right-padded; the last real id is the stop id where stopped[b]), as `encode_response`
  builds them from text: the stop id becomes `end_id`; a response of more than
  max_response_len - 1 ids keeps its first max_response_len ids and no end id; a cut response
  (not stopped) gets no end id. Returns tokens int32, positions int32, mask bool, [B, P + W]
  with W = min(R, max_response_len)."""
  width = min(ids.shape[1], max_response_len)
  stopped = jnp.asarray(stopped, bool)
  content = jnp.sum(ids_mask, axis=1).astype(jnp.int32) - stopped.astype(jnp.int32)
  fits = content <= max_response_len - 1
  keep = jnp.where(fits, content, max_response_len)
  has_end = stopped & fits
  j = jnp.arange(width)[None, :]
  body = jnp.where(has_end[:, None] & (j == keep[:, None]), end_id, ids[:, :width])
  mask = j < (keep + has_end.astype(jnp.int32))[:, None]
  tokens = jnp.concatenate([prompt_tokens, jnp.where(mask, body, pad_id)], axis=1)
  attn = jnp.concatenate([jnp.asarray(prompt_mask, bool), mask], axis=1)
  positions = jnp.maximum(jnp.cumsum(attn, axis=1) - 1, 0).astype(jnp.int32)
  return tokens.astype(jnp.int32), positions, attn
