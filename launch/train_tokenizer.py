r"""python -m launch.train_tokenizer --data_dir=$RLAIF_DATA_DIR --output=runs/tok/greetings_bpe4k.model

Trains the small sentencepiece tokenizer used by the tiny CPU configs. Corpus: the distinct texts
of the greetings training files (SFT, reward-model train pairs, random_query, GRPO train prompts).
Writes PATH (.model) and its .vocab next to it, then reloads it and prints the vocabulary size,
the special ids and the tokens per character on the corpus.
"""
from absl import app, flags

from launch import common
from rlaif_jax.data import greetings, paths
from rlaif_jax.tokenizers import load_tokenizer, train

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Greetings dataset (else env RLAIF_DATA_DIR).")
_OUTPUT = flags.DEFINE_string("output", None, "Model file to write (.model added if missing).",
                              required=True)
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", train.DEFAULT_VOCAB_SIZE, "Pieces in total.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "Sentencepiece model.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  data_dir = paths.resolve_data_dir(_DATA_DIR.value)
  output = _OUTPUT.value
  prefix = output[:-len(".model")] if output.endswith(".model") else output
  corpus = list(greetings.greeting_corpus(data_dir))
  model_file = train.train_sentencepiece(corpus, prefix, vocab_size=_VOCAB_SIZE.value,
                                         model_type=_MODEL_TYPE.value)
  tok = load_tokenizer(model_file)
  n_tokens = sum(len(tok.encode(text)) for text in corpus)
  n_chars = sum(len(text) for text in corpus)
  print(f"wrote {model_file}: {tok}")
  print(f"corpus: {len(corpus)} texts, {n_chars} chars, {n_tokens / n_chars:.3f} tokens/char")


if __name__ == "__main__":
  common.run(main)
