"""Multi-hypothesis aggregation of D3DP-style samplers: P-Agg, P-Best, J-Best and J-Agg (JPMA).

The sampler returns the x0 prediction of every DDIM step for H hypotheses,
`preds [B, K, H, F, J, 3]` (B clips, K steps, F frames, J joints). Each mode turns that into one
pose per step (spec §6):

* P-Agg: the mean of the H hypotheses.
* P-Best: per step, the ONE hypothesis whose mean 3D error over the whole mini-batch (all valid
  clips x frames x joints) is lowest. It uses the ground truth.
* J-Best: per (clip, step, frame, joint), the hypothesis with the lowest 3D error (an oracle).
* J-Agg (JPMA): per (clip, step, frame, joint), the hypothesis whose 2D reprojection is closest to
  the 2D input; the reprojection adds the GT root trajectory and uses the GT camera.

Every mode first sets the root joint of the predictions and of the target to 0 (joint 0 for
Human3.6M, 14 for MPI-INF-3DHP). Errors are per step, `[K]`; per-joint errors `[B, K, F, J]` are
available for per-frame / per-action weighting.

P2 (Procrustes) follows upstream D3DP's `p_mpjpe_diffusion*`: the alignment is fitted per
hypothesis pose, then J-Best takes the min of the aligned per-joint errors, J-Agg gathers them with
the 2D-selected indices, P-Best picks the hypothesis with the lowest batch-mean aligned error, and
P-Agg aligns the mean pose. So P2 of J-Best / J-Agg is not the P-MPJPE of one assembled pose.

`clip_mask [B]` marks the real clips of a mini-batch (the last one of a video may be padded to a
fixed size): padding clips influence neither P-Best's choice nor any error. A `[B, F]` mask also
drops frames (upstream's 3DHP prints average only the valid frames).

Everything is `jax.numpy`, jit-friendly (`mode` and `projection` are static strings).
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import cameras
from posediff_jax import metrics

MODES = ("P_Agg", "P_Best", "J_Best", "J_Agg")
PROJECTIONS = ("distorted", "linear")


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {MODES}")


def _check_preds_target(preds: jax.Array, target: jax.Array, root_joint: int) -> None:
  if preds.ndim != 6 or preds.shape[-1] != 3:
    raise ValueError(f"preds must have shape [B, K, H, F, J, 3], got {preds.shape}")
  b, _, _, f, j, _ = preds.shape
  if target.shape != (b, f, j, 3):
    raise ValueError(f"target must have shape [B, F, J, 3] = {(b, f, j, 3)} to match preds "
                     f"{preds.shape}, got {target.shape}")
  if not 0 <= root_joint < j:
    raise ValueError(f"root_joint must lie in [0, {j}), got {root_joint}")


def _check_reproj_error(reproj_error: Optional[jax.Array], preds_shape: Sequence[int],
                        mode: str) -> Optional[jax.Array]:
  if reproj_error is None:
    if mode == "J_Agg":
      raise ValueError("mode 'J_Agg' needs reproj_error [B, K, H, F, J] (see "
                       "reprojection_error)")
    return None
  reproj_error = jnp.asarray(reproj_error)
  if reproj_error.shape != tuple(preds_shape[:5]):
    raise ValueError(f"reproj_error must have shape [B, K, H, F, J] = {tuple(preds_shape[:5])}, "
                     f"got {reproj_error.shape}")
  return reproj_error


def _frame_weights(clip_mask, batch: int, frames: int) -> jax.Array:
  """[B, F] float32 weights (1 = counts) from a [B] or [B, F] bool mask (None = all count)."""
  if clip_mask is None:
    return jnp.ones((batch, frames), jnp.float32)
  mask = jnp.asarray(clip_mask)
  if mask.dtype != jnp.bool_ or mask.shape not in ((batch,), (batch, frames)):
    raise ValueError(f"clip_mask must be a bool array of shape [B] = ({batch},) or [B, F] = "
                     f"({batch}, {frames}), got {mask.dtype} {mask.shape}")
  try:
    concrete = np.asarray(mask)
  except jax.errors.TracerArrayConversionError:
    concrete = None
  if concrete is not None and not concrete.any():
    raise ValueError("clip_mask marks no clip (or frame) as valid; at least one is needed")
  if mask.ndim == 1:
    mask = jnp.broadcast_to(mask[:, None], (batch, frames))
  return mask.astype(jnp.float32)


def _mean_per_step(errors: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted mean of errors [B, K, (H,) F, J] over clips, frames and joints -> [K, (H)]."""
  w = weights[:, None, None, :, None] if errors.ndim == 5 else weights[:, None, :, None]
  w = jnp.broadcast_to(w, errors.shape)
  reduce_axes = (0, 3, 4) if errors.ndim == 5 else (0, 2, 3)
  total = jnp.sum(jnp.where(w > 0, errors, 0.0), axis=reduce_axes)
  return total / jnp.sum(w, axis=reduce_axes)


