"""rlaif_jax.rl.algorithms against independent loop-based NumPy references of verl's semantics."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax.rl import algorithms as alg

B, T, V = 6, 7, 11


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
  """Random log-probs, advantages and a right-padded mask with one all-masked row."""
  rng = np.random.default_rng(seed)
  lengths = np.array([7, 5, 1, 0, 3, 6])
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  old = rng.normal(-2.0, 0.5, (B, T)).astype(np.float32)
  # Log-ratios up to +-1.5 so both PPO clips and the dual clip fire.
  new = (old + rng.uniform(-1.5, 1.5, (B, T))).astype(np.float32)
  ref = (old + rng.normal(0.0, 0.3, (B, T))).astype(np.float32)
  adv = rng.normal(0.0, 1.0, (B, T)).astype(np.float32)
  return dict(mask=mask, old=old, new=new, ref=ref, adv=adv)


# --------------------------------------------------------------------------- NumPy references.


def _ref_token_mean(loss: np.ndarray, mask: np.ndarray) -> float:
  total, count = 0.0, 0.0
  for b in range(loss.shape[0]):
    for t in range(loss.shape[1]):
      if mask[b, t]:
        total += float(loss[b, t]) * float(mask[b, t])
        count += float(mask[b, t])
  return total / count if count else 0.0


def _ref_agg(loss: np.ndarray, mask: np.ndarray, mode: str) -> float:
  if mode == "token-mean":
    return _ref_token_mean(loss, mask)
  per_seq, n_seq = [], 0
  for b in range(loss.shape[0]):
    tokens = [float(loss[b, t]) for t in range(loss.shape[1]) if mask[b, t]]
    if mode == "seq-mean-token-sum-norm":
      per_seq.append(sum(tokens))
      continue
    if not tokens:
      continue
    n_seq += 1
    per_seq.append(sum(tokens) if mode == "seq-mean-token-sum" else sum(tokens) / len(tokens))
  if mode == "seq-mean-token-sum-norm":
    return sum(per_seq) / loss.shape[1]
  return sum(per_seq) / n_seq if n_seq else 0.0


def _ref_kl(lp: float, ref: float, kind: str) -> float:
  d = lp - ref
  if kind in ("kl", "k1"):
    return d
  if kind == "abs":
    return abs(d)
  if kind in ("mse", "k2"):
    return 0.5 * d * d
  x = min(max(ref - lp, -20.0), 20.0)
  return min(max(math.exp(x) - x - 1.0, -10.0), 10.0)


def _ref_policy_loss(new, old, adv, mask, low, high, c):
  """verl's vanilla loss per token (if/else form), its clip fractions and ppo_kl."""
  loss = np.zeros_like(new, dtype=np.float64)
  clipped = np.zeros_like(loss)
  dual = np.zeros_like(loss)
  for b in range(new.shape[0]):
    for t in range(new.shape[1]):
      log_ratio = min(max(float(new[b, t]) - float(old[b, t]), -20.0), 20.0)
      ratio = math.exp(log_ratio)
      a = float(adv[b, t])
      l1 = -a * ratio
      l2 = -a * min(max(ratio, 1.0 - low), 1.0 + high)
      l_ppo = max(l1, l2)
      clipped[b, t] = float(l2 > l1)
      if a < 0:
        dual[b, t] = float(l_ppo > -a * c)
        loss[b, t] = min(l_ppo, -a * c)
      else:
        loss[b, t] = l_ppo
  approx_kl = _ref_token_mean(old.astype(np.float64) - new, mask)
  return loss, _ref_token_mean(clipped, mask), _ref_token_mean(dual, mask), approx_kl


