"""Grammar-constrained decoding (OpenAI `response_format`) with xgrammar.

Why xgrammar: `python -m benchmarks.grammar_libs` (2-core CPU, 151,665-id byte-level BPE, batch
32, a judge-verdict JSON schema; BUILD_NOTES "Serving as vLLM users expect") filled the 32 rows'
next-token masks and advanced them in 0.18 ms per step with xgrammar, 1.6 ms with llguidance,
30 ms with outlines-core.

`GrammarHook` is a host step hook (`decode_step.StepHook`): every decode step it advances each
constrained row's matcher with the row's previous token and writes the row's allowed-token
bitmask for the next one; unconstrained rows keep the all-ones mask. When the grammar is
complete the mask allows only the stop ids (eos / end of turn), so a constrained row ends with
finish_reason "stop" and its text parses; a row that reaches max_tokens first is cut ("length").
JSON is generated compactly (no free whitespace: a sampled model could otherwise emit blanks
forever).
"""
from __future__ import annotations

import functools
import json
import threading
from typing import Any, Sequence

import numpy as np

from rlaif_jax.tokenizers.base import Tokenizer

_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _compiler(tokenizer: Tokenizer, vocab_size: int, stop_ids: tuple[int, ...]):
  import xgrammar as xgr
  return xgr.GrammarCompiler(_tokenizer_info(tokenizer, vocab_size, stop_ids), max_threads=2,
                             cache_enabled=True)


def _tokenizer_info(tokenizer: Tokenizer, vocab_size: int, stop_ids: tuple[int, ...]):
  """xgrammar's view of the vocabulary: a Hugging Face tokenizer's own, or a SentencePiece
  model's pieces (byte fallback: `<0xNN>` pieces are bytes, `▁` a space; control and chat
  pieces are special, so a grammar never allows them)."""
  import xgrammar as xgr
  hf, sp = getattr(tokenizer, "hf", None), getattr(tokenizer, "sp", None)
  if hf is not None:
    return xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size,
                                              stop_token_ids=list(stop_ids))
  if sp is None:
    raise ValueError("response_format needs a Hugging Face or SentencePiece tokenizer; this "
                     f"model's tokenizer is {type(tokenizer).__name__}")
  special = set(getattr(tokenizer, "_special_ids", ())) | set(stop_ids)
  pieces = ["" if i in special or sp.IsControl(i) or sp.IsUnknown(i) else sp.IdToPiece(i)
            for i in range(sp.GetPieceSize())]
  pieces += [""] * (vocab_size - len(pieces))
  return xgr.TokenizerInfo(pieces, xgr.VocabType.BYTE_FALLBACK, vocab_size=vocab_size,
                           stop_token_ids=list(stop_ids), add_prefix_space=True)


def compile_format(tokenizer: Tokenizer, vocab_size: int, stop_ids: Sequence[int],
                   response_format: tuple[str, str]):
  """An xgrammar CompiledGrammar for ("json_object", "") or ("json_schema", schema JSON text);
  raises ValueError for a schema xgrammar cannot compile."""
  kind, schema = response_format
  with _LOCK:
    compiler = _compiler(tokenizer, vocab_size, tuple(stop_ids))
    try:
      if kind == "json_object":
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
      return compiler.compile_json_schema(schema, any_whitespace=False)
    except Exception as e:  # xgrammar raises RuntimeError / InvalidJSONError for bad schemas
      raise ValueError(f"response_format json_schema cannot be compiled: {e}") from None


def limit_schema(schema: Any, max_string_chars: int | None, max_items: int | None) -> Any:
  """A copy of `schema` whose strings (property names included) have maxLength <=
  `max_string_chars` and whose arrays / objects have maxItems / maxProperties <= `max_items`
  (None: no limit of that kind); minLength / minItems / minProperties are lowered to match, so
  the schema stays satisfiable. Anything not a dict or list is returned as is."""
  if isinstance(schema, list):
    return [limit_schema(s, max_string_chars, max_items) for s in schema]
  if not isinstance(schema, dict):
    return schema
  out = {k: (v if k in ("enum", "const", "default", "examples")
             else limit_schema(v, max_string_chars, max_items)) for k, v in schema.items()}
  if "properties" in schema and isinstance(schema["properties"], dict):
    out["properties"] = {name: limit_schema(sub, max_string_chars, max_items)
                         for name, sub in schema["properties"].items()}
  kinds = schema.get("type")
  kinds = set(kinds) if isinstance(kinds, list) else {kinds}
  caps = ((max_string_chars, "string", "maxLength", "minLength"),
          (max_items, "array", "maxItems", "minItems"),
          (max_items, "object", "maxProperties", "minProperties"))
  for cap, kind, upper, lower in caps:
    if cap is None or kind not in kinds:
      continue
    out[upper] = min(int(schema.get(upper, cap)), cap)
    if kind == "object":  # required properties stay allowed
      out[upper] = max(out[upper], len(schema.get("required", ())))
    if lower in schema:
      out[lower] = min(int(schema[lower]), out[upper])
  if max_string_chars is not None and "object" in kinds and (
      "additionalProperties" in schema or "propertyNames" in schema):
    names = out.get("propertyNames") if isinstance(out.get("propertyNames"), dict) else {}
    out["propertyNames"] = {"type": "string", **names,
                            "maxLength": min(int(names.get("maxLength", max_string_chars)),
                                             max_string_chars)}
  return out


def check_schema(schema: dict) -> str:
  """The schema as JSON text (the compile cache key); ValueError if not an object. Keys keep
  their order: an object's properties are generated in the order the schema lists them (an
  explanation before its verdict), so sorting them would change the replies."""
  if not isinstance(schema, dict):
    raise ValueError("response_format.json_schema.schema must be a JSON object")
  return json.dumps(schema, ensure_ascii=False)


class GrammarHook:
  """Step hook constraining the rows whose `formats[r]` is not None (see module docstring)."""

  def __init__(self, tokenizer: Tokenizer, formats: Sequence[tuple[str, str] | None],
               vocab_size: int, stop_ids: Sequence[int]):
    import xgrammar as xgr
    self.matchers = {r: xgr.GrammarMatcher(compile_format(tokenizer, vocab_size, stop_ids, f))
                     for r, f in enumerate(formats) if f is not None}
    self.accepted = {r: 0 for r in self.matchers}

  def __call__(self, step: int, prev_tokens: np.ndarray, lengths: np.ndarray, done: np.ndarray,
               bitmask: np.ndarray, cancel: np.ndarray, prev=None) -> None:
    del step, prev
    for r, matcher in self.matchers.items():
      if r >= len(lengths):
        continue
      if lengths[r] > self.accepted[r]:
        self.accepted[r] = int(lengths[r])
        if not matcher.is_terminated():
          matcher.accept_token(int(prev_tokens[r]))
      if not done[r] and not matcher.is_terminated():
        matcher.fill_next_token_bitmask(bitmask, r)
