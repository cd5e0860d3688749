"""3D pose errors (MPJPE, P-MPJPE, N-MPJPE) and the per-action Human3.6M error table.

The error functions are pure `jax.numpy` and return one value per pose (no reduction over the
batch), so they work under `jax.jit` and `jax.vmap`. Inputs are in metres (×1000 for mm).

`ActionErrorTable` is host-side bookkeeping (numpy). It averages per action and prints the table
in the exact format of upstream DiffPose's `print_error`. With `upstream_p2_batch_mean=True` it also
reproduces upstream's accumulation quirks (spec §0.5 and §0.5b), which change the printed P2.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Fixed upstream order of the 15 Human3.6M actions (`test_hyber`'s `test_action_list`).
H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing",
                "Purchases", "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking",
                "WalkTogether")

# float32 matmuls must not drop to TF32/bf16 on accelerators: the alignment is precision-sensitive.
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_pose_shapes(pred: jax.Array, target: jax.Array, name: str) -> None:
  if pred.shape != target.shape or pred.ndim < 2:
    raise ValueError(f"{name}: pred and target must have the same shape [..., J, C], got "
                     f"pred {pred.shape} and target {target.shape}")


def mpjpe(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean per-joint position error of each pose.

  Args:
    pred: [..., J, 3] predicted poses.
    target: [..., J, 3] ground-truth poses, same shape.

  Returns:
    [...] the mean over joints of the Euclidean joint error.
  """
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  _check_pose_shapes(pred, target, "mpjpe")
  return jnp.mean(jnp.linalg.norm(pred - target, axis=-1), axis=-1)


def n_mpjpe(pred: jax.Array, target: jax.Array) -> jax.Array:
  """MPJPE after the least-squares scale alignment of `pred` onto `target` (VideoPose3D `n_mpjpe`).

  Args:
    pred: [..., J, 3] predicted poses.
    target: [..., J, 3] ground-truth poses.

  Returns:
    [...] per-pose error of `scale * pred`, scale = <target, pred> / <pred, pred> over the pose.
  """
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  _check_pose_shapes(pred, target, "n_mpjpe")
  pred_sq = jnp.mean(jnp.sum(pred * pred, axis=-1, keepdims=True), axis=-2, keepdims=True)
  cross = jnp.mean(jnp.sum(target * pred, axis=-1, keepdims=True), axis=-2, keepdims=True)
  return mpjpe(cross / pred_sq * pred, target)


def procrustes_align(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Similarity-aligns each predicted pose onto its target (VideoPose3D / DiffPose `p_mpjpe`).

  Both poses are centred and divided by their Frobenius norms; H = targetᵀ·pred, H = U S Vᵀ,
  R = V Uᵀ. When det R < 0 the sign of V's last column and of the last singular value flip (the
  closest proper rotation). The scale is a = Σs · ‖target₀‖ / ‖pred₀‖, the translation
  t = μ_target − a·μ_pred R, and the result a·pred R + t.

  Args:
    pred: [..., J, C] poses to align.
    target: [..., J, C] reference poses.

  Returns:
    [..., J, C] the aligned predictions.
  """
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  _check_pose_shapes(pred, target, "procrustes_align")
  mu_target = jnp.mean(target, axis=-2, keepdims=True)
  mu_pred = jnp.mean(pred, axis=-2, keepdims=True)
  target0 = target - mu_target
  pred0 = pred - mu_pred
  norm_target = jnp.sqrt(jnp.sum(target0**2, axis=(-2, -1), keepdims=True))
  norm_pred = jnp.sqrt(jnp.sum(pred0**2, axis=(-2, -1), keepdims=True))
  target0 = target0 / norm_target
  pred0 = pred0 / norm_pred

  h = jnp.matmul(jnp.swapaxes(target0, -1, -2), pred0, precision=_HIGHEST)
  u, s, vt = jnp.linalg.svd(h)
  v = jnp.swapaxes(vt, -1, -2)
  u_t = jnp.swapaxes(u, -1, -2)
  rot = jnp.matmul(v, u_t, precision=_HIGHEST)
  sign = jnp.where(jnp.linalg.det(rot) < 0, -1.0, 1.0).astype(s.dtype)
  v = v.at[..., -1].multiply(sign[..., None])
  s = s.at[..., -1].multiply(sign)
  rot = jnp.matmul(v, u_t, precision=_HIGHEST)

  scale = jnp.sum(s, axis=-1)[..., None, None] * norm_target / norm_pred
  shift = mu_target - scale * jnp.matmul(mu_pred, rot, precision=_HIGHEST)
  return scale * jnp.matmul(pred, rot, precision=_HIGHEST) + shift


def p_mpjpe(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Procrustes-aligned MPJPE (protocol #2) of each pose: `pred` is aligned onto `target`.

  Args:
    pred: [..., J, 3] predicted poses.
    target: [..., J, 3] ground-truth poses.

  Returns:
    [...] per-pose MPJPE after `procrustes_align(pred, target)`.
  """
  return mpjpe(procrustes_align(pred, target), jnp.asarray(target))