def _ref_actor_loss(new, old, ref, adv, mask, clip, kl_coef, ent, ent_coef, mode):
  """verl dp_actor: pg_loss - ent_coef * agg(entropy) + kl_coef * agg(k3)."""
  pg, _, _, _ = _ref_policy_loss(new, old, adv, mask, clip, clip, 3.0)
  kl = np.zeros((B, T))
  for b in range(B):
    for t in range(T):
      kl[b, t] = _ref_kl(float(new[b, t]), float(ref[b, t]), "low_var_kl")
  total = _ref_agg(pg, mask, mode) + kl_coef * _ref_agg(kl, mask, mode)
  if ent is not None:
    total -= ent_coef * _ref_agg(ent, mask, mode)
  return total


def _ref_gae(rewards, values, mask, gamma, lam):
  """Token loop of verl's compute_gae_advantage_return, then whitening with unbiased variance."""
  adv = np.zeros_like(rewards, dtype=np.float64)
  for b in range(rewards.shape[0]):
    next_value, last = 0.0, 0.0
    for t in reversed(range(rewards.shape[1])):
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      candidate = delta + gamma * lam * last
      if mask[b, t]:
        next_value, last = float(values[b, t]), candidate
      adv[b, t] = last
  returns = adv + values
  picked = [adv[b, t] for b in range(B) for t in range(T) if mask[b, t]]
  mean = sum(picked) / len(picked)
  var = sum((x - mean) ** 2 for x in picked) / (len(picked) - 1)
  return (adv - mean) / math.sqrt(var + 1e-8), returns


# --------------------------------------------------------------------------- masked reductions.


def test_masked_reductions_match_loops_and_ignore_nan_under_mask():
  data = _batch(1)
  values, mask = data["new"].copy(), data["mask"]
  values[mask == 0] = np.nan
  picked = [float(values[b, t]) for b in range(B) for t in range(T) if mask[b, t]]
  mean = sum(picked) / len(picked)
  var = sum((x - mean) ** 2 for x in picked) / (len(picked) - 1)
  np.testing.assert_allclose(alg.masked_sum(values, mask), sum(picked), rtol=1e-5)
  np.testing.assert_allclose(alg.masked_mean(values, mask), mean, rtol=1e-5)
  np.testing.assert_allclose(alg.masked_var(values, mask), var, rtol=1e-5)
  row_means = []
  for b in range(B):
    row = [float(values[b, t]) for t in range(T) if mask[b, t]]
    row_means.append(sum(row) / len(row) if row else 0.0)
  np.testing.assert_allclose(alg.masked_mean(values, mask, axis=-1), row_means, rtol=1e-5)
  whitened = np.asarray(alg.masked_whiten(np.nan_to_num(values), mask))
  for b, t in zip(*np.nonzero(mask)):
    want = (values[b, t] - mean) / math.sqrt(var + 1e-8)
    np.testing.assert_allclose(whitened[b, t], want, rtol=1e-4)
  bool_mask = mask.astype(bool)
  np.testing.assert_allclose(alg.masked_mean(values, bool_mask), mean, rtol=1e-5)


def test_masked_mean_of_all_masked_is_zero():
  assert float(alg.masked_mean(jnp.ones((2, 3)), jnp.zeros((2, 3)))) == 0.0


@pytest.mark.parametrize("mode", alg.AGG_MODES)
def test_aggregate_loss_matches_loop_reference(mode):
  data = _batch(2)
  got = alg.aggregate_loss(data["adv"], data["mask"], mode)
  np.testing.assert_allclose(got, _ref_agg(data["adv"], data["mask"], mode), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", alg.AGG_MODES)
def test_aggregate_loss_all_masked_is_zero(mode):
  assert float(alg.aggregate_loss(jnp.full((3, 4), 5.0), jnp.zeros((3, 4)), mode)) == 0.0


def test_aggregate_loss_modes_differ_and_unknown_mode_raises():
  data = _batch(3)
  shifted = data["adv"] + 2.0
  results = {m: float(alg.aggregate_loss(shifted, data["mask"], m)) for m in alg.AGG_MODES}
  assert len({round(v, 5) for v in results.values()}) == len(alg.AGG_MODES)
  with pytest.raises(ValueError, match="token-mean"):
    alg.aggregate_loss(data["adv"], data["mask"], "sum")


# --------------------------------------------------------------------------- advantages.


@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_relative_advantages_matches_loop(normalize_std):
  rng = np.random.default_rng(4)
  rewards = rng.normal(3.0, 2.0, 12).astype(np.float32)
  got = alg.group_relative_advantages(rewards, 4, normalize_std=normalize_std)
  for g in range(3):
    group = [float(x) for x in rewards[4 * g:4 * g + 4]]
    mean = sum(group) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in group) / 3)  # torch.std: unbiased.
    for i, r in enumerate(group):
      want = (r - mean) / (std + 1e-6) if normalize_std else r - mean
      np.testing.assert_allclose(got[4 * g + i], want, rtol=1e-5, atol=1e-6)


