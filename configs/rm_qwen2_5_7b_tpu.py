r"""Bradley–Terry reward model on Qwen2.5-7B (trunk from the 7B SFT run) on a TPU v5e / v5p slice.

  python -m launch.train_rm --config=configs/rm_qwen2_5_7b_tpu.py --workdir=/mnt/persist/rm_qwen7b \
      --data_dir=$RLAIF_DATA_DIR --config.init.sft_workdir=/mnt/persist/sft_qwen7b --auto_detect

Target slice: `config.target_topology` = v5p-8; `python -m launch.aot_compile
--config=configs/rm_qwen2_5_7b_tpu.py` compiles its train step (32 pairs = 64 sequences of <= 768
tokens; the scalar head reads hidden states only) to 72.19 GiB per chip of 95.74 with
`remat_policy="dots"` (19% fewer compiled FLOPs than "full", 41.73 GiB; BUILD_NOTES). One epoch over
the 6310 training pairs (~197 steps), lr 5e-6, centering 0.01 (keeps rewards near zero for RL).
To start from the instruct model instead of SFT, leave init.sft_workdir unset and set
model.hf_checkpoint.
"""
import ml_collections
from ml_collections import config_dict

from configs import common

TARGET_TOPOLOGY = "v5p-8"  # proven by `python -m launch.aot_compile` (BUILD_NOTES)
TRAIN_PAIRS = 6310
BATCH_SIZE = 32


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.target_topology = TARGET_TOPOLOGY
  config.model = common.model_config(preset="qwen2_5_7b", param_dtype="float32",
                                     dtype="bfloat16", remat=True,
                                     scan_layers=True, remat_policy="dots")
  config.tokenizer = ml_collections.ConfigDict(dict(
      path=config_dict.placeholder(str), vocab_size=0, model_type="bpe"))
  config.init = ml_collections.ConfigDict(dict(sft_workdir=config_dict.placeholder(str)))
  config.data = ml_collections.ConfigDict(dict(
      train_file=config_dict.placeholder(str), test_file=config_dict.placeholder(str),
      length_balanced=False, max_train_pairs=0, max_eval_pairs=512))
  config.format = common.format_config(max_prompt_len=256, max_response_len=512, min_bucket=128)
  config.loss = ml_collections.ConfigDict(dict(center_coef=0.01, margin=0.0))
  config.batch_size = BATCH_SIZE
  config.eval_batch_size = BATCH_SIZE
  total = TRAIN_PAIRS // BATCH_SIZE
  config.optim = common.optim_config(lr=5e-6, warmup_steps=10, decay="cosine", end_lr_ratio=0.1,
                                     weight_decay=0.0, max_grad_norm=1.0)
  config.loop = common.loop_config(total_steps=total, log_every=5, eval_every=50,
                                   checkpoint_every=50, keep_checkpoints=2)
  config.mesh = (1, -1, 1)
  # Multi-slice (slices joined by DCN): config.mesh is one slice's mesh, dcn_mesh how the slices
  # multiply it, e.g. (2, 1, 1); unset: data-parallel across all slices.
  config.dcn_mesh = config_dict.placeholder(tuple)
  return config
