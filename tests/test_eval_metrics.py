"""Evaluation metrics, reports and plots against hand-computed values."""
import csv
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rlaif_jax.evaluation import diversity, length_bias, plots, report, stats

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- stats.


def test_excellence_rate_wilson_interval_hand_values():
  # 8/10 at 95%: centre (0.8 + z^2/20) / (1 + z^2/10), the textbook (0.4902, 0.9433).
  got = stats.excellence_rate([1, 1, 1, 0, 1, 1, 0, 1, 1, 1])
  assert got["n"] == 10 and got["rate"] == pytest.approx(0.8)
  assert got["ci_low"] == pytest.approx(0.49016, abs=1e-5)
  assert got["ci_high"] == pytest.approx(0.94332, abs=1e-5)
  none = stats.excellence_rate(np.zeros(10, dtype=bool))
  assert none["rate"] == 0.0 and none["ci_low"] == 0.0
  assert none["ci_high"] == pytest.approx(0.27753, abs=1e-5)
  assert stats.excellence_rate(np.ones(10))["ci_low"] == pytest.approx(1 - 0.27753, abs=1e-5)


def test_excellence_rate_empty_and_invalid_labels():
  empty = stats.excellence_rate([])
  assert empty["n"] == 0 and math.isnan(empty["rate"]) and math.isnan(empty["ci_low"])
  with pytest.raises(ValueError, match="0/1"):
    stats.excellence_rate([0, 1, 2])


def test_spearman_with_ties_hand_value():
  # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4] -> rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
  assert stats.average_ranks([1, 2, 2, 3]).tolist() == [1.0, 2.5, 2.5, 4.0]
  assert stats.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
  assert stats.spearman([5, 4, 3], [1, 2, 30]) == pytest.approx(-1.0)
  assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))
  with pytest.raises(ValueError, match="differ"):
    stats.spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy_when_installed():
  scipy_stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 5, 40), rng.integers(0, 7, 40)
  assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)


# --------------------------------------------------------------------------- diversity.


def test_distinct_n_counts_characters_corpus_level():
  texts = ["你好你好", "你 好\n"]  # Whitespace is not a character of the greeting.
  assert diversity.distinct_n(texts, 1) == pytest.approx(2 / 6)
  assert diversity.distinct_n(texts, 2) == pytest.approx(2 / 4)
  assert diversity.distinct_n(["春节快乐"], 2) == 1.0
  assert math.isnan(diversity.distinct_n(["a"], 2))


def test_self_bleu_identical_is_one_and_distinct_is_lower():
  same = ["春节快乐万事如意"] * 3
  assert diversity.self_bleu(same) == pytest.approx(1.0)
  different = ["春节快乐万事如意", "中秋团圆花好月圆", "新年大吉身体健康"]
  assert diversity.self_bleu(different) < 0.1
  partly = ["春节快乐万事如意", "春节快乐身体健康", "新年大吉身体健康"]
  assert diversity.self_bleu(different) < diversity.self_bleu(partly) < 1.0


def test_self_bleu_is_zero_without_any_shared_character():
  # NLTK's sentence_bleu returns 0 when no unigram matches, before smoothing.
  assert diversity.self_bleu(["abc", "xyz"]) == 0.0
  assert diversity.self_bleu(["祝你生日快乐", "恭喜发财万事如意"]) == 0.0


def test_self_bleu_hand_values():
  # "abcd" vs "abce": p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> 0.1/1 (smoothing); same length.
  want = (0.75 * (2 / 3) * 0.5 * 0.1) ** 0.25
  assert diversity.self_bleu(["abcd", "abce"]) == pytest.approx(want)
  # "aaaa" vs "ab": a is clipped at the reference's one count -> p1 = 1/4; no brevity penalty.
  # "ab" vs "aaaa": p1 = 1/2, higher orders smoothed; brevity penalty exp(1 - 4/2).
  hyp0 = (0.25 * (0.1 / 3) * (0.1 / 2) * 0.1) ** 0.25
  hyp1 = math.exp(-1.0) * (0.5 * 0.1 * 0.1 * 0.1) ** 0.25
  assert diversity.self_bleu(["aaaa", "ab"]) == pytest.approx((hyp0 + hyp1) / 2)


def test_self_bleu_sampling_is_reproducible_and_needs_two_texts():
  rng = np.random.default_rng(1)
  alphabet = list("春夏秋冬福禄寿喜安康")
  texts = ["".join(rng.choice(alphabet, 12)) for _ in range(40)]
  a = diversity.self_bleu(texts, max_texts=10, seed=3)
  assert a == diversity.self_bleu(texts, max_texts=10, seed=3)
  assert 0.0 < a < 1.0
  with pytest.raises(ValueError, match="two texts"):
    diversity.self_bleu(["只有一个"])


def test_length_stats_and_report():
  got = diversity.length_stats(["ab", "abcd", "a b c"])
  assert got["mean_chars"] == 3.0 and got["median_chars"] == 3.0 and got["n"] == 3
  assert got["min_chars"] == 2.0 and got["max_chars"] == 4.0
  full = diversity.diversity_report(["春节快乐", "春节快乐"])
  assert full["self_bleu"] == pytest.approx(1.0) and full["distinct_1"] == pytest.approx(4 / 8)


# --------------------------------------------------------------------------- length bias.


