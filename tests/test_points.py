"""Point-cloud ops against literal numpy re-enactments of the pointnet2_ops 3.0.0 CUDA kernels.

The references below follow the kernels step by step (threads of one block, each scanning its
stride of points, then the block's tree reduction; the ball query's per-centre scan), so they check
`posediff_jax.ops.points`' vectorised formulation, tie-breaking included, independently.
"""

import jax
import numpy as np
import pytest

from posediff_jax.ops import points


def _block_size(n: int) -> int:
  return max(min(1 << int(np.log(float(n)) / np.log(2.0)), 512), 1)


def reference_fps(xyz: np.ndarray, m: int) -> np.ndarray:
  """`furthest_point_sampling_kernel` for one cloud [N, 3] (float32 maths, one block)."""
  xyz = xyz.astype(np.float32)
  n = xyz.shape[0]
  block = _block_size(n)
  temp = np.full(n, 1e10, np.float32)
  picks = [0]
  old = 0
  for _ in range(1, m):
    x1, y1, z1 = xyz[old]
    dists, dists_i = np.zeros(block, np.float32), np.zeros(block, np.int64)
    for tid in range(block):
      best, besti = np.float32(-1), 0
      for k in range(tid, n, block):
        x2, y2, z2 = xyz[k]
        mag = (x2 * x2) + (y2 * y2) + (z2 * z2)
        if float(mag) <= 1e-3:
          continue
        d = (x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1) + (z2 - z1) * (z2 - z1)
        d2 = min(d, temp[k])
        temp[k] = d2
        if d2 > best:
          best, besti = d2, k
      dists[tid], dists_i[tid] = best, besti
    stride = block // 2
    while stride >= 1:
      for tid in range(stride):
        v1, v2 = dists[tid], dists[tid + stride]
        dists[tid] = max(v1, v2)
        dists_i[tid] = dists_i[tid + stride] if v2 > v1 else dists_i[tid]
      stride //= 2
    old = int(dists_i[0])
    picks.append(old)
  return np.asarray(picks)


def reference_ball_query(xyz: np.ndarray, centers: np.ndarray, radius: float, s: int) -> np.ndarray:
  """`query_ball_point_kernel` for one cloud: [N, 3], [M, 3] -> [M, S] (output zero-initialised)."""
  xyz, centers = xyz.astype(np.float32), centers.astype(np.float32)
  radius2 = np.float32(radius) * np.float32(radius)
  out = np.zeros((centers.shape[0], s), np.int64)
  for j, (cx, cy, cz) in enumerate(centers):
    cnt = 0
    for k in range(xyz.shape[0]):
      if cnt >= s:
        break
      x, y, z = xyz[k]
      d2 = (cx - x) * (cx - x) + (cy - y) * (cy - y) + (cz - z) * (cz - z)
      if d2 < radius2:
        if cnt == 0:
          out[j, :] = k
        out[j, cnt] = k
        cnt += 1
  return out


def _cloud(rng, n, scale=1.0):
  return (rng.normal(size=(n, 3)) * scale).astype(np.float32)


def _fps_both(cloud_batch, m):
  ours = np.asarray(jax.jit(lambda x: points.furthest_point_sample(x, m))(cloud_batch))
  expected = np.stack([reference_fps(c, m) for c in cloud_batch])
  return ours, expected


# --- furthest point sampling ----------------------------------------------------------------------


def test_block_size_follows_opt_n_threads():
  assert [_block_size(n) for n in (1, 2, 3, 200, 512, 1000, 5184)] == [1, 2, 2, 128, 512, 512, 512]
  assert all(points._fps_block_size(n) == _block_size(n) for n in range(1, 1200, 7))


def test_fps_matches_the_kernel_on_random_clouds():
  rng = np.random.default_rng(0)
  clouds = np.stack([_cloud(rng, 300), _cloud(rng, 300, 0.2)])
  ours, expected = _fps_both(clouds, 24)
  np.testing.assert_array_equal(ours, expected)
  assert ours.dtype == np.int32 and ours.shape == (2, 24)


