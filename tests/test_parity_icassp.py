"""ICASSP'24 against the authors' own PyTorch code: `../shared/parity/icassp` (see its README).

Every size and setting comes from the fixture's `config.json`, so these tests hold for any fixture
set the same upstream generator makes (`POSEDIFF_PARITY_DIR` points elsewhere).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import icassp_h36m
from posediff_jax import cameras
from posediff_jax import checkpoint
from posediff_jax import evaluation
from posediff_jax import metrics
from posediff_jax import skeleton
from posediff_jax import training
from posediff_jax.convert import common
from posediff_jax.convert import diffpose as convert_diffpose
from posediff_jax.convert import icassp as convert
from posediff_jax.data import frame_pipeline
from posediff_jax.data import h36m
from posediff_jax.data.synthetic import h36m as synthetic_h36m
from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from posediff_jax.families import diffpose
from posediff_jax.families import icassp
from posediff_jax.models import icassp as icassp_models
from posediff_jax.models import layers
from tests.conftest import (REPO_ROOT, assert_close, load_state_dict, parity_dir, spec_key_list,
                            with_overrides)
# The DiffPose parity tests' helpers: relative-error check, table parser, CLI runner.
from tests import tiny_run
from tests.test_parity_diffpose import _run, _table_rows

# Upstream's world->camera ran through torch's CPU cross product (a fused multiply-add); float32
# numpy differs from it by at most 1 ulp of the ~5 m coordinates (as for DiffPose).
_CAMERA_ATOL = 2e-6

PARITY_FAMILY = "icassp"  # the conftest fixtures root, io and fixture_json read it


def config_overrides(root, fixture_json) -> dict[str, object]:
  """`--config.*` overrides that turn configs/icassp_h36m.py into the fixture's setting."""
  up = fixture_json["config"]
  model, test, diff, data = up["model"], up["testing"], up["diffusion"], up["data"]
  out = {}
  # Upstream builds the lifter from the same `model` section as the denoiser.
  for section in ("model", "lifter"):
    out.update({f"{section}.{field}": model[field]
                 for field in ("hid_dim", "num_layers", "n_head", "dropout")})
  path_2d = pathlib.Path(data["dataset_path_2d"])
  out.update({
      "diffusion.beta_start": diff["beta_start"], "diffusion.beta_end": diff["beta_end"],
      "diffusion.num_steps": diff["num_diffusion_timesteps"],
      "sampling.timestep_range": test["test_num_diffusion_timesteps"],
      "sampling.num_steps": test["test_timesteps"], "sampling.hypotheses": test["test_times"],
      "sampling.eta": diff["eta"], "eval.flip_tta": bool(data["flip_aug"]),
      "eval.batch_size": fixture_json["effective"]["eval_batch_size"],
      "data.root": str(root / pathlib.Path(data["dataset_path_3d"]).parent),
      "data.file_3d": pathlib.Path(data["dataset_path_3d"]).name,
      "data.train_2d": path_2d.name, "data.test_2d": path_2d.name,
  })
  return out


def fixture_config(root, fixture_json, **extra):
  return with_overrides(icassp_h36m.get_config("cpn"), config_overrides(root, fixture_json), extra)


@pytest.fixture(scope="module")
def params(root, fixture_json):
  params, _ = icassp.convert(fixture_config(root, fixture_json), root / "denoiser.pth",
                             root / "lifter.pth")
  return params


def test_fixture_settings_are_the_ones_this_family_hard_codes(fixture_json):
  up, effective = fixture_json["config"], fixture_json["effective"]
  assert (tuple(up["data"]["kpt_left"]), tuple(up["data"]["kpt_right"])) == (
      skeleton.H36M_LEFT, skeleton.H36M_RIGHT)
  assert up["data"]["num_joints"] == up["model"]["n_pts"] == skeleton.NUM_JOINTS
  assert effective["denoiser_n_pts"] == icassp_models.NUM_NODES
  assert effective["denoiser_coords_dim"] == [3, 3] and effective["chebconv_K"] == 2
  assert up["diffusion"]["beta_schedule"] == "linear" and effective["skip_type"] == "uniform"
  assert effective["emd_dim_used"] == 4 * up["model"]["hid_dim"]
  assert (effective["sublayer_dropout"], effective["mha_attn_dropout"],
          effective["resblock_graphconv_dropout"]) == (up["model"]["dropout"], 0.1, 0.1)


