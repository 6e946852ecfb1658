"""BM25 retrieval, the multi-agent curator and python -m launch.curate end to end."""
import json

import numpy as np
import pytest

from fake_openai_server import FLIP_MARKER, FakeOpenAIServer, run_launch, schedule_by_key
from rlaif_jax.judging.curator import build_preference_pairs
from rlaif_jax.judging.retrieval import BM25Index, ExampleRetriever, char_ngrams, normalise_text


def test_char_ngrams_and_normalisation():
  assert normalise_text("生日 快乐！Ａb，") == "生日快乐ab"
  assert char_ngrams("生日快乐", (1, 2)) == ["生", "日", "快", "乐", "生日", "日快", "快乐"]
  with pytest.raises(ValueError):
    char_ngrams("x", (2, 1))


def test_bm25_ranks_the_obvious_match_first():
  docs = ["祝老师教师节快乐的祝福语", "给妈妈的生日祝福", "新店开业大吉的贺词", "祝朋友新婚快乐",
          "同事升职的祝贺语", "考试顺利的祝福"]
  index = BM25Index(docs)
  for i, doc in enumerate(docs):
    assert index.top_k(doc, 1)[0][0] == i
  assert index.top_k("妈妈生日", 2)[0][0] == 1
  assert index.top_k("开业", 3)[0][0] == 2
  assert index.top_k("xyz", 3) == []
  scores = index.scores("新婚快乐")
  assert scores.shape == (6,) and scores.dtype == np.float32
  assert scores.argmax() == 3 and scores[1] == 0.0


def test_bm25_matches_a_direct_formula():
  docs = ["生日快乐", "快乐快乐每一天", "新年好"]
  index = BM25Index(docs, ngram_range=(1, 1), k1=1.2, b=0.75)
  grams = [char_ngrams(d, (1, 1)) for d in docs]
  avg = np.mean([len(g) for g in grams])

  def direct(query):
    out = []
    for g in grams:
      s = 0.0
      for term in char_ngrams(query, (1, 1)):
        df = sum(term in h for h in grams)
        if df == 0:
          continue
        idf = np.log(1 + (3 - df + 0.5) / (df + 0.5))
        tf = g.count(term)
        s += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * len(g) / avg))
      out.append(s)
    return np.array(out)
  for query in ("快乐", "生日快乐", "新年快乐好"):
    np.testing.assert_allclose(index.scores(query), direct(query), rtol=1e-5)


def test_retriever_on_the_evaluation_set(data_dir):
  lines = (data_dir / "evaluation_set" / "evaluate_data.json").read_text(encoding="utf-8")
  pool = [json.loads(line) for line in lines.splitlines()]
  retriever = ExampleRetriever(pool)
  target = next(r for r in pool if len(r["query"]) >= 8)
  hits = retriever.retrieve(target["query"] + "呀", 3)  # A near-duplicate request.
  assert hits[0]["query"] == target["query"] and len(hits) == 3
  assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
  same = retriever.retrieve(target["query"], 3, exclude_response=target["response"])
  assert all(h["response"] != target["response"] or h["query"] != target["query"] for h in same)


def test_pairs_are_all_combinations_per_query_in_the_rm_format(data_dir):
  labelled = [{"query": "q1", "response": r, "label": l}
              for r, l in [("a", 1), ("b", 1), ("c", 0), ("d", 0), ("e", 0)]]
  labelled += [{"query": "q2", "response": "x", "label": 1},  # No rejected -> no pair.
               {"query": "q1", "response": "f", "label": None, "error": "judge agent: ..."}]
  pairs = build_preference_pairs(labelled)
  assert len(pairs) == 6
  assert {(p["chosen"]["value"], p["rejected"]["value"]) for p in pairs} == {
      (c, r) for c in "ab" for r in "cde"}
  capped = build_preference_pairs(labelled, max_pairs_per_query=4, seed=1)
  assert len(capped) == 4 and capped == build_preference_pairs(labelled, max_pairs_per_query=4,
                                                               seed=1)
  reference = json.loads((data_dir / "reward_model" / "reward_data_test.json").read_text("utf-8"))[0]
  for pair in pairs:
    assert pair.keys() == reference.keys()
    assert [m.keys() for m in pair["conversations"]] == [m.keys() for m in reference["conversations"]]
    assert pair["chosen"].keys() == reference["chosen"].keys()
    assert (pair["conversations"][0]["from"], pair["chosen"]["from"]) == (
        reference["conversations"][0]["from"], reference["chosen"]["from"])


