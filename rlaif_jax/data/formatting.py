"""(prompt, response) text -> padded token arrays for SFT, reward models and RL sampling.

Prompt text: the request goes through `FormatConfig.prompt_template` (e.g. the paper's GRPO
template "请只生成一条祝福语：{query}"), then the tokenizer's chat template as one user message
(with an optional system message) and the generation prompt, or, with use_chat_template=False,
through `plain_template` ("{prompt}\\n").

Prompt and response are tokenized separately, exactly as a sampler sees them (prompt ids, then
generated ids), so training and generation agree on the boundary.

Truncation (counted in `FormattingStats`):
  * prompt > max_prompt_len: the template is kept whole and the *request* tokens are cut from the
    left, keeping the end of the request next to the generation prompt. Keeping the end of the
    whole prompt would drop the chat template's head (system turn, role markers) instead.
  * response > max_response_len - 1: the first max_response_len response tokens are kept and no
    end token is appended, so the model is never taught to stop mid-sentence.
Otherwise the response is followed by the end-of-turn id (chat template: `tok.eot_id`, e.g.
<|im_end|> or <|end|>; plain template: `tok.eos_id`), and `loss_mask` is 1 on the response tokens
including that end id, 0 on the prompt.

Padding goes to a bucketed length (powers of two from min_bucket, capped at the maximum), so a
jitted step compiles once per bucket, not once per batch.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Sequence

import numpy as np

from rlaif_jax.data.greetings import GRPO_PREFIX
from rlaif_jax.tokenizers.base import Tokenizer

GRPO_PROMPT_TEMPLATE = GRPO_PREFIX + "{query}"
_SENTINEL = "\ue000RLAIF_REQUEST\ue001"


@dataclasses.dataclass(frozen=True)
class FormatConfig:
  """How texts become tokens.

  max_prompt_len / max_response_len: token budgets (response budget includes the end id).
  use_chat_template: render prompts with the tokenizer's chat template, else `plain_template`.
  prompt_template: user-message content; must contain "{query}" (GRPO: GRPO_PROMPT_TEMPLATE).
  plain_template: the whole prompt without a chat template; must contain "{prompt}".
    Both are filled by plain substitution (not str.format), so other braces are kept as text.
  system_prompt: optional system message (chat template only).
  add_bos: put the tokenizer's BOS first when it has one and the template did not.
  min_bucket: the smallest padded length.
  """
  max_prompt_len: int = 256
  max_response_len: int = 512
  use_chat_template: bool = True
  prompt_template: str = "{query}"
  plain_template: str = "{prompt}\n"
  system_prompt: str | None = None
  add_bos: bool = False
  min_bucket: int = 32

  def __post_init__(self):
    if "{query}" not in self.prompt_template:
      raise ValueError(f"FormatConfig.prompt_template needs '{{query}}': {self.prompt_template!r}")
    if "{prompt}" not in self.plain_template:
      raise ValueError(f"FormatConfig.plain_template needs '{{prompt}}': {self.plain_template!r}")
    if self.max_prompt_len < 1 or self.max_response_len < 2 or self.min_bucket < 1:
      raise ValueError("FormatConfig: need max_prompt_len >= 1, max_response_len >= 2, "
                       f"min_bucket >= 1; got {self.max_prompt_len}, {self.max_response_len}, "
                       f"{self.min_bucket}")


@dataclasses.dataclass
class FormattingStats:
  """Counts of formatted examples and of truncations."""
  n_examples: int = 0
  n_prompt_truncated: int = 0
  n_response_truncated: int = 0

  def record(self, prompt_truncated: bool, response_truncated: bool = False) -> None:
    self.n_examples += 1
    self.n_prompt_truncated += int(prompt_truncated)
    self.n_response_truncated += int(response_truncated)

  def summary(self) -> str:
    def share(k: int) -> str:
      return f"{k} ({100.0 * k / max(self.n_examples, 1):.1f}%)"
    return (f"{self.n_examples} examples, prompt truncated {share(self.n_prompt_truncated)}, "
            f"response truncated {share(self.n_response_truncated)}")


# ---------------------------------------------------------------------------------------------
# Text -> ids.


def render_prompt(tok: Tokenizer, request: str, cfg: FormatConfig) -> str:
  """The full prompt text for `request` (template + chat template + generation prompt)."""
  content = cfg.prompt_template.replace("{query}", request)
  if not cfg.use_chat_template:
    return cfg.plain_template.replace("{prompt}", content)
  messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
  messages.append({"role": "user", "content": content})
  return tok.apply_chat_template(messages, add_generation_prompt=True)


def _with_bos(tok: Tokenizer, ids: list[int], cfg: FormatConfig) -> list[int]:
  if cfg.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
    return [tok.bos_id] + ids
  return ids


def encode_prompt(tok: Tokenizer, request: str, cfg: FormatConfig) -> tuple[list[int], bool]:
  """Returns (prompt ids, truncated); at most cfg.max_prompt_len ids (see module docstring)."""
  ids = _with_bos(tok, tok.encode(render_prompt(tok, request, cfg)), cfg)
  if len(ids) <= cfg.max_prompt_len:
    return ids, False
  parts = render_prompt(tok, _SENTINEL, cfg).split(_SENTINEL)
  if len(parts) != 2:
    raise ValueError(f"the prompt template places the request {len(parts) - 1} times; cannot "
                     "truncate it (expected exactly once)")
  head = _with_bos(tok, tok.encode(parts[0]), cfg)
  tail = tok.encode(parts[1])
  budget = cfg.max_prompt_len - len(head) - len(tail)
  if budget < 1:
    raise ValueError(f"the prompt template alone takes {len(head) + len(tail)} tokens, "
                     f"FormatConfig.max_prompt_len={cfg.max_prompt_len} leaves no room for the "
                     "request")
  return head + tok.encode(request)[-budget:] + tail, True


def encode_response(tok: Tokenizer, response: str, cfg: FormatConfig) -> tuple[list[int], bool]:
  """Returns (response ids ending with the end-of-turn id, truncated); at most max_response_len."""
  ids = tok.encode(response)
  if len(ids) > cfg.max_response_len - 1:
    return ids[:cfg.max_response_len], True
  return ids + [tok.eot_id if cfg.use_chat_template else tok.eos_id], False


def encode_sft_example(tok: Tokenizer, prompt: str, response: str, cfg: FormatConfig,
                       stats: FormattingStats | None = None) -> dict[str, np.ndarray]:
  """Returns {tokens: int32[T], loss_mask: int32[T]} with T <= max_prompt_len + max_response_len;
  loss_mask is 1 on response tokens (end id included). Updates `stats` when given."""
  prompt_ids, prompt_cut = encode_prompt(tok, prompt, cfg)
  response_ids, response_cut = encode_response(tok, response, cfg)
  if stats is not None:
    stats.record(prompt_cut, response_cut)
  tokens = np.asarray(prompt_ids + response_ids, dtype=np.int32)
  loss_mask = np.zeros(len(tokens), dtype=np.int32)
  loss_mask[len(prompt_ids):] = 1
  return {"tokens": tokens, "loss_mask": loss_mask}


def encode_sft_dataset(tok: Tokenizer, pairs: Iterable[tuple[str, str]], cfg: FormatConfig
                       ) -> tuple[list[dict[str, np.ndarray]], FormattingStats]:
  """encode_sft_example over (prompt, response) pairs; returns the examples and their stats."""
  stats = FormattingStats()
  return [encode_sft_example(tok, p, r, cfg, stats) for p, r in pairs], stats


# ---------------------------------------------------------------------------------------------
# Padding and batching.


def make_buckets(max_len: int, min_len: int = 32) -> tuple[int, ...]:
  """Padded lengths: powers of two from min_len below max_len, then max_len itself."""
  if max_len < 1 or min_len < 1:
    raise ValueError(f"make_buckets: need positive lengths, got max_len={max_len}, "
                     f"min_len={min_len}")
  buckets, length = [], 1 << max(0, (min_len - 1).bit_length())
  while length < max_len:
    buckets.append(length)
    length *= 2
  return tuple(buckets) + (max_len,)


def prompt_buckets(cfg: FormatConfig) -> tuple[int, ...]:
  """Buckets for prompt-only batches (sampling)."""
  return make_buckets(cfg.max_prompt_len, cfg.min_bucket)


def sequence_buckets(cfg: FormatConfig) -> tuple[int, ...]:
  """Buckets for prompt + response batches (SFT, reward model)."""
  return make_buckets(cfg.max_prompt_len + cfg.max_response_len, cfg.min_bucket)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length; ValueError when length exceeds the largest."""
  for b in sorted(buckets):
    if b >= length:
      return b
  raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {max(buckets)}")