def set_root_to_zero(poses: jax.Array, root_joint: int = 0) -> jax.Array:
  """A copy of `poses [..., J, 3]` with joint `root_joint` set to 0."""
  poses = jnp.asarray(poses)
  return poses.at[..., root_joint, :].set(0)


def joint_errors(preds: jax.Array, target: jax.Array, *, root_joint: int = 0) -> jax.Array:
  """Per-hypothesis per-joint 3D errors (both roots set to 0 first).

  Args:
    preds: [B, K, H, F, J, 3] sampler output.
    target: [B, F, J, 3] ground truth.
    root_joint: the root joint index (0 for H36M, 14 for 3DHP).

  Returns:
    [B, K, H, F, J] Euclidean distance of each joint to the ground truth.
  """
  preds, target = jnp.asarray(preds), jnp.asarray(target)
  _check_preds_target(preds, target, root_joint)
  preds = set_root_to_zero(preds, root_joint)
  target = set_root_to_zero(target, root_joint)
  return jnp.linalg.norm(preds - target[:, None, None], axis=-1)


def procrustes_joint_errors(preds: jax.Array, target: jax.Array, *,
                            root_joint: int = 0) -> jax.Array:
  """Per-joint errors after aligning each hypothesis pose onto the GT (roots set to 0 first).

  Args:
    preds: [B, K, H, F, J, 3] sampler output.
    target: [B, F, J, 3] ground truth.
    root_joint: the root joint index.

  Returns:
    [B, K, H, F, J] per-joint distance of `procrustes_align(pred, target)` to the target, one
    similarity alignment per (clip, step, hypothesis, frame).
  """
  preds, target = jnp.asarray(preds), jnp.asarray(target)
  _check_preds_target(preds, target, root_joint)
  preds = set_root_to_zero(preds, root_joint)
  target = jnp.broadcast_to(set_root_to_zero(target, root_joint)[:, None, None], preds.shape)
  aligned = metrics.procrustes_align(preds, target)
  return jnp.linalg.norm(aligned - target, axis=-1)


