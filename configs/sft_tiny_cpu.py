r"""SFT of the tiny decoder on the greetings data, on CPU in a few minutes.

  python -m launch.sft --config=configs/sft_tiny_cpu.py --workdir=/tmp/sft_run \
      --data_dir=$RLAIF_DATA_DIR

A sentencepiece tokenizer is trained on the greetings training corpus into WORKDIR/tokenizer/
on the first run; the model is the `tiny` preset (3.6M params) with its vocabulary. 3200 pieces
is close to one piece per hanzi (the corpus needs ~2800 characters + 256 byte pieces): measured on
2 shared CPU cores, its per-token loss falls much faster than with 4000 pieces, whose BPE tokens
carry 1.65 characters each (held-out loss after 400 steps at batch 8, lr 3e-3: 4.37 vs 5.22).
Batch 8 beat batch 16 for the same compute; lr 2e-3 beat 3e-3 (600 steps: 3.87 vs 4.03) and
5e-3 (worse by step 200). Padding goes to multiples of 16 (greetings are ~45 tokens).

Override anything from the command line, e.g. `--config.loop.total_steps=50 --config.optim.lr=1e-3`.
"""
import ml_collections
from ml_collections import config_dict

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = common.model_config(preset="tiny")
  config.tokenizer = ml_collections.ConfigDict(dict(
      path=config_dict.placeholder(str), vocab_size=3200, model_type="bpe"))
  config.data = ml_collections.ConfigDict(dict(
      eval_fraction=0.05, split_seed=0, max_train_examples=0, max_eval_examples=0,
      bucket_multiple=16))
  config.format = common.format_config(max_prompt_len=64, max_response_len=192)
  config.batch_size = 8
  # Every batch (train and eval) must divide over the data-parallel shards: powers of two run on
  # 1, 2, 4 or 8 devices (a TPU v2-8 / v3-8 host, --xla_force_host_platform_device_count=8).
  config.eval_batch_size = 64
  config.optim = common.optim_config(lr=2e-3, warmup_steps=20, decay="cosine", end_lr_ratio=0.1,
                                     weight_decay=0.01, max_grad_norm=1.0)
  config.loop = common.loop_config(total_steps=600, log_every=10, eval_every=100,
                                   checkpoint_every=200, keep_checkpoints=2)
  config.mesh = (1, -1, 1)  # (data, fsdp, tensor): all local devices on fsdp
  config.samples = ml_collections.ConfigDict(dict(num_prompts=6, max_new_tokens=96))
  config.export = ml_collections.ConfigDict(dict(dtype="float32"))
  return config
