"""Embedding retrieval (a tiny random SentenceTransformer built here, nothing downloaded), the
click_num rerank, the BM25 fallback, leak-free splits, and the optimiser's one call per
feedback item."""
import asyncio
import builtins
import json
import logging
import re

import numpy as np
import pytest

from rlaif_jax.judging import retrieval, splits
from rlaif_jax.judging.adversarial import AdversarialGame, GameConfig
from rlaif_jax.judging.backends import LocalSamplerBackend

POOL = [{"query": q, "response": f"回复{i}", "label": 1} for i, q in enumerate(
    ["给妈妈的生日祝福", "老师节日快乐祝福语", "同学毕业的祝福", "朋友结婚贺词", "新店开业大吉贺词",
     "春节给领导的拜年短信", "祝爸爸身体健康", "女朋友生日快乐"])]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """A randomly initialised 1-layer BERT + mean pooling, saved as a SentenceTransformer dir."""
  pytest.importorskip("faiss")
  pytest.importorskip("sentence_transformers")
  import torch
  from sentence_transformers import SentenceTransformer, models
  from transformers import BertConfig, BertModel, BertTokenizerFast
  root = tmp_path_factory.mktemp("st")
  hf = root / "hf"
  hf.mkdir()
  chars = sorted({c for ex in POOL for c in ex["query"]} | set("呀的了"))
  vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars)}
  tok = BertTokenizerFast(vocab=vocab, do_lower_case=False, tokenize_chinese_chars=True)
  assert "[UNK]" not in tok.tokenize(POOL[0]["query"])
  torch.manual_seed(0)
  BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=64, initializer_range=1.0)).save_pretrained(hf)
  tok.save_pretrained(hf)
  transformer = models.Transformer(str(hf), max_seq_length=32)
  dim = transformer.auto_model.config.hidden_size
  SentenceTransformer(modules=[transformer, models.Pooling(dim, "mean")]).save(
      str(root / "model"))
  return str(root / "model")


def test_embedding_retrieval_finds_the_nearest_examples(tiny_model, monkeypatch, caplog):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with caplog.at_level(logging.INFO, logger=retrieval.__name__):
    r = retrieval.ExampleRetriever(POOL, backend="auto", model=tiny_model)
  assert r.backend == "embedding" and "embedding=" in caplog.text and tiny_model in repr(r)
  for ex in POOL:  # an exact duplicate query retrieves itself first, with cosine 1
    hits = r.retrieve(ex["query"], 3)
    assert hits[0]["query"] == ex["query"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
  # Same order as brute-force cosine of the model's own embeddings.
  emb = r.index.encoder.encode([ex["query"] for ex in POOL] + ["给妈妈的生日祝福呀"],
                               normalize_embeddings=True)
  expected = np.argsort(-(emb[:-1] @ emb[-1]), kind="stable")[:4]
  assert [h["query"] for h in r.retrieve("给妈妈的生日祝福呀", 4)] == [POOL[i]["query"]
                                                                for i in expected]
  # The candidate itself is skipped when it is pooled.
  same = r.retrieve(POOL[0]["query"], 2, exclude_response=POOL[0]["response"])
  assert POOL[0]["response"] not in [h["response"] for h in same] and len(same) == 2


def test_click_num_rerank_orders_the_similar_pool_by_clicks(tiny_model, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  pool = [dict(ex, click_num=c) for ex, c in zip(POOL, [5, 1, 9, 0, 3, 7, 2, 4])]
  for backend, model in (("embedding", tiny_model), ("bm25", None)):
    r = retrieval.ExampleRetriever(pool, backend=backend, model=model, rerank_pool=4)
    plain = retrieval.ExampleRetriever(POOL, backend=backend, model=model)
    query = "给妈妈的生日祝福"
    top4 = [h["query"] for h in plain.retrieve(query, 4)]
    clicks = {ex["query"]: ex["click_num"] for ex in pool}
    got = r.retrieve(query, 2)
    assert [h["query"] for h in got] == sorted(top4, key=lambda q: -clicks[q])[:2]
    assert [h["click_num"] for h in got] == sorted((clicks[q] for q in top4), reverse=True)[:2]
  with pytest.raises(ValueError, match="example 1 lacks 'click_num'"):
    retrieval.ExampleRetriever([pool[0], POOL[1]])


def test_bm25_fallback_when_the_extra_is_missing(monkeypatch, caplog):
  real_import = builtins.__import__

  def no_faiss(name, *args, **kwargs):
    if name in ("faiss", "sentence_transformers"):
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_faiss)
  with caplog.at_level(logging.WARNING, logger=retrieval.__name__):
    r = retrieval.ExampleRetriever(POOL, backend="auto")
  assert r.backend == "bm25" and "falling back to BM25" in caplog.text
  assert r.retrieve("给妈妈的生日祝福", 1)[0]["query"] == "给妈妈的生日祝福"
  with pytest.raises(ImportError, match="rlaif_jax\\[retrieval\\]"):
    retrieval.ExampleRetriever(POOL, backend="embedding")
  with pytest.raises(ImportError, match="retrieval model 'some/model'"):
    retrieval.ExampleRetriever(POOL, backend="auto", model="some/model")
  with pytest.raises(ValueError, match="backend is bm25"):
    retrieval.ExampleRetriever(POOL, backend="bm25", model="some/model")



def test_auto_never_downloads_the_default_model(monkeypatch, caplog, tmp_path):
  """With the extra installed but the default model not cached, auto falls back to BM25 at
  once (a download would hang without network); a local model directory is used."""
  import huggingface_hub
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
  assert not retrieval.model_available_locally(retrieval.DEFAULT_EMBEDDING_MODEL)
  with caplog.at_level(logging.WARNING, logger=retrieval.__name__):
    r = retrieval.ExampleRetriever(POOL, backend="auto")
  assert r.backend == "bm25" and "not in the local hub cache" in caplog.text
  assert retrieval.model_available_locally(str(tmp_path))

def _write_data(root, eval_rows, sft_rows):
  (root / "evaluation_set").mkdir(parents=True)
  (root / "sft").mkdir()
  (root / "evaluation_set" / "evaluate_data.json").write_text(
      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in eval_rows), encoding="utf-8")
  (root / "sft" / "sft_data.json").write_text(json.dumps(sft_rows, ensure_ascii=False),
                                              encoding="utf-8")