def test_group_relative_advantages_identical_group_is_exactly_zero():
  rewards = jnp.array([0.1, 0.1, 0.1, 0.1, 0.7, 0.3, 0.3, 0.3], jnp.float32)
  got = np.asarray(alg.group_relative_advantages(rewards, 4))
  assert np.all(got[:4] == 0.0)
  assert got[4] > 0 and np.all(got[5:] < 0)


def test_group_relative_advantages_group_of_one_and_bad_shapes():
  rewards = jnp.array([2.0, -1.0], jnp.float32)
  got = alg.group_relative_advantages(rewards, 1)
  np.testing.assert_allclose(got, [2.0 / (1 + 1e-6), -1.0 / (1 + 1e-6)])
  with pytest.raises(ValueError, match="groups of 4"):
    alg.group_relative_advantages(jnp.zeros(6), 4)
  with pytest.raises(ValueError, match="f32\\[B\\]"):
    alg.group_relative_advantages(jnp.zeros((2, 4)), 4)


def test_sequence_to_token_advantages_and_last_token_rewards():
  mask = _batch()["mask"]
  seq = np.arange(B, dtype=np.float32) - 2.0
  tok = np.asarray(alg.sequence_to_token_advantages(seq, mask))
  placed = np.asarray(alg.last_token_rewards(seq, mask))
  for b in range(B):
    last = max([t for t in range(T) if mask[b, t]], default=None)
    for t in range(T):
      assert tok[b, t] == (seq[b] if mask[b, t] else 0.0)
      assert placed[b, t] == (seq[b] if t == last else 0.0)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95)])
def test_gae_matches_verl_loop(gamma, lam):
  data = _batch(5)
  rng = np.random.default_rng(5)
  mask = data["mask"].copy()
  mask[0, 3] = 0.0  # A hole inside a row: that token is skipped by the recursion.
  rewards = rng.normal(size=(B, T)).astype(np.float32)
  values = rng.normal(size=(B, T)).astype(np.float32)
  adv, ret = alg.gae_advantages(rewards, values, mask, gamma, lam)
  want_adv, want_ret = _ref_gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-5)
  sel = mask != 0
  np.testing.assert_allclose(np.asarray(adv)[sel], want_adv[sel], rtol=1e-4, atol=1e-5)


def test_gae_single_terminal_reward_undiscounted_equals_reward_minus_value():
  mask = np.array([[1, 1, 1, 0]], np.float32)
  rewards = np.asarray(alg.last_token_rewards(jnp.array([2.0]), mask))
  values = np.array([[0.5, 1.0, 1.5, 9.0]], np.float32)
  _, returns = alg.gae_advantages(rewards, values, mask, 1.0, 1.0, whiten=False)
  adv, _ = alg.gae_advantages(rewards, values, mask, 1.0, 1.0, whiten=False)
  np.testing.assert_allclose(np.asarray(returns)[0, :3], [2.0, 2.0, 2.0])
  np.testing.assert_allclose(np.asarray(adv)[0, :3], [1.5, 1.0, 0.5])


# --------------------------------------------------------------------------- logits.


