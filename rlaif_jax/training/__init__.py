"""One trainer skeleton with pluggable losses.

  optim          AdamW + warmup/decay schedule, clipping, decay mask, exact gradient accumulation
  train_state    TrainState (step, params, rest, opt_state, rng, graphdef) and its shardings
  trainer        make_train_step / make_eval_step (loss_fn(model, batch, rng) -> (loss, aux)),
                 put_batch, Trainer (the loop: eval, logging, checkpoints, resume, NaN guard)
  checkpointing  orbax Checkpointer, load_model_from_workdir, export_for_inference
  metrics        metrics.jsonl + TensorBoard writers
  sft            SFT loss, data wiring, run_sft
"""
