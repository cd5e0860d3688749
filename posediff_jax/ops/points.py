"""Point-cloud neighbourhood operations with the semantics of the pointnet2 CUDA kernels.

mmDiff's phase-1 encoder (P4Transformer) runs `pointnet2_ops` 3.0.0 (erikwijmans/Pointnet2_PyTorch)
kernels, and its phase-2 denoiser picks the radar points nearest to each joint. These are the same
operations as jit-able `jnp` code on a batch axis, channels last:

* `furthest_point_sample`: iterative furthest point sampling, starting from point 0. Like the
  kernel, points within 1e-3 (squared norm) of the origin are never picked (in mmDiff's radar
  clouds those are the zero padding), and ties are broken the way the kernel's thread layout and
  reduction break them, so duplicate points and clouds with fewer distinct points than requested
  give the kernel's indices.
* `ball_query`: per centre, the first `num_samples` points (in index order, not the nearest) whose
  squared distance is strictly below radius²; free slots repeat the first point found, and a ball
  with no point at all gets index 0 in every slot.
* `knn`: the k nearest points by a partial selection (`lax.top_k`), never a full sort; ties go to
  the lower index.
* `group_points`: gathers per-point features for any index array.

Non-finite coordinates have no meaning for any of these (the kernels silently return arbitrary
indices), so every function raises a ValueError for them when it is given concrete arrays. Under
`jax.jit` values are not known at trace time: screen the data with `check_finite_points` first.

Shapes: B = batch, N = points, M = centres or queries, S = samples per centre, C = channels.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# pointnet2_ops `TOTAL_THREADS`: the largest CUDA block the kernels launch.
_MAX_THREADS = 512


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def check_finite_points(points, name: str = "points") -> None:
  """Raises a ValueError naming the first non-finite entry of a concrete point array.

  Args:
    points: [B, N, C] (or any shape whose last axis is channels) coordinates or features.
    name: what the array is, for the message (e.g. "radar").

  Raises:
    ValueError: some entry is NaN or infinite. Traced arrays (inside `jax.jit`) are not checked.
  """
  if _is_traced(points):
    return
  values = np.asarray(points)
  if not np.issubdtype(values.dtype, np.floating):
    return
  bad = ~np.isfinite(values)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"{name}: {int(bad.sum())} non-finite values (NaN or inf) in an array of shape "
        f"{values.shape}, the first at index {where} = {values[where]}; clean or drop such frames "
        "before sampling neighbourhoods")


def _check_xyz(xyz, name: str, what: str = "xyz") -> None:
  if xyz.ndim != 3 or xyz.shape[-1] != 3:
    raise ValueError(f"{name}: expected {what} of shape [B, N, 3], got {xyz.shape}")
  if xyz.shape[1] < 1:
    raise ValueError(f"{name}: {what} has no points (shape {xyz.shape})")
  check_finite_points(xyz, f"{name} {what}")


def _squared_norm(p: jax.Array) -> jax.Array:
  """(x·x + y·y) + z·z in float32, the kernels' operation order. [..., 3] -> [...]."""
  return (p[..., 0] * p[..., 0] + p[..., 1] * p[..., 1]) + p[..., 2] * p[..., 2]


def squared_distances(queries: jax.Array, points: jax.Array) -> jax.Array:
  """Squared Euclidean distances from the difference, ((dx² + dy²) + dz²).

  Args:
    queries: [B, M, 3].
    points: [B, N, 3].

  Returns:
    [B, M, N].
  """
  return _squared_norm(queries[:, :, None, :] - points[:, None, :, :])


# --------------------------------------------------------------------------------------------------
# Furthest point sampling.


def _fps_block_size(num_points: int) -> int:
  """`opt_n_threads(n)` of pointnet2_ops: 2^floor(log2 n) clipped to [1, 512], in double maths."""
  pow_2 = int(math.log(float(num_points)) / math.log(2.0))
  return max(min(1 << pow_2, _MAX_THREADS), 1)


