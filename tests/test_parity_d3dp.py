"""D3DP against the authors' own PyTorch code: `../shared/parity/d3dp` (see its README).

Every size and setting comes from the fixture's `config.json` and array shapes, so these tests hold
for any fixture set the same upstream generator makes (`POSEDIFF_PARITY_DIR` points elsewhere).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import d3dp_h36m
from posediff_jax import cameras
from posediff_jax import checkpoint
from posediff_jax import metrics_3dhp
from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.convert import common
from posediff_jax.convert import d3dp as convert
from posediff_jax.data import npz
from posediff_jax.data.synthetic import h36m as synthetic_h36m
from posediff_jax.diffusion import aggregation
from posediff_jax.diffusion import schedules
from posediff_jax.families import d3dp
from posediff_jax.models import d3dp as d3dp_models
from posediff_jax.models import transformer
from tests.conftest import (REPO_ROOT, RTOL, assert_close, assert_wrong_sizes_are_named,
                            load_state_dict, parity_dir, set_d3dp_fixture_settings, spec_key_list)

PARITY_FAMILY = "d3dp"  # the conftest fixtures root, io and fixture_json read it


@pytest.fixture(scope="module")
def config(fixture_json, io):
  """configs/d3dp_h36m.py turned into the fixture's setting."""
  up = fixture_json
  c = d3dp_h36m.get_config("cpn")
  c.model.num_frames = up["number_of_frames"]
  c.model.num_joints = up["num_joints"]
  set_d3dp_fixture_settings(c, up)
  assert io["inputs_2d"].shape[1:3] == (c.model.num_frames, c.model.num_joints)
  return c


@pytest.fixture(scope="module")
def converted(root, config):
  """(params, unused keys) of denoiser.pth, converted once."""
  return d3dp.convert(config, root / "denoiser.pth")


@pytest.fixture(scope="module")
def params(converted):
  return converted[0]


def test_fixture_settings_are_the_ones_this_family_hard_codes(fixture_json, config):
  up = fixture_json
  assert (tuple(up["joints_left"]), tuple(up["joints_right"])) == (
      skeleton.H36M_LEFT, skeleton.H36M_RIGHT)
  assert (up["kps_left"], up["kps_right"]) == (up["joints_left"], up["joints_right"])
  assert up["qkv_bias"] and up["in_chans_2d"] == 2 and up["dropout"] == 0.0
  assert up["layernorm_eps_blocks_and_Spatial/Temporal_norm"] == transformer.BLOCK_LN_EPS
  assert up["layernorm_eps_head"] == d3dp_models.HEAD_LN_EPS
  assert up["beta_schedule"].startswith("cosine") and config.diffusion.beta_schedule == "cosine"


# --- schedule and converter ---------------------------------------------------------------------