def pad_batch(examples: Sequence[dict[str, np.ndarray]], bucket_lengths: Sequence[int],
              pad_id: int, left_pad: bool = False) -> dict[str, np.ndarray]:
  """Stacks examples ({tokens, optional loss_mask}) into a padded batch.

  Returns int32 arrays of shape [B, T], T = the bucket of the longest example:
    tokens (pad_id on padding), loss_mask (0 on padding; all 0 when examples have none),
    attention_mask (1 on real tokens), positions = max(cumsum(attention_mask) - 1, 0), which
    numbers real tokens 0.. from their first one, so left padding is position-correct.
  """
  if not examples:
    raise ValueError("pad_batch: no examples")
  lengths = []
  for i, ex in enumerate(examples):
    tokens = np.asarray(ex["tokens"])
    if tokens.ndim != 1 or len(tokens) == 0:
      raise ValueError(f"pad_batch: example {i} field 'tokens' must be a non-empty 1-D array, "
                       f"got shape {tokens.shape}")
    if "loss_mask" in ex and np.shape(ex["loss_mask"]) != tokens.shape:
      raise ValueError(f"pad_batch: example {i} field 'loss_mask' has shape "
                       f"{np.shape(ex['loss_mask'])}, tokens {tokens.shape}")
    lengths.append(len(tokens))
  width = bucket_length(max(lengths), bucket_lengths)
  batch = {k: np.zeros((len(examples), width), np.int32) for k in ("loss_mask", "attention_mask")}
  batch["tokens"] = np.full((len(examples), width), pad_id, np.int32)
  for i, (ex, n) in enumerate(zip(examples, lengths)):
    cols = slice(width - n, width) if left_pad else slice(0, n)
    batch["tokens"][i, cols] = ex["tokens"]
    batch["attention_mask"][i, cols] = 1
    if "loss_mask" in ex:
      batch["loss_mask"][i, cols] = ex["loss_mask"]
  batch["positions"] = np.maximum(np.cumsum(batch["attention_mask"], axis=1) - 1, 0
                                  ).astype(np.int32)
  return batch