def reproject(preds: jax.Array, trajectory: jax.Array, intrinsic: jax.Array, *,
              projection: str = "distorted", root_joint: int = 0) -> jax.Array:
  """Projects every hypothesis to 2D after adding the GT root trajectory (JPMA's reprojection).

  Args:
    preds: [B, K, H, F, J, 3] root-relative predictions (camera frame; the root is set to 0).
    trajectory: [B, F, 1, 3] GT camera-frame root position, same units as `preds`.
    intrinsic: [9] `[fx, fy, cx, cy, k1, k2, k3, p1, p2]` (H36M: normalised; 3DHP: pixels from
      `cameras.cam_mm_to_pix`) or [B, 9], one camera per clip.
    projection: 'distorted' (`cameras.project_to_2d`) or 'linear' (`project_to_2d_linear`).
    root_joint: the root joint index.

  Returns:
    [B, K, H, F, J, 2] projected joints, in the units of the intrinsic vector.
  """
  if projection not in PROJECTIONS:
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
  preds, trajectory = jnp.asarray(preds), jnp.asarray(trajectory)
  intrinsic = jnp.asarray(intrinsic, preds.dtype)
  if preds.ndim != 6 or preds.shape[-1] != 3:
    raise ValueError(f"preds must have shape [B, K, H, F, J, 3], got {preds.shape}")
  b, _, _, f, j, _ = preds.shape
  if trajectory.shape != (b, f, 1, 3):
    raise ValueError(f"trajectory must have shape [B, F, 1, 3] = {(b, f, 1, 3)}, got "
                     f"{trajectory.shape}")
  if not 0 <= root_joint < j:
    raise ValueError(f"root_joint must lie in [0, {j}), got {root_joint}")
  if intrinsic.shape not in ((9,), (b, 9)):
    raise ValueError(f"intrinsic must have shape [9] or [B, 9] = ({b}, 9), got {intrinsic.shape}")
  absolute = set_root_to_zero(preds, root_joint) + trajectory[:, None, None]
  project = cameras.project_to_2d if projection == "distorted" else cameras.project_to_2d_linear
  return project(absolute, intrinsic)


def reprojection_error(preds: jax.Array, trajectory: jax.Array, intrinsic: jax.Array,
                       input_2d: jax.Array, projection: str = "distorted",
                       image_size: Optional[tuple[int, int]] = None, *,
                       root_joint: int = 0) -> jax.Array:
  """Per-joint 2D distance between each reprojected hypothesis and the 2D input (JPMA's score).

  Human3.6M (`image_size=None`): the projection with the normalised intrinsic is compared with the
  normalised 2D input. MPI-INF-3DHP (`image_size=(w, h)`): the input is first mapped back to pixels
  (`image_coordinates`) and compared with the pixel projection, so the errors are in pixels.

  Args:
    preds: [B, K, H, F, J, 3] predictions.
    trajectory: [B, F, 1, 3] GT root trajectory.
    intrinsic: [9] or [B, 9] intrinsic vector.
    input_2d: [B, F, J, 2] the 2D keypoints fed to the model (normalised screen coordinates).
    projection: 'distorted' or 'linear' (3DHP TS1-4 use 'linear').
    image_size: (width, height) in pixels for the 3DHP pixel comparison, else None.
    root_joint: the root joint index.

  Returns:
    [B, K, H, F, J] L2 reprojection error.
  """
  reprojected = reproject(preds, trajectory, intrinsic, projection=projection,
                          root_joint=root_joint)
  input_2d = jnp.asarray(input_2d, reprojected.dtype)
  b, _, _, f, j, _ = reprojected.shape
  if input_2d.shape != (b, f, j, 2):
    raise ValueError(f"input_2d must have shape [B, F, J, 2] = {(b, f, j, 2)}, got "
                     f"{input_2d.shape}")
  if image_size is not None:
    width, height = image_size
    if width <= 0 or height <= 0:
      raise ValueError(f"image_size must be a positive (width, height), got {image_size}")
    offset = jnp.asarray([1.0, height / width], input_2d.dtype)
    input_2d = (input_2d + offset) * (width / 2)
  return jnp.linalg.norm(reprojected - input_2d[:, None, None], axis=-1)


