"""Data pipeline: readers on the real dataset, malformed records, data-dir resolution, fetch
against a local HTTP server, and prompt formatting / padding / batching."""
import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaif_jax.data import fetch, formatting, greetings, paths
from rlaif_jax.tokenizers import load_tokenizer, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Tiny dataset files in the authors' layout.


def _write_json(path: pathlib.Path, data) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
  return {"conversations": [{"from": "human", "value": prompt}],
          "chosen": {"from": "gpt", "value": chosen},
          "rejected": {"from": "gpt", "value": rejected}}


def _write_grpo(path: pathlib.Path, contents: list[str], split: str,
                roles: list[str] | None = None) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  roles = roles or ["user"] * len(contents)
  table = pa.table({
    "prompt": [[{"content": c, "role": r}] for c, r in zip(contents, roles)],
    "data_source": ["custom_json"] * len(contents),
    "ability": ["text_generation"] * len(contents),
    "extra_info": [{"index": i, "split": split} for i in range(len(contents))],
  })
  pq.write_table(table, path)


def write_tiny_dataset(root: pathlib.Path) -> dict[str, int]:
  """Writes every dataset file with a few valid records; returns the row counts."""
  _write_json(root / "sft/sft_data.json", [
    {"instruction": "给妈妈的生日祝福", "input": "", "output": "妈妈生日快乐！愿您健康长寿。"},
    {"instruction": "写一条祝福", "input": "给老师", "output": "老师您辛苦了🌹"}])
  _write_json(root / "reward_model/reward_data_train.json", [
    _pair("新年祝福", "愿新年如春风拂面，万事顺遂！", "新年快乐。"),
    _pair("考试祝福", "笔下生花，金榜题名！", "考试顺利。")])
  _write_json(root / "reward_model/reward_data_test.json", [_pair("开业祝福", "财源广进！", "开业大吉")])
  lines = [{"query": "生日祝福", "response": "生日快乐！", "label": 0},
           {"query": "毕业祝福", "response": "前程似锦，未来可期！", "label": 1},
           {"query": "中秋祝福", "response": "月圆人团圆。", "label": 1}]
  path = root / "evaluation_set/evaluate_data.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", "utf-8")
  _write_grpo(root / "grpo_data/train.parquet",
              ["请只生成一条祝福语：古风新年祝福语", "请只生成一条祝福语：三岁宝宝的祝福"], "train")
  _write_grpo(root / "grpo_data/test.parquet", ["请只生成一条祝福语：送给音乐人的祝福"], "test")
  (root / "random_query.txt").write_text("生日祝福语\n生日快乐祝福语\n短短一句,说透人生\n", "utf-8")
  return {"sft": 2, "reward_train": 2, "reward_test": 1, "evaluation": 3, "grpo_train": 2,
          "grpo_test": 1, "random_query": 3}


# ---------------------------------------------------------------------------------------------
# Readers on the real data.


def test_real_dataset_row_counts(data_dir):
  assert len(greetings.load_sft(data_dir)) == 4000
  assert len(greetings.load_preference_pairs(data_dir, "train")) == 6310
  assert len(greetings.load_preference_pairs(data_dir, "test")) == 1086
  evaluation = greetings.load_evaluation_set(data_dir)
  assert len(evaluation) == 1500 and {r.label for r in evaluation} == {0, 1}
  train_prompts = greetings.load_rl_prompts(data_dir, "train")
  test_prompts = greetings.load_rl_prompts(data_dir, "test")
  assert (len(train_prompts), len(test_prompts)) == (3200, 800)
  assert len(greetings.load_random_queries(data_dir)) == 10000


def test_real_records_content(data_dir):
  sft = greetings.load_sft(data_dir)[0]
  assert sft == greetings.SFTExample(prompt="给女生的生日祝福", response=sft.response)
  assert sft.response.startswith("生日快乐")
  pair = greetings.load_preference_pairs(data_dir, "train")[0]
  assert pair.prompt == "生意兴隆的祝福语" and pair.chosen != pair.rejected
  prompt = greetings.load_rl_prompts(data_dir, "train")[0]
  assert prompt == greetings.RLPrompt(query="古风新年祝福语", prompt_text="请只生成一条祝福语：古风新年祝福语",
                                      index=0, data_source="custom_json", split="train")
  assert all(p.prompt_text == greetings.GRPO_PREFIX + p.query
             for p in greetings.load_rl_prompts(data_dir, "test"))
  assert greetings.load_random_queries(data_dir)[:2] == ["生日祝福语", "生日快乐祝福语"]


