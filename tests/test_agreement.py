"""Agreement metrics vs hand-computed values and brute-force NumPy references."""
import math

import numpy as np
import pytest

from rlaif_jax.evaluation.agreement import (best_length_threshold_baseline, binary_agreement,
                                            cohen_kappa, confusion_counts)


def test_binary_agreement_hand_computed():
  y_true = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
  y_pred = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
  m = binary_agreement(y_true, y_pred)
  assert (m["tp"], m["fp"], m["fn"], m["tn"], m["n"]) == (4, 2, 1, 3, 10)
  assert m["accuracy"] == pytest.approx(0.7)
  assert m["precision"] == pytest.approx(4 / 6)
  assert m["recall"] == pytest.approx(0.8)
  assert m["f1"] == pytest.approx(16 / 22)
  # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 -> kappa = 0.2 / 0.5.
  assert m["cohen_kappa"] == pytest.approx(0.4)
  assert m["positive_rate_true"] == pytest.approx(0.5)
  assert m["positive_rate_pred"] == pytest.approx(0.6)


def _reference_kappa(t, p):
  t, p = np.asarray(t), np.asarray(p)
  table = np.zeros((2, 2))
  np.add.at(table, (t, p), 1)
  table /= table.sum()
  po = np.trace(table)
  pe = float(table.sum(1) @ table.sum(0))
  return (po - pe) / (1 - pe)


def test_kappa_matches_contingency_table_reference():
  rng = np.random.default_rng(0)
  for _ in range(20):
    t = rng.integers(0, 2, size=57)
    p = np.where(rng.random(57) < 0.7, t, 1 - t)
    assert cohen_kappa(t, p) == pytest.approx(_reference_kappa(t, p))


def test_edge_cases():
  perfect = binary_agreement([1, 0, 1], [1, 0, 1])
  assert perfect["accuracy"] == 1.0 and perfect["cohen_kappa"] == pytest.approx(1.0)
  inverse = binary_agreement([1, 0, 1, 0], [0, 1, 0, 1])
  assert inverse["cohen_kappa"] == pytest.approx(-1.0)
  none_predicted = binary_agreement([1, 0, 1], [0, 0, 0])
  assert none_predicted["precision"] == 0.0 and none_predicted["f1"] == 0.0
  assert none_predicted["cohen_kappa"] == pytest.approx(0.0)
  assert math.isnan(binary_agreement([1, 1], [1, 1])["cohen_kappa"])  # Undefined.
  with pytest.raises(ValueError, match="at least one"):
    binary_agreement([], [])
  with pytest.raises(ValueError, match="only 0/1"):
    binary_agreement([0, 2], [0, 1])
  with pytest.raises(ValueError, match="3 items but y_pred has 2"):
    confusion_counts([0, 1, 1], [0, 1])


def _brute_force_threshold(lengths, labels):
  best_t, best_acc = None, -1.0
  for t in range(0, max(lengths) + 2):
    acc = np.mean((np.asarray(lengths) >= t).astype(int) == np.asarray(labels))
    if acc > best_acc + 1e-12:
      best_t, best_acc = t, acc
  return best_t, best_acc


def test_length_baseline_matches_brute_force():
  rng = np.random.default_rng(1)
  for _ in range(25):
    n = int(rng.integers(1, 60))
    lengths = rng.integers(1, 80, size=n)
    labels = (lengths + rng.normal(0, 15, size=n) > 40).astype(int)
    got = best_length_threshold_baseline(lengths, labels)
    t_ref, acc_ref = _brute_force_threshold(lengths.tolist(), labels.tolist())
    assert got["accuracy"] == pytest.approx(acc_ref)
    # Thresholds between two observed lengths split the items the same way; both pick the
    # first best split in increasing t.
    assert np.array_equal(lengths >= got["threshold"], lengths >= t_ref)
    assert got["threshold"] in set(lengths.tolist()) | {int(lengths.max()) + 1}
    assert got["n"] == n


def test_length_baseline_separable_and_degenerate():
  got = best_length_threshold_baseline([5, 8, 30, 42], [0, 0, 1, 1])
  assert got["threshold"] == 30 and got["accuracy"] == 1.0 and got["cohen_kappa"] == 1.0
  all_bad = best_length_threshold_baseline([5, 8, 30], [0, 0, 0])
  assert all_bad["threshold"] == 31 and all_bad["accuracy"] == 1.0  # Predict all 0.
  with pytest.raises(ValueError, match="must match"):
    best_length_threshold_baseline([1, 2], [1])
