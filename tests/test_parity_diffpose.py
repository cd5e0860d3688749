"""DiffPose against the authors' own PyTorch code: `../shared/parity/diffpose` (see its README).

Every size and setting comes from the fixture's `config.json`, so these tests hold for any fixture
set the same upstream generator makes (`POSEDIFF_PARITY_DIR` points elsewhere).
"""

import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import diffpose_h36m
from posediff_jax import cameras
from posediff_jax import metrics
from posediff_jax import skeleton
from posediff_jax.convert import common
from posediff_jax.convert import diffpose as convert
from posediff_jax.data import frame_pipeline
from posediff_jax.data import h36m
from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from posediff_jax.families import diffpose
from posediff_jax.models import diffpose as diffpose_models
from posediff_jax.models import layers
from tests.conftest import REPO_ROOT, assert_close, load_state_dict, parity_dir, with_overrides

PARITY_FAMILY = "diffpose"  # the conftest fixtures root, io and fixture_json read it


def config_overrides(root, fixture_json) -> dict[str, object]:
  """`--config.*` overrides that turn configs/diffpose_h36m.py into the fixture's setting."""
  up = fixture_json["config"]
  model, test, diff, data = up["model"], up["testing"], up["diffusion"], up["data"]
  out = {}
  for section in ("model", "lifter"):
    out.update({f"{section}.hid_dim": model["hid_dim"], f"{section}.num_layers": model["num_layer"],
                f"{section}.n_head": model["n_head"], f"{section}.dropout": model["dropout"]})
  out.update({
      "diffusion.beta_start": diff["beta_start"], "diffusion.beta_end": diff["beta_end"],
      "diffusion.num_steps": diff["num_diffusion_timesteps"],
      "sampling.timestep_range": test["test_num_diffusion_timesteps"],
      "sampling.num_steps": test["test_timesteps"], "sampling.hypotheses": test["test_times"],
      "sampling.eta": fixture_json["effective"]["eta"],
      "eval.batch_size": fixture_json["effective"]["eval_batch_size"],
      "data.root": str(root / pathlib.Path(data["dataset_path"]).parent),
      "data.file_3d": pathlib.Path(data["dataset_path"]).name,
      "data.train_2d": pathlib.Path(data["dataset_path_train_2d"]).name,
      "data.test_2d": pathlib.Path(data["dataset_path_test_2d"]).name,
  })
  return out


def fixture_config(root, fixture_json, **extra):
  return with_overrides(diffpose_h36m.get_config("cpn"), config_overrides(root, fixture_json),
                        extra)


@pytest.fixture(scope="module")
def params(root, fixture_json):
  config = fixture_config(root, fixture_json)
  params, _ = diffpose.convert(config, root / "denoiser.pth", root / "lifter.pth")
  return params


def test_sampler_timesteps_and_schedule(root, io, fixture_json):
  config = fixture_config(root, fixture_json)
  assert diffpose.sampler_timesteps(config) == tuple(io["eval_seq"].tolist())
  assert_close(diffpose.betas(config), io["betas"], what="betas")
  assert_close(schedules.alpha_bars_with_start(diffpose.betas(config)), io["alpha_bar_tm1_to_T"],
               what="alpha bars")


@pytest.mark.parametrize("prefix,aliasing", [("evalfix", False), ("eval", True)])
def test_eval_pipeline_arrays(root, io, fixture_json, params, prefix, aliasing):
  config = fixture_config(root, fixture_json, **{"eval.upstream_root_aliasing": aliasing})
  pred, traj = jax.jit(lambda p, x: diffpose.predict(config, p, x, return_trajectory=True))(
      params, io[f"{prefix}_lifter_in_2d"])
  assert_close(traj["x_start"], io[f"{prefix}_ddim_x_start"], what="x_start")
  xs = io[f"{prefix}_ddim_xs"]
  assert_close(traj["xs"][0], xs[0], what="xs[0]")
  assert_close(traj["x0_preds"], io[f"{prefix}_ddim_x0_preds"], rtol=1e-4, what="x0 preds")
  if prefix == "eval":  # the upstream-CPU run root-processes the last state inside `xs`
    assert_close(traj["xs"][1], xs[1], rtol=1e-4, what="xs[1]")
  else:
    assert_close(traj["xs"][1:], xs[1:], rtol=1e-4, what="xs")
  assert_close(pred, io[f"{prefix}_pred_xyz"], rtol=1e-4, what="pred xyz")