def test_tiny_dataset_readers(tmp_path):
  counts = write_tiny_dataset(tmp_path)
  for name, expected in counts.items():
    assert fetch.count_rows(name, tmp_path / paths.DATASET_FILES[name]) == expected, name
  sft = greetings.load_sft(tmp_path)
  assert sft[1].prompt == "写一条祝福\n给老师"
  assert greetings.load_rl_prompts(tmp_path, "test")[0].split == "test"
  with pytest.raises(ValueError, match="split"):
    greetings.load_preference_pairs(tmp_path, "dev")


# ---------------------------------------------------------------------------------------------
# Malformed records name file, record and field.

_GOOD_PAIR = _pair("p", "c", "r")
BAD_JSON_CASES = [
  (greetings.read_sft_file, [{"instruction": "a", "input": "", "output": "b"},
                             {"instruction": "a", "input": ""}], "record 1", "output"),
  (greetings.read_sft_file, [{"instruction": 3, "input": "", "output": "b"}], "record 0",
   "instruction"),
  (greetings.read_sft_file, [{"instruction": "  ", "input": "", "output": "b"}], "record 0",
   "instruction"),
  (greetings.read_sft_file, {"instruction": "a"}, "", "JSON list"),
  (greetings.read_pair_file, [_GOOD_PAIR, _GOOD_PAIR, {**_GOOD_PAIR, "rejected": {"from": "gpt"}}],
   "record 2", "rejected.value"),
  (greetings.read_pair_file, [{**_GOOD_PAIR, "conversations": []}], "record 0", "conversations"),
  (greetings.read_pair_file, [{**_GOOD_PAIR, "conversations": [{"from": "gpt", "value": "x"}]}],
   "record 0", "conversations[0].from"),
  (greetings.read_pair_file, [{k: v for k, v in _GOOD_PAIR.items() if k != "chosen"}],
   "record 0", "chosen"),
]


@pytest.mark.parametrize("reader,data,location,field", BAD_JSON_CASES)
def test_malformed_json_records(tmp_path, reader, data, location, field):
  path = tmp_path / "bad.json"
  _write_json(path, data)
  with pytest.raises(greetings.DataFormatError) as info:
    reader(path)
  message = str(info.value)
  assert str(path) in message and location in message and field in message
  assert isinstance(info.value, ValueError)


def test_invalid_json_names_line(tmp_path):
  path = tmp_path / "sft.json"
  path.write_text('[\n  {"instruction": "a",\n  "output": }\n]', encoding="utf-8")
  with pytest.raises(greetings.DataFormatError, match=r"sft\.json: line 3"):
    greetings.read_sft_file(path)


@pytest.mark.parametrize("lines,location,field", [
  (['{"query": "q", "response": "r", "label": 1}', '{"query": "q", "response": "r", "label": 2}'],
   "line 2", "label"),
  (['{"query": "q", "response": "r", "label": true}'], "line 1", "label"),
  (['{"query": "q", "response": "r", "label": 0}', "", '{"query": "q", "label": 0}'], "line 3",
   "response"),
  (['{"query": "q", "response": "r", "label": 0}', "{not json"], "line 2", "invalid JSON"),
])
def test_malformed_jsonl(tmp_path, lines, location, field):
  path = tmp_path / "evaluate_data.json"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  with pytest.raises(greetings.DataFormatError) as info:
    greetings.read_labeled_file(path)
  assert str(path) in str(info.value) and location in str(info.value) and field in str(info.value)


def test_query_file_blank_line_and_encoding(tmp_path):
  path = tmp_path / "random_query.txt"
  path.write_text("生日祝福\n\n新年祝福\n\n", encoding="utf-8")
  with pytest.raises(greetings.DataFormatError, match=r"random_query\.txt: line 2"):
    greetings.read_query_file(path)
  path.write_text("生日祝福\r\n新年祝福\n\n", encoding="utf-8")
  assert greetings.read_query_file(path) == ["生日祝福", "新年祝福"]
  path.write_bytes("生日".encode("gbk"))
  with pytest.raises(greetings.DataFormatError, match="not UTF-8"):
    greetings.read_query_file(path)


