"""One `Tokenizer` interface over Hugging Face tokenizers and sentencepiece models."""
from rlaif_jax.tokenizers.base import Tokenizer
from rlaif_jax.tokenizers.load import load_tokenizer

__all__ = ["Tokenizer", "load_tokenizer"]