# --- graph, schedule, networks and converter --------------------------------------------------


def test_graph_constants(io):
  adj = layers.normalized_adjacency(icassp_models.NUM_NODES, icassp_models.cross_channel_edges())
  np.testing.assert_array_equal(adj, io["adj_2d3d"])
  basis = layers.chebyshev_basis(adj)
  np.testing.assert_array_equal(basis[1], io["laplacian_2d3d"])
  # T_2 = 2 L^2 - I: a matmul, whose summation order may differ by an ulp.
  np.testing.assert_allclose(basis, io["cheb_2d3d"], rtol=0, atol=2.5e-7)
  ctx = layers.normalized_adjacency(skeleton.NUM_JOINTS, skeleton.H36M_EDGES)
  np.testing.assert_array_equal(ctx, io["adj_ctx"])
  np.testing.assert_array_equal(layers.chebyshev_basis(ctx)[1], io["laplacian_ctx"])
  np.testing.assert_allclose(layers.chebyshev_basis(ctx), io["cheb_ctx"], rtol=0, atol=1e-7)


def test_sampler_timesteps_and_schedule(root, io, fixture_json):
  config = fixture_config(root, fixture_json)
  assert icassp.sampler_timesteps(config) == tuple(io["eval_seq"].tolist())
  assert icassp.sampler_timesteps(config) == tuple(io["stoch_seq"].tolist())
  assert_close(icassp.betas(config), io["betas"], what="betas")
  assert_close(schedules.alpha_bars_with_start(icassp.betas(config)), io["alpha_bar_tm1_to_T"],
               what="alpha bars")


def test_lifter_forward_reports_the_keys_upstream_drops(root, io, fixture_json, params):
  config = fixture_config(root, fixture_json)
  _, report = convert_diffpose.convert_lifter(load_state_dict(root / "lifter.pth"), config.lifter)
  # Upstream's strict=False load skips these silently; they are listed, not dropped unseen.
  assert report.unused == ("temb.dense.0.weight", "temb.dense.0.bias", "temb.dense.1.weight",
                           "temb.dense.1.bias")
  lifter = icassp.lifter_module(config)
  out = jax.jit(lambda p, x: lifter.apply({"params": p}, x))(params["lifter"], io["lifter_in_2d"])
  assert_close(out, io["lifter_out_xyz"], what="lifter")


def test_denoiser_forward_and_activations(root, io, fixture_json, params):
  config = fixture_config(root, fixture_json)
  model = icassp.denoiser_module(config)
  apply = jax.jit(lambda p, x, g, t: model.apply({"params": p}, x, g, t,
                                                 mutable=["intermediates"]))
  # Upstream's states are [b, f=1, 17, C]; ours drop the frame axis.
  eps, state = apply(params["denoiser"], io["denoiser_in_x"][:, 0], io["denoiser_in_guide"][:, 0],
                     io["denoiser_in_t"])
  assert_close(eps, io["denoiser_out_eps"][:, 0], what="eps")
  debug = {k[len("dbg_"):] for k in io if k.startswith("dbg_")}
  assert debug == set(state["intermediates"])
  for name in debug:
    (value,) = state["intermediates"][name]
    assert_close(value, io[f"dbg_{name}"], what=name)


