r"""SFT (cold start) of Qwen2.5-7B-Instruct on the greetings data on a TPU v5e / v5p slice.

  python -m launch.sft --config=configs/sft_qwen2_5_7b_tpu.py --workdir=/mnt/persist/sft_qwen7b \
      --data_dir=$RLAIF_DATA_DIR --config.model.hf_checkpoint=/mnt/models/Qwen2.5-7B-Instruct \
      --auto_detect

Run the same command on every host of the slice (`gcloud compute tpus tpu-vm ssh ... --worker=all`);
`--auto_detect` lets `jax.distributed.initialize()` find the other hosts. WORKDIR must be a path all
hosts see (a persistent disk per host works for checkpoints only if it is shared, e.g. gcsfuse).

Target slice: `config.target_topology` = v5p-8 (4 chips, one host). Proven before paying for it
by `python -m launch.aot_compile --config=configs/sft_qwen2_5_7b_tpu.py` (libtpu's compiler, no
TPU): the train step needs 56.20 GiB per chip of the 95.74 XLA allows (fp32 weights, gradients
and AdamW moments sharded over the 4 chips on `fsdp`, bf16 compute, scanned layers). Remat keeps
the matmul outputs (`remat_policy="dots"`): 10% fewer compiled FLOPs than "full" (38.34 GiB),
and it fits; BUILD_NOTES "Ahead-of-time compiles" has the table. `--topology=NAME` sizes it for
another slice; on a slice with more chips than `batch_size`, move chips to the tensor axis, e.g.
`--config.mesh='(1,32,2)'`, or raise the batch; `loop.num_microbatches` trades memory for time.
Multi-slice: `config.mesh` is one slice's mesh and `config.dcn_mesh` how slices multiply it
(default data-parallel across slices).

Hyper-parameters follow common full fine-tuning practice for 7B instruct models (the paper does not
list its SFT optimizer settings): lr 1e-5, 3% warmup, cosine to 10%, 3 epochs of the 3800 training
examples at batch 32 (~356 steps).
"""
import ml_collections
from ml_collections import config_dict

from configs import common

TARGET_TOPOLOGY = "v5p-8"  # proven by `python -m launch.aot_compile` (BUILD_NOTES)
TRAIN_EXAMPLES = 3800  # 4000 minus the 5% held out
EPOCHS = 3
BATCH_SIZE = 32


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.target_topology = TARGET_TOPOLOGY
  # hf_checkpoint: a local HF directory of Qwen/Qwen2.5-7B-Instruct (config.json, safetensors,
  # tokenizer files); weights stream straight into their shards.
  config.model = common.model_config(preset="qwen2_5_7b", param_dtype="float32",
                                     dtype="bfloat16", remat=True,
                                     scan_layers=True, remat_policy="dots")
  config.tokenizer = ml_collections.ConfigDict(dict(
      path=config_dict.placeholder(str),  # default: the model's own directory
      vocab_size=0, model_type="bpe"))
  config.data = ml_collections.ConfigDict(dict(
      eval_fraction=0.05, split_seed=0, max_train_examples=0, max_eval_examples=0,
      bucket_multiple=64))
  config.format = common.format_config(max_prompt_len=256, max_response_len=512, min_bucket=128)
  config.batch_size = BATCH_SIZE
  config.eval_batch_size = BATCH_SIZE
  total = EPOCHS * TRAIN_EXAMPLES // BATCH_SIZE
  config.optim = common.optim_config(lr=1e-5, warmup_steps=max(1, int(0.03 * total)),
                                     decay="cosine", end_lr_ratio=0.1, weight_decay=0.0,
                                     max_grad_norm=1.0, b2=0.95)
  config.loop = common.loop_config(total_steps=total, log_every=5, eval_every=50,
                                   checkpoint_every=50, keep_checkpoints=2)
  config.mesh = (1, -1, 1)  # (data, fsdp, tensor): FSDP over the whole slice
  # Multi-slice (slices joined by DCN): config.mesh is one slice's mesh, dcn_mesh how the slices
  # multiply it, e.g. (2, 1, 1); unset: data-parallel across all slices.
  config.dcn_mesh = config_dict.placeholder(tuple)
  config.samples = ml_collections.ConfigDict(dict(num_prompts=8, max_new_tokens=256))
  config.export = ml_collections.ConfigDict(dict(dtype="bfloat16"))
  return config
