r"""python -m benchmarks.grammar_libs [--vocab_size=151665 --batch=32]

Per-token mask cost of the grammar libraries for constrained decoding (issue 18): xgrammar,
llguidance and outlines-core, on a locally built byte-level BPE tokenizer with a Qwen2.5-sized
vocabulary (no downloads), for a judge-verdict JSON schema.

The vocabulary: the 256 byte tokens, then `vocab_size - 256 - 3` merges built by repeatedly
joining two existing tokens, drawn with a bias towards short ones and towards letters, spaces,
digits, punctuation and CJK byte sequences (so the vocabulary holds words, word pieces, JSON-ish
punctuation runs and multi-byte characters as a trained BPE does), and <|endoftext|>,
<|im_start|>, <|im_end|> specials.

For each library: grammar compile time, then `batch` matchers walk the same valid JSON document
(tokenized with that tokenizer) and every step fills all `batch` rows' next-token bitmasks and
accepts the token. Reported: ms per step for the whole batch (mask fill + accept), serial and
with the library's batched / parallel call where it has one.
"""
from __future__ import annotations

import json
import random
import time

from absl import app, flags

_VOCAB = flags.DEFINE_integer("vocab_size", 151_665, "Tokenizer vocabulary size.")
_BATCH = flags.DEFINE_integer("batch", 32, "Rows (matchers) per step.")
_LIBS = flags.DEFINE_list("libs", ["xgrammar", "llguidance", "outlines_core"], "Libraries.")

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"},
                   "score": {"type": "integer", "minimum": 1, "maximum": 10},
                   "verdict": {"type": "string", "enum": ["A", "B", "tie"]}},
    "required": ["reasoning", "score", "verdict"], "additionalProperties": False}
DOCUMENT = json.dumps({"reasoning": "Response A follows the principle of warmth and gives a "
                                    "specific wish; B is generic. 回答A更具体，语气更温暖。",
                       "score": 7, "verdict": "A"}, ensure_ascii=False)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _byte_chars() -> list[str]:
  """GPT-2's byte -> printable character map (what ByteLevel pre-tokenization emits)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  extra = iter(range(256, 512))
  return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def build_tokenizer(vocab_size: int, seed: int = 0):
  """A `transformers.PreTrainedTokenizerFast` byte-level BPE with `vocab_size` ids (see the
  module docstring)."""
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  alphabet = _byte_chars()
  rng = random.Random(seed)
  tokens = list(alphabet)  # alphabet[i] is the byte-level character of byte i
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = []
  frequent = set(b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}[]\":,.")
  weights = [3.0 if i in frequent else 2.0 if 0x80 <= i <= 0xBF or 0xE4 <= i <= 0xE9 else 0.3
             for i in range(256)]
  target = vocab_size - len(SPECIALS)
  while len(tokens) < target:
    # Short tokens are joined more often, like the early (frequent) merges of a trained BPE.
    a = tokens[min(int(rng.expovariate(1 / 600)), len(tokens) - 1)]
    b = rng.choices(tokens[:256], weights[:256])[0] if rng.random() < 0.6 else tokens[
        min(int(rng.expovariate(1 / 3000)), len(tokens) - 1)]
    merged = a + b
    if merged in vocab or len(merged) > 16:
      continue
    vocab[merged] = len(tokens)
    tokens.append(merged)
    merges.append((a, b))
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(list(SPECIALS))
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0],
                                              pad_token=SPECIALS[0])


def _timed_walk(fill, accept, ids, batch) -> float:
  """ms per step: fill(batch masks) + accept(token) for each row, over the document's ids."""
  start = time.perf_counter()
  for t in ids:
    fill()
    for r in range(batch):
      accept(r, t)
  return (time.perf_counter() - start) * 1e3 / len(ids)


