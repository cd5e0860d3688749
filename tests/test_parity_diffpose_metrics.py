"""Upstream DiffPose per-action table reproduced from the fixture's predictions (spec §A.5)."""

import numpy as np
import pytest

from posediff_jax import metrics
from tests.conftest import parity_dir


def _fill_table(prefix: str, upstream: bool):
  folder = parity_dir("diffpose")
  io = np.load(folder / "io.npz")
  pred, target = io[f"{prefix}_pred_xyz"], io[f"{prefix}_target_xyz"]
  actions = io["eval_actions"]
  table = metrics.ActionErrorTable(upstream_p2_batch_mean=upstream)
  start = 0
  for size in io["eval_batch_sizes"]:
    rows = slice(start, start + int(size))
    table.update(metrics.mpjpe(pred[rows], target[rows]), metrics.p_mpjpe(pred[rows], target[rows]),
                 actions[rows])
    start += int(size)
  assert start == pred.shape[0]
  return table, io, folder


@pytest.mark.parametrize("prefix", ["eval", "evalfix"])
def test_upstream_table_reproduces_fixture(prefix):
  table, io, folder = _fill_table(prefix, upstream=True)
  p1, p2 = table.averages()
  np.testing.assert_allclose(p1, float(io[f"{prefix}_p1_mm"]), atol=1e-3)
  np.testing.assert_allclose(p2, float(io[f"{prefix}_p2_mm"]), atol=1e-3)
  assert table.format_table() + "\n" == (folder / f"{prefix}_stdout.txt").read_text()


@pytest.mark.parametrize("prefix", ["eval", "evalfix"])
def test_per_sample_table_differs_only_in_p2(prefix):
  upstream, _, _ = _fill_table(prefix, upstream=True)
  default, _, _ = _fill_table(prefix, upstream=False)
  up_p1, up_p2 = upstream.per_action_mm()
  p1, p2 = default.per_action_mm()
  np.testing.assert_allclose(p1, up_p1, rtol=1e-6)
  # The fixture's second batch mixes Directions and Eating, so their P2 moves; Walking's does not.
  walking = metrics.H36M_ACTIONS.index("Walking")
  np.testing.assert_allclose(p2[walking], up_p2[walking], rtol=1e-5)
  assert abs(p2[0] - up_p2[0]) > 1e-3
  np.testing.assert_array_equal(default.counts, upstream.counts)