def test_curate_cli_end_to_end(tmp_path):
  long = "愿你前程似锦，万事顺意，岁岁平安，笑口常开，幸福美满，心想事成！"
  candidates = [
      {"id": "a1", "query": "给妈妈的生日祝福", "response": "妈妈生日快乐"},
      {"id": "a2", "query": "给妈妈的生日祝福", "response": "妈妈，" + long},
      {"id": "a3", "query": "给妈妈的生日祝福", "response": "妈妈，" + long + "爱你"},
      {"id": "a4", "query": "给妈妈的生日祝福", "response": FLIP_MARKER + "妈妈快乐"},  # Reflect flips 0->1.
      {"query": "新店开业贺词", "response": "开业大吉"},
      {"query": "新店开业贺词", "response": "开业之喜，" + long},
      {"query": "新店开业贺词", "response": "坏掉的回复"},
  ]
  pool = [{"query": "妈妈生日祝福语", "response": "妈妈生日快乐", "label": 0},
          {"query": "开业祝福", "response": "生意兴隆" + long, "label": 1},
          {"query": "毕业祝福", "response": "前程似锦", "label": 0}]
  (tmp_path / "cand.jsonl").write_text(
      "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in candidates), encoding="utf-8")
  (tmp_path / "pool.jsonl").write_text(
      "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in pool), encoding="utf-8")
  plan = {"坏掉的回复": ["garbage"] * 8, "开业大吉": ["429", "truncated"]}
  out_dir = tmp_path / "curated"
  with FakeOpenAIServer(fault_fn=schedule_by_key(plan), min_len=20) as server:
    result = run_launch("curate", input=tmp_path / "cand.jsonl", output_dir=out_dir,
                        examples=tmp_path / "pool.jsonl", num_examples=2, retriever="bm25",
                        base_url=server.base_url, model="m", chunk_size=3, progress=False,
                        timeout_s=2, retry_base_delay_s=0.01, max_parse_attempts=2)
    roles = {r.role for r in server.log}
  assert result.returncode == 0, result.stderr[-3000:]
  assert {"positive", "negative", "judge_agent", "reflect_agent"} <= roles
  labelled = {r["id"]: r for r in map(json.loads, (out_dir / "labeled.jsonl").read_text("utf-8").splitlines())}
  assert sorted(map(str, labelled)) == sorted(["a1", "a2", "a3", "a4", "4", "5", "6"])
  assert [labelled[k]["label"] for k in ("a1", "a2", "a3", "a4")] == [0, 1, 1, 1]
  assert labelled["a4"]["overturned"] is True and labelled["a4"]["judge"]["judge"] == 0
  assert labelled["a1"]["overturned"] is False and labelled["a1"]["negative"] == {"内容简短": "缺少细节"}
  assert labelled[4]["label"] == 0 and labelled[5]["label"] == 1
  assert labelled[6]["label"] is None and labelled[6]["error"].startswith("positive agent: unparseable")
  assert labelled["a1"]["retrieved"][0]["query"] == "妈妈生日祝福语"
  pairs = json.loads((out_dir / "pairs.json").read_text(encoding="utf-8"))
  got = {(p["conversations"][0]["value"], p["chosen"]["value"], p["rejected"]["value"]) for p in pairs}
  mom = [c["response"] for c in candidates[:4]]
  assert got == {("给妈妈的生日祝福", c, mom[0]) for c in mom[1:]} | {
      ("新店开业贺词", candidates[5]["response"], "开业大吉")}
  assert "reflect overturned 1" in result.stdout
  capped = run_launch("curate", output_dir=out_dir, pairs_only=True, max_pairs_per_query=1)
  assert capped.returncode == 0, capped.stderr[-2000:]
  assert len(json.loads((out_dir / "pairs.json").read_text(encoding="utf-8"))) == 2


def _curate_with_reflect_replies(reflect_replies):
  """Curates one record per key of ``reflect_replies`` (response -> list of Reflect replies, one
  per attempt); every other agent answers like the fake server."""
  import asyncio
  from fake_openai_server import make_local_generate_fn, section
  from rlaif_jax.judging.backends.local import LocalSamplerBackend
  from rlaif_jax.judging.curator import MultiAgentCurator
  base_fn, asked = make_local_generate_fn(min_len=20), {}

  def generate_fn(prompts_messages, max_tokens, temperature):
    out = base_fn(prompts_messages, max_tokens, temperature)
    for i, messages in enumerate(prompts_messages):
      prompt = messages[-1]["content"]
      if "祝福语质量反思专家" in prompt:
        response = section(prompt, "祝福语 (Response)")
        k = asked[response] = asked.get(response, -1) + 1
        out[i] = reflect_replies[response][min(k, len(reflect_replies[response]) - 1)]
    return out

  curator = MultiAgentCurator(LocalSamplerBackend(generate_fn), max_attempts=3)
  records = [{"query": "给妈妈的生日祝福", "response": r} for r in reflect_replies]
  return {o["response"]: o for o in asyncio.run(curator.curate(records))}, asked


def test_reflect_overturns_only_with_a_reason_and_an_echoed_example_is_re_asked():
  short = "妈妈生日快乐"  # the fake Judge says 0 (shorter than min_len)
  outs, asked = _curate_with_reflect_replies({
      short: ['{"judge": 1}'],                                      # overturn, no reason
      short + "！": ['```json\n{"judge": 0, "reason": "最终理由"}\n```',  # the template's example
                    '{"judge": 1, "reason": "情感真挚，具体"}'],
  })
  silent = outs[short]
  assert silent["judge"]["judge"] == 0 and silent["reflect"]["judge"] == 1
  assert silent["label"] == 0 and silent["overturned"] is False
  assert "without giving a reason" in silent["reflect"]["ignored"]
  echoed = outs[short + "！"]
  assert asked[short + "！"] == 1  # the echo was refused and asked again
  assert echoed["label"] == 1 and echoed["overturned"] is True
  assert echoed["reflect"]["reason"] == "情感真挚，具体"


def test_a_response_labelled_both_ways_makes_no_pair_with_itself():
  labelled = [{"query": "q", "response": "a", "label": 1}, {"query": "q", "response": "a", "label": 0},
              {"query": "q", "response": "b", "label": 1}, {"query": "q", "response": "c", "label": 0}]
  pairs = build_preference_pairs(labelled)
  assert [(p["chosen"]["value"], p["rejected"]["value"]) for p in pairs] == [("b", "c")]


def test_curator_fingerprint_is_stable_and_tracks_settings():
  from fake_openai_server import make_local_generate_fn
  from rlaif_jax.judging.backends.base import SamplingParams
  from rlaif_jax.judging.backends.local import LocalSamplerBackend
  from rlaif_jax.judging.curator import MultiAgentCurator
  fn = make_local_generate_fn()
  pool = [{"query": "妈妈生日", "response": "快乐", "label": 1}]

  def fingerprint(**kwargs):
    return MultiAgentCurator(LocalSamplerBackend(fn), ExampleRetriever(pool), **kwargs).fingerprint
  assert fingerprint() == fingerprint()  # new instances, same settings
  assert fingerprint(num_examples=2) != fingerprint()
  assert fingerprint(sampling=SamplingParams(temperature=0.5)) != fingerprint()
  other_pool = MultiAgentCurator(LocalSamplerBackend(fn), ExampleRetriever(pool * 2)).fingerprint
  assert other_pool != fingerprint()