def test_stochastic_sampler_with_injected_noise(root, io, fixture_json, params):
  config = fixture_config(root, fixture_json)
  hyp, t_start = int(io["stoch_test_times"]), int(io["stoch_t_start"])
  x_rep = ddim.repeat_hypotheses(jnp.asarray(io["stoch_x_clean"]), hyp)
  noise = jnp.asarray(io["stoch_e_start_std"]) * ddim.repeat_hypotheses(
      jnp.asarray(io["stoch_noise_scale"]), hyp)
  # Upstream's commented-out start noising indexes cumprod(1 - betas) directly at t (no +1 shift).
  x_start = schedules.q_sample(x_rep, jnp.full((x_rep.shape[0],), t_start), noise,
                               schedules.alpha_bars(diffpose.betas(config)))
  assert_close(x_start, io["stoch_x_start"], what="stochastic start")

  denoiser = diffpose.denoiser_module(config)
  x_final, xs, x0_preds = jax.jit(lambda p, x, z: ddim.ddim_sample(
      lambda x, t: denoiser.apply({"params": p}, x, t), x, tuple(io["stoch_seq"].tolist()),
      schedules.alpha_bars_with_start(diffpose.betas(config)), eta=float(io["stoch_eta"]), noise=z,
      return_trajectory=True))(params["denoiser"], io["stoch_x_start"], io["stoch_step_noise"])
  assert_close(xs, io["stoch_xs"], rtol=1e-4, what="stochastic xs")
  assert_close(x0_preds, io["stoch_x0_preds"], rtol=1e-4, what="stochastic x0 preds")
  mean = ddim.mean_over_hypotheses(x_final, hyp)
  assert_close(mean, io["stoch_mean_uvxyz"], rtol=1e-4, what="hypothesis mean")
  assert_close(diffpose.root_subtract(mean[..., 2:5]), io["stoch_out_xyz"], rtol=1e-4,
               what="out xyz")


def _table_rows(text: str) -> dict[str, tuple[float, float]]:
  rows = {}
  for line in text.splitlines():
    m = re.match(r"^(\w+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s*$", line)
    if m:
      rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
  return rows


def _run(args, **kw):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                        env=env, **kw)
  assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
  return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("stdout_file,aliasing", [("evalfix_stdout.txt", False),
                                                  ("eval_stdout.txt", True)])
def test_cli_convert_then_evaluate_matches_upstream_table(root, fixture_json, tmp_path, stdout_file,
                                                          aliasing):
  overrides = config_overrides(root, fixture_json)
  sizes = [f"--config.{k}={v}" for k, v in overrides.items() if k.startswith(("model.", "lifter."))]
  ckpt = tmp_path / "ckpt"
  _run(["convert_torch_weights.py", "--family=diffpose", f"--checkpoint={root / 'denoiser.pth'}",
        f"--lifter={root / 'lifter.pth'}", f"--output={ckpt}", *sizes])
  out_json = tmp_path / "results.json"
  stdout = _run(["evaluate.py", "--config=configs/diffpose_h36m.py:cpn", f"--checkpoint={ckpt}",
                 f"--output={out_json}", "--config.eval.upstream_p2_batch_mean=True",
                 f"--config.eval.upstream_root_aliasing={aliasing}",
                 *[f"--config.{k}={v}" for k, v in overrides.items()]])
  expected = _table_rows((root / stdout_file).read_text())
  got = _table_rows(stdout)
  assert set(got) == set(expected), stdout
  for action, (p1, p2) in expected.items():
    assert abs(got[action][0] - p1) <= 0.01 + 1e-9, (action, got[action], (p1, p2))
    assert abs(got[action][1] - p2) <= 0.01 + 1e-9, (action, got[action], (p1, p2))
  result = json.loads(out_json.read_text())
  assert result["checkpoint"] == str(ckpt) and result["config"]["family"] == "diffpose"


# --- the data pipeline (upstream loaders on the fixture synth_data) ----------------------------

