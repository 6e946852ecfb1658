"""Tokenizers: sentencepiece training + round trip + chat template, the HF wrapper on a tokenizer
built in the test, load_tokenizer dispatch, and the train_tokenizer entry point."""
import itertools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rlaif_jax.data import formatting, greetings
from rlaif_jax.tokenizers import Tokenizer, load_tokenizer, train
from rlaif_jax.tokenizers import sentencepiece_tok as spt

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
HF_TEXTS = ["生日快乐，亲爱的女孩！愿你的新一岁如星辰般闪耀。", "新年快乐，万事如意，阖家幸福！",
            "祝你考试顺利，金榜题名！", "Hello world, happy new year!", "愿你前程似锦，未来可期。"] * 20
ROUND_TRIP = ["生日快乐，亲爱的女孩！🎂✨", "愿你𠀀𪚥龘如星辰般闪耀", "  two  spaces\nnew line\ttab ",
              "2025年新年快乐🐍🧧", "Hello, 世界! <not special>", ""]


@pytest.fixture(scope="module")
def corpus_slice(data_dir):
  return list(itertools.islice(greetings.greeting_corpus(data_dir), 3000))


@pytest.fixture(scope="module")
def sp_model(corpus_slice, tmp_path_factory):
  return train.train_sentencepiece(corpus_slice, tmp_path_factory.mktemp("sp") / "greet",
                                   vocab_size=2500)


def test_greeting_corpus(data_dir, corpus_slice):
  assert len(corpus_slice) == len(set(corpus_slice)) == 3000
  assert corpus_slice[:2] == ["给女生的生日祝福", corpus_slice[1]] and corpus_slice[1].startswith("生日快乐")
  texts = set(greetings.greeting_corpus(data_dir))
  assert "请只生成一条祝福语：古风新年祝福语" in texts and "生意兴隆的祝福语" in texts


def test_sentencepiece_round_trip_and_specials(sp_model):
  tok = load_tokenizer(sp_model)
  assert isinstance(tok, spt.SentencePieceTokenizer) and isinstance(tok, Tokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 2, 3, 2500)
  assert tok.stop_ids == (tok.eos_id, tok.piece_id(spt.END)) == (3, tok.eot_id)
  for text in ROUND_TRIP:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text, text
  assert tok.encode("") == []
  # Common greetings compress well; the pieces are multi-character.
  assert len(tok.encode("生日快乐，祝你生日快乐！")) < 10


def test_sentencepiece_chat_template(sp_model):
  tok = load_tokenizer(sp_model)
  prompt = tok.apply_chat_template([{"role": "user", "content": "新年祝福"}])
  assert prompt == "<|user|>新年祝福<|end|><|assistant|>"
  full = tok.apply_chat_template(
    [{"role": "system", "content": "你是祝福语助手"}, {"role": "user", "content": "新年祝福"},
     {"role": "assistant", "content": "新年快乐！"}], add_generation_prompt=False)
  assert full == "<|system|>你是祝福语助手<|end|><|user|>新年祝福<|end|><|assistant|>新年快乐！<|end|>"
  ids = tok.encode(prompt)
  assert ids[0] == tok.piece_id(spt.USER) and ids[-2:] == [tok.eot_id, tok.piece_id(spt.ASSISTANT)]
  assert tok.decode(ids) == "新年祝福"
  assert tok.decode(ids + [tok.eos_id], skip_special_tokens=False) == prompt + "</s>"
  with pytest.raises(ValueError, match="role 'tool'"):
    tok.apply_chat_template([{"role": "tool", "content": "x"}])
  with pytest.raises(ValueError, match="out of range"):
    tok.decode([tok.vocab_size])


def test_sentencepiece_training_is_deterministic(corpus_slice, tmp_path):
  texts = corpus_slice[:800]
  a = train.train_sentencepiece(texts, tmp_path / "a", vocab_size=2200)
  b = train.train_sentencepiece(texts, tmp_path / "b", vocab_size=2200)
  # Same pieces and scores (the .model file also records its own prefix, so compare .vocab).
  assert a.with_suffix(".vocab").read_bytes() == b.with_suffix(".vocab").read_bytes()
  with pytest.raises(ValueError, match="smaller than required_chars"):
    train.train_sentencepiece(texts, tmp_path / "d", vocab_size=600)
  with pytest.raises(ValueError, match="vocab_size"):
    train.train_sentencepiece(texts, tmp_path / "c", vocab_size=100)


def test_rejects_foreign_sentencepiece_model(tmp_path):
  import sentencepiece as spm
  spm.SentencePieceTrainer.Train(
    sentence_iterator=iter(["新年快乐", "生日快乐"] * 20), model_prefix=str(tmp_path / "plain"),
    vocab_size=30, pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2, hard_vocab_limit=False)
  with pytest.raises(ValueError, match=r"missing user-defined piece '<\|system\|>'"):
    load_tokenizer(tmp_path / "plain.model")


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    load_tokenizer(tmp_path)
  with pytest.raises(FileNotFoundError, match="not a tokenizer"):
    load_tokenizer(tmp_path / "missing.model")