def test_token_log_probs_and_entropy_match_numpy():
  rng = np.random.default_rng(6)
  logits = rng.normal(0.0, 3.0, (2, 3, V)).astype(np.float32)
  tokens = rng.integers(0, V, (2, 3))
  lp = np.asarray(jax.jit(alg.token_log_probs)(logits, tokens))
  ent = np.asarray(jax.jit(alg.entropy_from_logits)(logits))
  for b in range(2):
    for t in range(3):
      z = logits[b, t].astype(np.float64)
      p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
      np.testing.assert_allclose(lp[b, t], math.log(p[tokens[b, t]]), rtol=1e-5, atol=1e-5)
      want = -sum(q * math.log(q) for q in p if q > 0)
      np.testing.assert_allclose(ent[b, t], want, rtol=1e-5, atol=1e-5)


def test_logit_functions_are_stable_for_extreme_logits():
  logits = jnp.array([[[200.0, 0.0, -jnp.inf, 199.0]]], jnp.float32)  # exp(200) overflows f32.
  tokens = jnp.array([[3]])
  want = -1.0 - math.log1p(math.exp(-1.0))
  np.testing.assert_allclose(alg.token_log_probs(logits, tokens), [[want]], rtol=1e-5)
  ent = alg.entropy_from_logits(logits)
  p = 1.0 / (1.0 + math.exp(-1.0))
  np.testing.assert_allclose(ent, [[-(p * math.log(p) + (1 - p) * math.log(1 - p))]], rtol=1e-5)
  grad = jax.grad(lambda x: alg.entropy_from_logits(x).sum())(logits)
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.all(np.isfinite(np.asarray(alg.entropy_from_logits(logits.astype(jnp.bfloat16)))))


# --------------------------------------------------------------------------- KL estimators.


@pytest.mark.parametrize("kind", alg.KL_KINDS)
def test_kl_penalty_matches_reference(kind):
  data = _batch(7)
  new = data["new"].copy()
  new[0, :3] = [-30.0, 25.0, -2.0]  # k3's clamps: huge positive and negative log-ratios.
  got = np.asarray(alg.kl_penalty(new, data["ref"], kind))
  for b in range(B):
    for t in range(T):
      want = _ref_kl(float(new[b, t]), float(data["ref"][b, t]), kind)
      np.testing.assert_allclose(got[b, t], want, rtol=1e-5, atol=1e-6)
  if kind in ("low_var_kl", "k3"):
    assert got[0, 1] == pytest.approx(10.0) and got.min() >= 0.0


def test_kl_penalty_straight_through_keeps_value_and_uses_k2_gradient():
  data = _batch(8)
  value = alg.kl_penalty(data["new"], data["ref"], "k3+")
  np.testing.assert_allclose(value, alg.kl_penalty(data["new"], data["ref"], "k3"), rtol=1e-6)
  kl_sum = lambda x: alg.kl_penalty(x, data["ref"], "low_var_kl+").sum()
  grad = jax.grad(kl_sum)(jnp.asarray(data["new"]))
  np.testing.assert_allclose(grad, data["new"] - data["ref"], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="Unknown KL"):
    alg.kl_penalty(data["new"], data["ref"], "k4")