def test_fps_with_duplicates_padding_and_more_samples_than_points():
  rng = np.random.default_rng(1)
  # 7 distinct points, each repeated, then zero padding at the origin (never picked), shuffled so
  # that ties fall on different threads; 40 samples from 45 points, 33 of them eligible.
  distinct = _cloud(rng, 7)
  cloud = np.concatenate([np.repeat(distinct, 4, axis=0), distinct[:5], np.zeros((12, 3))])
  cloud = cloud[rng.permutation(len(cloud))].astype(np.float32)
  # A near-origin point (|p|² just under 1e-3) is skipped too; one just over is not.
  cloud[3] = [0.0316, 0.0, 0.0]
  cloud[4] = [0.0317, 0.0, 0.0]
  tiny = np.zeros((45, 3), np.float32)  # everything at the origin: every pick is 0
  ours, expected = _fps_both(np.stack([cloud, tiny]), 40)
  np.testing.assert_array_equal(ours, expected)
  assert 3 not in ours[0] and 4 in ours[0]
  assert not ours[1].any()
  # More samples than points: the kernel keeps cycling through its tie order.
  ours, expected = _fps_both(cloud[None, :9], 25)
  np.testing.assert_array_equal(ours, expected)


def test_fps_first_pick_is_point_zero_even_at_the_origin():
  rng = np.random.default_rng(2)
  cloud = _cloud(rng, 20)
  cloud[0] = 0.0
  ours, expected = _fps_both(cloud[None], 6)
  np.testing.assert_array_equal(ours, expected)
  assert ours[0, 0] == 0 and 0 not in ours[0, 1:]
  # With point 0 ineligible, the repeats after the distinct points run out follow the kernel's
  # thread order rather than falling back to 0.
  dup = np.repeat(_cloud(rng, 5), 6, axis=0)[rng.permutation(30)]
  dup[0] = 0.0
  ours, expected = _fps_both(dup[None], 20)
  np.testing.assert_array_equal(ours, expected)
  first_eligible = np.flatnonzero((dup ** 2).sum(axis=1) > 1e-3)[0]
  assert 0 not in ours[0, 1:] and (ours[0, 6:] == ours[0, -1]).all()
  assert ours[0, -1] != first_eligible  # not a plain first-index argmax


# --- ball query, kNN, grouping --------------------------------------------------------------------


def test_ball_query_matches_the_kernel():
  rng = np.random.default_rng(3)
  clouds = np.stack([_cloud(rng, 257), _cloud(rng, 257)])
  centers = np.concatenate([clouds[:, :10], np.full((2, 2, 3), 50.0, np.float32),
                            clouds[:, 20:22] + 0.01], axis=1)
  ours = np.asarray(jax.jit(lambda x, c: points.ball_query(x, c, 0.5, 8))(clouds, centers))
  expected = np.stack([reference_ball_query(x, c, 0.5, 8) for x, c in zip(clouds, centers)])
  np.testing.assert_array_equal(ours, expected)
  # Some balls hold fewer points than slots (the first found repeats), the far ones none (0s).
  assert (ours[:, 10:12] == 0).all()
  assert any(len(set(row)) < 8 for row in ours.reshape(-1, 8)[:10])


def test_ball_query_counts_duplicates_and_the_strict_radius():
  cloud = np.array([[0, 0, 0], [1, 0, 0], [0.5, 0, 0], [0.5, 0, 0], [0.25, 0, 0]], np.float32)
  centers = np.array([[0, 0, 0], [0.5, 0, 0]], np.float32)
  ours = np.asarray(points.ball_query(cloud[None], centers[None], 0.5, 4))[0]
  # Distance exactly 0.5 (squared 0.25 = radius²) is outside: strict <.
  np.testing.assert_array_equal(ours, reference_ball_query(cloud, centers, 0.5, 4))
  np.testing.assert_array_equal(ours, [[0, 4, 0, 0], [2, 3, 4, 2]])


def test_knn_is_a_partial_selection_with_index_order_on_ties():
  rng = np.random.default_rng(4)
  cloud = _cloud(rng, 64)
  cloud[10:14] = cloud[5]  # exact ties
  queries = np.concatenate([cloud[5:6], _cloud(rng, 3)])
  dist, index = points.knn(queries[None], cloud[None], 9)
  full = ((queries[:, None, 0] - cloud[None, :, 0]) ** 2 + (queries[:, None, 1] - cloud[None, :, 1])
          ** 2) + (queries[:, None, 2] - cloud[None, :, 2]) ** 2
  expected = np.argsort(full, axis=-1, kind="stable")[:, :9]
  np.testing.assert_array_equal(np.asarray(index)[0], expected)
  np.testing.assert_array_equal(np.asarray(dist)[0], np.take_along_axis(full, expected, -1))
  np.testing.assert_array_equal(np.asarray(index)[0, 0, :5], [5, 10, 11, 12, 13])


