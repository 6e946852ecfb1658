"""Agreement metrics vs hand-computed values and brute-force NumPy references."""
import math

import numpy as np
import pytest

from rlaif_jax.metrics.agreement import (best_length_threshold_baseline, binary_agreement,
                                            cohen_kappa, confusion_counts, cross_fit_threshold,
                                            stratified_folds)


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


# ---- cross-fitting ----------------------------------------------------------------------------


def _length_fit(scores, labels):
  return best_length_threshold_baseline(scores.astype(int), labels)["threshold"]


def test_stratified_folds_are_balanced_seeded_and_checked():
  labels = np.array([1] * 7 + [0] * 13)
  folds = stratified_folds(labels, 4, seed=3)
  assert np.array_equal(folds, stratified_folds(labels, 4, seed=3))
  assert not np.array_equal(folds, stratified_folds(labels, 4, seed=4))
  assert sorted(np.bincount(folds).tolist()) == [5, 5, 5, 5]
  assert all(1 <= labels[folds == f].sum() <= 2 for f in range(4))  # positives spread out
  for k in (1, 21):
    with pytest.raises(ValueError, match="2 <= k <= n"):
      stratified_folds(labels, k)


def test_cross_fit_leave_one_out_by_hand():
  # Lengths 1..4, labels 0 1 0 1. Fitted on all four, t = 2 (0 1 1 1): accuracy 3/4 in sample.
  # Leave-one-out (k = n, so the shuffle does not matter): without item 0 t = 2 -> 0 (right);
  # without item 1 (len 2) the rest say t = 4 -> 0 (wrong); without item 2 (len 3) t = 2 -> 1
  # (wrong); without item 3 t = 2 -> 1 (right). Out of fold: 2/4.
  lengths, labels = np.array([1, 2, 3, 4]), np.array([0, 1, 0, 1])
  assert best_length_threshold_baseline(lengths, labels)["accuracy"] == 0.75
  got = cross_fit_threshold(lengths, labels, _length_fit, k=4, seed=7)
  assert got["k"] == 4 and sorted(got["folds"].tolist()) == [0, 1, 2, 3]
  assert got["predictions"].tolist() == [0, 0, 1, 1]
  assert [got["thresholds"][f] for f in got["folds"]] == [2, 4, 2, 2]  # per item's fold
  assert binary_agreement(labels, got["predictions"])["accuracy"] == 0.5


def test_cross_fit_never_fits_on_the_held_out_fold():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 80, size=50)
  labels = (lengths + rng.normal(0, 20, size=50) > 40).astype(int)
  seen = []

  def fit(scores, y):
    seen.append(scores.copy())
    return _length_fit(scores, y)

  got = cross_fit_threshold(lengths, labels, fit, k=5, seed=1)
  for f, train in enumerate(seen):
    held_out = got["folds"] == f
    assert train.size == (~held_out).sum()
    np.testing.assert_array_equal(train, lengths[~held_out])
    assert got["thresholds"][f] == _length_fit(lengths[~held_out], labels[~held_out])
    np.testing.assert_array_equal(got["predictions"][held_out],
                                  lengths[held_out] >= got["thresholds"][f])