_SEQUENCES = (("S9", "Directions 1"), ("S9", "Eating"), ("S11", "Walking"))
# Upstream's world->camera ran through torch's CPU cross product, which fuses a multiply-add;
# plain float32 numpy differs from it by at most 1 ulp of the ~5 m coordinates.
_CAMERA_ATOL = 2e-6


@pytest.fixture(name="fixture", scope="module")
def _fixture():
  root = parity_dir("diffpose")
  config = json.loads((root / "config.json").read_text())
  with np.load(root / "io.npz") as io:
    arrays = dict(io)
  return root, config, arrays


@pytest.fixture(name="test_frames", scope="module")
def _test_frames(fixture):
  root, config, _ = fixture
  data = config["config"]["data"]
  return h36m.load_frame_set(root / data["dataset_path"], root / data["dataset_path_test_2d"],
                             h36m.TEST_SUBJECTS)


def _key(subject, action):
  return f"{subject}_{action.replace(' ', '_')}"


def test_world_and_camera_poses(fixture):
  root, config, io = fixture
  positions = h36m.load_positions_3d(root / config["config"]["data"]["dataset_path"])
  for subject, action in _SEQUENCES:
    world = positions[subject][action][:, skeleton.H36M32_TO_17]
    np.testing.assert_array_equal(world, io[f"pipe_pos3d_world17_{_key(subject, action)}"])
    camera = np.stack([cameras.world_to_camera(world, cam)
                       for cam in cameras.h36m_cameras(subject)])
    np.testing.assert_allclose(camera, io[f"pipe_pos3d_cam_{_key(subject, action)}"], rtol=0,
                               atol=_CAMERA_ATOL)


def test_normalised_test_2d(fixture, test_frames):
  _, _, io = fixture
  offset = 0
  for sequence, (subject, action) in enumerate(_SEQUENCES):
    expected = io[f"pipe_cpn2d_norm_{_key(subject, action)}"]  # [4, T, 17, K, 5]
    assert test_frames.sequence_names[sequence] == f"{subject}/{action}"
    count = expected.shape[0] * expected.shape[1]
    got = test_frames.gmm_2d[offset:offset + count].reshape(expected.shape)
    np.testing.assert_array_equal(got, expected)  # bit-for-bit, float32/float64 arithmetic included
    offset += count
  assert offset == len(test_frames)


def test_dataset_items(fixture, test_frames):
  _, _, io = fixture
  uv, var = h36m.choose_kernel(test_frames.gmm_2d)
  np.testing.assert_array_equal(uv, io["pipe_item_input_2d"])
  np.testing.assert_allclose(test_frames.target_3d, io["pipe_item_target_3d"], rtol=0,
                             atol=2 * _CAMERA_ATOL)
  np.testing.assert_allclose(np.concatenate([uv, test_frames.target_3d], axis=-1),
                             io["pipe_item_uvxyz"], rtol=0, atol=2 * _CAMERA_ATOL)
  np.testing.assert_array_equal(np.concatenate([var, np.ones_like(test_frames.target_3d)], -1),
                                io["pipe_item_noise_scale"])
  np.testing.assert_array_equal(test_frames.camera_params, io["pipe_item_camera_para"])
  assert [h36m.ACTIONS[a] for a in test_frames.action] == io["eval_actions"].tolist()


def test_eval_batch_boundaries(fixture, test_frames):
  _, config, io = fixture
  batches, num_batches = frame_pipeline.eval_batches(test_frames,
                                                     config["effective"]["eval_batch_size"])
  batches = list(batches)
  assert num_batches == len(batches) == len(io["eval_batch_sizes"])
  assert [int(b["valid"].sum()) for b in batches] == io["eval_batch_sizes"].tolist()
  np.testing.assert_array_equal(np.concatenate([b["input_2d"][b["valid"]] for b in batches]),
                                io["eval_lifter_in_2d"])
  actions = np.concatenate([b["action"][b["valid"]] for b in batches])
  assert [h36m.ACTIONS[a] for a in actions] == io["eval_actions"].tolist()


# --- models and converter (lifter / denoiser forwards, activations, bad checkpoints) -----------

RTOL = 1e-5


def _rel_err(got, ref) -> float:
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  return float(np.abs(got - ref).max() / np.abs(ref).max())


