"""mmDiff phase 2 against the authors' own PyTorch code: `../shared/parity/mmdiff` (see its README).

Every size and setting comes from the fixture's `config.json` and arrays, so these tests hold for
any fixture set the same upstream generator makes (`POSEDIFF_PARITY_DIR` points elsewhere).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mmdiff_mmbody
from configs import mmdiff_mmfi
from posediff_jax import skeleton
from posediff_jax.convert import common
from posediff_jax.convert import mmdiff as convert
from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from posediff_jax.families import mmdiff
from posediff_jax.models import layers
from posediff_jax.models import mmdiff as models
from tests import torch_format
from tests.conftest import assert_close, parity_dir, spec_key_sections, with_overrides

PARITY_FAMILY = "mmdiff"  # the conftest fixtures root, io and fixture_json read it


def fixture_config(fixture_json, **extra):
  """configs/mmdiff_mmbody.py turned into the fixture's reduced setting."""
  config = mmdiff_mmbody.get_config("head")
  up, ctor, derived = fixture_json["config_model"], fixture_json["gcndiff_ctor"], \
      fixture_json["derived"]
  diff, test = fixture_json["config_diffusion"], fixture_json["config_testing"]
  overrides = {
      "model.hid_dim": up["hid_dim"], "model.num_layers": up["num_layer"],
      "model.n_head": up["n_head"], "model.dropout": up["dropout"],
      "model.feature_size": ctor["global_feat_size"], "model.past_frames": ctor["past_frames"],
      "model.radar_channels": ctor["radar_input_c"],
      **{f"model.{flag}": ctor[flag] for flag in ("global_flag", "local_flag", "temp_flag",
                                                  "limb_flag")},
      "model.local_points": derived["local_points"],
      "model.local_radius_sq": derived["local_thresh_sq"],
      "model.local_attn_layers": derived["local_attn_iters"],
      "model.limb_hidden": derived["limb_hidden"],
      "diffusion.beta_schedule": diff["beta_schedule"], "diffusion.beta_start": diff["beta_start"],
      "diffusion.beta_end": diff["beta_end"],
      "diffusion.num_steps": diff["num_diffusion_timesteps"],
      "sampling.timestep_range": test["test_num_diffusion_timesteps"],
      "sampling.num_steps": test["test_timesteps"], "sampling.hypotheses": test["test_times"],
      "eval.cpu_chunk_size": 0,
  }
  return with_overrides(config, overrides, extra)


@pytest.fixture(scope="module")
def config(fixture_json):
  return fixture_config(fixture_json)


@pytest.fixture(scope="module")
def converted(root, config):
  return mmdiff.convert(config, root / "model.pth")


@pytest.fixture(scope="module")
def params(converted):
  return converted[0]


@pytest.fixture(scope="module")
def apply_model(config):
  model = mmdiff.denoiser_module(config)
  return jax.jit(lambda p, x, t, feats, radar, limb: model.apply({"params": p}, x, t, feats, radar,
                                                                 limb))


# Arrays the tests feed in rather than compare against.
_INPUTS = {"in_radar", "in_x_history", "in_cemd", "in_gt_pose", "fwd_t", "fwd_noise"}
# Arrays compared with ours; of each sampler run, all arrays are compared except the injected noise.
_COMPARED = {
    "in_adj", "betas", "alphas_cumprod", "seq",  # test_graph_schedule_and_timesteps
    "in_limb_gt",  # test_limb_lengths_of_the_target
    "fwd_eps_full", "fwd_limb_pred", "fwd_eps_full_limbgt", "fwd_limb_pred_limbgt",
    "fwd_x_t", "fwd_x_all", "fwd_loss_eps", "fwd_loss_limb", "fwd_loss_total",
}
_HEAD_RUN = {"xs", "noise", "final", "call_x_in", "call_t", "call_eps", "call_limb"}
_V1_RUN = {"xs", "x0_preds", "noise", "final", "call_eps"}
_HEAD_RUNS = ("head_eta0", "head_eta1", "head_eta1_h2")
_V1_RUNS = ("v1_eta0", "v1_eta1")


def test_every_fixture_array_is_checked(io):
  runs = {f"{run}_{name}" for run in _HEAD_RUNS for name in _HEAD_RUN}
  runs |= {f"{run}_{name}" for run in _V1_RUNS for name in _V1_RUN}
  assert set(io) == _INPUTS | _COMPARED | runs