def select_hypotheses(mode: str, errors: Optional[jax.Array] = None, *,
                      reproj_error: Optional[jax.Array] = None,
                      clip_mask: Optional[jax.Array] = None) -> Optional[jax.Array]:
  """The hypothesis indices a mode picks.

  Args:
    mode: one of `MODES`.
    errors: [B, K, H, F, J] per-joint errors that drive P-Best and J-Best (3D, or aligned 3D);
      required for those two modes.
    reproj_error: [B, K, H, F, J] 2D errors; required for J-Agg.
    clip_mask: optional [B] (or [B, F]) bool; only the valid entries enter P-Best's mean.

  Returns:
    None for P-Agg, [K] for P-Best, [B, K, F, J] for J-Best and J-Agg (int32, into axis H).
  """
  _check_mode(mode)
  if mode == "P_Agg":
    return None
  if mode == "J_Agg":
    if reproj_error is None or jnp.ndim(reproj_error) != 5:
      raise ValueError("mode 'J_Agg' needs reproj_error [B, K, H, F, J] (see reprojection_error)")
    return jnp.argmin(jnp.asarray(reproj_error), axis=2)
  if errors is None or jnp.ndim(errors) != 5:
    raise ValueError(f"mode {mode!r} needs errors [B, K, H, F, J], got "
                     f"{None if errors is None else jnp.shape(errors)}")
  errors = jnp.asarray(errors)
  if mode == "J_Best":
    return jnp.argmin(errors, axis=2)
  weights = _frame_weights(clip_mask, errors.shape[0], errors.shape[3])
  return jnp.argmin(_mean_per_step(errors, weights), axis=-1)


def _gather_hypotheses(values: jax.Array, indices: jax.Array) -> jax.Array:
  """values [B, K, H, F, J, ...] and indices [K] or [B, K, F, J] -> [B, K, F, J, ...]."""
  if indices.ndim == 1:
    idx = indices[None, :, None]
  else:
    idx = indices[:, :, None]
  idx = idx.reshape(idx.shape + (1,) * (values.ndim - idx.ndim))
  return jnp.take_along_axis(values, idx, axis=2, mode="clip").squeeze(2)


def aggregate_poses(preds: jax.Array, target: jax.Array, mode: str, *,
                    reproj_error: Optional[jax.Array] = None,
                    clip_mask: Optional[jax.Array] = None,
                    root_joint: int = 0) -> tuple[jax.Array, Optional[jax.Array]]:
  """One pose per step from the H hypotheses (upstream main_3dhp.py's selection rules).

  Args:
    preds: [B, K, H, F, J, 3] sampler output.
    target: [B, F, J, 3] ground truth (P-Best and J-Best use it).
    mode: 'P_Agg', 'P_Best', 'J_Best' or 'J_Agg'.
    reproj_error: [B, K, H, F, J] from `reprojection_error`; required for J-Agg.
    clip_mask: optional [B] (or [B, F]) bool of the real clips; padding does not vote in P-Best.
    root_joint: the root joint index (0 for H36M, 14 for 3DHP).

  Returns:
    (poses [B, K, F, J, 3] with the root at 0, indices): indices are None for P-Agg, [K] for
    P-Best and [B, K, F, J] for J-Best / J-Agg.
  """
  _check_mode(mode)
  preds, target = jnp.asarray(preds), jnp.asarray(target)
  _check_preds_target(preds, target, root_joint)
  reproj_error = _check_reproj_error(reproj_error, preds.shape, mode)
  _frame_weights(clip_mask, preds.shape[0], preds.shape[3])  # validates the mask in every mode
  preds = set_root_to_zero(preds, root_joint)
  if mode == "P_Agg":
    return jnp.mean(preds, axis=2), None
  errors = None if mode == "J_Agg" else joint_errors(preds, target, root_joint=root_joint)
  indices = select_hypotheses(mode, errors, reproj_error=reproj_error, clip_mask=clip_mask)
  return _gather_hypotheses(preds, indices), indices