def batches_per_epoch(n_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Number of batches batch_iterator yields per epoch."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  return n_examples // batch_size if drop_remainder else -(-n_examples // batch_size)


def batch_iterator(encoded: Sequence[dict[str, np.ndarray]], batch_size: int, *,
                   bucket_lengths: Sequence[int], pad_id: int, seed: int,
                   num_epochs: int | None = 1, start_batch: int = 0,
                   drop_remainder: bool = True, shuffle: bool = True,
                   left_pad: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Yields pad_batch batches over `encoded`, epoch after epoch.

  Epoch e visits the examples in the permutation drawn from (seed, e), so a run resumed at
  global batch `start_batch` sees exactly the batches it would have seen. num_epochs=None repeats
  forever. With drop_remainder=False the last batch of an epoch is smaller (one more compile).
  """
  per_epoch = batches_per_epoch(len(encoded), batch_size, drop_remainder)
  if per_epoch == 0:
    raise ValueError(f"batch_iterator: {len(encoded)} examples make no batch of {batch_size}")
  step, order, order_epoch = start_batch, None, -1
  while num_epochs is None or step < num_epochs * per_epoch:
    epoch, b = divmod(step, per_epoch)
    if epoch != order_epoch:
      rng = np.random.default_rng([seed, epoch])
      order = rng.permutation(len(encoded)) if shuffle else np.arange(len(encoded))
      order_epoch = epoch
    rows = order[b * batch_size:(b + 1) * batch_size]
    yield pad_batch([encoded[i] for i in rows], bucket_lengths, pad_id, left_pad=left_pad)
    step += 1


def encode_prompts(tok: Tokenizer, prompts: Sequence[str], cfg: FormatConfig,
                   stats: FormattingStats | None = None) -> dict[str, np.ndarray]:
  """Left-padded prompt batch for sampling: requests -> {tokens, attention_mask, positions},
  int32 [B, T] with T from prompt_buckets(cfg); every row ends with its generation prompt."""
  examples = []
  for request in prompts:
    ids, cut = encode_prompt(tok, request, cfg)
    if stats is not None:
      stats.record(cut)
    examples.append({"tokens": np.asarray(ids, np.int32)})
  batch = pad_batch(examples, prompt_buckets(cfg), tok.pad_id, left_pad=True)
  del batch["loss_mask"]
  return batch
