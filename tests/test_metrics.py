"""Pose errors against brute-force numpy, and the per-action table's modes and format."""

import jax
import numpy as np
import pytest

from posediff_jax import metrics


def _mpjpe_ref(pred, target):
  out = np.zeros(pred.shape[0])
  for b in range(pred.shape[0]):
    out[b] = np.mean([np.sqrt(np.sum((pred[b, j] - target[b, j])**2))
                      for j in range(pred.shape[1])])
  return out


def _p_mpjpe_ref(pred, target):
  """Per-pose similarity Procrustes in float64, step by step; also returns the det<0 flags."""
  errors, reflected = [], []
  for p, t in zip(pred.astype(np.float64), target.astype(np.float64)):
    mu_t, mu_p = t.mean(0), p.mean(0)
    t0, p0 = t - mu_t, p - mu_p
    nt, npred = np.linalg.norm(t0), np.linalg.norm(p0)
    u, s, vt = np.linalg.svd((t0 / nt).T @ (p0 / npred))
    v = vt.T
    r = v @ u.T
    reflected.append(np.linalg.det(r) < 0)
    if reflected[-1]:
      v[:, -1] *= -1
      s[-1] *= -1
      r = v @ u.T
    a = s.sum() * nt / npred
    aligned = a * p @ r + (mu_t - a * mu_p @ r)
    errors.append(np.mean(np.linalg.norm(aligned - t, axis=1)))
  return np.array(errors), np.array(reflected)


def _n_mpjpe_ref(pred, target):
  out = []
  for p, t in zip(pred.astype(np.float64), target.astype(np.float64)):
    scale = np.sum(t * p) / np.sum(p * p)
    out.append(np.mean(np.linalg.norm(scale * p - t, axis=1)))
  return np.array(out)


def _random_rotation(rng):
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] *= -1
  return q


def _poses(seed=0, batch=8):
  rng = np.random.default_rng(seed)
  target = rng.normal(scale=0.3, size=(batch, 17, 3)).astype(np.float32)
  pred = (target + rng.normal(scale=0.1, size=target.shape)).astype(np.float32)
  return pred, target


def test_mpjpe_matches_bruteforce():
  pred, target = _poses()
  np.testing.assert_allclose(metrics.mpjpe(pred, target), _mpjpe_ref(pred, target), rtol=1e-6)


def test_p_mpjpe_matches_bruteforce():
  pred, target = _poses(1)
  ref, _ = _p_mpjpe_ref(pred, target)
  np.testing.assert_allclose(metrics.p_mpjpe(pred, target), ref, rtol=1e-5, atol=1e-7)


def test_p_mpjpe_reflection_branch():
  pred, target = _poses(2)
  mirrored = pred * np.array([-1.0, 1.0, 1.0], np.float32)  # a reflection: best R has det < 0
  ref, reflected = _p_mpjpe_ref(mirrored, target)
  assert reflected.all()
  got = np.asarray(metrics.p_mpjpe(mirrored, target))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
  # A proper rotation cannot undo a mirror image, so the error stays well above the clean one.
  assert np.all(got > np.asarray(metrics.p_mpjpe(pred, target)))


def test_p_mpjpe_of_similarity_copy_is_zero():
  rng = np.random.default_rng(3)
  _, target = _poses(3, batch=4)
  copies = np.stack([1.7 * t @ _random_rotation(rng) + rng.normal(size=3)
                     for t in target]).astype(np.float32)
  assert np.all(np.asarray(metrics.mpjpe(copies, target)) > 0.1)
  np.testing.assert_allclose(metrics.p_mpjpe(copies, target), 0.0, atol=2e-6)
  aligned = metrics.procrustes_align(copies, target)
  np.testing.assert_allclose(aligned, target, atol=1e-5)


def test_p_mpjpe_aligns_prediction_onto_target():
  # Scaling the prediction must not change P2 (it is aligned away); scaling the target scales P2.
  pred, target = _poses(4)
  base = np.asarray(metrics.p_mpjpe(pred, target))
  np.testing.assert_allclose(metrics.p_mpjpe(3.0 * pred, target), base, rtol=1e-5)
  np.testing.assert_allclose(metrics.p_mpjpe(pred, 3.0 * target), 3.0 * base, rtol=1e-5)


def test_n_mpjpe_matches_bruteforce():
  pred, target = _poses(5)
  np.testing.assert_allclose(metrics.n_mpjpe(pred, target), _n_mpjpe_ref(pred, target), rtol=1e-5)
  np.testing.assert_allclose(metrics.n_mpjpe(0.5 * target, target), 0.0, atol=1e-6)