def test_denoiser_converter_reports_unused_modules_and_reads_the_ema(root, fixture_json):
  config = fixture_config(root, fixture_json)
  layers_ = config.model.num_layers
  live, report = convert.convert_denoiser(load_state_dict(root / "denoiser.pth"), config.model)
  last = layers_ - 1
  assert report.unused == tuple(
      [f"gconv_layers_t.{last}.gconv{i}.gconv.{p}" for i in (1, 2) for p in ("weight", "bias")]
      + [f"gconv_layers_t.{last}.temb_proj.{p}" for p in ("weight", "bias")]
      + ["gconv_output_t.weight", "gconv_output_t.bias"])
  # Per layer and branch 17 attention tensors, 6 per residual block that runs (2L - 1); 6 for the
  # ChebConvs gconv_input, gconv_output, gconv_input_t; 6 for fc1..fc3; 4 for the time MLP.
  assert report.num_tensors == 17 * 2 * layers_ + 6 * (2 * layers_ - 1) + 6 + 6 + 4
  ema, _ = convert.convert_denoiser(load_state_dict(root / "denoiser.pth", list_index=4),
                                    config.model)
  # The fixture built the EMA from other weights; upstream evaluates element 0.
  assert not np.allclose(live["fc3"]["kernel"], ema["fc3"]["kernel"])


