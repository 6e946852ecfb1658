"""PNG plots of training curves (a run's metrics.jsonl) and of excellence rates per checkpoint.

Uses matplotlib's object-oriented API with the Agg canvas, so no display and no global backend
switch are needed. PNGs are written atomically (`report.save_figure`): a run killed while
rendering leaves the previous PNG whole.
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlaif_jax.evaluation import report
from rlaif_jax.training import metrics as metrics_lib


class MetricGroup(NamedTuple):
  """Metrics drawn together in one PNG named `name`.png."""
  name: str
  title: str
  ylabel: str
  keys: tuple[str, ...]
  band: tuple[tuple[str, str], ...] = ()  # (mean key, std key) pairs drawn as +-1 std bands.


METRIC_GROUPS: tuple[MetricGroup, ...] = (
    MetricGroup("loss", "Loss", "loss", ("loss", "eval_loss")),
    MetricGroup("reward", "Reward (mean ± std over the batch)", "reward",
                ("reward_mean", "eval_reward_mean"), (("reward_mean", "reward_std"),)),
    MetricGroup("kl", "KL to the reference policy", "KL", ("kl", "kl_loss")),
    MetricGroup("response_len", "Response length", "tokens", ("response_len", "eval_response_len")),
    MetricGroup("pair_accuracy", "Preference pair accuracy", "accuracy",
                ("pair_accuracy", "eval_pair_accuracy")),
    MetricGroup("pg_loss", "Policy-gradient loss", "loss", ("pg_loss",)),
    MetricGroup("entropy", "Policy entropy", "nats per token", ("entropy",)),
    MetricGroup("clip_frac", "PPO clip fractions", "fraction of tokens",
                ("clip_frac", "clip_frac_lower")),
    MetricGroup("approx_kl", "KL(old || new) per update", "KL", ("approx_kl",)),
    MetricGroup("lr", "Learning rate", "learning rate", ("lr",)),
    MetricGroup("grad_norm", "Gradient norm", "global L2 norm", ("grad_norm",)),
)


def metric_series(path: str | pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """A metrics.jsonl (`training.metrics.read_metrics`) as per-key series.

  Each row has "step" (its row index is used when absent) and any numeric metrics; non-numeric
  and non-finite values are skipped, so metrics logged every k steps (eval_*) get their own x
  values.

  Returns:
    key -> (steps f64[n], values f64[n]) sorted by step.
  """
  points: dict[str, list[tuple[float, float]]] = {}
  for index, record in enumerate(metrics_lib.read_metrics(path)):
    step = record.get("step", index)
    for key, value in record.items():
      if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      if math.isfinite(value):
        points.setdefault(key, []).append((float(step), float(value)))
  series = {}
  for key, pairs in points.items():
    pairs.sort(key=lambda p: p[0])
    arr = np.array(pairs, dtype=np.float64)
    series[key] = (arr[:, 0], arr[:, 1])
  return series


def _new_axes(title: str, xlabel: str, ylabel: str, figsize: tuple[float, float] = (6.4, 4.0)):
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  return fig, ax


def _plot_group(
    group: MetricGroup, series: Mapping[str, tuple[np.ndarray, np.ndarray]], path: pathlib.Path
) -> None:
  """Draw the group's series present in `series` into the PNG `path`."""
  fig, ax = _new_axes(group.title, "step", group.ylabel)
  for key in group.keys:
    if key not in series:
      continue
    steps, values = series[key]
    style = "o-" if steps.size < 30 else "-"
    (line,) = ax.plot(steps, values, style, label=key, markersize=3)
    std_key = dict(group.band).get(key)
    if std_key in series:
      std_steps, std = series[std_key]
      common, i, j = np.intersect1d(steps, std_steps, return_indices=True)
      ax.fill_between(common, values[i] - std[j], values[i] + std[j], color=line.get_color(),
                      alpha=0.2, label=f"{key} ± {std_key}")
  ax.legend()
  fig.tight_layout()
  report.save_figure(fig, path, dpi=100)