def test_schedule_matches_the_buffers(config, io):
  betas = schedules.cosine_betas(config.diffusion.num_steps)
  np.testing.assert_allclose(betas, io["sched_betas"], rtol=0, atol=1e-12)
  a = d3dp.alpha_bars_ext(config)
  assert a.dtype == np.float64 and a[0] == 1.0
  np.testing.assert_allclose(a[1:], io["sched_alphas_cumprod"], rtol=0, atol=1e-12)
  for name, value in (("sqrt_alphas_cumprod", np.sqrt(a[1:])),
                      ("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - a[1:])),
                      ("sqrt_recip_alphas_cumprod", np.sqrt(1.0 / a[1:])),
                      ("sqrt_recipm1_alphas_cumprod", np.sqrt(1.0 / a[1:] - 1.0))):
    np.testing.assert_allclose(value, io[f"sched_{name}"], rtol=1e-12, err_msg=name)
  expected = [int(t) for t in io["ddim_times"][:-1]]
  assert list(d3dp.timesteps(config)[::-1]) == expected
  np.testing.assert_array_equal(io["ddim_step_t"], np.tile(expected, (io["ddim_step_t"].shape[0],
                                                                      1)))


def _state_dict(root, name):
  return load_state_dict(root / name, dict_key="model_pos")


def test_converter_reports_buffers_and_reads_the_random_state_file(root, config, converted):
  params, unused = converted
  assert unused == {"denoiser": list(convert.SCHEDULE_BUFFERS)}
  _, report = convert.convert_denoiser(_state_dict(root, "denoiser.pth"), config.model,
                                       config.diffusion)
  assert report.checked == ("betas", "alphas_cumprod")
  # Embedding 2, position embeddings 2, time MLP 4, 12 per block, shared norms 4, head 4.
  assert report.num_tensors == 2 + 2 + 4 + 2 * 12 * config.model.depth + 4 + 4
  # The file with a pickled numpy RandomState converts to the same weights.
  obj = safe_load.load_torch_checkpoint(root / "denoiser_with_random_state.bin")
  assert isinstance(obj["random_state"], np.random.RandomState)
  again, _ = d3dp.convert(config, root / "denoiser_with_random_state.bin")
  jax.tree.map(np.testing.assert_array_equal, params, again)


def test_converter_accepts_every_key_prefix(root, config, params):
  raw = safe_load.load_torch_checkpoint(root / "denoiser.pth")["model_pos"]
  assert "module.pose_estimator.head.1.weight" in raw and "module.betas" in raw
  no_module = {k[len("module."):]: v for k, v in raw.items()}
  bare = {k.replace("pose_estimator.", "", 1): v for k, v in no_module.items()}
  for sd in (raw, no_module, bare):
    out, report = convert.convert_denoiser(sd, config.model, config.diffusion)
    jax.tree.map(np.testing.assert_array_equal, params["denoiser"], out)
    assert report.checked == ("betas", "alphas_cumprod")


def test_converter_checks_the_schedule_and_the_sizes(root, config):
  sd = _state_dict(root, "denoiser.pth")
  bad = dict(sd, alphas_cumprod=sd["alphas_cumprod"] * (1 + 1e-6))
  with pytest.raises(common.ConversionError, match=r"'alphas_cumprod' differs from the cosine"):
    convert.convert_denoiser(bad, config.model, config.diffusion)
  dims = convert.infer_d3dp_dims(sd)
  assert {k: dims[k] for k in ("num_frames", "num_joints", "embed_dim", "depth")} == {
      k: config.model[k] for k in ("num_frames", "num_joints", "embed_dim", "depth")}
  assert dims["mlp_ratio"] == config.model.mlp_ratio
  assert_wrong_sizes_are_named(
      lambda model_cfg: convert.convert_denoiser(sd, model_cfg, config.diffusion), config.model,
      (("depth", 1), ("embed_dim", 8), ("num_frames", 2)))
  unknown = dict(sd, **{"pose_estimator.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(common.ConversionError, match=r"do not belong to this model: 'extra\.weight'"):
    convert.convert_denoiser(unknown, config.model, config.diffusion)


def test_wrong_family_checkpoint_fails_and_says_so(config):
  diffpose_file = parity_dir("diffpose") / "denoiser.pth"
  with pytest.raises(common.ConversionError,
                     match=r"denoiser\.pth: this is not a D3DP checkpoint; it looks like a "
                           r"DiffPose/GraFormer checkpoint"):
    d3dp.convert(config, diffpose_file)


def test_full_size_key_list_converts_with_the_default_config():
  config = d3dp_h36m.get_config("cpn")
  sd = spec_key_list("keys_d3dp.txt")
  betas = schedules.cosine_betas(config.diffusion.num_steps)
  sd["betas"], sd["alphas_cumprod"] = betas, schedules.alpha_bars(betas)
  params, report = convert.convert_denoiser(sd, config.model, config.diffusion)
  assert report.num_elements == 34_835_459
  assert len(report.unused) == 12 and report.num_tensors + 12 == len(sd)
  assert params["temporal_pos_embed"].shape == (1, config.model.num_frames, config.model.embed_dim)


# --- network, flip step, training path and the full sampler --------------------------------------


def test_denoiser_forward(config, params, io):
  batch, hyp = io["fwd_x3d"].shape[:2]
  model = d3dp.denoiser_module(config)
  rows = lambda a: a.reshape((batch * hyp,) + a.shape[2:])
  out = jax.jit(model.apply)({"params": params["denoiser"]},
                             np.repeat(io["inputs_2d"], hyp, axis=0), rows(io["fwd_x3d"]),
                             np.repeat(io["fwd_t"], hyp))
  assert_close(out, rows(io["fwd_out"]), what="fwd_out")


def test_flip_and_model_predictions_fliping(config, params, io):
  np.testing.assert_array_equal(d3dp.flip_pose(io["inputs_2d"], "h36m"), io["inputs_2d_flip"])
  x_start, pred_noise = jax.jit(lambda p, x, x2, t: d3dp.denoise_flip(config, p, x, x2, t))(
      params, io["mpf_x"], io["inputs_2d"], io["mpf_t"])
  assert_close(x_start, io["mpf_x_start"], what="mpf_x_start")
  assert_close(pred_noise, io["mpf_pred_noise"], what="mpf_pred_noise")


def test_training_path(config, params, io):
  batch = {"input_2d": io["inputs_2d"], "target_3d": io["gt_3d"]}
  loss, aux = jax.jit(
      lambda p, b, t, n: d3dp.denoiser_loss_with_noise(config, p, b, t, n, deterministic=True))(
          params["denoiser"], batch, io["train_t"], io["train_noise"])
  assert_close(aux["x_noisy"], io["train_x_noisy"], what="train_x_noisy")
  assert_close(aux["pred"], io["train_pred"], what="train_pred")
  assert_close(loss, io["train_loss_mpjpe"], what="train_loss_mpjpe")


def test_full_ddim_run_from_the_recorded_noise(config, params, io):
  run = jax.jit(lambda p, x2, n0, ns: d3dp.sample(config, p, x2, noise_init=n0, noise_steps=ns,
                                                  return_details=True))
  preds, details = run(params, io["inputs_2d"], io["ddim_noise_init"], io["ddim_noise_steps"])
  assert details["times"] == tuple(int(t) for t in io["ddim_times"][:-1])
  assert_close(details["ddim_step_x"], io["ddim_step_x"], what="ddim_step_x")
  assert_close(details["ddim_step_pred_noise"], io["ddim_step_pred_noise"],
               what="ddim_step_pred_noise")
  assert_close(preds, io["ddim_preds"], what="ddim_preds")


def test_wrong_clip_length_is_a_clear_error(config, params, io):
  short = io["inputs_2d"][:, :-1]
  with pytest.raises(ValueError, match=rf"exactly model\.num_frames={config.model.num_frames} "):
    d3dp.sample(config, params, short, jax.random.PRNGKey(0))
  model = d3dp.denoiser_module(config)
  frames = config.model.num_frames
  with pytest.raises(ValueError, match=rf"num_frames={frames} frames, this one has {frames - 1}"):
    model.apply({"params": params["denoiser"]}, short, np.zeros(short.shape[:3] + (3,)),
                np.zeros(short.shape[:1]))


# --- our own pieces: loss, stochastic depth, 3DHP mirror ----------------------------------------


def test_drop_path_is_active_only_when_asked():
  block = transformer.Block(num_heads=2, drop_path_rate=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 5, 8))
  variables = jax.jit(block.init)(jax.random.PRNGKey(1), x)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda v: block.apply(v, x, deterministic=False), variables)

  @jax.jit
  def run(v):
    plain = transformer.Block(num_heads=2).apply(v, x)
    kept = block.apply(v, x)
    drawn = [block.apply(v, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(i)})
             for i in range(2)]
    return plain, kept, drawn

  plain, kept, drawn = run(variables)
  np.testing.assert_array_equal(kept, plain)
  assert not np.allclose(drawn[0], drawn[1]) and not np.allclose(drawn[0], plain)
  assert transformer.drop_path_rates(0.1, 3) == pytest.approx((0.0, 0.05, 0.1))


