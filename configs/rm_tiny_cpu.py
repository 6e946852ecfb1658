r"""Bradley–Terry reward model (path A) on the paper's pairs, tiny decoder, 2 CPU cores.

  python -m launch.train_rm --config=configs/rm_tiny_cpu.py --workdir=/tmp/rm_run --data_dir=$RLAIF_DATA_DIR

Trains on reward_model/reward_data_train.json, evaluates on reward_data_test.json every
`loop.eval_every` steps, then writes WORKDIR/rm_report.json (pair accuracy beside the
"longer wins" baseline, accuracy where the chosen response is not longer, score/length
Spearman, and the same after length-debiasing). Start from an SFT run with
`--config.init.sft_workdir=W`; train on length-balanced pairs with `--config.data.length_balanced=True`.
"""
import ml_collections
from ml_collections import config_dict

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = common.model_config(preset="tiny")
  config.tokenizer = ml_collections.ConfigDict(dict(
      path=config_dict.placeholder(str), vocab_size=4000, model_type="bpe"))
  config.init = ml_collections.ConfigDict(dict(sft_workdir=config_dict.placeholder(str)))
  config.data = ml_collections.ConfigDict(dict(
      train_file=config_dict.placeholder(str), test_file=config_dict.placeholder(str),
      length_balanced=False, max_train_pairs=0, bucket_multiple=16,
      max_eval_pairs=256,  # periodic eval; the final report always scores the whole test file
      # Add this fraction of synthetic-negative pairs (the request's SFT greeting over random
      # characters / a repeated phrase / another occasion's greeting: data/controls.py).
      synthetic_negatives=0.1))
  config.format = common.format_config(max_prompt_len=64, max_response_len=128)
  config.loss = ml_collections.ConfigDict(dict(center_coef=0.01, margin=0.0))
  config.batch_size = 16  # pairs per step (32 sequences)
  config.eval_batch_size = 64
  config.optim = common.optim_config(lr=1e-3, warmup_steps=20, decay="cosine", end_lr_ratio=0.1,
                                     weight_decay=0.01, max_grad_norm=1.0)
  config.loop = common.loop_config(total_steps=80, log_every=10, eval_every=40,
                                   checkpoint_every=100, keep_checkpoints=2)
  config.mesh = (1, -1, 1)
  return config