def _fps_tie_rank(num_points: int) -> np.ndarray:
  """The kernel's preference among points at the same (largest) distance: lower rank wins.

  Thread t of the block scans points t, t + bs, ... and keeps its first maximum; the block's
  tree reduction then keeps the lower slot on ties at every level, from half-block strides down to
  1, so the thread whose index is smallest *bit-reversed* wins. Hence rank(k) orders first by the
  bit-reversed thread index of k, then by k within the thread.
  """
  block = _fps_block_size(num_points)
  bits = block.bit_length() - 1
  k = np.arange(num_points, dtype=np.int64)
  thread = k % block
  reversed_thread = np.zeros_like(thread)
  for bit in range(bits):
    reversed_thread |= ((thread >> bit) & 1) << (bits - 1 - bit)
  per_thread = -(-num_points // block)
  return (reversed_thread * per_thread + k // block).astype(np.int32)


def _fps_origin_threshold() -> np.float32:
  """The largest float32 m with m <= 1e-3 in double: the kernel skips points with |p|² <= 1e-3."""
  threshold = np.float32(1e-3)
  if float(threshold) > 1e-3:
    threshold = np.nextafter(threshold, np.float32(0))
  return threshold


def furthest_point_sample(xyz: jax.Array, num_samples: int) -> jax.Array:
  """Iterative furthest point sampling, index for index as pointnet2_ops' CUDA kernel.

  The first pick is point 0 whatever it is. Each further pick is the point with the largest
  distance to the picked set, among points farther than ~0.032 from the origin (|p|² > 1e-3);
  when no point qualifies the pick is 0. Once every distinct eligible point is picked, already
  picked points (distance 0) are picked again in the kernel's tie order, so asking for more samples
  than there are distinct points, or than N, is allowed and matches the kernel.

  Args:
    xyz: [B, N, 3] float coordinates.
    num_samples: M >= 1, the number of indices to return.

  Returns:
    int32 [B, M] indices into N.

  Raises:
    ValueError: bad shapes, M < 1, or non-finite coordinates (checked on concrete input).
  """
  xyz = jnp.asarray(xyz)
  _check_xyz(xyz, "furthest_point_sample")
  num_samples = int(num_samples)
  if num_samples < 1:
    raise ValueError(f"furthest_point_sample: num_samples must be >= 1, got {num_samples}")
  xyz = xyz.astype(jnp.float32)
  batch, num_points = xyz.shape[:2]
  rank = jnp.asarray(_fps_tie_rank(num_points))
  never = jnp.iinfo(jnp.int32).max
  eligible = _squared_norm(xyz) > _fps_origin_threshold()
  min_dist = jnp.full((batch, num_points), 1e10, jnp.float32)  # the kernel's `temp` init
  picks = jnp.zeros((batch, num_samples), jnp.int32)

  def pick(j, carry):
    min_dist, picks, last = carry
    last_xyz = jnp.take_along_axis(xyz, last[:, None, None], axis=1)  # [B, 1, 3]
    dist = _squared_norm(xyz - last_xyz)
    min_dist = jnp.where(eligible, jnp.minimum(dist, min_dist), min_dist)
    candidate = jnp.where(eligible, min_dist, -1.0)
    best = jnp.max(candidate, axis=1, keepdims=True)
    key = jnp.where(eligible & (candidate == best), rank, never)
    # No eligible point leaves every key at `never`; argmin then returns 0, as the kernel does.
    last = jnp.argmin(key, axis=1).astype(jnp.int32)
    return min_dist, picks.at[:, j].set(last), last

  _, picks, _ = jax.lax.fori_loop(1, num_samples, pick,
                                  (min_dist, picks, jnp.zeros((batch,), jnp.int32)))
  return picks


# --------------------------------------------------------------------------------------------------
# Ball query, kNN, grouping.


def ball_query(xyz: jax.Array, centers: jax.Array, radius: float, num_samples: int) -> jax.Array:
  """pointnet2_ops `ball_query`: up to S point indices within `radius` of each centre.

  The points are taken in index order (the first S inside the ball, not the nearest S). A point is
  inside when its squared distance is strictly below radius² (both float32). Slots beyond the
  number found repeat the first point found; a centre with no point inside gets 0 everywhere.

  Args:
    xyz: [B, N, 3] points.
    centers: [B, M, 3] ball centres.
    radius: ball radius (> 0).
    num_samples: S >= 1, slots per ball.

  Returns:
    int32 [B, M, S] indices into N.

  Raises:
    ValueError: bad shapes or arguments, or non-finite coordinates (checked on concrete input).
  """
  xyz, centers = jnp.asarray(xyz), jnp.asarray(centers)
  _check_xyz(xyz, "ball_query")
  _check_xyz(centers, "ball_query", "centers")
  if centers.shape[0] != xyz.shape[0]:
    raise ValueError(f"ball_query: centers {centers.shape} and xyz {xyz.shape} differ in batch "
                     "size")
  num_samples = int(num_samples)
  if num_samples < 1 or not radius > 0:
    raise ValueError(f"ball_query: need radius > 0 and num_samples >= 1, got radius={radius}, "
                     f"num_samples={num_samples}")
  radius = np.float32(radius)
  inside = squared_distances(centers.astype(jnp.float32), xyz.astype(jnp.float32)) < (
      radius * radius)
  found = jnp.cumsum(inside, axis=-1, dtype=jnp.int32)  # [B, M, N], non-decreasing
  total = found[..., -1:]
  # The s-th point inside (1-based) is the first index where the running count reaches s.
  slots = jnp.arange(1, num_samples + 1, dtype=jnp.int32)
  search = jax.vmap(jax.vmap(lambda counts: jnp.searchsorted(counts, slots, side="left")))
  index = search(found).astype(jnp.int32)  # [B, M, S]; N where there is no s-th point
  fill = jnp.where(total > 0, index[..., :1], 0)
  return jnp.where(slots <= total, index, fill)


_KNN_BLOCK = 32  # points per block of the two-stage selection


def knn(queries: jax.Array, points: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k nearest points of each query by squared distance, nearest first.

  A partial selection (`lax.top_k`), never a full sort, and for large clouds a two-stage one: the
  distances are computed per block of `_KNN_BLOCK` points and reduced to block minima; the k blocks
  with the smallest minima hold the k nearest points (ties included: a tied block is taken before
  any higher-index one), so only their k x 32 points get their distances again for the final
  `top_k`, kept in index order. The [B, M, N] distance matrix is never stored. For mmDiff's
  20,736 radar points this measured ~1.4x faster than the same selection over a stored matrix,
  which was ~3x faster than one `top_k` over all N (and that ~20x faster than `argsort`). Either
  way the result is exactly `lax.top_k` over all the distances: ties go to the lowest index.

  Args:
    queries: [B, M, 3].
    points: [B, N, 3] (only the coordinates; gather other channels with `group_points`).
    k: 1 <= k <= N.

  Returns:
    (squared distances float32 [B, M, k], int32 indices [B, M, k]).

  Raises:
    ValueError: bad shapes, k out of range, or non-finite coordinates (checked on concrete input).
  """
  queries, points = jnp.asarray(queries), jnp.asarray(points)
  _check_xyz(points, "knn", "points")
  _check_xyz(queries, "knn", "queries")
  if queries.shape[0] != points.shape[0]:
    raise ValueError(f"knn: queries {queries.shape} and points {points.shape} differ in batch size")
  k = int(k)
  num = points.shape[1]
  if not 1 <= k <= num:
    raise ValueError(f"knn: k must be in [1, N={num}], got {k}")
  queries, points = queries.astype(jnp.float32), points.astype(jnp.float32)
  block = _KNN_BLOCK
  num_blocks = -(-num // block)
  if num_blocks < 4 * k:
    neg, index = jax.lax.top_k(-squared_distances(queries, points), k)
    return -neg, index.astype(jnp.int32)
  # Coordinates major, [B, 3, blocks, block]: the distances vectorise along the points. The
  # padding lies at infinite distance.
  coords = jnp.pad(jnp.swapaxes(points, 1, 2), [(0, 0), (0, 0), (0, num_blocks * block - num)],
                   constant_values=jnp.inf).reshape(points.shape[0], 3, num_blocks, block)
  query = [queries[:, :, i, None, None] for i in range(3)]  # 3 x [B, M, 1, 1]

  def distances(coord):  # 3 x [B, M | 1, blocks, block] -> [B, M, blocks, block]
    diff = [q - c for q, c in zip(query, coord)]
    return (diff[0] * diff[0] + diff[1] * diff[1]) + diff[2] * diff[2]

  block_min = jnp.min(distances([coords[:, None, i] for i in range(3)]), axis=-1)
  _, chosen = jax.lax.top_k(-block_min, k)
  chosen = jnp.sort(chosen, axis=-1)  # index order, so the second stage breaks ties as top_k
  picked = jax.vmap(lambda c, i: c[:, i])(coords, chosen)  # [B, 3, M, k, block]
  candidates = distances([picked[:, i] for i in range(3)]).reshape(chosen.shape[:-1] +
                                                                    (k * block,))
  neg, position = jax.lax.top_k(-candidates, k)
  index = jnp.take_along_axis(chosen, position // block, axis=-1) * block + position % block
  return -neg, index.astype(jnp.int32)


def group_points(features: jax.Array, index: jax.Array) -> jax.Array:
  """Per-batch gather: `out[b, ...] = features[b, index[b, ...]]` (pointnet2 gather / group).

  Args:
    features: [B, N, C].
    index: integer [B, ...] indices into N (e.g. [B, M] from `furthest_point_sample` or
      [B, M, S] from `ball_query` / `knn`).

  Returns:
    [B, ..., C].

  Raises:
    ValueError: shapes do not fit, or (on concrete input) an index is outside [0, N).
  """
  features, index = jnp.asarray(features), jnp.asarray(index)
  if features.ndim != 3 or index.ndim < 2 or index.shape[0] != features.shape[0]:
    raise ValueError(f"group_points: expected features [B, N, C] and index [B, ...] with the same "
                     f"B, got {features.shape} and {index.shape}")
  if not jnp.issubdtype(index.dtype, jnp.integer):
    raise ValueError(f"group_points: index must be an integer array, got {index.dtype}")
  if not _is_traced(index):
    values = np.asarray(index)
    if values.size and (values.min() < 0 or values.max() >= features.shape[1]):
      raise ValueError(f"group_points: index values must lie in [0, N={features.shape[1]}), got "
                       f"[{values.min()}, {values.max()}]")
  return jax.vmap(lambda f, i: f[i])(features, index)