def test_training_loss_has_finite_gradients(config, params, io):
  config = config.copy_and_resolve_references()
  config.model.drop_path_rate = 0.5
  batch = {"input_2d": io["inputs_2d"][:1], "target_3d": io["gt_3d"][:1]}
  with pytest.raises(ValueError, match="needs `key`"):
    d3dp.denoiser_loss_with_noise(config, params["denoiser"], batch, io["train_t"][:1],
                                  io["train_noise"][:1], deterministic=False)
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: d3dp.denoiser_loss(config, p, batch, jax.random.PRNGKey(0))))(params["denoiser"])
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_flip_pose_3dhp_is_an_involution_with_its_own_pairs():
  x = np.arange(17 * 3, dtype=np.float32).reshape(17, 3)
  flipped = d3dp.flip_pose(x, "3dhp")
  np.testing.assert_array_equal(d3dp.flip_pose(flipped, "3dhp"), x)
  np.testing.assert_array_equal(flipped[list(skeleton.MPI3DHP_LEFT), 1:],
                                x[list(skeleton.MPI3DHP_RIGHT), 1:])
  assert flipped[skeleton.MPI3DHP_ROOT_JOINT, 0] == -x[skeleton.MPI3DHP_ROOT_JOINT, 0]
  with pytest.raises(ValueError, match="unknown dataset 'mpii'"):
    d3dp.flip_pose(x, "mpii")