def test_metrics_jit_and_leading_axes():
  pred, target = _poses(6, batch=6)
  pred, target = pred.reshape(2, 3, 17, 3), target.reshape(2, 3, 17, 3)
  for fn in (metrics.mpjpe, metrics.p_mpjpe, metrics.n_mpjpe):
    eager = np.asarray(fn(pred, target))
    assert eager.shape == (2, 3)
    np.testing.assert_allclose(jax.jit(fn)(pred, target), eager, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(eager.reshape(-1), fn(pred.reshape(6, 17, 3),
                                                     target.reshape(6, 17, 3)), rtol=1e-6)


def test_metric_shape_mismatch_raises():
  pred, target = _poses(7)
  with pytest.raises(ValueError, match="same shape"):
    metrics.p_mpjpe(pred[:, :16], target)


# ----------------------------------------------------------------------------- ActionErrorTable

DIR, EAT, WALK = 0, 2, 13


def test_table_default_is_per_sample_mean():
  table = metrics.ActionErrorTable()
  table.update([0.1, 0.2, 0.4], [0.01, 0.02, 0.06], [DIR, DIR, EAT])
  table.update([0.3], [0.03], [EAT])
  p1, p2 = table.per_action_mm()
  np.testing.assert_allclose([p1[DIR], p1[EAT]], [150.0, 350.0])
  np.testing.assert_allclose([p2[DIR], p2[EAT]], [15.0, 45.0])
  assert table.counts[DIR] == 2 and table.counts[EAT] == 2 and table.counts.sum() == 4


def test_table_upstream_mixed_batch_uses_batch_mean_p2():
  table = metrics.ActionErrorTable(upstream_p2_batch_mean=True)
  table.update([0.1, 0.2, 0.4], [0.01, 0.02, 0.06], [DIR, DIR, EAT])  # mixed: P2 batch mean 0.03
  table.update([0.3], [0.03], [EAT])  # single action: its own mean
  p1, p2 = table.per_action_mm()
  np.testing.assert_allclose([p1[DIR], p1[EAT]], [150.0, 350.0])  # P1 is unaffected
  np.testing.assert_allclose([p2[DIR], p2[EAT]], [30.0, 30.0], rtol=1e-6)
  assert isinstance(p2[DIR], np.float32)


def test_table_upstream_single_action_batches_match_default():
  rng = np.random.default_rng(0)
  default, upstream = metrics.ActionErrorTable(), metrics.ActionErrorTable(True)
  for action in (DIR, DIR, WALK):
    p1, p2 = rng.uniform(0.01, 0.1, 5), rng.uniform(0.01, 0.1, 5)
    default.update(p1, p2, [action] * 5)
    upstream.update(p1, p2, [action] * 5)
  np.testing.assert_allclose(upstream.per_action_mm(), default.per_action_mm(), rtol=1e-6)


def test_table_valid_mask_drops_padding():
  table = metrics.ActionErrorTable(upstream_p2_batch_mean=True)
  # Only the Eating rows are real, so upstream sees a single-action batch.
  table.update([0.1, 0.2, 9.0], [0.01, 0.03, 9.0], [EAT, EAT, DIR],
               valid=np.array([True, True, False]))
  p1, p2 = table.per_action_mm()
  assert table.counts[DIR] == 0 and table.counts[EAT] == 2
  np.testing.assert_allclose([p1[EAT], p2[EAT]], [150.0, 20.0], rtol=1e-6)


def test_table_averages_over_the_evaluated_actions():
  # An action subset (data.actions, or a file holding a few actions): the Average is over the
  # actions evaluated, as D3DP's run_evaluation averages, and only they are listed.
  table = metrics.ActionErrorTable()
  table.update([0.15, 0.05], [0.03, 0.01], [WALK, EAT])
  np.testing.assert_allclose(table.averages(), [100.0, 20.0], rtol=1e-6)
  lines = table.format_table().split("\n")
  assert [line.split()[0] for line in lines[1:]] == ["Eating", "Walking", "Average"]
  assert list(table.to_dict()["actions"]) == ["Eating", "Walking"]
  assert all(np.isnan(metrics.ActionErrorTable().averages()))


def test_upstream_table_counts_empty_actions_as_zero():
  # DiffPose's printout: fixed 15 rows, the Average divided by 15.
  table = metrics.ActionErrorTable(upstream_p2_batch_mean=True)
  table.update([0.15], [0.03], [WALK])
  np.testing.assert_allclose(table.averages(), [150.0 / 15, 30.0 / 15], rtol=1e-6)
  assert len(table.to_dict()["actions"]) == 15


def test_table_format_matches_upstream_layout():
  table = metrics.ActionErrorTable(upstream_p2_batch_mean=True)
  table.update([0.0421, 0.0431], [0.031, 0.033], [DIR, DIR])
  table.update([0.1], [0.05], ["Walking 1"])
  lines = table.format_table().split("\n")
  assert len(lines) == 17
  assert lines[0] == "===Action=== ==p#1 mm== =p#2 mm="
  assert lines[1] == "Directions    42.60      32.00"
  assert lines[2] == "Discussion     0.00       0.00"
  assert lines[14] == "Walking      100.00      50.00"
  assert lines[15] == "WalkTogether   0.00       0.00"
  assert lines[16] == "Average        9.51       5.47"


def test_table_to_dict():
  table = metrics.ActionErrorTable()
  table.update([0.1, 0.2], [0.05, 0.07], [DIR, EAT])
  out = table.to_dict()
  assert out["mode"] == "per_sample" and out["num_samples"] == 2
  assert list(out["actions"]) == ["Directions", "Eating"]
  assert out["actions"]["Eating"] == {"p1_mm": pytest.approx(200.0), "p2_mm": pytest.approx(70.0),
                                      "count": 1}
  assert out["average"]["p1_mm"] == pytest.approx(300.0 / 2)
  assert metrics.ActionErrorTable(True).to_dict()["mode"] == "upstream_p2_batch_mean"


def test_table_bad_input_raises():
  table = metrics.ActionErrorTable()
  with pytest.raises(ValueError, match=r"\[0, 15\)"):
    table.update([0.1], [0.1], [15])
  with pytest.raises(ValueError, match="unknown action"):
    table.update([0.1], [0.1], ["Dancing"])
  with pytest.raises(ValueError, match="shape"):
    table.update([0.1, 0.2], [0.1], [0, 0])
  with pytest.raises(ValueError, match="valid"):
    table.update([0.1], [0.1], [0], valid=[1])
