"""The one training loop, shared by SFT, the reward model and RL.

`Loop.run(start, step_fn)` runs steps start + 1 .. total_steps. Each algorithm supplies its
step (`step_fn(step) -> (metrics, tokens)`), its checkpoint save, its metric keys (the NaN
guard's `watched`, the progress bar's `postfix`) and, for SFT and the reward model, an eval;
the loop owns the rest: the schedule (`due`), the tqdm bar (ETA, postfix, tokens/s), the
metrics.jsonl rows, the NaN guard, periodic checkpoints, and the final wait for pending saves.

Multi-host: every process runs the loop alike (its decisions read replicated metrics, so they
agree without a collective); only process 0 draws the bar and writes files (`MetricWriter`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
from tqdm import tqdm

from rlaif_jax.sharding import host
from rlaif_jax.training import checkpointing, metrics as metrics_lib

Row = dict[str, float]
# step -> (its metrics: device or Python scalars, its tokens for the loop's tokens/s, or None
# when the row carries its own "tokens_per_sec")
StepFn = Callable[[int], tuple[Mapping[str, Any], int | None]]


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm became NaN/Inf; the offending state was not saved."""


def due(step: int, every: int, last: int) -> bool:
  """The loop schedule (SFT, RM and RL): the last step, and every `every`-th (0: never)."""
  return step == last or (every > 0 and step % every == 0)


def stop_if_not_finite(what: str, step: int, row: Mapping[str, float], keys: Sequence[str],
                       checkpointer: checkpointing.Checkpointer,
                       close: Callable[[], None]) -> None:
  """The NaN guard of every loop: when one of `keys` in `row` is not finite, waits for pending
  saves, closes (`close`) and raises NonFiniteLossError naming the step and the last good
  checkpoint, so the diverged state is never saved."""
  bad = {k: row[k] for k in keys if k in row and not math.isfinite(row[k])}
  if not bad:
    return
  checkpointer.wait()
  last = checkpointer.latest_step()
  where = (f"the last good checkpoint is step {last} in {checkpointer.directory}; rerun "
           "the same command to resume from it (consider a lower learning rate or checking "
           "that step's batch)" if last is not None else "no checkpoint was written yet")
  close()
  raise NonFiniteLossError(
      f"{what} step {step}: {', '.join(f'{k}={v}' for k, v in bad.items())} is not finite; "
      f"stopped without saving this state; {where}")


class Throughput:
  """Tokens per second of the steps read back (so finished on the device) since the window
  opened, time spent `paused` (eval, checkpoints) not counted. Dispatch alone, which returns at
  once, would report a burst after every reset."""

  def __init__(self):
    self.tokens, self.start, self.rate = 0, time.perf_counter(), 0.0
    self.counting = False  # whether any step reported its tokens

  def add(self, tokens: int) -> None:
    self.tokens += tokens
    self.counting = True

  def update(self) -> float:
    if self.tokens:  # right after a reset nothing new has finished: keep the last figure
      self.rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
    return self.rate

  def reset(self) -> None:
    self.tokens, self.start = 0, time.perf_counter()

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    pause = time.perf_counter()
    try:
      yield
    finally:
      self.start += time.perf_counter() - pause


@dataclasses.dataclass(frozen=True)
class Loop:
  """What one algorithm plugs into the loop. eval_every / checkpoint_every / log_every = 0
  disables the periodic action (the last step still logs, evaluates and checkpoints).

  what: names a step in errors ("training step 7"); desc: the progress bar's label.
  checkpointer: the NaN guard names its latest step; the loop waits for it at the end.
  save(step): checkpoints the current state. close(): the owner's close (the NaN guard calls it).
  watched: the row keys that must stay finite. postfix(row): the bar's postfix from a row.
  evaluate(): eval metrics ({eval_loss, ...}) of the current state.
  read_late: step s's metrics are read after step s + 1 is dispatched (see `run`).
  """
  what: str
  desc: str
  total_steps: int
  checkpointer: checkpointing.Checkpointer
  writer: metrics_lib.MetricWriter
  save: Callable[[int], None]
  close: Callable[[], None]
  watched: Sequence[str]
  postfix: Callable[[Row], dict[str, str]]
  log_every: int = 1
  checkpoint_every: int = 0
  evaluate: Callable[[], Row] | None = None
  eval_every: int = 0
  eval_at_start: bool = False
  progress_bar: bool = True
  read_late: bool = False

  def _any_due(self, step: int) -> bool:
    return any(due(step, every, self.total_steps) for every in (
        self.log_every, self.checkpoint_every, self.eval_every if self.evaluate else 0))

  def _eval(self, step: int, bar: tqdm) -> Row:
    out = self.evaluate()
    if host.is_main():  # once per run, not once per host
      bar.write(f"step {step}: eval_loss={out['eval_loss']:.4f}")
    return out

  def _read(self, ready: list[tuple[int, Mapping[str, Any], int | None]],
            throughput: Throughput) -> Row:
    """The rows of the `ready` steps (one device read), each NaN-guarded; the last one."""
    row: Row = {}
    for (step, _, tokens), out in zip(ready, jax.device_get([o for _, o, _ in ready])):
      row = metrics_lib.to_python_scalars(out)
      stop_if_not_finite(self.what, step, row, self.watched, self.checkpointer, self.close)
      if tokens is not None:
        throughput.add(tokens)
    return row

  def run(self, start: int, step_fn: StepFn) -> Row:
    """Runs steps start + 1 .. total_steps (metrics rows after `start` are dropped first: a
    killed run logged them after its last checkpoint). Returns the last row read.

    With read_late, metrics are read back one step late: the device always has the next step
    queued while the host checks, logs and prepares the next batch (reading step s right away
    would idle the device for the whole host turn). On log / eval / checkpoint steps everything
    is read first, so a non-finite step is still caught before any later state is saved.
    """
    total = self.total_steps
    self.writer.truncate_after(start)
    if self.evaluate is not None and self.eval_at_start and start == 0:
      self.writer.write(0, self.evaluate())
    bar = tqdm(total=total, initial=start, desc=self.desc, dynamic_ncols=True, mininterval=1.0,
               disable=not (self.progress_bar and host.is_main()))
    throughput = Throughput()
    pending: list[tuple[int, Mapping[str, Any], int | None]] = []
    row: Row = {}
    for step in range(start + 1, total + 1):
      pending.append((step, *step_fn(step)))
      ready, pending = ((pending[:-1], pending[-1:]) if self.read_late and not self._any_due(step)
                        else (pending, []))
      row = self._read(ready, throughput) or row
      bar.update(1)
      if throughput.counting and row:
        row["tokens_per_sec"] = throughput.update()
      if row:
        bar.set_postfix(**self.postfix(row))
      logged: Row = {}
      if due(step, self.log_every, total):
        logged.update(row)
        throughput.reset()
      with throughput.paused():  # eval and checkpoint time do not count against tokens/s
        if self.evaluate is not None and due(step, self.eval_every, total):
          logged.update(self._eval(step, bar))
        if logged:
          self.writer.write(step, logged)
        if due(step, self.checkpoint_every, total):
          self.save(step)
    bar.close()
    self.checkpointer.wait()
    return row