class ActionErrorTable:
  """Per-action P1/P2 accumulator and printer (upstream `test_calculation` + `print_error`).

  Default mode: each action's error is the mean of its samples' errors (float64 sums).

  `upstream_p2_batch_mean=True` reproduces upstream DiffPose bit for bit (spec §0.5, §0.5b):
  P2 of a batch holding several actions adds the *batch-mean* P2 once per sample to each sample's
  own action; P2 sums, per-action means, the ×1000 and the 15-way average stay numpy float32.
  P1 (float64 sums) uses the float32 batch mean times n for a single-action batch, as upstream.

  The "Average" row is the unweighted mean over the evaluated actions (those with samples), as
  D3DP's `run_evaluation` averages the actions it ran (`-a`, `--subjects-test`); the table lists
  only those. `upstream_p2_batch_mean=True` prints DiffPose's fixed 15 rows instead, an action
  without samples showing 0 and counting as 0 in the Average (its `test_hyber` divides by 15).
  """

  def __init__(self, upstream_p2_batch_mean: bool = False,
               actions: Sequence[str] = H36M_ACTIONS):
    """Creates an empty table.

    Args:
      upstream_p2_batch_mean: reproduce upstream's P2 accumulation (see the class docstring).
      actions: action names in table order; `update` takes indices into this list.
    """
    self.actions = tuple(actions)
    if not self.actions or len(set(self.actions)) != len(self.actions):
      raise ValueError(f"actions must be a non-empty list of distinct names, got {self.actions}")
    self.upstream_p2_batch_mean = bool(upstream_p2_batch_mean)
    self._index = {name: i for i, name in enumerate(self.actions)}
    n = len(self.actions)
    self._p1_sum = np.zeros(n, np.float64)
    self._p2_sum = np.zeros(n, np.float32 if self.upstream_p2_batch_mean else np.float64)
    self._count = np.zeros(n, np.int64)

  @property
  def mode(self) -> str:
    return "upstream_p2_batch_mean" if self.upstream_p2_batch_mean else "per_sample"

  @property
  def counts(self) -> np.ndarray:
    """[num_actions] number of samples seen per action."""
    return self._count.copy()

  def _action_indices(self, action: Any, batch: int) -> np.ndarray:
    action = np.asarray(action)
    if action.shape != (batch,):
      raise ValueError(f"action must have shape [{batch}] like p1, got {action.shape}")
    if action.dtype.kind in "USO":
      # Upstream labels are the sequence name cut at its first space ('Directions 1').
      names = [str(a).split(" ")[0] for a in action]
      unknown = sorted({a for a in names if a not in self._index})
      if unknown:
        raise ValueError(f"unknown action names {unknown}; expected one of {self.actions}")
      return np.array([self._index[a] for a in names], np.int64)
    if action.dtype.kind not in "iu":
      raise ValueError(f"action must hold integer indices or names, got dtype {action.dtype}")
    if batch and (action.min() < 0 or action.max() >= len(self.actions)):
      raise ValueError(f"action indices must lie in [0, {len(self.actions)}), got "
                       f"[{action.min()}, {action.max()}]")
    return action.astype(np.int64)

  def update(self, p1: Any, p2: Any, action: Any, valid: Optional[Any] = None) -> None:
    """Adds one evaluation batch.

    Args:
      p1: [B] per-sample MPJPE in metres.
      p2: [B] per-sample P-MPJPE in metres.
      action: [B] action indices into `self.actions` (or action names).
      valid: optional [B] bool; False rows (padding) are ignored. The upstream-mode "single action"
        test and batch mean only look at the valid rows.
    """
    p1 = np.asarray(p1)
    p2 = np.asarray(p2)
    if p1.ndim != 1 or p2.shape != p1.shape:
      raise ValueError(f"p1 and p2 must both have shape [B], got {p1.shape} and {p2.shape}")
    action = self._action_indices(action, p1.shape[0])
    if valid is not None:
      valid = np.asarray(valid)
      if valid.shape != p1.shape or valid.dtype != np.bool_:
        raise ValueError(f"valid must be a bool array of shape {p1.shape}, got "
                         f"{valid.dtype} {valid.shape}")
      p1, p2, action = p1[valid], p2[valid], action[valid]
    n = p1.shape[0]
    if n == 0:
      return
    if not self.upstream_p2_batch_mean:
      np.add.at(self._p1_sum, action, p1.astype(np.float64))
      np.add.at(self._p2_sum, action, p2.astype(np.float64))
      np.add.at(self._count, action, 1)
      return

    p1_f32 = p1.astype(np.float32)
    p2_batch_mean = np.mean(p2.astype(np.float32))  # np.float32, as upstream's np.mean(dist)
    if np.all(action == action[0]):
      a = action[0]
      self._p1_sum[a] += float(np.mean(p1_f32)) * n
      self._p2_sum[a] += p2_batch_mean * n  # float32 * int stays float32
      self._count[a] += n
    else:
      for a, value in zip(action, p1_f32):
        self._p1_sum[a] += float(value)
        # Upstream quirk (spec §0.5): a mixed-action batch adds its batch-mean P2 to every sample.
        self._p2_sum[a] += p2_batch_mean
        self._count[a] += 1

  def per_action_mm(self) -> tuple[list[float], list[Any]]:
    """Per-action (P1, P2) in millimetres in table order; empty actions are 0."""
    p1_mm, p2_mm = [], []
    for a in range(len(self.actions)):
      count = int(self._count[a])
      p1_mm.append(self._p1_sum[a] / count * 1000.0 if count else 0.0)
      if not count:
        p2_mm.append(0.0)
      elif self.upstream_p2_batch_mean:
        # Upstream quirk (spec §0.5b): mean and ×1000 in float32 (numpy >= 2 promotion rules).
        p2_mm.append(self._p2_sum[a] / count * 1000.0)
      else:
        p2_mm.append(float(self._p2_sum[a]) / count * 1000.0)
    return p1_mm, p2_mm

  def listed(self) -> list[int]:
    """The table's rows (indices into `actions`): the evaluated actions, or all of them in
    upstream mode (class docstring)."""
    if self.upstream_p2_batch_mean:
      return list(range(len(self.actions)))
    return [a for a in range(len(self.actions)) if self._count[a]]

  def averages(self) -> tuple[float, float]:
    """(P1, P2) in mm: the unweighted mean over the listed actions (class docstring); NaN when
    no action has samples."""
    p1_mm, p2_mm = self.per_action_mm()
    rows = self.listed()
    if not rows:
      return float("nan"), float("nan")
    # Sequential sums in upstream's order: P1 in Python floats, P2 in float32 in upstream mode.
    p1_total = 0.0
    p2_total = np.float32(0.0) if self.upstream_p2_batch_mean else 0.0
    for a in rows:
      p1_total += p1_mm[a]
      p2_total += p2_mm[a]
    return float(p1_total / len(rows)), float(p2_total / len(rows))

  def format_table(self) -> str:
    """The table exactly as upstream `print_error` prints it (no trailing newline)."""
    p1_mm, p2_mm = self.per_action_mm()
    lines = ["{0:=^12} {1:=^10} {2:=^8}".format("Action", "p#1 mm", "p#2 mm")]
    for a in self.listed():
      lines.append("{0:<12} ".format(self.actions[a]) + "{0:>6.2f} {1:>10.2f}".format(
          p1_mm[a], p2_mm[a]))
    avg_p1, avg_p2 = self.averages()
    lines.append("{0:<12} {1:>6.2f} {2:>10.2f}".format("Average", avg_p1, avg_p2))
    return "\n".join(lines)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready summary: per-action P1/P2 (mm) and counts of the listed actions, averages,
    the mode used."""
    p1_mm, p2_mm = self.per_action_mm()
    avg_p1, avg_p2 = self.averages()
    return {
        "mode": self.mode,
        "num_samples": int(self._count.sum()),
        "actions": {self.actions[a]: {"p1_mm": float(p1_mm[a]), "p2_mm": float(p2_mm[a]),
                                      "count": int(self._count[a])} for a in self.listed()},
        "average": {"p1_mm": avg_p1, "p2_mm": avg_p2},
    }