def test_splits_are_disjoint_and_group_duplicate_queries(tmp_path):
  rng = np.random.default_rng(0)
  queries = [f"祝福请求{i}" for i in range(40)]
  eval_rows = []
  for i, q in enumerate(queries):
    copies = 3 if i % 5 == 0 else 1  # duplicated queries, one with a punctuation variant
    for c in range(copies):
      eval_rows.append({"query": q + ("！" if c == 2 else ""), "response": f"r{i}-{c}",
                        "label": int(rng.integers(0, 2))})
  sft_rows = [{"instruction": q, "input": "", "output": f"好{i}", "click_num": i}
              for i, q in enumerate(queries[::4] + [f"只在SFT{i}" for i in range(12)])]
  _write_data(tmp_path / "data", eval_rows, sft_rows)
  s = splits.make_splits(tmp_path / "data", seed=3, output_dir=str(tmp_path / "out"))
  keys = {name: {splits.query_key(r["query"]) for r in getattr(s, name)}
          for name in splits.SPLIT_NAMES}
  assert not keys["principle_examples"] & keys["reliability_examples"]
  assert not keys["retrieval_corpus"] & (keys["principle_examples"] | keys["reliability_examples"])
  assert len(s.principle_examples) + len(s.reliability_examples) == len(eval_rows)
  assert len(s.retrieval_corpus) == 12 and all("click_num" in r for r in s.retrieval_corpus)
  assert abs(len(s.reliability_examples) - len(eval_rows) / 2) <= 3
  # Written, reloadable, deterministic for the seed; another seed deals other groups.
  manifest = json.loads((tmp_path / "out" / "splits" / "manifest.json").read_text("utf-8"))
  assert manifest["sizes"]["retrieval_corpus"] == 12 and manifest["query_groups"][
      "with_duplicates"] == 8 and manifest["retrieval_corpus_dropped_overlap"] == 10
  lines = (tmp_path / "out" / "splits" / "reliability_examples.jsonl").read_text("utf-8")
  assert [json.loads(x) for x in lines.splitlines()] == s.reliability_examples
  again = splits.make_splits(tmp_path / "data", seed=3)
  other = splits.make_splits(tmp_path / "data", seed=4)
  assert again.reliability_examples == s.reliability_examples
  assert other.reliability_examples != s.reliability_examples


def test_splits_of_the_paper_data(data_dir):
  s = splits.make_splits(data_dir, seed=0)
  keys = {name: {splits.query_key(r["query"]) for r in getattr(s, name)}
          for name in splits.SPLIT_NAMES}
  assert not keys["principle_examples"] & keys["reliability_examples"]
  assert not keys["retrieval_corpus"] & (keys["principle_examples"] | keys["reliability_examples"])
  assert len(s.principle_examples) + len(s.reliability_examples) == 1500
  assert s.manifest["query_groups"]["with_duplicates"] > 0
  assert s.manifest["retrieval_corpus_click_num"] is False  # the released files have none


def test_optimizer_runs_once_per_feedback_item_in_sequence():
  prompts = []

  def add_rule(messages_batch, max_tokens, temperature):
    out = []
    for messages in messages_batch:
      text = messages[-1]["content"]
      prompts.append(text)
      rules = re.findall(r"^\d+\. (RULE\d+)$", text, flags=re.M)
      feedback = re.findall(r"^- FB(\d+)$", text, flags=re.M)
      out.append(json.dumps({"optimized_strategy": rules + [f"RULE{f}" for f in feedback]}))
    return out

  game = AdversarialGame(LocalSamplerBackend(add_rule), GameConfig())
  assert GameConfig().reflect_batch == 4
  rules, events = asyncio.run(game.optimize("S_D", ("RULE0",), ["FB1", "FB2", "FB3"]))
  assert len(prompts) == 3 and [e["step"] for e in events] == [1, 2, 3]
  assert [re.findall(r"^- (FB\d)$", p, flags=re.M) for p in prompts] == [["FB1"], ["FB2"], ["FB3"]]
  assert rules == ("RULE0", "RULE1", "RULE2", "RULE3")
  assert [e["before"] for e in events] == [["RULE0"], ["RULE0", "RULE1"],
                                           ["RULE0", "RULE1", "RULE2"]]