@pytest.mark.parametrize("num", [600, 640, 4001])
def test_knn_of_large_clouds_in_two_stages_equals_brute_force(num):
  """With k = 5, 600 points (19 blocks of 32) take one top_k; 640 and 4001 (padded) take two."""
  rng = np.random.default_rng(8)
  cloud = np.round(_cloud(rng, num), 1)  # a coarse grid: many exact ties, across block edges
  cloud[300:340] = cloud[7]
  queries = np.concatenate([cloud[7:8], _cloud(rng, 4)])
  dist, index = points.knn(queries[None], cloud[None], 5)
  diff = queries[:, None, :] - cloud[None, :, :]
  full = (diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]) + diff[..., 2] * diff[..., 2]
  expected = np.argsort(full, axis=-1, kind="stable")[:, :5]
  np.testing.assert_array_equal(np.asarray(index)[0], expected)
  np.testing.assert_array_equal(np.asarray(dist)[0], np.take_along_axis(full, expected, -1))


@pytest.mark.parametrize("num", [500, 4000, 4001])
def test_knn_ties_follow_top_k_in_both_stages(num):
  """Points on a line at integer distances from the query, so ties are exact: 500 points take one
  top_k; 4000 (125 blocks of 32) and 4001 (padded) take two stages for k = 30."""
  rng = np.random.default_rng(6)
  offsets = rng.integers(2, 60, size=(4, num)).astype(np.float32)
  offsets[0, 40:900] = 1  # one long tie among the nearest
  offsets[1] = rng.integers(0, 10, size=num)  # ties everywhere, across block edges
  offsets[2, ::7] = 0  # a tie in every block
  # A tie between blocks taken out of index order (block 1 has the smaller minimum).
  offsets[3] = 50
  offsets[3, [0, 40, 41]] = [3, 1, 3]
  cloud = np.zeros((4, num, 3), np.float32)
  cloud[..., 0] = offsets * rng.choice([-1.0, 1.0], size=offsets.shape)
  for k in (1, 5, 30):
    dist, index = points.knn(np.zeros((4, 1, 3), np.float32), cloud, k)
    expected = np.argsort(offsets ** 2, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(index)[:, 0], expected)
    np.testing.assert_array_equal(np.asarray(dist)[:, 0],
                                  np.take_along_axis(offsets ** 2, expected, -1))


def test_group_points_gathers_per_batch():
  rng = np.random.default_rng(5)
  features = rng.normal(size=(2, 30, 6)).astype(np.float32)
  index = rng.integers(0, 30, size=(2, 4, 5))
  out = np.asarray(points.group_points(features, index))
  np.testing.assert_array_equal(out, np.stack([f[i] for f, i in zip(features, index)]))
  np.testing.assert_array_equal(np.asarray(points.group_points(features, index[:, :, 0])),
                                out[:, :, 0])


# --- bad input ------------------------------------------------------------------------------------


def test_a_radar_frame_with_nan_is_refused_clearly():
  rng = np.random.default_rng(6)
  radar = rng.normal(size=(2, 4, 50, 6)).astype(np.float32)
  radar[1, 3, 17, 2] = np.nan
  with pytest.raises(ValueError, match=r"radar: 1 non-finite .*first at index \(1, 3, 17, 2\)"):
    points.check_finite_points(radar, "radar")
  cloud = radar.reshape(2, -1, 6)[..., :3]
  with pytest.raises(ValueError, match=r"furthest_point_sample xyz: 1 non-finite"):
    points.furthest_point_sample(cloud, 4)
  with pytest.raises(ValueError, match=r"ball_query xyz: 1 non-finite"):
    points.ball_query(cloud, cloud[:, :3], 0.1, 4)
  with pytest.raises(ValueError, match=r"knn points: 1 non-finite"):
    points.knn(cloud[:, :3], cloud, 4)
  # Under jit values are unknown; the check is the caller's (`check_finite_points` on the data).
  jax.jit(lambda x: points.check_finite_points(x) or x)(cloud)


def test_bad_shapes_and_arguments_are_refused():
  cloud = np.zeros((1, 10, 3), np.float32)
  with pytest.raises(ValueError, match=r"expected xyz of shape \[B, N, 3\], got \(1, 10, 6\)"):
    points.furthest_point_sample(np.zeros((1, 10, 6), np.float32), 3)
  with pytest.raises(ValueError, match=r"num_samples must be >= 1"):
    points.furthest_point_sample(cloud, 0)
  with pytest.raises(ValueError, match=r"k must be in \[1, N=10\], got 11"):
    points.knn(cloud, cloud, 11)
  with pytest.raises(ValueError, match=r"need radius > 0"):
    points.ball_query(cloud, cloud, 0.0, 3)
  with pytest.raises(ValueError, match=r"index values must lie in \[0, N=10\)"):
    points.group_points(cloud, np.array([[3, 10]]))