# --------------------------------------------------------------------------- losses.


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_ppo_policy_loss_matches_reference_with_dual_clip(mode):
  d = _batch(9)
  d["new"][0, :2] = d["old"][0, :2] + 2.0  # ratio e^2 > clip_ratio_c ...
  d["adv"][0, :2] = [-1.0, 0.5]  # ... with a negative advantage (dual clip) and a positive one.
  loss, metrics = alg.ppo_policy_loss(d["new"], d["old"], d["adv"], d["mask"], 0.2, 0.28, 3.0, mode)
  ref_mat, clip_frac, clip_lower, approx_kl = _ref_policy_loss(
      d["new"], d["old"], d["adv"], d["mask"], 0.2, 0.28, 3.0)
  assert clip_lower > 0 and clip_frac > clip_lower  # The data exercises both clips.
  np.testing.assert_allclose(loss, _ref_agg(ref_mat, d["mask"], mode), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["pg_loss"], loss)
  np.testing.assert_allclose(metrics["clip_frac"], clip_frac, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_frac_lower"], clip_lower, rtol=1e-5)
  np.testing.assert_allclose(metrics["approx_kl"], approx_kl, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="clip_ratio_c"):
    alg.ppo_policy_loss(d["new"], d["old"], d["adv"], d["mask"], clip_ratio_c=1.0)


def test_ppo_policy_loss_on_policy_gradient_is_minus_advantage():
  d = _batch(10)
  pg_loss = lambda lp: alg.ppo_policy_loss(lp, d["old"], d["adv"], d["mask"])[0]
  grad = jax.grad(pg_loss)(jnp.asarray(d["old"]))
  np.testing.assert_allclose(grad, -d["adv"] * d["mask"] / d["mask"].sum(), rtol=1e-5, atol=1e-7)


def test_value_loss_matches_reference():
  d = _batch(11)
  values, old_values, returns = d["new"], d["old"], d["ref"] + d["adv"]
  loss, metrics = alg.value_loss(values, old_values, returns, d["mask"], 0.5)
  mat = np.zeros((B, T))
  frac = np.zeros((B, T))
  for b in range(B):
    for t in range(T):
      v, v0, r = float(values[b, t]), float(old_values[b, t]), float(returns[b, t])
      clipped = min(max(v, v0 - 0.5), v0 + 0.5)
      mat[b, t] = max((v - r) ** 2, (clipped - r) ** 2)
      frac[b, t] = float((clipped - r) ** 2 > (v - r) ** 2)
  np.testing.assert_allclose(loss, 0.5 * _ref_token_mean(mat, d["mask"]), rtol=1e-5)
  np.testing.assert_allclose(metrics["vf_clip_frac"], _ref_token_mean(frac, d["mask"]), rtol=1e-5)
  assert 0 < float(metrics["vf_clip_frac"]) < 1


def test_grpo_loss_equals_numpy_verl_actor_loss():
  d = _batch(12)
  rng = np.random.default_rng(12)
  ent = rng.uniform(0.0, 3.0, (B, T)).astype(np.float32)
  batch = (d["new"], d["old"], d["ref"], d["adv"], d["mask"])
  loss, metrics = alg.grpo_loss(*batch, clip_ratio=0.2, kl_coef=0.001)
  want = _ref_actor_loss(*batch, 0.2, 0.001, None, 0.0, "token-mean")
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-5)
  assert set(metrics) == {
      "loss", "pg_loss", "kl_loss", "clip_frac", "clip_frac_lower", "approx_kl", "ratio_mean"}
  # Larger KL / entropy coefficients so every term moves the total measurably.
  loss2, metrics2 = alg.grpo_loss(*batch, clip_ratio=0.2, kl_coef=0.5, entropy_coef=0.01,
                                  entropies=ent, agg_mode="seq-mean-token-sum")
  want2 = _ref_actor_loss(*batch, 0.2, 0.5, ent, 0.01, "seq-mean-token-sum")
  np.testing.assert_allclose(loss2, want2, rtol=1e-5, atol=1e-5)
  want_entropy = _ref_agg(ent, d["mask"], "seq-mean-token-sum")
  np.testing.assert_allclose(metrics2["entropy"], want_entropy, rtol=1e-5)
  total = metrics2["pg_loss"] + 0.5 * metrics2["kl_loss"] - 0.01 * metrics2["entropy"]
  np.testing.assert_allclose(metrics2["loss"], total, rtol=1e-6)