def test_malformed_parquet(tmp_path):
  path = tmp_path / "train.parquet"
  _write_grpo(path, ["请只生成一条祝福语：生日", "生日祝福没有前缀"], "train")
  with pytest.raises(greetings.DataFormatError, match=r"row 1, field 'prompt\[0\]\.content'"):
    greetings.read_rl_prompt_file(path)
  assert greetings.read_rl_prompt_file(path, require_prefix=False)[1].query == "生日祝福没有前缀"
  _write_grpo(path, ["请只生成一条祝福语：生日"], "train", roles=["system"])
  with pytest.raises(greetings.DataFormatError, match=r"row 0, field 'prompt\[0\]\.role'"):
    greetings.read_rl_prompt_file(path)
  pq.write_table(pa.table({"question": ["x"]}), path)
  with pytest.raises(greetings.DataFormatError, match="field 'prompt': missing column"):
    greetings.read_rl_prompt_file(path)
  path.write_text("not parquet")
  with pytest.raises(greetings.DataFormatError, match="parquet"):
    greetings.read_rl_prompt_file(path)


# ---------------------------------------------------------------------------------------------
# Data directory, record helpers.


def test_resolve_data_dir(tmp_path, monkeypatch):
  monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
  with pytest.raises(paths.DataDirNotFoundError, match="launch.fetch_data"):
    paths.resolve_data_dir(None)
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
  assert paths.resolve_data_dir(None) == tmp_path
  other = tmp_path / "other"
  other.mkdir()
  assert paths.resolve_data_dir(str(other)) == other  # The flag wins over the environment.
  with pytest.raises(FileNotFoundError) as info:
    paths.resolve_data_dir(str(tmp_path / "missing"))
  assert "--data_dir" in str(info.value) and "missing" in str(info.value)
  assert "fetch_data" in str(info.value)
  with pytest.raises(paths.DataDirNotFoundError, match="sft_data.json is missing"):
    greetings.load_sft(tmp_path)


def test_record_helpers():
  records = [greetings.LabeledResponse(query=f"q{i}", response=f"r{i}", label=i % 2)
             for i in range(10)]
  ds = greetings.to_hf_dataset(records)
  assert ds.column_names == ["query", "response", "label"] and ds[3]["label"] == 1
  assert greetings.to_hf_dataset(["a", "b"])["text"] == ["a", "b"]
  with pytest.raises(ValueError):
    greetings.to_hf_dataset([])
  shards = [greetings.shard_for_host(records, i, 3) for i in range(3)]
  assert [len(s) for s in shards] == [3, 3, 3]
  assert sorted(r.query for s in shards for r in s) == [f"q{i}" for i in range(9)]
  with pytest.raises(ValueError):
    greetings.shard_for_host(records, 3, 3)
  once, again = greetings.shuffled(records, 7), greetings.shuffled(records, 7)
  assert once == again and once != records and sorted(once, key=records.index) == records
  assert greetings.shuffled(records, 8) != once


# ---------------------------------------------------------------------------------------------
# Fetch against a local HTTP server.


@pytest.fixture
def http_dataset(tmp_path, monkeypatch):
  """Serves tmp_path/served/dataset on 127.0.0.1; yields (root, base_url, requested paths)."""
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  served = tmp_path / "served"
  requested: list[str] = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(served), **kwargs)

    def do_GET(self):
      requested.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield served / "dataset", f"http://127.0.0.1:{server.server_address[1]}/dataset", requested
  server.shutdown()
  server.server_close()


def test_fetch_downloads_validates_and_skips(tmp_path, http_dataset):
  root, base_url, requested = http_dataset
  counts = write_tiny_dataset(root)
  dest, log = tmp_path / "data", []
  assert fetch.fetch_dataset(dest, base_url=base_url, log=log.append, retries=1) == counts
  assert len(requested) == len(paths.DATASET_FILES)
  for rel in paths.DATASET_FILES.values():
    assert (dest / rel).read_bytes() == (root / rel).read_bytes()
  assert not list(dest.rglob("*.part"))
  # Second run: everything present and valid, nothing downloaded.
  assert fetch.fetch_dataset(dest, base_url=base_url, log=log.append) == counts
  assert len(requested) == len(paths.DATASET_FILES)
  # A corrupt local file is downloaded again.
  (dest / "random_query.txt").write_bytes(b"\xff\xfe")
  fetch.fetch_dataset(dest, base_url=base_url, names=["random_query"], log=log.append)
  assert requested[-1] == "/dataset/random_query.txt"
  assert greetings.load_random_queries(dest) == ["生日祝福语", "生日快乐祝福语", "短短一句,说透人生"]
  assert any("present but invalid" in line for line in log)