def per_joint_errors(preds: jax.Array, target: jax.Array, mode: str, *,
                     procrustes: bool = False, reproj_error: Optional[jax.Array] = None,
                     clip_mask: Optional[jax.Array] = None, root_joint: int = 0) -> jax.Array:
  """The per-joint error each mode reports, before averaging (P1, or P2 with `procrustes`).

  P1: the 3D error of the aggregated pose. P2 (upstream `p_mpjpe_diffusion*`): per-hypothesis
  aligned errors, gathered (J-Agg), minimised (J-Best) or picked by their batch mean (P-Best);
  P-Agg aligns the mean pose. Padding clips (clip_mask False) still get values; mask them when
  averaging (`mpjpe_per_step` does).

  Args:
    preds: [B, K, H, F, J, 3] sampler output.
    target: [B, F, J, 3] ground truth.
    mode: one of `MODES`.
    procrustes: False for P1 (MPJPE), True for P2 (P-MPJPE).
    reproj_error: [B, K, H, F, J]; required for J-Agg.
    clip_mask: optional [B] (or [B, F]) bool; used by P-Best's choice.
    root_joint: the root joint index.

  Returns:
    [B, K, F, J] per-joint errors in the units of the poses.
  """
  _check_mode(mode)
  preds, target = jnp.asarray(preds), jnp.asarray(target)
  _check_preds_target(preds, target, root_joint)
  reproj_error = _check_reproj_error(reproj_error, preds.shape, mode)
  preds = set_root_to_zero(preds, root_joint)
  target = set_root_to_zero(target, root_joint)
  if mode == "P_Agg":
    mean_pose = jnp.mean(preds, axis=2)
    goal = jnp.broadcast_to(target[:, None], mean_pose.shape)
    if procrustes:
      mean_pose = metrics.procrustes_align(mean_pose, goal)
    return jnp.linalg.norm(mean_pose - goal, axis=-1)
  if procrustes:
    errors = procrustes_joint_errors(preds, target, root_joint=root_joint)
  else:
    errors = joint_errors(preds, target, root_joint=root_joint)
  if mode == "J_Best":
    return jnp.min(errors, axis=2)
  indices = select_hypotheses(mode, errors, reproj_error=reproj_error, clip_mask=clip_mask)
  return _gather_hypotheses(errors, indices)


def _per_step(preds, target, mode, procrustes, reproj_error, clip_mask, root_joint):
  errors = per_joint_errors(preds, target, mode, procrustes=procrustes, reproj_error=reproj_error,
                            clip_mask=clip_mask, root_joint=root_joint)
  weights = _frame_weights(clip_mask, errors.shape[0], errors.shape[2])
  return _mean_per_step(errors, weights)


def mpjpe_per_step(preds: jax.Array, target: jax.Array, mode: str, *,
                   reproj_error: Optional[jax.Array] = None,
                   clip_mask: Optional[jax.Array] = None, root_joint: int = 0) -> jax.Array:
  """P1 (MPJPE) of a mode at every DDIM step, averaged over the valid clips, frames and joints.

  Args:
    preds: [B, K, H, F, J, 3] sampler output.
    target: [B, F, J, 3] ground truth.
    mode: one of `MODES`.
    reproj_error: [B, K, H, F, J]; required for J-Agg.
    clip_mask: optional [B] (or [B, F]) bool of the entries that count.
    root_joint: the root joint index.

  Returns:
    [K] errors, in the units of the poses (upstream's per-mini-batch value; an evaluator weights it
    by the number of valid clip-frames).
  """
  return _per_step(preds, target, mode, False, reproj_error, clip_mask, root_joint)


def p_mpjpe_per_step(preds: jax.Array, target: jax.Array, mode: str, *,
                     reproj_error: Optional[jax.Array] = None,
                     clip_mask: Optional[jax.Array] = None, root_joint: int = 0) -> jax.Array:
  """P2 (P-MPJPE) of a mode at every DDIM step, with upstream D3DP's per-hypothesis semantics.

  The arguments are `mpjpe_per_step`'s (preds [B, K, H, F, J, 3], target [B, F, J, 3], ...); the
  errors are Procrustes-aligned as in `per_joint_errors(..., procrustes=True)`.

  Returns:
    [K] errors, in the units of the poses.
  """
  return _per_step(preds, target, mode, True, reproj_error, clip_mask, root_joint)
