"""Evaluation metrics, reports and plots against hand-computed values; tables and plots are
written atomically."""
import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rlaif_jax.evaluation import plots, report
from rlaif_jax.metrics import diversity, length_bias, stats

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


def test_self_bleu_leaves_empty_responses_out():
  # Ten identical greetings are not diverse; ten empty responses beside them must not make them
  # look diverse (they used to score 0 each, halving self-BLEU), nor count as references.
  same = ["新年快乐万事如意"] * 10
  assert diversity.self_bleu(same + [""] * 10) == pytest.approx(1.0)
  assert diversity.self_bleu(same + [" \n"] * 3) == pytest.approx(1.0)  # whitespace only
  assert diversity.self_bleu(["abcd", "", "abce"]) == diversity.self_bleu(["abcd", "abce"])
  # Fewer than two non-empty texts: undefined.
  assert math.isnan(diversity.self_bleu(["新年快乐", "", ""]))
  assert math.isnan(diversity.self_bleu(["", ""]))
  # Sampling draws from the non-empty texts.
  assert diversity.self_bleu(same[:3] + [""] * 50, max_texts=2) == pytest.approx(1.0)


def test_empty_rate_in_the_diversity_report():
  assert diversity.empty_rate(["a", "", " \n", "b"]) == 0.5
  assert math.isnan(diversity.empty_rate([]))
  report_ = diversity.diversity_report(["", "", ""])
  assert report_["empty_rate"] == 1.0 and math.isnan(report_["self_bleu"])
  assert math.isnan(report_["novelty_4"])  # no reference given
  report_ = diversity.diversity_report(["春节快乐", "", "春节快乐", ""])
  assert report_["empty_rate"] == 0.5 and report_["self_bleu"] == pytest.approx(1.0)


def test_novelty_4_by_hand():
  reference = ["新年快乐万事如意"]  # 4-grams 新年快乐 年快乐万 快乐万事 乐万事如 万事如意
  assert diversity.char_ngram_set(reference, 4) == {"新年快乐", "年快乐万", "快乐万事", "乐万事如",
                                                    "万事如意"}
  # "新年快乐！": 新年快乐 (seen), 年快乐！ (novel); "万事 如意" -> 万事如意 (seen, whitespace
  # dropped); "恭喜" has no 4-gram; nothing spans two texts (快乐！万 is not counted).
  assert diversity.novelty_n(["新年快乐！", "万事 如意", "恭喜"], reference, 4) == pytest.approx(1 / 3)
  # Occurrences count: a copied 4-gram written twice weighs twice.
  assert diversity.novelty_n(["新年快乐", "新年快乐", "恭喜发财"], reference) == pytest.approx(1 / 3)
  assert diversity.novelty_n(["恭喜发财", "恭喜发财"], reference) == 1.0
  assert diversity.novelty_n(["新年快乐万事如意"], reference) == 0.0
  assert math.isnan(diversity.novelty_n(["新年", ""], reference))  # no 4-gram generated
  known = diversity.char_ngram_set(reference, 4)
  got = diversity.diversity_report(["新年快乐！", "万事 如意", "恭喜"], novelty_reference=known)
  assert got["novelty_4"] == pytest.approx(1 / 3)


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
  # Pair 0 chosen longer (1), pair 1 chosen shorter (0), pair 2 equal length (0.5): on the two
  # pairs whose chosen text is not longer the baseline gets 0.25, not "0 by construction".
  assert wins == {"accuracy": pytest.approx(0.5), "ties": pytest.approx(1 / 3), "n": 3,
                  "accuracy_chosen_not_longer": 0.25, "n_chosen_not_longer": 2,
                  "accuracy_chosen_shorter": 0.0, "n_chosen_shorter": 1,
                  "accuracy_equal_length": 0.5, "n_equal_length": 1}
  got = length_bias.accuracy_where_chosen_not_longer(
      [1.0, 2.0, 0.0], [0.0, 1.0, 1.0], chosen, rejected)
  assert got == {"accuracy": 0.5, "n": 2, "accuracy_all": pytest.approx(2 / 3), "n_all": 3,
                 "accuracy_shorter": 1.0, "n_shorter": 1, "accuracy_ties": 0.0, "n_ties": 1}
  none = length_bias.longer_wins_accuracy(["aa"], ["a"])
  assert none["n_chosen_not_longer"] == 0 and math.isnan(none["accuracy_chosen_not_longer"])
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


def test_tables_are_written_atomically(tmp_path, monkeypatch):
  md, csv_path = tmp_path / "t.md", tmp_path / "t.csv"
  report.write_table([{"a": 1}], ["a"], md, csv_path)
  before = {p: p.read_bytes() for p in (md, csv_path)}

  def killed(src, dst):
    raise KeyboardInterrupt  # a kill between writing the temporary file and the rename

  monkeypatch.setattr(os, "replace", killed)
  for path in (md, csv_path):
    with pytest.raises(KeyboardInterrupt):
      report.write_table([{"a": 2}], ["a"], path if path == md else tmp_path / "x.md",
                         csv_path if path == csv_path else tmp_path / "x.csv")
  assert {p: p.read_bytes() for p in (md, csv_path)} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]  # no partial files


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
  series = plots.metric_series(path)
  assert "note" not in series and "grad_norm" not in series  # Text and NaN-only are skipped.
  steps, values = series["eval_loss"]
  assert steps.tolist() == [0, 5, 10, 15] and values[1] == pytest.approx(2.5 / 6)
  path.write_text('{"step": 0, "loss": 1.0}\n{oops\n', encoding="utf-8")
  with pytest.raises(ValueError, match="metrics.jsonl:2"):
    plots.metric_series(path)


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


def test_a_plot_killed_while_rendering_leaves_the_previous_png(tmp_path, monkeypatch):
  from matplotlib.backends import backend_agg
  rows = [{"checkpoint": "a", "judge": "rm", "rate": .5, "ci_low": .4, "ci_high": .6}]
  path = tmp_path / "excellence.png"
  plots.plot_bars(rows, path)
  metrics = tmp_path / "run" / "metrics.jsonl"
  _write_metrics(metrics)
  [loss] = [p for p in plots.plot_metrics(metrics, tmp_path / "curves") if p.endswith("loss.png")]
  before = {p: pathlib.Path(p).read_bytes() for p in (str(path), loss)}

  def killed(self, filename_or_obj, *args, **kwargs):
    del self, args, kwargs
    f = filename_or_obj
    if isinstance(f, (str, os.PathLike)):
      f = open(f, "wb")  # pylint: disable=consider-using-with
    f.write(PNG_MAGIC + b"partial")
    f.flush()
    raise KeyboardInterrupt("killed mid-write")

  monkeypatch.setattr(backend_agg.FigureCanvasAgg, "print_png", killed)
  with pytest.raises(KeyboardInterrupt):
    plots.plot_bars(rows, path)
  with pytest.raises(KeyboardInterrupt):
    plots.plot_metrics(metrics, tmp_path / "curves")
  from rlaif_jax.evaluation import harness
  with pytest.raises(KeyboardInterrupt):
    harness.plot_length_histogram([1, 2, 3], "t", tmp_path / "excellence.png")
  assert {p: pathlib.Path(p).read_bytes() for p in before} == before
  leftovers = [p for p in tmp_path.rglob(".tmp-*")]
  assert not leftovers


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