def bench_xgrammar(hf, ids, batch, vocab_size, eos):
  import xgrammar as xgr
  info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size, stop_token_ids=[eos])
  start = time.perf_counter()
  compiled = xgr.GrammarCompiler(info, max_threads=2).compile_json_schema(
      json.dumps(VERDICT_SCHEMA))
  compile_s = time.perf_counter() - start
  out = {"compile_s": compile_s}
  for mode in ("serial", "batched"):
    ms = [xgr.GrammarMatcher(compiled) for _ in range(batch)]
    mask = xgr.allocate_token_bitmask(batch, vocab_size)
    if mode == "serial":
      def fill():
        for r, m in enumerate(ms):
          m.fill_next_token_bitmask(mask, r)
    else:
      bm = xgr.BatchGrammarMatcher(max_threads=2)
      fill = lambda: bm.batch_fill_next_token_bitmask(ms, mask)
    out[f"{mode}_ms_per_step"] = _timed_walk(fill, lambda r, t: ms[r].accept_token(t), ids, batch)
  return out


def bench_llguidance(hf, ids, batch, vocab_size, eos):
  import llguidance
  import llguidance.hf
  import llguidance.numpy as lln
  tok = llguidance.hf.from_tokenizer(hf, n_vocab=vocab_size)
  grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(VERDICT_SCHEMA))
  start = time.perf_counter()
  first = llguidance.LLMatcher(tok, grammar)
  first.compute_bitmask()
  out = {"compile_s": time.perf_counter() - start}
  for mode in ("serial", "batched"):
    ms = [llguidance.LLMatcher(tok, grammar) for _ in range(batch)]
    mask = lln.allocate_token_bitmask(batch, vocab_size)
    if mode == "serial":
      def fill():
        for r, m in enumerate(ms):
          lln.fill_next_token_bitmask(m, mask, r)
    else:
      executor = llguidance.LLExecutor(num_threads=2)
      fill = lambda: lln.fill_next_token_bitmask_par(executor, [(m, r) for r, m in enumerate(ms)],
                                                    mask)
    out[f"{mode}_ms_per_step"] = _timed_walk(fill, lambda r, t: ms[r].consume_token(t), ids,
                                             batch)
  return out


def bench_outlines_core(hf, ids, batch, vocab_size, eos):
  import numpy as np
  from outlines_core import Guide, Index, Vocabulary
  from outlines_core.json_schema import build_regex_from_schema
  table: dict[bytes, list[int]] = {}
  for token, i in hf.get_vocab().items():
    if i == eos:
      continue
    table.setdefault(hf.convert_tokens_to_string([token]).encode("utf-8", "surrogatepass"),
                     []).append(i)
  vocab = Vocabulary(eos, table)
  start = time.perf_counter()
  index = Index(build_regex_from_schema(json.dumps(VERDICT_SCHEMA)), vocab)
  out = {"compile_s": time.perf_counter() - start}
  guides = [Guide(index) for _ in range(batch)]
  words = (vocab_size + 31) // 32
  mask = np.zeros((batch, words), np.int32)

  def fill():
    for r, g in enumerate(guides):
      g.write_mask_into(mask[r].ctypes.data, words, 4)
  out["serial_ms_per_step"] = _timed_walk(fill, lambda r, t: guides[r].advance(t), ids, batch)
  return out


def main(argv):
  del argv
  start = time.perf_counter()
  hf = build_tokenizer(_VOCAB.value)
  eos = hf.convert_tokens_to_ids(SPECIALS[0])
  ids = hf.encode(DOCUMENT)
  print(f"tokenizer: {len(hf)} ids, built in {time.perf_counter() - start:.1f}s; document "
        f"{len(DOCUMENT)} chars -> {len(ids)} tokens; batch {_BATCH.value}", flush=True)
  for lib in _LIBS.value:
    try:
      result = globals()[f"bench_{lib}"](hf, ids, _BATCH.value, len(hf), eos)
    except Exception as e:  # a library that cannot handle this vocabulary is reported, not fatal
      result = {"error": f"{type(e).__name__}: {e}"[:300]}
    print(lib, json.dumps({k: round(v, 3) if isinstance(v, float) else v
                           for k, v in result.items()}), flush=True)


if __name__ == "__main__":
  app.run(main)