# --- settings, constants, converter ---------------------------------------------------------------


def test_fixture_settings_are_the_ones_the_model_hard_codes(io, fixture_json, config):
  assert tuple(map(tuple, fixture_json["edges"])) == models.LIMBS == skeleton.H36M_EDGES
  model = mmdiff.denoiser_module(config)
  derived = fixture_json["derived"]
  assert derived["emd_dim"] == 4 * model.hid_dim
  assert derived["temporal_channels"] == model.num_joints * model.hid_dim
  assert derived["limb_size"] == len(models.LIMBS)
  assert derived["cheb_terms"] == derived["cheb_K_param"] + 1 == 3
  assert io["in_radar"].shape[-1] == model.radar_channels
  assert io["in_x_history"].shape[-1] == model.state_channels


def test_graph_schedule_and_timesteps(io, config):
  np.testing.assert_array_equal(
      layers.normalized_adjacency(skeleton.NUM_JOINTS, models.LIMBS), io["in_adj"])
  assert_close(mmdiff.betas(config), io["betas"], what="betas")
  assert_close(schedules.alpha_bars(mmdiff.betas(config)), io["alphas_cumprod"], what="alpha bars")
  assert mmdiff.sampler_timesteps(config) == tuple(io["seq"].tolist())


def test_converter_maps_every_live_tensor_and_reports_the_dead_ones(root, fixture_json, converted):
  _, unused = converted
  assert unused["denoiser"] == ["gconv_input.weight", "gconv_input.bias", "gconv_input3.weight",
                                "gconv_input3.bias"]
  state_dict = convert.load_state_dict(root / "model.pth")
  params = converted[0]["denoiser"]
  mapped = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params))
  dead = sum(state_dict[k].size for k in unused["denoiser"])
  assert mapped + dead == fixture_json["n_params"]
  assert len(jax.tree_util.tree_leaves(params)) + len(unused["denoiser"]) == len(state_dict)


# --- the network, the noising and the loss -------------------------------------------------------


def test_forward_and_limb_outputs(io, params, apply_model):
  t = io["fwd_t"].astype(np.float32)
  for suffix, limb in (("", None), ("_limbgt", io["in_limb_gt"])):
    eps, limb_pred = apply_model(params["denoiser"], io["fwd_x_all"], t, io["in_cemd"],
                                 io["in_radar"], limb)
    assert_close(eps, io[f"fwd_eps_full{suffix}"], what=f"eps{suffix}")
    assert_close(limb_pred, io[f"fwd_limb_pred{suffix}"], what=f"limb pred{suffix}")


def test_limb_lengths_of_the_target(io):
  assert_close(models.limb_lengths(io["in_gt_pose"]), io["in_limb_gt"], what="limb lengths")


def test_noising_and_loss_terms(io, config, params):
  alpha_bar = schedules.alpha_bars(mmdiff.betas(config))
  x_t = schedules.q_sample(io["in_gt_pose"], io["fwd_t"], io["fwd_noise"], alpha_bar)
  assert_close(x_t, io["fwd_x_t"], what="x_t")
  assert_close(np.concatenate([io["in_x_history"][..., :-3], x_t], -1), io["fwd_x_all"],
               what="denoiser input")
  batch = {"x_history": io["in_x_history"], "features": io["in_cemd"], "radar": io["in_radar"],
           "target_3d": io["in_gt_pose"], "limb_lengths": io["in_limb_gt"]}
  terms = jax.jit(lambda p, b: mmdiff.loss_terms(config, p, b, io["fwd_t"], io["fwd_noise"]))(
      params["denoiser"], batch)
  for name in ("eps", "limb", "total"):
    assert_close(terms[name], io[f"fwd_loss_{name}"], what=f"loss {name}")
  assert config.train.limb_loss_weight == 10.0


