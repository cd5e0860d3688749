"""The MPI-INF-3DHP metric against the official MATLAB code (run under Octave) and small properties.

`parity/d3dp/mpii3dhp_eval.npz`: `real_*` are DSGDiffu J-Agg step-1 per-joint errors, `syn_*` a
synthetic case with errors exactly on thresholds and an activity without frames (NaN rows).
"""

import numpy as np
import pytest

from posediff_jax import metrics_3dhp
from tests.conftest import parity_dir

TABLES = ("seq_mpjpe", "seq_pck", "seq_auc", "act_mpjpe", "act_pck", "act_auc")


@pytest.fixture(scope="module")
def matlab():
  with np.load(parity_dir("d3dp") / "mpii3dhp_eval.npz") as data:
    return {key: data[key] for key in data.files}


def _sequences(matlab, prefix):
  count = len([k for k in matlab if k.startswith(f"{prefix}_err_TS")])
  errors = [matlab[f"{prefix}_err_TS{i}"] for i in range(1, count + 1)]
  activities = [matlab[f"{prefix}_act_TS{i}"] for i in range(1, count + 1)]
  return errors, activities


@pytest.mark.parametrize("prefix", ["real", "syn"])
def test_tables_equal_matlab(matlab, prefix):
  errors, activities = _sequences(matlab, prefix)
  results = metrics_3dhp.evaluate(errors, activities)
  for table in TABLES:
    ours, theirs = getattr(results, table), matlab[f"{prefix}_{table}"]
    assert ours.shape == theirs.shape, table
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=table)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9, equal_nan=True, err_msg=table)
  np.testing.assert_array_equal(results.frame_counts, [e.shape[1] for e in errors])
  # The paper numbers: unweighted mean over the sequences of each table's last column.
  assert results.paper_pck == pytest.approx(np.mean(matlab[f"{prefix}_seq_pck"][:, -1]), abs=1e-9)
  assert results.paper_auc == pytest.approx(np.mean(matlab[f"{prefix}_seq_auc"][:, -1]), abs=1e-9)
  assert results.paper_mpjpe == pytest.approx(np.mean(matlab[f"{prefix}_seq_mpjpe"][:, -1]),
                                              abs=1e-9)


def test_synthetic_case_has_an_empty_activity(matlab):
  _, activities = _sequences(matlab, "syn")
  present = set(np.concatenate(activities).tolist())
  missing = [a for a in range(1, 8) if a not in present]
  assert missing, "the synthetic fixture is meant to leave an activity out"
  results = metrics_3dhp.evaluate(*_sequences(matlab, "syn"))
  for activity in missing:
    assert np.all(np.isnan(results.act_mpjpe[activity - 1]))
    assert np.all(np.isnan(results.act_pck[activity - 1]))


def test_format_sequence_table(matlab):
  results = metrics_3dhp.evaluate(*_sequences(matlab, "real"))
  text = metrics_3dhp.format_sequence_table(results)
  lines = text.splitlines()
  assert len(lines) == 1 + len(results.sequence_names) + 2
  assert lines[1].startswith("TestSeq1")
  assert f"{results.paper_pck:.2f}" in lines[-2] and f"{results.paper_mpjpe:.2f}" in lines[-2]
  detailed = metrics_3dhp.format_sequence_table(results, detailed=True)
  assert detailed.startswith(text) and "Ankle" in detailed and "head_top" in detailed


def test_perfect_prediction():
  rng = np.random.default_rng(0)
  gt = rng.normal(scale=300.0, size=(6, metrics_3dhp.NUM_JOINTS, 3))
  errors = metrics_3dhp.per_joint_errors(gt.copy(), gt)
  assert errors.shape == (metrics_3dhp.NUM_JOINTS, 6)
  results = metrics_3dhp.evaluate([errors], [np.ones(6, np.int64)])
  np.testing.assert_array_equal(results.seq_pck, 100.0)
  np.testing.assert_array_equal(results.seq_mpjpe, 0.0)
  # Strict "<": at threshold 0 no joint counts, so 30 of the 31 curve points are 1.
  num_thresholds = len(metrics_3dhp.AUC_THRESHOLDS_MM)
  assert num_thresholds == 31
  np.testing.assert_allclose(results.seq_auc, 100.0 * 30 / 31, rtol=0, atol=1e-12)


def test_thresholds_are_strict():
  errors = np.full((metrics_3dhp.NUM_JOINTS, 2), 150.0)
  results = metrics_3dhp.evaluate([errors], [np.array([2, 2])])
  np.testing.assert_array_equal(results.seq_pck, 0.0)
  np.testing.assert_array_equal(results.seq_auc, 0.0)
  errors[:, 1] = 149.999
  results = metrics_3dhp.evaluate([errors], [np.array([2, 2])])
  np.testing.assert_array_equal(results.seq_pck, 50.0)
  # 149.999 lies below only the last threshold (150): half the joints count at 1 of 31 points.
  np.testing.assert_allclose(results.seq_auc, 100.0 * 0.5 / 31, atol=1e-12)


def test_per_joint_errors_root_relative_and_valid_mask():
  rng = np.random.default_rng(1)
  gt = rng.normal(scale=300.0, size=(5, 17, 3))
  pred = gt - gt[:, 14:15] + rng.normal(scale=10.0, size=gt.shape)
  pred[:, 14] = 0
  valid = np.array([1, 0, 1, 1, 0])
  errors = metrics_3dhp.per_joint_errors(pred, gt + 1000.0, valid)
  expected = np.linalg.norm(pred - (gt - gt[:, 14:15]), axis=-1)[valid == 1].T
  np.testing.assert_allclose(errors, expected, rtol=1e-12)
  assert np.all(errors[14] == 0)


def test_bad_input_is_rejected():
  good = np.zeros((17, 3))
  with pytest.raises(ValueError, match=r"shape \[17, n\]"):
    metrics_3dhp.evaluate([np.zeros((16, 3))], [np.ones(3)])
  with pytest.raises(ValueError, match="activity ids"):
    metrics_3dhp.evaluate([good], [np.array([0, 1, 8])])
  with pytest.raises(ValueError, match="activities must have shape"):
    metrics_3dhp.evaluate([good], [np.ones(2)])
  with pytest.raises(ValueError, match="one activity array per sequence"):
    metrics_3dhp.evaluate([good, good], [np.ones(3)])
  with pytest.raises(ValueError, match="pred and gt"):
    metrics_3dhp.per_joint_errors(np.zeros((4, 17, 3)), np.zeros((4, 16, 3)))
  with pytest.raises(ValueError, match="valid"):
    metrics_3dhp.per_joint_errors(np.zeros((4, 17, 3)), np.zeros((4, 17, 3)), np.ones(3))