def test_fetch_rejects_bad_download_and_404(tmp_path, http_dataset):
  root, base_url, _ = http_dataset
  write_tiny_dataset(root)
  _write_json(root / "sft/sft_data.json", [{"instruction": "a", "input": ""}])
  dest = tmp_path / "data"
  with pytest.raises(greetings.DataFormatError, match="record 0, field 'output'"):
    fetch.fetch_dataset(dest, base_url=base_url, names=["sft"], log=lambda _: None)
  assert not (dest / "sft/sft_data.json").exists() and not list(dest.rglob("*.part"))
  (root / "random_query.txt").unlink()
  with pytest.raises(fetch.FetchError, match="HTTP 404"):
    fetch.fetch_dataset(dest, base_url=base_url, names=["random_query"], log=lambda _: None)
  with pytest.raises(KeyError):
    fetch.fetch_dataset(dest, base_url=base_url, names=["nope"])


def test_fetch_data_entry_point(tmp_path, http_dataset):
  root, base_url, _ = http_dataset
  write_tiny_dataset(root)
  result = subprocess.run(
    [sys.executable, "-m", "launch.fetch_data", f"--data_dir={tmp_path / 'd'}",
     f"--base_url={base_url}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
  assert result.returncode == 0, result.stderr
  assert "7 files ready" in result.stdout and "evaluation=3" in result.stdout


# ---------------------------------------------------------------------------------------------
# Formatting, padding, batching.

_CORPUS = ["给妈妈的生日祝福", "妈妈生日快乐！愿您健康长寿，天天开心。", "新年快乐，万事如意！",
           "请只生成一条祝福语：老师节日快乐", "愿你前程似锦，未来可期。", "祝你考试顺利，金榜题名！"] * 5


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
  model = train.train_sentencepiece(_CORPUS, tmp_path_factory.mktemp("sp") / "tiny",
                                    vocab_size=320)
  return load_tokenizer(model)


def test_sft_example_loss_mask_and_end_token(sp_tok):
  cfg = formatting.FormatConfig()
  ex = formatting.encode_sft_example(sp_tok, "新年祝福", "新年快乐！", cfg)
  tokens, mask = ex["tokens"], ex["loss_mask"]
  assert tokens.dtype == np.int32 and mask.shape == tokens.shape
  n_prompt = len(sp_tok.encode("<|user|>新年祝福<|end|><|assistant|>"))
  assert list(mask) == [0] * n_prompt + [1] * (len(tokens) - n_prompt)
  assert tokens[-1] == sp_tok.eot_id
  assert sp_tok.decode(tokens[mask == 1]) == "新年快乐！"
  plain = formatting.encode_sft_example(
    sp_tok, "新年祝福", "新年快乐！", formatting.FormatConfig(use_chat_template=False))
  assert plain["tokens"][-1] == sp_tok.eos_id
  assert sp_tok.decode(plain["tokens"][plain["loss_mask"] == 0]) == "新年祝福\n"


def test_grpo_template_and_truncation(sp_tok):
  grpo = formatting.FormatConfig(prompt_template=formatting.GRPO_PROMPT_TEMPLATE)
  assert formatting.render_prompt(sp_tok, "老师节日快乐", grpo) == (
    "<|user|>请只生成一条祝福语：老师节日快乐<|end|><|assistant|>")
  n_template = len(sp_tok.encode(formatting.render_prompt(sp_tok, "", grpo)))
  cfg = formatting.FormatConfig(max_prompt_len=n_template + 3, max_response_len=4,
                                prompt_template=formatting.GRPO_PROMPT_TEMPLATE)
  stats = formatting.FormattingStats()
  long_request = "新年快乐，万事如意！" * 3
  ex = formatting.encode_sft_example(sp_tok, long_request, "愿你前程似锦，未来可期。", cfg, stats)
  n_prompt = int((ex["loss_mask"] == 0).sum())
  assert n_prompt == n_template + 3 and int(ex["loss_mask"].sum()) == 4
  prompt_text = sp_tok.decode(ex["tokens"][:n_prompt], skip_special_tokens=False)
  # The template survives whole; the request keeps its end.
  assert prompt_text.startswith("<|user|>请只生成一条祝福语：")
  assert prompt_text.endswith("如意！<|end|><|assistant|>")
  assert ex["tokens"][-1] != sp_tok.eot_id  # A cut response gets no end token.
  formatting.encode_sft_example(sp_tok, "新年", "新年", cfg, stats)
  assert (stats.n_examples, stats.n_prompt_truncated, stats.n_response_truncated) == (2, 1, 1)
  assert "prompt truncated 1 (50.0%)" in stats.summary()
  with pytest.raises(ValueError, match="no room"):
    formatting.encode_prompt(sp_tok, long_request, formatting.FormatConfig(
      max_prompt_len=n_template, prompt_template=formatting.GRPO_PROMPT_TEMPLATE))
  with pytest.raises(ValueError, match="query"):
    formatting.FormatConfig(prompt_template="no placeholder")


def test_buckets():
  assert formatting.make_buckets(768) == (32, 64, 128, 256, 512, 768)
  assert formatting.make_buckets(256, 64) == (64, 128, 256)
  assert formatting.make_buckets(20) == (20,)
  assert formatting.bucket_length(33, (32, 64)) == 64
  with pytest.raises(ValueError, match="exceeds"):
    formatting.bucket_length(65, (32, 64))


def test_pad_batch_right_and_left():
  examples = [{"tokens": np.array([5, 6, 7], np.int32), "loss_mask": np.array([0, 1, 1])},
              {"tokens": np.array([8], np.int32), "loss_mask": np.array([1])}]
  right = formatting.pad_batch(examples, (4, 8), pad_id=0)
  np.testing.assert_array_equal(right["tokens"], [[5, 6, 7, 0], [8, 0, 0, 0]])
  np.testing.assert_array_equal(right["loss_mask"], [[0, 1, 1, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(right["attention_mask"], [[1, 1, 1, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(right["positions"][:, :3], [[0, 1, 2], [0, 0, 0]])
  left = formatting.pad_batch(examples, (4, 8), pad_id=9, left_pad=True)
  np.testing.assert_array_equal(left["tokens"], [[9, 5, 6, 7], [9, 9, 9, 8]])
  np.testing.assert_array_equal(left["positions"], [[0, 0, 1, 2], [0, 0, 0, 0]])
  np.testing.assert_array_equal(left["loss_mask"], [[0, 0, 1, 1], [0, 0, 0, 1]])
  # Real tokens get the same positions under either padding.
  for row in range(2):
    np.testing.assert_array_equal(left["positions"][row][left["attention_mask"][row] == 1],
                                  right["positions"][row][right["attention_mask"][row] == 1])
  assert all(a.dtype == np.int32 for a in left.values())
  with pytest.raises(ValueError, match="example 0 field 'loss_mask'"):
    formatting.pad_batch([{"tokens": np.arange(3), "loss_mask": np.ones(2)}], (4,), 0)


def test_encode_prompts_left_padded(sp_tok):
  cfg = formatting.FormatConfig(prompt_template=formatting.GRPO_PROMPT_TEMPLATE)
  batch = formatting.encode_prompts(sp_tok, ["新年", "老师节日快乐，愿你前程似锦"], cfg)
  assert set(batch) == {"tokens", "attention_mask", "positions"}
  assert batch["tokens"].shape[1] in formatting.prompt_buckets(cfg)
  assert (batch["tokens"][:, -1] == sp_tok.piece_id("<|assistant|>")).all()
  first = batch["tokens"][0][batch["attention_mask"][0] == 1]
  assert list(first) == formatting.encode_prompt(sp_tok, "新年", cfg)[0]
  assert batch["positions"][0, -1] == len(first) - 1


def test_batch_iterator_epochs_and_resume():
  encoded = [{"tokens": np.full(i % 5 + 1, i, np.int32), "loss_mask": np.ones(i % 5 + 1)}
             for i in range(10)]
  kwargs = dict(bucket_lengths=(4, 8), pad_id=0, seed=3, num_epochs=2)
  batches = list(formatting.batch_iterator(encoded, 4, **kwargs))
  assert len(batches) == 2 * formatting.batches_per_epoch(10, 4) == 4
  firsts = [sorted(set(b["tokens"][:, 0].tolist())) for b in batches]
  assert len(set(sum(firsts[:2], []))) == 8  # No repeats within an epoch.
  assert firsts[:2] != firsts[2:]  # Each epoch has its own order.
  resumed = list(formatting.batch_iterator(encoded, 4, start_batch=3, **kwargs))
  assert len(resumed) == 1
  np.testing.assert_array_equal(resumed[0]["tokens"], batches[3]["tokens"])
  tail = list(formatting.batch_iterator(encoded, 4, drop_remainder=False, shuffle=False,
                                        bucket_lengths=(4, 8), pad_id=0, seed=0))
  assert [len(b["tokens"]) for b in tail] == [4, 4, 2]
  assert tail[0]["tokens"][:, 0].tolist() == [0, 1, 2, 3]