def test_v1_training_variant_feeds_gt_limbs_and_scales_the_history(io, fixture_json, params,
                                                                   apply_model):
  config = fixture_config(fixture_json, **{"train.limb_teacher_forcing": True,
                                           "train.diffuse_history": True})
  batch = {"x_history": io["in_x_history"], "features": io["in_cemd"], "radar": io["in_radar"],
           "target_3d": io["in_gt_pose"]}
  # No stored limb lengths: the loss computes them from the target, as upstream's loader does.
  terms = jax.jit(lambda p, b: mmdiff.loss_terms(config, p, b, io["fwd_t"], io["fwd_noise"]))(
      params["denoiser"], batch)
  alpha_bar = schedules.alpha_bars(mmdiff.betas(config))[io["fwd_t"]][:, None, None]
  x_all = np.concatenate([io["in_x_history"][..., :-3] * np.sqrt(alpha_bar), io["fwd_x_t"]], -1)
  eps, limb_pred = apply_model(params["denoiser"], x_all, io["fwd_t"].astype(np.float32),
                               io["in_cemd"], io["in_radar"], io["in_limb_gt"])
  expected = np.mean(np.sum((io["fwd_noise"] - np.asarray(eps)[..., -3:]) ** 2, axis=(1, 2)))
  assert_close(terms["eps"], expected, what="v1 eps loss")
  assert_close(terms["limb"], io["fwd_loss_limb"], what="v1 limb loss")


def test_training_loss_with_dropout_is_differentiable(io, config, params):
  batch = {"x_history": io["in_x_history"], "features": io["in_cemd"], "radar": io["in_radar"],
           "target_3d": io["in_gt_pose"]}
  # Tracing (no compilation: dropout's RNG makes this slow to compile on CPU) proves every op of
  # the training loss, dropout included, is differentiable and shaped right.
  loss, grads = jax.eval_shape(jax.value_and_grad(
      lambda p: mmdiff.denoiser_loss(config, p, batch, jax.random.key(0))[0]), params["denoiser"])
  assert loss.shape == () and loss.dtype == jnp.float32
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params["denoiser"])


# --- the samplers ---------------------------------------------------------------------------------


def _run_config(fixture_json, prefix, io):
  hypotheses = io[f"{prefix}_xs"].shape[1] // io["in_x_history"].shape[0]
  eta = fixture_json["eta_values"][prefix.split("_")[1]]
  return fixture_config(fixture_json, **{
      "sampling.hypotheses": hypotheses, "sampling.eta": eta,
      "sampling.update_history": prefix.startswith("v1"),
      # Exercise the row-chunked network path on one of the runs.
      "eval.cpu_chunk_size": 1 if prefix == "head_eta1" else 0})


def _batch(io):
  return {"x_history": io["in_x_history"], "features": io["in_cemd"], "radar": io["in_radar"]}


@pytest.mark.parametrize("prefix", _HEAD_RUNS)
def test_head_sampler_runs(io, fixture_json, params, apply_model, prefix):
  config = _run_config(fixture_json, prefix, io)
  pred, traj = jax.jit(lambda p, b, z: mmdiff.predict(config, p, b, noise=z,
                                                      return_trajectory=True))(
      params, _batch(io), io[f"{prefix}_noise"])
  assert_close(traj["xs"], io[f"{prefix}_xs"], what=f"{prefix} xs")
  assert_close(pred, io[f"{prefix}_final"], what=f"{prefix} final")
  # Each call's input is the fixed history with the current state in the last 3 channels.
  steps = io[f"{prefix}_call_t"].shape[0]
  x_in = np.stack([np.concatenate([np.asarray(traj["history"])[..., :-3],
                                   np.asarray(traj["xs"][k])], -1) for k in range(steps)])
  assert_close(x_in, io[f"{prefix}_call_x_in"], what=f"{prefix} call inputs")
  hyp = config.sampling.hypotheses
  feats, radar = (np.asarray(ddim.repeat_hypotheses(io[name], hyp))
                  for name in ("in_cemd", "in_radar"))
  expected_t = np.asarray(mmdiff.sampler_timesteps(config)[::-1], np.float32)
  np.testing.assert_array_equal(io[f"{prefix}_call_t"],
                                np.repeat(expected_t[:, None], x_in.shape[1], axis=1))
  for k in range(steps):
    eps, limb = apply_model(params["denoiser"], io[f"{prefix}_call_x_in"][k],
                            io[f"{prefix}_call_t"][k], feats, radar, None)
    assert_close(eps, io[f"{prefix}_call_eps"][k], what=f"{prefix} call {k} eps")
    assert_close(limb, io[f"{prefix}_call_limb"][k], what=f"{prefix} call {k} limb")