def test_bfloat16_compute_stays_close_and_keeps_float32_params(config, params, io):
  bf16 = d3dp_models.denoiser_from_config(config.model, dtype="bfloat16")
  out = jax.jit(bf16.apply)({"params": params["denoiser"]}, io["inputs_2d"][:1],
                            io["fwd_x3d"][0, :1], io["fwd_t"][:1])
  assert out.dtype == jnp.float32
  assert_close(out, io["fwd_out"][0, :1], rtol=5e-2, what="bfloat16 forward")
  fresh = jax.eval_shape(lambda k: d3dp.init_params(config, k), jax.random.PRNGKey(0))
  assert {a.dtype for a in jax.tree.leaves(fresh)} == {np.dtype(np.float32)}
  assert jax.tree.structure(fresh) == jax.tree.structure(params)


# --- aggregation (README sections (5) and (6)): P-Best, P-Agg, J-Best, J-Agg/JPMA, 3DHP ---------
# Arrays are compared with max|ours - theirs| <= 1e-5 * max|theirs|, per-step errors element-wise
# relative, indices exactly.

H36M_ROOT = 0
MPI3DHP_ROOT = metrics_3dhp.MPI3DHP_ROOT_JOINT


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
  assert_close(reprojected, io["agg_reproj_2d"], what="agg_reproj_2d")
  assert_close(_h36m_reproj_error(io), io["agg_reproj_err_2d"], what="agg_reproj_err_2d")


def test_h36m_project_to_2d_numpy_and_jax(io):
  preds = io["ddim_preds"].copy()
  preds[..., H36M_ROOT, :] = 0
  points = preds + io["gt_traj"][:, None, None]
  ours_np = cameras.project_to_2d(points, io["camera_intrinsic"])
  assert isinstance(ours_np, np.ndarray)
  assert_close(ours_np, io["agg_reproj_2d"], what="project_to_2d (numpy)")
  ours_jax = cameras.project_to_2d(jnp.asarray(points), jnp.asarray(io["camera_intrinsic"]))
  assert isinstance(ours_jax, jax.Array)
  assert_close(ours_jax, io["agg_reproj_2d"], what="project_to_2d (jax)")
  # One camera per clip ([B, 9]) broadcasts over the remaining axes like upstream's unsqueeze.
  per_clip = np.broadcast_to(io["camera_intrinsic"], (points.shape[0], 9))
  assert_close(cameras.project_to_2d(points, per_clip), io["agg_reproj_2d"], what="[B, 9] camera")


@pytest.mark.parametrize("mode", aggregation.MODES)
def test_h36m_poses_and_indices(io, mode):
  poses, indices = aggregation.aggregate_poses(
      io["ddim_preds"], io["gt_3d"], mode, reproj_error=_h36m_reproj_error(io),
      root_joint=H36M_ROOT)
  assert_close(poses, io[f"agg_pose_{mode}"], what=f"agg_pose_{mode}")
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
    assert_close(poses, io[f"agg_pose_{mode}"], what=f"jit agg_pose_{mode}")
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
    assert_close(np.asarray(poses)[:batch], io[f"agg_pose_{mode}"], what=f"padded {mode} pose")
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
  assert_close(reprojected, io[f"{case}_reproj_px"], what=f"{case}_reproj_px")
  width, height = camera.image_size
  target_px = cameras.image_coordinates(io[f"{case}_inputs_2d_norm"], width, height)
  assert_close(target_px, io[f"{case}_target_px"], what=f"{case}_target_px")

  reproj_error = aggregation.reprojection_error(
      preds, trajectory, camera.intrinsic, io[f"{case}_inputs_2d_norm"], camera.projection,
      camera.image_size, root_joint=MPI3DHP_ROOT)
  expected_error = np.linalg.norm(io[f"{case}_reproj_px"] - io[f"{case}_target_px"][:, None, None],
                                  axis=-1)
  assert_close(reproj_error, expected_error, what=f"{case} reprojection error (px)")

  for mode in aggregation.MODES:
    poses, indices = aggregation.aggregate_poses(preds, target, mode, reproj_error=reproj_error,
                                                 root_joint=MPI3DHP_ROOT)
    assert_close(poses, io[f"{case}_{mode}"], what=f"{case}_{mode}")
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


