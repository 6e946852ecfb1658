"""The loop shared by SFT, the reward model and RL (training.loop), driven by plain step
functions: its schedule, metrics rows, tokens/s, checkpoints, resume truncation and NaN guard."""
import pytest

from rlaif_jax.training import loop as loop_lib, metrics as metrics_lib


class FakeCheckpointer:
  directory = "ckpts"

  def __init__(self):
    self.saved, self.waits = [], 0

  def latest_step(self):
    return self.saved[-1] if self.saved else None

  def wait(self):
    self.waits += 1


def make_loop(tmp_path, ckpt, **kwargs):
  return loop_lib.Loop(
      what="test", desc="test", checkpointer=ckpt,
      writer=metrics_lib.MetricWriter(tmp_path, tensorboard=False), save=ckpt.saved.append,
      close=lambda: None, watched=("loss",), postfix=lambda row: {"loss": f"{row['loss']:.2f}"},
      progress_bar=False, **kwargs)


@pytest.mark.parametrize("read_late", [False, True])
def test_rows_checkpoints_and_eval_follow_the_schedule(tmp_path, read_late):
  ckpt = FakeCheckpointer()
  loop = make_loop(tmp_path, ckpt, total_steps=6, log_every=2, checkpoint_every=4,
                   evaluate=lambda: {"eval_loss": 0.5}, eval_every=3, eval_at_start=True,
                   read_late=read_late)
  last = loop.run(0, lambda step: ({"loss": float(step)}, 10))
  rows = metrics_lib.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [0, 2, 3, 4, 6]
  assert rows[0] == {"step": 0, "eval_loss": 0.5}
  assert [r.get("loss") for r in rows] == [None, 2.0, None, 4.0, 6.0]
  assert all(r["tokens_per_sec"] > 0 for r in rows if "loss" in r)  # the loop's figure
  assert "eval_loss" in rows[-1] and ckpt.saved == [4, 6] and ckpt.waits == 1
  assert last["loss"] == 6.0


def test_a_row_with_its_own_tokens_per_sec_keeps_it_and_resume_truncates(tmp_path):
  ckpt = FakeCheckpointer()
  writer = metrics_lib.MetricWriter(tmp_path, tensorboard=False)
  for step in (1, 2, 3):  # a killed run logged step 3 after its checkpoint at step 2
    writer.write(step, {"loss": 9.0})
  loop = make_loop(tmp_path, ckpt, total_steps=4)
  loop.run(2, lambda step: ({"loss": 1.0, "tokens_per_sec": 7.0}, None))
  rows = metrics_lib.read_metrics(tmp_path)
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 9.0), (2, 9.0), (3, 1.0), (4, 1.0)]
  assert all(r["tokens_per_sec"] == 7.0 for r in rows[2:])


def test_nan_guard_names_the_step_and_saves_nothing_after_it(tmp_path):
  ckpt = FakeCheckpointer()
  loop = make_loop(tmp_path, ckpt, total_steps=8, log_every=0, checkpoint_every=2,
                   read_late=True)
  with pytest.raises(loop_lib.NonFiniteLossError,
                     match="test step 5: loss=nan .* last good checkpoint is step 4"):
    loop.run(0, lambda step: ({"loss": float("nan") if step >= 5 else 1.0}, 1))
  assert ckpt.saved == [2, 4]