@pytest.mark.parametrize("prefix", _V1_RUNS)
def test_v1_sampler_runs(io, fixture_json, params, apply_model, prefix):
  config = _run_config(fixture_json, prefix, io)
  pred, traj = jax.jit(lambda p, b, z: mmdiff.predict(config, p, b, noise=z,
                                                      return_trajectory=True))(
      params, _batch(io), io[f"{prefix}_noise"])
  assert_close(traj["xs"], io[f"{prefix}_xs"], what=f"{prefix} xs")
  assert_close(traj["x0_preds"], io[f"{prefix}_x0_preds"], what=f"{prefix} x0 preds")
  assert_close(pred, io[f"{prefix}_final"], what=f"{prefix} final")
  t = mmdiff.sampler_timesteps(config)[::-1]
  for k, step in enumerate(t):
    eps, _ = apply_model(params["denoiser"], io[f"{prefix}_xs"][k],
                         np.full(io["in_x_history"].shape[0], step, np.float32), io["in_cemd"],
                         io["in_radar"], None)
    assert_close(eps, io[f"{prefix}_call_eps"][k], what=f"{prefix} call {k} eps")


def test_deterministic_sampler_needs_no_noise_and_ignores_the_key(io, fixture_json, params):
  config = _run_config(fixture_json, "head_eta0", io)
  pred = mmdiff.predict(config, params, _batch(io))
  assert_close(pred, io["head_eta0_final"], what="eta 0 without injected noise")


# --- checkpoints: layouts, key lists, wrong files -------------------------------------------------


def _key_list_sections() -> dict[str, dict[str, np.ndarray]]:
  """Zero state dicts from the spec's `keys_mmdiff.txt`, by section ('mmbody', 'mmfi' for GCNdiff,
  else the module name opening the `## ` title)."""
  sections = {}
  for title, state_dict in spec_key_sections("keys_mmdiff.txt"):
    name = title[3:].split(" ")[0].rstrip(":,")
    if name == "GCNdiff":
      name = "mmfi" if "mm-Fi" in title else "mmbody"
    sections.setdefault(name, {}).update(state_dict)
  return sections


@pytest.fixture(scope="module")
def key_lists():
  return _key_list_sections()


def test_full_size_checkpoints_from_the_spec_key_lists_convert(key_lists):
  mmbody, mmfi = key_lists["mmbody"], key_lists["mmfi"]
  params, report = convert.convert_denoiser(mmbody, mmdiff_mmbody.get_config().model)
  assert report.num_tensors + len(report.unused) == len(mmbody) == 189
  assert len(report.unused) == 4
  assert params["temperal_conv_0"]["kernel"].shape == (3, 1632, 1632)
  params, report = convert.convert_denoiser(mmfi, mmdiff_mmfi.get_config().model)
  # The LRC layers exist in the mm-Fi file but never run there: reported, not mapped.
  assert {k for k in report.unused if k.startswith(("local_emb.", "local_attention."))} == {
      k for k in mmfi if k.startswith(("local_emb.", "local_attention."))}
  assert params["limb_linear_0"]["scale"].shape == (17 * 27,)
  assert "local_emb" not in params


def test_both_upstream_file_layouts_give_the_same_params(root, config, params, tmp_path):
  state_dict = convert.load_state_dict(root / "model.pth")
  shifted = {k: v + np.float32(1) for k, v in state_dict.items()}
  v1_file = tmp_path / "ckpt_71.pth"
  # v1: [state_dict with DataParallel's prefix, optimizer, epoch, step, ema shadow (no prefix)].
  torch_format.save([{f"module.{k}": v for k, v in state_dict.items()}, {"state": {}}, 71, 1000,
                     shifted], v1_file)
  live, _ = mmdiff.convert(config, v1_file)
  jax.tree_util.tree_map(np.testing.assert_array_equal, live, params)
  ema, _ = mmdiff.convert(config, v1_file, ema=True)
  np.testing.assert_array_equal(ema["denoiser"]["temb"]["dense_0"]["bias"],
                                params["denoiser"]["temb"]["dense_0"]["bias"] + 1)
  with pytest.raises(common.ConversionError, match=r"HEAD \(pysensing\) checkpoint dict holds no "
                                                   r"EMA"):
    mmdiff.convert(config, root / "model.pth", ema=True)


@pytest.mark.parametrize("section, match", [
    ("P4Transformer_feat", r"phase-1 encoder checkpoint \(P4Transformer_feat"),
    ("PointTransformerReg_feat", r"phase-1 encoder checkpoint \(PointTransformerReg_feat"),
])
def test_phase1_checkpoints_are_named_as_such(key_lists, config, tmp_path, section, match):
  path = tmp_path / "phase1.pth"
  torch_format.save({"epoch": 0, "model_state_dict": key_lists[section]}, path)
  with pytest.raises(common.ConversionError, match=rf"phase1\.pth: this looks like .*{match}"):
    mmdiff.convert(config, path)