# --- the command-line tools ----------------------------------------------------------------------


def _cli_sizes(config) -> list[str]:
  m, s = config.model, config.sampling
  return [f"--config.model.{k}={m[k]}" for k in ("num_frames", "embed_dim", "depth", "num_heads")
          ] + [f"--config.sampling.{k}={s[k]}" for k in ("num_hypotheses", "num_steps")]


@pytest.mark.slow
def test_cli_convert_then_evaluate_on_synthetic_clips_with_plots(root, config, tmp_path):
  from tests.test_parity_diffpose import _run  # pylint: disable=g-import-not-at-top

  ckpt = tmp_path / "ckpt"
  # No --config: the converter takes configs/d3dp_h36m.py for --family d3dp.
  stdout = _run(["convert_torch_weights.py", "--family=d3dp",
                 f"--checkpoint={root / 'denoiser_with_random_state.bin'}", f"--output={ckpt}",
                 *_cli_sizes(config)])
  assert "betas" in stdout and f"wrote {ckpt}" in stdout
  data = tmp_path / "data"
  synthetic_h36m.ensure_synthetic_data(data, frames_per_sequence=40)
  out_json, plots = tmp_path / "results.json", tmp_path / "plots"
  stdout = _run(["evaluate.py", "--config=configs/d3dp_h36m.py:cpn", f"--checkpoint={ckpt}",
                 f"--output={out_json}", f"--plots={plots}", f"--config.data.root={data}",
                 "--config.data.test_subjects=('S9',)", *_cli_sizes(config)])
  for mode in ("J_Best", "J_Agg", "P_Best", "P_Agg"):
    assert f"== {mode} (H={config.sampling.num_hypotheses}" in stdout
  result = json.loads(out_json.read_text())
  assert set(result["results"]) == {"J_Best", "J_Agg", "P_Best", "P_Agg"}
  by_h = result["mpjpe_by_hypotheses"]["J_Best"]
  # More hypotheses can only bring the oracle closer.
  values = [by_h[str(h)] for h in range(1, config.sampling.num_hypotheses + 1)]
  assert all(b <= a + 1e-9 for a, b in zip(values, values[1:])), values
  assert (plots / "action_errors.png").stat().st_size > 0
  assert (plots / "error_vs_hypotheses.png").stat().st_size > 0


@pytest.mark.slow
def test_cli_rejects_a_2d_file_with_the_wrong_joint_count(root, config, tmp_path):
  data = tmp_path / "data"
  synthetic_h36m.ensure_synthetic_data(data, frames_per_sequence=8)
  ckpt = tmp_path / "ckpt"
  d3dp_params, _ = d3dp.convert(config, root / "denoiser.pth")
  checkpoint.save_model(ckpt, d3dp_params, d3dp.checkpoint_meta(config))
  positions = safe_load.load_pickled_npz(data / "data_2d_h36m_cpn_ft_h36m_dbb.npz")
  bad = {s: {a: [cam[:, :16] for cam in cams] for a, cams in acts.items()}
         for s, acts in positions["positions_2d"].items()}
  npz.save_npz(data / "data_2d_h36m_cpn_ft_h36m_dbb.npz", positions_2d=bad,
                     metadata=positions["metadata"])
  proc = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/d3dp_h36m.py:cpn", f"--checkpoint={ckpt}",
       f"--config.data.root={data}", *_cli_sizes(config)],
      cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  assert "data_2d_h36m_cpn_ft_h36m_dbb.npz" in proc.stderr and "17" in proc.stderr, proc.stderr