@functools.cache
def _model_fixture():
  folder = parity_dir("diffpose")
  config = json.loads((folder / "config.json").read_text())["config"]["model"]
  model_cfg = dict(hid_dim=config["hid_dim"], num_layers=config["num_layer"],
                   n_head=config["n_head"], dropout=config["dropout"])
  with np.load(folder / "io.npz") as npz:
    arrays = {k: npz[k] for k in npz.files if k in _ARRAYS or k.startswith("dbg_")}
  return folder, model_cfg, arrays


_ARRAYS = ("adj17", "laplacian17", "cheb17", "lifter_in_2d", "lifter_out_xyz", "denoiser_in_x",
           "denoiser_in_t", "denoiser_out_eps")


def _state_dict(name: str, **kwargs):
  return load_state_dict(_model_fixture()[0] / name, **kwargs)


def test_graph_constants():
  _, _, io = _model_fixture()
  adj = layers.normalized_adjacency(17, skeleton.H36M_EDGES)
  np.testing.assert_array_equal(adj, io["adj17"])
  basis = layers.chebyshev_basis(adj)
  np.testing.assert_array_equal(basis[1], io["laplacian17"])
  np.testing.assert_allclose(basis, io["cheb17"], rtol=0, atol=1e-7)


def test_lifter_forward_matches_upstream():
  _, cfg, io = _model_fixture()
  params, report = convert.convert_lifter(_state_dict("lifter.pth"), cfg)
  assert report.unused == ("temb.dense.0.weight", "temb.dense.0.bias", "temb.dense.1.weight",
                           "temb.dense.1.bias")
  model = diffpose_models.lifter_from_config(cfg)
  out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, io["lifter_in_2d"])
  assert _rel_err(out, io["lifter_out_xyz"]) <= RTOL


def test_denoiser_forward_and_activations_match_upstream():
  _, cfg, io = _model_fixture()
  params, report = convert.convert_denoiser(_state_dict("denoiser.pth"), cfg)
  assert report.unused == ()
  model = diffpose_models.denoiser_from_config(cfg)
  apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, mutable=["intermediates"]))
  eps, state = apply(params, io["denoiser_in_x"], io["denoiser_in_t"])
  assert _rel_err(eps, io["denoiser_out_eps"]) <= RTOL
  debug = {k[len("dbg_"):] for k in io if k.startswith("dbg_")}
  assert debug == set(state["intermediates"])
  for name in debug:
    (value,) = state["intermediates"][name]
    assert _rel_err(value, io[f"dbg_{name}"]) <= RTOL, name


def test_denoiser_ema_weights_convert_too():
  _, cfg, _ = _model_fixture()
  live, _ = convert.convert_denoiser(_state_dict("denoiser.pth"), cfg)
  ema, report = convert.convert_denoiser(_state_dict("denoiser.pth", list_index=4), cfg)
  # Per layer 17 attention + 6 residual-block tensors; 2 + 2 ChebConv in/out and 4 time-MLP tensors.
  assert report.num_tensors == 23 * cfg["num_layers"] + 8
  # The fixture built the EMA from other weights; upstream evaluates element 0.
  assert not np.allclose(live["gconv_input"]["weight"], ema["gconv_input"]["weight"])


def test_infer_dims():
  _, cfg, _ = _model_fixture()
  dims = convert.infer_diffpose_dims(_state_dict("denoiser.pth"))
  assert dims == dict(kind="denoiser", hid_dim=cfg["hid_dim"], num_layers=cfg["num_layers"],
                      in_dim=5, out_dim=5)
  assert convert.infer_diffpose_dims(_state_dict("lifter.pth"))["kind"] == "lifter"


def test_wrong_kind_fails_clearly():
  _, cfg, _ = _model_fixture()
  with pytest.raises(common.ConversionError,
                     match=r"looks like a DiffPose lifter \(GCNpose\) checkpoint .*expected a "
                           r"DiffPose denoiser \(GCNdiff\)"):
    convert.convert_denoiser(_state_dict("lifter.pth"), cfg)
  with pytest.raises(common.ConversionError,
                     match=r"looks like a DiffPose denoiser \(GCNdiff\) checkpoint .*expected a "
                           r"DiffPose lifter"):
    convert.convert_lifter(_state_dict("denoiser.pth"), cfg)


