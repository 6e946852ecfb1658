"""One trainer skeleton with pluggable losses.

  optim          AdamW + warmup/decay schedule, clipping, decay mask, exact gradient accumulation
  train_state    TrainState (step, params, rest, opt_state, rng, graphdef) and its shardings
  loop           Loop: the one training loop of SFT, RM and RL (schedule, progress bar, metrics
                 rows, NaN guard, checkpoints); each plugs in its step, save and metric keys
  trainer        make_train_step / make_eval_step (loss_fn(model, batch, rng) -> (loss, aux)),
                 put_batch, Trainer (SFT/RM steps, eval and resume in the loop)
  checkpointing  orbax Checkpointer, load_model_from_workdir, export_for_inference
  metrics        metrics.jsonl + TensorBoard writers
  sft            SFT loss, data wiring, run_sft
"""