def test_grpo_loss_accepts_sequence_advantages_and_requires_entropies():
  d = _batch(13)
  seq_adv = np.asarray(alg.group_relative_advantages(np.arange(B, dtype=np.float32) ** 2, 3))
  tok_adv = seq_adv[:, None] * d["mask"]
  a, _ = alg.grpo_loss(d["new"], d["old"], d["ref"], seq_adv, d["mask"])
  b, _ = alg.grpo_loss(d["new"], d["old"], d["ref"], tok_adv, d["mask"])
  np.testing.assert_allclose(a, b, rtol=1e-6)
  no_kl, metrics = alg.grpo_loss(d["new"], d["old"], None, tok_adv, d["mask"])
  assert "kl_loss" not in metrics
  np.testing.assert_allclose(no_kl, metrics["pg_loss"])
  with pytest.raises(ValueError, match="entropies"):
    alg.grpo_loss(d["new"], d["old"], d["ref"], tok_adv, d["mask"], entropy_coef=0.01)


# --------------------------------------------------------------------------- jit and registry.


def test_functions_jit_and_match_eager():
  d = _batch(14)
  rewards = jnp.arange(8, dtype=jnp.float32) % 3
  fns = {
      "adv": (functools.partial(alg.group_relative_advantages, group_size=4), (rewards,)),
      "gae": (functools.partial(alg.gae_advantages, gamma=0.99, lam=0.95),
              (d["adv"], d["ref"], d["mask"])),
      "kl": (functools.partial(alg.kl_penalty, kind="k3"), (d["new"], d["ref"])),
      "agg": (functools.partial(alg.aggregate_loss, mode="seq-mean-token-mean"),
              (d["adv"], d["mask"])),
      "grpo": (alg.grpo_loss, (d["new"], d["old"], d["ref"], d["adv"], d["mask"])),
      "value": (alg.value_loss, (d["new"], d["old"], d["ref"], d["mask"])),
  }
  for name, (fn, args) in fns.items():
    eager, jitted = fn(*args), jax.jit(fn)(*args)
    for e, j in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
      np.testing.assert_allclose(e, j, rtol=1e-5, atol=1e-6, err_msg=name)


def test_registries():
  assert alg.get_advantage_estimator("grpo") is alg.group_relative_advantages
  assert alg.get_advantage_estimator("gae") is alg.gae_advantages
  rewards = jnp.array([1.0, 3.0])
  np.testing.assert_allclose(alg.get_advantage_estimator("dr_grpo")(rewards, 2), [-1.0, 1.0])
  assert alg.get_policy_loss("vanilla") is alg.ppo_policy_loss
  with pytest.raises(ValueError, match="known"):
    alg.get_advantage_estimator("reinforce")
  with pytest.raises(ValueError, match="known"):
    alg.get_policy_loss("gspo")


def test_dr_grpo_norm_uses_the_response_width_whatever_the_prompt_padding():
  """grpo_loss on [B, P+R] rows with loss_scale_factor=R equals verl's loss on the [B, R]
  response block (sum of per-sequence token sums / R) for every prompt width P."""
  d = _batch(13)
  ent = np.random.default_rng(13).uniform(0.0, 3.0, (B, T)).astype(np.float32)
  want = _ref_actor_loss(d["new"], d["old"], d["ref"], d["adv"], d["mask"], 0.2, 0.5, ent, 0.01,
                         "seq-mean-token-sum-norm")
  got = []
  for p in (0, 9, 40):
    fill = np.random.default_rng(p).normal(size=(B, p)).astype(np.float32)  # prompt columns
    cat = lambda x, f=fill: np.concatenate([f, x], axis=1)
    mask = np.concatenate([np.zeros((B, p), np.float32), d["mask"]], axis=1)
    loss, _ = alg.grpo_loss(cat(d["new"]), cat(d["old"]), cat(d["ref"]), cat(d["adv"]), mask,
                            clip_ratio=0.2, kl_coef=0.5, entropy_coef=0.01, entropies=cat(ent),
                            agg_mode="seq-mean-token-sum-norm", loss_scale_factor=T)
    got.append(float(loss))
  np.testing.assert_allclose(got, [want] * 3, rtol=1e-5, atol=1e-6)