def test_other_sizes_fail_with_key_shapes_and_hint():
  _, cfg, _ = _model_fixture()
  hid = cfg["hid_dim"]
  narrow = dict(cfg, hid_dim=hid // 2)
  with pytest.raises(common.ConversionError) as info:
    convert.convert_denoiser(_state_dict("denoiser.pth"), narrow, source="denoiser.pth")
  message = str(info.value)
  for part in ("denoiser.pth", "'gconv_input.weight'", f"[3, 1, 5, {hid}]",
               f"[3, 1, 5, {hid // 2}]", f"--config.model.hid_dim={hid}"):
    assert part in message, message
  deeper = dict(cfg, num_layers=cfg["num_layers"] + 1)
  with pytest.raises(common.ConversionError,
                     match=rf"--config.lifter.num_layers={cfg['num_layers']}"):
    convert.convert_lifter(_state_dict("lifter.pth"), deeper)


def test_tampered_checkpoints_fail_strictly():
  _, cfg, _ = _model_fixture()
  sd = _state_dict("denoiser.pth")
  bad_shape = dict(sd, **{"atten_layers.1.feed_forward.A_hat": np.eye(16, dtype=np.float32)})
  with pytest.raises(common.ConversionError,
                     match=r"'atten_layers\.1\.feed_forward\.A_hat' has shape \[16, 16\].*"
                           r"'atten_layers_1/feed_forward/A_hat' \[17, 17\]"):
    convert.convert_denoiser(bad_shape, cfg)
  missing = {k: v for k, v in sd.items() if k != "gconv_layers.0.temb_proj.bias"}
  with pytest.raises(common.ConversionError, match=r"'gconv_layers_0/temb_proj/bias'"):
    convert.convert_denoiser(missing, cfg)
  extra = dict(sd, **{"atten_layers.0.self_attn.rel_pos": np.zeros(3, np.float32)})
  with pytest.raises(common.ConversionError, match=r"'atten_layers\.0\.self_attn\.rel_pos'"):
    convert.convert_denoiser(extra, cfg)


# --- the per-action table (upstream print format and P2 quirk) ---------------------------------

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


# A printed number with the padding before it: the table's columns are right-aligned.
_PRINTED_NUMBER = re.compile(r" *-?\d+\.\d+")


def _assert_table_prints_as(table: metrics.ActionErrorTable, printed: str) -> None:
  """`table` prints in `printed`'s format, and each value is the one printed there.

  The format is compared as text in which each number, with its padding, is blanked but for the
  column it ends in (the columns are right-aligned). A value matches its printed number within
  half a unit of the last digit plus float32 rounding: the authors' code sums in float32, so a
  value close to a rounding edge can print one digit off although the two agree to about 1e-4 mm.
  """
  mask = lambda text: _PRINTED_NUMBER.sub(lambda m: " " * (len(m.group()) - 1) + "#", text)
  assert mask(table.format_table() + "\n") == mask(printed), (table.format_table(), printed)
  p1, p2 = table.per_action_mm()
  values = [*zip(p1, p2), table.averages()]
  rows = [line for line in printed.splitlines() if _PRINTED_NUMBER.search(line)]
  assert len(rows) == len(values), printed
  for row, row_values in zip(rows, values):
    for number, value in zip(_PRINTED_NUMBER.findall(row), row_values):
      decimals = len(number.split(".")[1])
      tolerance = 0.5 * 10.0**-decimals + abs(float(number)) * np.finfo(np.float32).eps
      assert abs(float(value) - float(number)) <= tolerance, (row, row_values)


@pytest.mark.parametrize("prefix", ["eval", "evalfix"])
def test_upstream_table_reproduces_fixture(prefix):
  table, io, folder = _fill_table(prefix, upstream=True)
  p1, p2 = table.averages()
  np.testing.assert_allclose(p1, float(io[f"{prefix}_p1_mm"]), atol=1e-3)
  np.testing.assert_allclose(p2, float(io[f"{prefix}_p2_mm"]), atol=1e-3)
  _assert_table_prints_as(table, (folder / f"{prefix}_stdout.txt").read_text())


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
