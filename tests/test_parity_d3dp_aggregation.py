"""Parity of the multi-hypothesis aggregation and the JPMA reprojection with upstream D3DP.

The fixture (`parity/d3dp/io.npz`, README sections (5) and (6)) holds upstream's per-step P1/P2
errors, aggregated poses and selection indices for the Human3.6M camera, and the MPI-INF-3DHP
variant of main_3dhp.py (TS1: linear camera, TS5: distorted camera with zero distortion).
Arrays are compared with max|ours - theirs| <= 1e-5 * max|theirs|, per-step errors element-wise
relative, indices exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posediff_jax import cameras
from posediff_jax import metrics_3dhp
from posediff_jax.diffusion import aggregation
from tests.conftest import parity_dir

RTOL = 1e-5
H36M_ROOT = 0
MPI3DHP_ROOT = metrics_3dhp.MPI3DHP_ROOT_JOINT


@pytest.fixture(scope="module")
def io():
  with np.load(parity_dir("d3dp") / "io.npz") as data:
    return {key: data[key] for key in data.files}


def _assert_close(ours, theirs, what):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
  scale = max(float(np.max(np.abs(theirs))), 1e-12)
  err = float(np.max(np.abs(ours.astype(np.float64) - theirs))) / scale
  assert err <= RTOL, f"{what}: relative error {err:.3g} > {RTOL}"


def _assert_close_elementwise(ours, theirs, what):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
  np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=0, err_msg=what)


def _h36m_reproj_error(io):
  return aggregation.reprojection_error(io["ddim_preds"], io["gt_traj"], io["camera_intrinsic"],
                                        io["inputs_2d"], "distorted", root_joint=H36M_ROOT)


# ---------------------------------------------------------------------------------------------
# Human3.6M (README (5))


def test_h36m_reprojection(io):
  reprojected = aggregation.reproject(io["ddim_preds"], io["gt_traj"], io["camera_intrinsic"],
                                      projection="distorted", root_joint=H36M_ROOT)
  _assert_close(reprojected, io["agg_reproj_2d"], "agg_reproj_2d")
  _assert_close(_h36m_reproj_error(io), io["agg_reproj_err_2d"], "agg_reproj_err_2d")


def test_h36m_project_to_2d_numpy_and_jax(io):
  preds = io["ddim_preds"].copy()
  preds[..., H36M_ROOT, :] = 0
  points = preds + io["gt_traj"][:, None, None]
  ours_np = cameras.project_to_2d(points, io["camera_intrinsic"])
  assert isinstance(ours_np, np.ndarray)
  _assert_close(ours_np, io["agg_reproj_2d"], "project_to_2d (numpy)")
  ours_jax = cameras.project_to_2d(jnp.asarray(points), jnp.asarray(io["camera_intrinsic"]))
  assert isinstance(ours_jax, jax.Array)
  _assert_close(ours_jax, io["agg_reproj_2d"], "project_to_2d (jax)")
  # One camera per clip ([B, 9]) broadcasts over the remaining axes like upstream's unsqueeze.
  per_clip = np.broadcast_to(io["camera_intrinsic"], (points.shape[0], 9))
  _assert_close(cameras.project_to_2d(points, per_clip), io["agg_reproj_2d"], "[B, 9] camera")


@pytest.mark.parametrize("mode", aggregation.MODES)
def test_h36m_poses_and_indices(io, mode):
  poses, indices = aggregation.aggregate_poses(
      io["ddim_preds"], io["gt_3d"], mode, reproj_error=_h36m_reproj_error(io),
      root_joint=H36M_ROOT)
  _assert_close(poses, io[f"agg_pose_{mode}"], f"agg_pose_{mode}")
  if mode == "P_Agg":
    assert indices is None
  else:
    np.testing.assert_array_equal(np.asarray(indices), io[f"agg_idx_{mode}"])


@pytest.mark.parametrize("mode", aggregation.MODES)
def test_h36m_errors_per_step(io, mode):
  kwargs = dict(reproj_error=_h36m_reproj_error(io), root_joint=H36M_ROOT)
  p1 = aggregation.mpjpe_per_step(io["ddim_preds"], io["gt_3d"], mode, **kwargs)
  p2 = aggregation.p_mpjpe_per_step(io["ddim_preds"], io["gt_3d"], mode, **kwargs)
  _assert_close_elementwise(p1, io[f"agg_err_p1_{mode}"], f"agg_err_p1_{mode}")
  _assert_close_elementwise(p2, io[f"agg_err_p2_{mode}"], f"agg_err_p2_{mode}")
  # The P1 of every mode is the MPJPE of its aggregated pose.
  poses, _ = aggregation.aggregate_poses(io["ddim_preds"], io["gt_3d"], mode, **kwargs)
  pose_p1 = np.linalg.norm(np.asarray(poses) - io["gt_3d"][:, None], axis=-1).mean(axis=(0, 2, 3))
  _assert_close_elementwise(pose_p1, io[f"agg_err_p1_{mode}"], f"MPJPE of agg_pose_{mode}")


def test_h36m_under_jit(io):
  @jax.jit
  def run(preds, target, traj, intrinsic, inputs_2d, clip_mask):
    reproj = aggregation.reprojection_error(preds, traj, intrinsic, inputs_2d)
    out = {}
    for mode in aggregation.MODES:
      out[mode] = (aggregation.aggregate_poses(preds, target, mode, reproj_error=reproj,
                                               clip_mask=clip_mask),
                   aggregation.mpjpe_per_step(preds, target, mode, reproj_error=reproj,
                                              clip_mask=clip_mask),
                   aggregation.p_mpjpe_per_step(preds, target, mode, reproj_error=reproj,
                                                clip_mask=clip_mask))
    return out

  batch = io["ddim_preds"].shape[0]
  out = run(io["ddim_preds"], io["gt_3d"], io["gt_traj"], io["camera_intrinsic"],
            io["inputs_2d"], jnp.ones((batch,), bool))
  for mode, ((poses, indices), p1, p2) in out.items():
    _assert_close(poses, io[f"agg_pose_{mode}"], f"jit agg_pose_{mode}")
    if indices is not None:
      np.testing.assert_array_equal(np.asarray(indices), io[f"agg_idx_{mode}"])
    _assert_close_elementwise(p1, io[f"agg_err_p1_{mode}"], f"jit agg_err_p1_{mode}")
    _assert_close_elementwise(p2, io[f"agg_err_p2_{mode}"], f"jit agg_err_p2_{mode}")


def test_padding_clips_do_not_count(io):
  """A padded last mini-batch: the padding clip is garbage and must change nothing."""
  preds, target = io["ddim_preds"], io["gt_3d"]
  batch = preds.shape[0]
  rng = np.random.default_rng(0)
  # Padding whose hypothesis 0 is perfect and the others terrible, to pull P-Best if it voted.
  pad_preds = np.repeat(target[:1, None, None], preds.shape[1], axis=1)
  pad_preds = np.repeat(pad_preds, preds.shape[2], axis=2).copy()
  pad_preds[:, :, 1:] += 100.0 * rng.normal(size=pad_preds[:, :, 1:].shape).astype(np.float32)
  padded_preds = np.concatenate([preds, pad_preds], axis=0)
  padded_target = np.concatenate([target, target[:1]], axis=0)
  reproj = np.asarray(_h36m_reproj_error(io))
  padded_reproj = np.concatenate([reproj, reproj[:1]], axis=0)
  clip_mask = np.arange(batch + 1) < batch
  for mode in aggregation.MODES:
    kwargs = dict(reproj_error=padded_reproj, clip_mask=clip_mask, root_joint=H36M_ROOT)
    poses, indices = aggregation.aggregate_poses(padded_preds, padded_target, mode, **kwargs)
    _assert_close(np.asarray(poses)[:batch], io[f"agg_pose_{mode}"], f"padded {mode} pose")
    if mode == "P_Best":
      np.testing.assert_array_equal(np.asarray(indices), io["agg_idx_P_Best"])
    for fn, key in ((aggregation.mpjpe_per_step, "p1"), (aggregation.p_mpjpe_per_step, "p2")):
      value = fn(padded_preds, padded_target, mode, **kwargs)
      _assert_close_elementwise(value, io[f"agg_err_{key}_{mode}"], f"padded {mode} {key}")


def test_frame_mask_averages_only_the_kept_frames(io):
  preds, target = io["ddim_preds"], io["gt_3d"]
  batch, _, _, frames, _, _ = preds.shape
  frame_mask = np.zeros((batch, frames), bool)
  frame_mask[:, : frames // 2] = True
  per_joint = np.asarray(aggregation.per_joint_errors(preds, target, "J_Best"))
  expected = per_joint[:, :, : frames // 2].mean(axis=(0, 2, 3))
  ours = aggregation.mpjpe_per_step(preds, target, "J_Best", clip_mask=frame_mask)
  _assert_close_elementwise(ours, expected, "J_Best with a [B, F] mask")


# ---------------------------------------------------------------------------------------------
# MPI-INF-3DHP (README (6))


@pytest.mark.parametrize("case", ["hpTS1", "hpTS5"])
def test_3dhp_jpma(io, case):
  camera = cameras.mpi3dhp_test_camera(case[2:])
  preds, target = io[f"{case}_pred_mm"], io[f"{case}_inputs_3d_mm"]
  trajectory = target[:, :, MPI3DHP_ROOT:MPI3DHP_ROOT + 1]
  np.testing.assert_array_equal(camera.intrinsic, io[f"{case}_cam_pix"])

  reprojected = aggregation.reproject(preds, trajectory, camera.intrinsic,
                                      projection=camera.projection, root_joint=MPI3DHP_ROOT)
  _assert_close(reprojected, io[f"{case}_reproj_px"], f"{case}_reproj_px")
  width, height = camera.image_size
  target_px = cameras.image_coordinates(io[f"{case}_inputs_2d_norm"], width, height)
  _assert_close(target_px, io[f"{case}_target_px"], f"{case}_target_px")

  reproj_error = aggregation.reprojection_error(
      preds, trajectory, camera.intrinsic, io[f"{case}_inputs_2d_norm"], camera.projection,
      camera.image_size, root_joint=MPI3DHP_ROOT)
  expected_error = np.linalg.norm(io[f"{case}_reproj_px"] - io[f"{case}_target_px"][:, None, None],
                                  axis=-1)
  _assert_close(reproj_error, expected_error, f"{case} reprojection error (px)")

  for mode in aggregation.MODES:
    poses, indices = aggregation.aggregate_poses(preds, target, mode, reproj_error=reproj_error,
                                                 root_joint=MPI3DHP_ROOT)
    _assert_close(poses, io[f"{case}_{mode}"], f"{case}_{mode}")
    if mode != "P_Agg":
      np.testing.assert_array_equal(np.asarray(indices), io[f"{case}_idx_{mode}"])


def test_3dhp_cameras_match_spec():
  ts14, ts56 = cameras.MPI3DHP_CAMERA_TS1_4, cameras.MPI3DHP_CAMERA_TS5_6
  np.testing.assert_allclose(ts14.intrinsic[:4], [1500.172, 1500.172, 1017.387, 1043.032],
                             atol=1e-3)
  np.testing.assert_allclose(ts56.intrinsic[:4], [1683.983, 1683.983, 939.857, 560.141],
                             atol=1e-3)
  assert (ts14.image_size, ts14.projection) == ((2048, 2048), "linear")
  assert (ts56.image_size, ts56.projection) == ((1920, 1080), "distorted")
  assert [cameras.mpi3dhp_test_camera(f"TS{i}") for i in range(1, 7)] == [ts14] * 4 + [ts56] * 2
  with pytest.raises(ValueError, match="TS7"):
    cameras.mpi3dhp_test_camera("TS7")
  # With zero distortion the distorted and the linear projection agree.
  points = np.random.default_rng(1).normal(size=(4, 17, 3)).astype(np.float32)
  points[..., 2] += 5.0
  np.testing.assert_allclose(cameras.project_to_2d(points, ts56.intrinsic),
                             cameras.project_to_2d_linear(points, ts56.intrinsic), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_rejected():
  preds = np.zeros((2, 3, 4, 5, 17, 3), np.float32)
  target = np.zeros((2, 5, 17, 3), np.float32)
  with pytest.raises(ValueError, match="unknown aggregation mode"):
    aggregation.aggregate_poses(preds, target, "J_best")
  with pytest.raises(ValueError, match="target must have shape"):
    aggregation.aggregate_poses(preds, target[:, :4], "P_Agg")
  with pytest.raises(ValueError, match="needs reproj_error"):
    aggregation.aggregate_poses(preds, target, "J_Agg")
  with pytest.raises(ValueError, match="reproj_error must have shape"):
    aggregation.mpjpe_per_step(preds, target, "J_Agg", reproj_error=np.zeros((2, 3, 4, 5)))
  with pytest.raises(ValueError, match="clip_mask must be a bool"):
    aggregation.mpjpe_per_step(preds, target, "P_Best", clip_mask=np.ones(3, bool))
  with pytest.raises(ValueError, match="no clip"):
    aggregation.aggregate_poses(preds, target, "P_Best", clip_mask=np.zeros(2, bool))
  with pytest.raises(ValueError, match="root_joint"):
    aggregation.aggregate_poses(preds, target, "P_Agg", root_joint=17)
  with pytest.raises(ValueError, match="projection"):
    aggregation.reproject(preds, np.zeros((2, 5, 1, 3)), np.ones(9), projection="fisheye")
  with pytest.raises(ValueError, match="intrinsic"):
    aggregation.reproject(preds, np.zeros((2, 5, 1, 3)), np.ones(4))
  with pytest.raises(ValueError, match="intrinsic"):
    cameras.project_to_2d(np.ones((5, 17, 3)), np.ones((4, 9)))
  with pytest.raises(ValueError, match="image_size_px"):
    cameras.cam_mm_to_pix(7.0, (0.0, 0.0), (10.0, 10.0), (2048,))