def test_full_size_checkpoints_from_the_spec_key_lists_convert():
  config = icassp_h36m.get_config("cpn")
  denoiser = spec_key_list("keys_icassp_denoiser.txt")
  params, report = convert.convert_denoiser(denoiser, config.model)
  assert report.num_tensors + len(report.unused) == len(denoiser) == 248
  assert set(report.unused) == {k for k in denoiser if k.startswith(("gconv_layers_t.4.",
                                                                    "gconv_output_t."))}
  assert params["atten_layers_t_4"]["feed_forward"]["A_hat"].shape == (34, 34)
  # The lifter file is DiffPose's: its keys plus the time MLP upstream's strict=False skips.
  lifter = spec_key_list("keys_icassp_lifter.txt")
  assert set(spec_key_list("keys_diffpose_lifter.txt")) - set(lifter) == {
      f"module.temb.dense.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
  _, report = convert_diffpose.convert_lifter(spec_key_list("keys_diffpose_lifter.txt"),
                                              config.lifter)
  assert report.num_tensors == len(lifter) == 109 and len(report.unused) == 4


def test_wrong_family_checkpoints_fail_and_say_so(root, fixture_json):
  config = fixture_config(root, fixture_json)
  diffpose_root = parity_dir("diffpose")
  with pytest.raises(common.ConversionError,
                     match=r"denoiser\.pth: this looks like a DiffPose denoiser \(GCNdiff\) "
                           r"checkpoint .*expected an ICASSP'24 cross-channel denoiser"):
    icassp.convert(config, diffpose_root / "denoiser.pth", root / "lifter.pth")
  with pytest.raises(common.ConversionError,
                     match=r"looks like a DiffPose lifter \(GCNpose\) checkpoint .*expected an "
                           r"ICASSP'24 cross-channel denoiser"):
    icassp.convert(config, root / "lifter.pth", root / "lifter.pth")
  with pytest.raises(common.ConversionError,
                     match=r"looks like an ICASSP'24 cross-channel denoiser \(DiffModel\) "
                           r"checkpoint .*expected a DiffPose denoiser"):
    diffpose.convert(config, root / "denoiser.pth", root / "lifter.pth")
  with pytest.raises(ValueError, match=r"holds a 'diffpose' model but the config is for 'icassp'"):
    evaluation.check_checkpoint_matches(config, {"family": "diffpose"}, "ckpt")


def test_other_sizes_and_tampered_checkpoints_fail_strictly(root, fixture_json):
  config = fixture_config(root, fixture_json)
  sd = load_state_dict(root / "denoiser.pth")
  hid = config.model.hid_dim
  narrow = dict(config.model, hid_dim=hid // 2)
  with pytest.raises(common.ConversionError,
                     match=rf"\[3, 1, 3, {hid}\].*--config\.model\.hid_dim={hid}"):
    convert.convert_denoiser(sd, narrow)
  missing = {k: v for k, v in sd.items() if k != "fc3.bias"}
  with pytest.raises(common.ConversionError, match=r"no checkpoint key: 'fc3/bias'"):
    convert.convert_denoiser(missing, config.model)
  bad = dict(sd, **{"atten_layers_t.0.feed_forward.A_hat": np.eye(17, dtype=np.float32)})
  with pytest.raises(common.ConversionError,
                     match=r"'atten_layers_t\.0\.feed_forward\.A_hat' has shape \[17, 17\]"):
    convert.convert_denoiser(bad, config.model)


# --- the evaluation pipeline (lifter, flip TTA, DDIM) ------------------------------------------


@pytest.fixture(scope="module")
def runs(root, fixture_json, params, io):
  """Our pipeline on the fixture's inputs: {prefix: (pred, trajectory)} for both root variants.

  The networks go over the rows in pieces of 5 (with padding), as they do in cache-sized pieces on
  CPU; the stochastic test below and the CLI test take each batch whole.
  """
  out = {}
  for prefix, aliasing in (("evalfix", False), ("eval", True)):
    config = fixture_config(root, fixture_json, **{"eval.upstream_root_aliasing": aliasing,
                                                    "eval.cpu_chunk_size": 5})
    run = jax.jit(lambda p, x, c=config: icassp.predict(c, p, x, return_trajectory=True))
    out[prefix] = run(params, io[f"{prefix}_lifter_in_2d"])
  return out


@pytest.mark.parametrize("prefix", ["evalfix", "eval"])
def test_eval_pipeline_arrays(root, io, fixture_json, params, runs, prefix):
  config = fixture_config(root, fixture_json)
  lifter = icassp.lifter_module(config)
  raw = jax.jit(lambda p, x: lifter.apply({"params": p}, x))(params["lifter"],
                                                            io[f"{prefix}_lifter_in_2d"])
  assert_close(raw, io[f"{prefix}_lifter_out_xyz_raw"], what="raw lifter xyz")
  pred, traj = runs[prefix]
  for flip in ("", "flip_"):
    assert_close(traj[f"{flip}x_start"], io[f"{prefix}_{flip}ddim_x_start"][:, 0],
                 what=f"{flip}x_start")
    np.testing.assert_array_equal(traj[f"{flip}guide"], io[f"{prefix}_{flip}ddim_guide"][:, 0])
    assert_close(traj[f"{flip}xs"], io[f"{prefix}_{flip}ddim_xs"][:, :, 0], what=f"{flip}xs")
    assert_close(traj[f"{flip}x0_preds"], io[f"{prefix}_{flip}ddim_x0_preds"][:, :, 0],
                 what=f"{flip}x0 preds")
  assert_close(pred, io[f"{prefix}_pred_xyz"], what="fused pred xyz")


def test_stochastic_sampler_with_injected_noise(root, io, fixture_json, params):
  hyp = int(io["stoch_test_times"])
  config = fixture_config(root, fixture_json, **{
      "sampling.hypotheses": hyp, "sampling.eta": float(io["stoch_eta"]), "eval.flip_tta": False,
      "eval.cpu_chunk_size": 0})
  assert icassp.sampler_timesteps(config) == tuple(io["stoch_seq"].tolist())
  pred, traj = jax.jit(lambda p, x, z: icassp.predict(config, p, x, noise=z,
                                                      return_trajectory=True))(
      params, io["stoch_guide"][:, 0], io["stoch_step_noise"][:, :, 0])
  batch = io["stoch_x_clean"].shape[0]
  assert_close(traj["x_start"][:batch], io["stoch_x_clean"][:, 0], what="clean start")
  assert_close(traj["x_start"], io["stoch_x_start"][:, 0], what="repeated start")
  np.testing.assert_array_equal(traj["guide"], io["stoch_guide_rep"][:, 0])
  assert_close(traj["xs"], io["stoch_xs"][:, :, 0], what="stochastic xs")
  assert_close(traj["x0_preds"], io["stoch_x0_preds"][:, :, 0], what="stochastic x0 preds")
  assert_close(ddim.mean_over_hypotheses(traj["xs"][-1], hyp), io["stoch_mean_uvxyz"][:, 0],
               what="hypothesis mean")
  assert_close(pred, io["stoch_out_xyz"], what="out xyz")


# --- the data path (upstream's prepared files and loaders on the fixture synth_data) -----------


def _source_npz(prepared: pathlib.Path) -> pathlib.Path:
  """Upstream prepare_2d_poses.py reads `X_gmm.npz` and writes `X_gmm_norm.npy`."""
  return prepared.with_name(prepared.name.replace("_gmm_norm.npy", "_gmm.npz"))


@pytest.fixture(scope="module")
def data_files(root, fixture_json):
  data = fixture_json["config"]["data"]
  test_2d = root / data["dataset_path_2d"]
  return {"3d": root / data["dataset_path_3d"], "test_2d": test_2d,
          "gt_2d": test_2d.with_name("data_2d_h36m_gt_gmm_norm.npy")}


@pytest.fixture(scope="module")
def test_frames(data_files):
  return h36m.load_frame_set(data_files["3d"], data_files["test_2d"], h36m.TEST_SUBJECTS)


def test_prepared_2d_files_are_reproduced(data_files):
  gt_file, test_file = data_files["gt_2d"], data_files["test_2d"]
  gt = h36m.prepare_first_kernel_2d(h36m.load_positions_2d(_source_npz(gt_file))[0])
  for prepared, expected in ((gt, gt_file),
                             (h36m.prepare_first_kernel_2d(
                                 h36m.load_positions_2d(_source_npz(test_file))[0], reference=gt),
                              test_file)):
    upstream = h36m.load_prepared_2d(expected)
    assert list(prepared) == list(upstream)
    for subject, actions in upstream.items():
      assert list(prepared[subject]) == list(actions)
      for action, per_camera in actions.items():
        # Upstream stores float64; its loader casts to float32, which is what the model sees.
        np.testing.assert_array_equal(prepared[subject][action],
                                      np.stack(per_camera).astype(np.float32))


def test_normalised_2d_and_camera_poses(io, data_files, test_frames):
  prepared = h36m.load_prepared_2d(data_files["test_2d"])
  positions = h36m.load_positions_3d(data_files["3d"])
  uv, _ = h36m.choose_kernel(test_frames.gmm_2d)
  offset = 0
  for index, name in enumerate(test_frames.sequence_names):
    subject, action = name.split("/")
    key = f"{subject}_{action.replace(' ', '_')}"
    expected_2d = io[f"pipe_2d_norm_{key}"]  # [4, T, 17, 2] float64
    np.testing.assert_array_equal(np.stack(prepared[subject][action]), expected_2d)
    count = expected_2d.shape[0] * expected_2d.shape[1]
    np.testing.assert_array_equal(uv[offset:offset + count].reshape(expected_2d.shape),
                                  expected_2d.astype(np.float32))
    assert (test_frames.sequence[offset:offset + count] == index).all()
    world = positions[subject][action][:, skeleton.H36M32_TO_17]
    camera = np.stack([cameras.world_to_camera(world, cam)
                       for cam in cameras.h36m_cameras(subject)])
    np.testing.assert_allclose(camera, io[f"pipe_pos3d_cam_{key}"], rtol=0, atol=_CAMERA_ATOL)
    offset += count
  assert offset == len(test_frames)


def test_gmm_file_with_first_kernel_and_fixed_resolution_gives_the_same_frames(
    data_files, test_frames):
  from_npz = h36m.load_frame_set(data_files["3d"], _source_npz(data_files["test_2d"]),
                                 h36m.TEST_SUBJECTS, kernel="first", fixed_resolution=(1000, 1000))
  np.testing.assert_array_equal(from_npz.gmm_2d[..., :3], test_frames.gmm_2d[..., :3])
  for field in ("target_3d", "action", "camera", "sequence", "frame"):
    np.testing.assert_array_equal(getattr(from_npz, field), getattr(test_frames, field))
  # Without the first-kernel rule the weights pick other kernels for some joints of this file.
  weighted = h36m.load_frame_set(data_files["3d"], _source_npz(data_files["test_2d"]),
                                 h36m.TEST_SUBJECTS, fixed_resolution=(1000, 1000))
  assert not np.array_equal(h36m.choose_kernel(weighted.gmm_2d)[0],
                            h36m.choose_kernel(test_frames.gmm_2d)[0])


def test_eval_batches_targets_and_stored_predictions(io, fixture_json, test_frames, runs):
  batches, num_batches = frame_pipeline.eval_batches(test_frames,
                                                     fixture_json["effective"]["eval_batch_size"])
  batches = list(batches)
  assert num_batches == len(io["eval_batch_sizes"])
  assert [int(b["valid"].sum()) for b in batches] == io["eval_batch_sizes"].tolist()
  for prefix in ("evalfix", "eval"):
    np.testing.assert_array_equal(
        np.concatenate([b["input_2d"][b["valid"]] for b in batches]), io[f"{prefix}_lifter_in_2d"])
    np.testing.assert_allclose(test_frames.target_3d, io[f"{prefix}_target_xyz"], rtol=0,
                               atol=2 * _CAMERA_ATOL)
  actions = np.concatenate([b["action"][b["valid"]] for b in batches])
  assert [h36m.ACTIONS[a] for a in actions] == io["eval_actions"].tolist()
  # Upstream's pred.npy: {'<action>_<subject>_v<cam>': [per-frame predictions]} in frame order.
  ids = [f"{name.split('/')[1]}_{name.split('/')[0]}_v{cam}"
         for name, cam in zip(np.asarray(test_frames.sequence_names)[test_frames.sequence],
                              test_frames.camera)]
  for prefix in ("evalfix", "eval"):
    assert list(dict.fromkeys(ids)) == io[f"{prefix}_store_keys"].tolist()
    pred, _ = runs[prefix]
    assert_close(pred, io[f"{prefix}_store_pred"], what="stored predictions")


@pytest.mark.parametrize("prefix", ["evalfix", "eval"])
def test_upstream_table_from_our_predictions(root, io, runs, prefix):
  pred, _ = runs[prefix]
  target, actions = io[f"{prefix}_target_xyz"], io["eval_actions"]
  # Per-pose errors (row by row, so one call for all rows), accumulated in upstream's batches.
  p1_all = np.asarray(metrics.mpjpe(pred, target))
  p2_all = np.asarray(metrics.p_mpjpe(pred, target))
  table = metrics.ActionErrorTable(upstream_p2_batch_mean=True)
  start = 0
  for size in io["eval_batch_sizes"]:
    rows = slice(start, start + int(size))
    table.update(p1_all[rows], p2_all[rows], actions[rows])
    start += int(size)
  p1, p2 = table.averages()
  np.testing.assert_allclose(p1, float(io[f"{prefix}_p1_mm"]), atol=1e-3)
  np.testing.assert_allclose(p2, float(io[f"{prefix}_p2_mm"]), atol=1e-3)
  expected = _table_rows((root / f"{prefix}_stdout.txt").read_text())
  got = _table_rows(table.format_table())
  assert set(got) == set(expected)
  for action, (e1, e2) in expected.items():
    assert abs(got[action][0] - e1) <= 0.01 + 1e-9 and abs(got[action][1] - e2) <= 0.01 + 1e-9


# --- the command-line tools --------------------------------------------------------------------


@pytest.mark.slow
def test_cli_convert_then_evaluate_matches_upstream_table(root, fixture_json, tmp_path):
  overrides = config_overrides(root, fixture_json)
  sizes = [f"--config.{k}={v}" for k, v in overrides.items() if k.startswith(("model.", "lifter."))]
  ckpt = tmp_path / "ckpt"
  # No --config: the converter takes configs/icassp_h36m.py for --family icassp.
  stdout = _run(["convert_torch_weights.py", "--family=icassp",
                 f"--checkpoint={root / 'denoiser.pth'}", f"--lifter={root / 'lifter.pth'}",
                 f"--output={ckpt}", *sizes])
  assert "temb.dense.0.weight" in stdout and "gconv_output_t.weight" in stdout
  out_json = tmp_path / "results.json"
  stdout = _run(["evaluate.py", "--config=configs/icassp_h36m.py:cpn", f"--checkpoint={ckpt}",
                 f"--output={out_json}", "--config.eval.upstream_p2_batch_mean=True",
                 *[f"--config.{k}={v}" for k, v in overrides.items()]])
  expected = _table_rows((root / "evalfix_stdout.txt").read_text())
  got = _table_rows(stdout)
  assert set(got) == set(expected), stdout
  for action, (p1, p2) in expected.items():
    assert abs(got[action][0] - p1) <= 0.01 + 1e-9, (action, got[action], (p1, p2))
    assert abs(got[action][1] - p2) <= 0.01 + 1e-9, (action, got[action], (p1, p2))
  result = json.loads(out_json.read_text())
  assert result["checkpoint"] == str(ckpt) and result["config"]["family"] == "icassp"


@pytest.mark.slow
def test_cli_rejects_a_diffpose_denoiser_given_as_icassp(root, tmp_path):
  proc = subprocess.run(
      [sys.executable, "convert_torch_weights.py", "--family=icassp",
       f"--checkpoint={parity_dir('diffpose') / 'denoiser.pth'}",
       f"--lifter={root / 'lifter.pth'}", f"--output={tmp_path / 'ckpt'}"],
      cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  assert "looks like a DiffPose denoiser (GCNdiff) checkpoint" in proc.stderr
  assert "expected an ICASSP'24 cross-channel denoiser" in proc.stderr
  assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_cli_lifter_only_conversion_starts_training_but_is_not_evaluated(root, fixture_json,
                                                                        tmp_path):
  overrides = config_overrides(root, fixture_json)
  sizes = [f"--config.{k}={v}" for k, v in overrides.items() if k.startswith("lifter.")]
  # DiffPose's converter writes the lifter; ICASSP training may start from it (same GraFormer).
  ckpt = tmp_path / "lifter"
  _run(["convert_torch_weights.py", "--family=diffpose", f"--lifter={root / 'lifter.pth'}",
        f"--output={ckpt}", *sizes])
  params, meta, _ = checkpoint.load_model(ckpt)
  assert sorted(params) == ["lifter"] and meta["family"] == "diffpose"
  proc = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/icassp_h36m.py:cpn", f"--checkpoint={ckpt}",
       *[f"--config.{k}={v}" for k, v in overrides.items()]],
      cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  assert "holds a 'diffpose' model" in proc.stderr
  data = tmp_path / "data"
  synthetic_h36m.ensure_synthetic_data(data, frames_per_sequence=tiny_run.FRAMES_PER_SEQUENCE)
  config = tiny_run.tiny_family_config("icassp", data, {
      **{k: v for k, v in overrides.items() if k.startswith("lifter.")},
      "train.lifter_checkpoint": str(ckpt), "train.lifter_steps": 0, "train.steps": 1,
      "train.checkpoint_every": 1, "eval.batch_size": 2048})
  result = training.train_and_evaluate(config, tmp_path / "run")
  assert result["step"] == 1
  trained, meta, _ = checkpoint.load_model(tmp_path / "run")
  assert meta["family"] == "icassp"
  for got, want in zip(jax.tree.leaves(trained["lifter"]), jax.tree.leaves(params["lifter"])):
    np.testing.assert_array_equal(got, want)  # the lifter stays frozen