def test_other_families_and_phase1_argument_fail_clearly(root, config):
  diffpose = parity_dir("diffpose")
  with pytest.raises(common.ConversionError, match=r"DiffPose or ICASSP'24 checkpoint"):
    mmdiff.convert(config, diffpose / "denoiser.pth")
  with pytest.raises(common.ConversionError,
                     match=r"model\.pth: this looks like an mmDiff phase-2 denoiser \(GCNdiff\) "
                           r"checkpoint, expected an mmDiff phase-1 P4Transformer_feat"):
    mmdiff.convert(config, root / "model.pth", root / "model.pth")


def test_other_sizes_and_tampered_checkpoints_fail_strictly(root, config):
  state_dict = convert.load_state_dict(root / "model.pth")
  hid = config.model.hid_dim
  with pytest.raises(common.ConversionError,
                     match=rf"hid_dim={hid} .*--config\.model\.hid_dim={hid}"):
    convert.convert_denoiser(state_dict, dict(config.model, hid_dim=2 * hid))
  past = config.model.past_frames
  with pytest.raises(common.ConversionError, match=rf"--config\.model\.past_frames={past}"):
    convert.convert_denoiser(state_dict, dict(config.model, past_frames=past + 2))
  with pytest.raises(common.ConversionError, match=r"limb_flag=2"):
    convert.convert_denoiser(state_dict, dict(config.model, limb_flag=2))
  with pytest.raises(common.ConversionError, match=r"lacks the temporal layers|has the temporal"):
    convert.convert_denoiser(state_dict, dict(config.model, temp_flag=0))
  missing = {k: v for k, v in state_dict.items() if k != "limb_emb_layer.dense.1.bias"}
  with pytest.raises(common.ConversionError,
                     match=r"no checkpoint key: 'limb_emb_layer/dense_1/bias'"):
    convert.convert_denoiser(missing, config.model)
  extra = dict(state_dict, **{"local_attention.9.linears.0.bias": np.zeros(hid, np.float32)})
  with pytest.raises(common.ConversionError, match=r"local_attention_9/linears_0/bias"):
    convert.convert_denoiser(extra, config.model)


def test_bad_batches_fail_clearly(io, config, params):
  batch = _batch(io)
  with pytest.raises(ValueError, match=r"lacks 'radar'"):
    mmdiff.predict(config, params, {k: v for k, v in batch.items() if k != "radar"})
  with pytest.raises(ValueError, match=r"x_history'\] must be \[B, 17, 21\]"):
    mmdiff.predict(config, params, dict(batch, x_history=batch["x_history"][..., 3:]))
  radar = batch["radar"].copy()
  radar[1, 2, 7, 4] = np.nan
  with pytest.raises(ValueError, match=r"batch\['radar'\]: 1 non-finite .*\(1, 2, 7, 4\)"):
    mmdiff.predict(config, params, dict(batch, radar=radar))


def test_mmfi_setting_reads_no_radar_and_regresses_limbs_from_the_state():
  config = mmdiff_mmfi.get_config()
  config.model.update(hid_dim=8, num_layers=1, n_head=2, limb_hidden=16)
  model = mmdiff.denoiser_module(config)
  # Random parameters filled on the host: compiling `init` (an RNG graph per tensor) is slow on CPU.
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda leaf: (0.3 * rng.normal(size=leaf.shape)).astype(np.float32),
      convert.params_template(model))
  assert "local_emb" not in params and "local_attention_0" not in params
  x = (0.3 * rng.normal(size=(2, 17, model.state_channels))).astype(np.float32)
  feats = rng.normal(size=(2, 17, model.feature_size)).astype(np.float32)
  apply = jax.jit(lambda x: model.apply({"params": params}, x, np.zeros(2, np.float32), feats,
                                        None))
  out, limb = apply(x)
  assert out.shape == x.shape and limb.shape == (2, len(models.LIMBS))
  _, limb_moved = apply(np.concatenate([x[..., :1] + 0.1, x[..., 1:]], -1))
  assert not np.allclose(limb, limb_moved)  # limb_flag 2: the regressor reads the state