def plot_metrics(metrics_jsonl_path: str | pathlib.Path, out_dir: str | pathlib.Path) -> list[str]:
  """One PNG per metric group of `METRIC_GROUPS` that has data in the run's metrics.jsonl.

  Args:
    metrics_jsonl_path: the run's metrics.jsonl.
    out_dir: folder for the PNGs (created), named `<group>.png`.
  Returns:
    Paths of the PNGs written, in `METRIC_GROUPS` order.
  """
  series = metric_series(metrics_jsonl_path)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  written = []
  for group in METRIC_GROUPS:
    if any(key in series for key in group.keys):
      path = out / f"{group.name}.png"
      _plot_group(group, series, path)
      written.append(str(path))
  return written


def plot_workdir(workdir: str | pathlib.Path) -> list[str]:
  """Plot every run under `workdir`.

  W/metrics.jsonl goes to W/plots/, each W/<run>/metrics.jsonl to W/plots/<run>/.


  Returns:
    Paths of all PNGs written.
  """
  root = pathlib.Path(workdir)
  runs = [(root / "metrics.jsonl", root / "plots")]
  runs += [(p, root / "plots" / p.parent.name) for p in sorted(root.glob("*/metrics.jsonl"))]
  found = [(m, out) for m, out in runs if m.is_file()]
  if not found:
    raise FileNotFoundError(
        f"no metrics.jsonl in {root} or its subfolders; is --workdir a training run folder?")
  written = []
  for metrics, out in found:
    written += plot_metrics(metrics, out)
  return written


def plot_bars(
    rows: Sequence[Mapping[str, Any]],
    out_path: str | pathlib.Path,
    group_key: str = "checkpoint",
    series_key: str = "judge",
    value_key: str = "rate",
    low_key: str = "ci_low",
    high_key: str = "ci_high",
    title: str = "Excellence rate (95% Wilson CI)",
    ylabel: str = "excellence rate",
) -> str:
  """Grouped bar chart: one group per `group_key` value (checkpoint), one bar per `series_key`
  value (judge), with asymmetric error bars from `low_key`/`high_key` when present.

  Args:
    rows: dicts such as {"checkpoint": "grpo_step200", "judge": "qwen", "rate": .4, "ci_low": .35,
      "ci_high": .45} (the `stats.excellence_rate` dict plus labels).
    out_path: the PNG to write (parent created).
  Returns:
    `out_path` as a string.
  """
  if not rows:
    raise ValueError("plot_bars got no rows.")
  groups = list(dict.fromkeys(str(r[group_key]) for r in rows))
  series = list(dict.fromkeys(str(r[series_key]) for r in rows))
  width = 0.8 / len(series)
  fig_width = max(6.4, 1.2 * len(groups) * max(1.0, len(series) / 2))
  fig, ax = _new_axes(title, group_key, ylabel, figsize=(fig_width, 4.0))
  x = np.arange(len(groups))
  for s_index, name in enumerate(series):
    cells = {str(r[group_key]): r for r in rows if str(r[series_key]) == name}
    values = np.array([float(cells[g][value_key]) if g in cells else np.nan for g in groups])
    low = np.array([float(cells.get(g, {}).get(low_key, np.nan)) for g in groups])
    high = np.array([float(cells.get(g, {}).get(high_key, np.nan)) for g in groups])
    errors = np.nan_to_num(np.stack([values - low, high - values]), nan=0.0)
    offset = (s_index - (len(series) - 1) / 2) * width
    ax.bar(x + offset, values, width, yerr=errors, capsize=3, label=name)
  ax.set_xticks(x)
  ax.set_xticklabels(groups, rotation=20, ha="right")
  ax.grid(False, axis="x")
  ax.legend(title=series_key)
  fig.tight_layout()
  return report.save_figure(fig, out_path, dpi=100)


def plot_length_histogram(lengths: Sequence[int], title: str, path: str | os.PathLike) -> str:
  """Histogram PNG of response lengths (characters)."""
  fig, ax = _new_axes(title, "response length (non-whitespace characters)", "responses")
  values = np.asarray(lengths, dtype=np.int64)
  bins = int(min(30, max(1, np.unique(values).size)))
  ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
  if values.size:
    ax.axvline(values.mean(), color="tab:red", linestyle="--", label=f"mean {values.mean():.1f}")
    ax.legend()
  fig.tight_layout()
  return report.save_figure(fig, path, dpi=100)