# ---------------------------------------------------------------------------------------------
# Hugging Face wrapper on a byte-level BPE built here.

_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _save_hf_tokenizer(out_dir: pathlib.Path, texts: list[str], chat_template: str | None,
                       pad_token: str | None) -> pathlib.Path:
  from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, trainers
  import transformers
  raw = RawTokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = decoders.ByteLevel()
  raw.train_from_iterator(texts, trainers.BpeTrainer(
    vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  kwargs = {"pad_token": pad_token} if pad_token else {}
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>",
                                            chat_template=chat_template, **kwargs)
  hf.save_pretrained(out_dir)
  return out_dir


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("hf")
  _save_hf_tokenizer(out, HF_TEXTS, _CHATML, "<|endoftext|>")
  (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
  return out


def test_hf_tokenizer_wrapper(hf_dir):
  tok = load_tokenizer(hf_dir)
  assert type(tok).__name__ == "HFTokenizer" and isinstance(tok, Tokenizer)
  ids = {name: tok.hf.convert_tokens_to_ids(name)
         for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
  assert tok.eos_id == tok.eot_id == ids["<|im_end|>"] and tok.pad_id == ids["<|endoftext|>"]
  assert tok.bos_id is None and tok.vocab_size == len(tok.hf) > 256
  assert set(tok.stop_ids) == {ids["<|im_end|>"], ids["<|endoftext|>"]}
  for text in ROUND_TRIP:
    assert tok.decode(tok.encode(text)) == text
  prompt = tok.apply_chat_template([{"role": "user", "content": "新年祝福"}])
  assert prompt == "<|im_start|>user\n新年祝福<|im_end|>\n<|im_start|>assistant\n"
  encoded = tok.encode(prompt)
  assert encoded[0] == ids["<|im_start|>"] and encoded.count(ids["<|im_end|>"]) == 1
  assert tok.decode(encoded) == "user\n新年祝福\nassistant\n"
  assert tok.decode(encoded, skip_special_tokens=False) == prompt


def test_hf_formatting_masks_response_and_im_end(hf_dir):
  tok = load_tokenizer(hf_dir)
  ex = formatting.encode_sft_example(tok, "新年祝福", "新年快乐！", formatting.FormatConfig())
  response = ex["tokens"][ex["loss_mask"] == 1]
  assert response[-1] == tok.eot_id and tok.decode(response) == "新年快乐！"
  prompt = ex["tokens"][ex["loss_mask"] == 0]
  assert tok.decode(prompt, skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_hf_without_pad_or_chat_template(tmp_path):
  tok = load_tokenizer(_save_hf_tokenizer(tmp_path, HF_TEXTS, None, None))
  assert tok.pad_id == tok.eos_id == tok.eot_id
  # <|endoftext|> ends generation too (as in Qwen's generation_config).
  assert tok.stop_ids == (tok.eos_id, tok.hf.convert_tokens_to_ids("<|endoftext|>"))
  with pytest.raises(ValueError, match="no chat_template"):
    tok.apply_chat_template([{"role": "user", "content": "x"}])
  plain = formatting.encode_sft_example(tok, "新年祝福", "新年快乐！",
                                        formatting.FormatConfig(use_chat_template=False))
  assert plain["tokens"][-1] == tok.eos_id
  np.testing.assert_array_equal(plain["tokens"][: len(tok.encode("新年祝福\n"))],
                                tok.encode("新年祝福\n"))


def test_hf_llama3_style_stop_ids(tmp_path):
  """Llama 3 Instruct: eos is <|eot_id|>; <|eom_id|> and the base EOS <|end_of_text|> also stop."""
  from tests import tiny_hf
  ids = tiny_hf.LLAMA3_IDS
  tok = load_tokenizer(tiny_hf.save_tiny_llama3_tokenizer(tmp_path))
  assert tok.eos_id == tok.eot_id == tok.pad_id == ids["<|eot_id|>"]
  assert tok.bos_id == ids["<|begin_of_text|>"]
  assert tok.stop_ids[0] == ids["<|eot_id|>"]
  assert set(tok.stop_ids) == {ids["<|eot_id|>"], ids["<|eom_id|>"], ids["<|end_of_text|>"]}
  prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}]))
  assert prompt[0] == ids["<|begin_of_text|>"] and prompt.count(ids["<|eot_id|>"]) == 1


# ---------------------------------------------------------------------------------------------
# Entry point.


def test_train_tokenizer_entry_point(data_dir, tmp_path):
  out = tmp_path / "tok" / "greet.model"
  result = subprocess.run(
    [sys.executable, "-m", "launch.train_tokenizer", f"--data_dir={data_dir}", f"--output={out}",
     "--vocab_size=3000"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    env=dict(os.environ))
  assert result.returncode == 0, result.stderr
  assert out.is_file() and out.with_suffix(".vocab").is_file()
  assert "vocab_size=3000" in result.stdout and "tokens/char" in result.stdout
  assert load_tokenizer(out).decode(load_tokenizer(out).encode(ROUND_TRIP[0])) == ROUND_TRIP[0]