def test_length_bias_report_on_a_pure_length_scorer():
  lengths = np.array([10, 40, 20, 30, 80, 60, 70, 50])
  got = length_bias.length_bias_report(2.0 * lengths + 1.0, lengths)
  assert got["spearman"] == pytest.approx(1.0) and got["pearson"] == pytest.approx(1.0)
  assert got["slope_per_100_chars"] == pytest.approx(200.0)
  assert got["score_mean_shortest_quartile"] == pytest.approx(31.0)  # lengths 10, 20.
  assert got["score_mean_longest_quartile"] == pytest.approx(151.0)  # lengths 70, 80.
  flat = length_bias.length_bias_report([1.0, 3.0, 2.0, 3.0], [5, 5, 5, 5])
  assert math.isnan(flat["spearman"]) and math.isnan(flat["slope_per_100_chars"])


def test_longer_wins_and_accuracy_where_chosen_not_longer():
  chosen = ["aaaa", "a", "aa"]
  rejected = ["a", "aaaa", "b b"]
  wins = length_bias.longer_wins_accuracy(chosen, rejected)
  assert wins == {"accuracy": pytest.approx(0.5), "ties": pytest.approx(1 / 3), "n": 3}
  got = length_bias.accuracy_where_chosen_not_longer(
      [1.0, 2.0, 0.0], [0.0, 1.0, 1.0], chosen, rejected)
  assert got == {"accuracy": 0.5, "n": 2, "accuracy_all": pytest.approx(2 / 3), "n_all": 3}
  with pytest.raises(ValueError, match="must match"):
    length_bias.accuracy_where_chosen_not_longer([1.0], [0.0, 1.0], chosen, rejected)


# --------------------------------------------------------------------------- report.


def test_write_table_markdown_and_csv(tmp_path):
  rows = [
      {"checkpoint": "sft", "judge": "a|b", "rate": 0.123456, "n": 100, "extra": "ignored"},
      {"checkpoint": "grpo", "rate": float("nan"), "n": None},
  ]
  md = tmp_path / "out" / "table.md"
  columns = ["checkpoint", "judge", "rate", "n"]
  text = report.write_table(rows, columns, md, tmp_path / "out" / "table.csv")
  assert md.read_text(encoding="utf-8") == text
  assert text.splitlines() == [
      "| checkpoint | judge | rate | n |",
      "|---|---|---|---|",
      "| sft | a\\|b | 0.1235 | 100 |",
      "| grpo | - | - | - |",
  ]
  with (tmp_path / "out" / "table.csv").open(encoding="utf-8") as f:
    parsed = list(csv.DictReader(f))
  assert parsed[0] == {"checkpoint": "sft", "judge": "a|b", "rate": "0.123456", "n": "100"}
  assert parsed[1]["judge"] == "" and parsed[1]["n"] == ""


# --------------------------------------------------------------------------- plots.


def _write_metrics(path: pathlib.Path, steps: int = 20) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    for step in range(steps):
      record = {"step": step, "loss": 2.0 / (step + 1), "reward_mean": step * 0.1,
                "reward_std": 0.2, "kl": 0.001 * step, "lr": 1e-5, "note": "text is skipped",
                "grad_norm": float("nan")}
      if step % 5 == 0:
        record["eval_loss"] = 2.5 / (step + 1)
      f.write(json.dumps(record) + "\n")
    f.write("\n")


def _assert_pngs(paths: list[str]) -> None:
  for p in paths:
    data = pathlib.Path(p).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, p


def test_read_metrics_series(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_metrics(path)
  series = plots.read_metrics(path)
  assert "note" not in series and "grad_norm" not in series  # Text and NaN-only are skipped.
  steps, values = series["eval_loss"]
  assert steps.tolist() == [0, 5, 10, 15] and values[1] == pytest.approx(2.5 / 6)
  path.write_text('{"step": 0, "loss": 1.0}\n{oops\n', encoding="utf-8")
  with pytest.raises(ValueError, match="metrics.jsonl:2"):
    plots.read_metrics(path)


def test_plot_metrics_writes_one_png_per_present_group(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_metrics(path)
  written = plots.plot_metrics(path, tmp_path / "plots")
  assert [pathlib.Path(p).name for p in written] == ["loss.png", "reward.png", "kl.png", "lr.png"]
  _assert_pngs(written)


def test_plot_bars_with_confidence_intervals(tmp_path):
  rows = []
  for checkpoint, base in [("sft", 0.2), ("grpo_judge", 0.35), ("grpo_rm", 0.3)]:
    for judge, shift in [("judge_a", 0.0), ("judge_b", 0.05)]:
      labels = np.arange(100) < int(100 * (base + shift))
      rows.append({"checkpoint": checkpoint, "judge": judge, **stats.excellence_rate(labels)})
  path = plots.plot_bars(rows, tmp_path / "bars" / "excellence.png")
  _assert_pngs([path])
  with pytest.raises(ValueError, match="no rows"):
    plots.plot_bars([], tmp_path / "empty.png")


def test_launch_plot_finds_root_and_sub_runs(tmp_path):
  _write_metrics(tmp_path / "metrics.jsonl")
  _write_metrics(tmp_path / "rm_run" / "metrics.jsonl")
  result = subprocess.run(
      [sys.executable, "-m", "launch.plot", f"--workdir={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  printed = result.stdout.split()
  assert str(tmp_path / "plots" / "loss.png") in printed
  assert str(tmp_path / "plots" / "rm_run" / "reward.png") in printed
  assert len(printed) == 8
  _assert_pngs(printed)
  with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
    plots.plot_workdir(tmp_path / "rm_run" / "missing")
