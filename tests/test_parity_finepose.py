"""FinePOSE against the authors' own PyTorch code: `../shared/parity/finepose` (see its README).

Every size and setting comes from the fixture's `config.json` and array shapes. The fixture
replaces CLIP's text-transformer output by the saved `clip_text_features` (77, B, W), so the
denoiser is fed that tensor (batch-first) directly; the prompt assembly itself is tested with
the CLIP tower in test_clip_text.py. tests/test_parity_dsgdiffu.py runs the same tests on the
DSGDiffu fixture (this module's tests read `PARITY_FAMILY` of the module that runs them).
"""

import jax
import numpy as np
import pytest

from configs import dsgdiffu_h36m
from configs import finepose_h36m
from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.convert import common
from posediff_jax.convert import finepose as convert
from posediff_jax.diffusion import aggregation
from posediff_jax.diffusion import schedules
from posediff_jax.families import d3dp
from posediff_jax.families import finepose
from posediff_jax.models import d3dp as d3dp_models
from posediff_jax.models import finepose as finepose_models
from posediff_jax.models import transformer
from tests.conftest import (assert_close, assert_wrong_sizes_are_named, load_state_dict, parity_dir,
                            set_d3dp_fixture_settings, spec_key_list, spec_key_path)

PARITY_FAMILY = "finepose"  # the conftest fixtures root, io and fixture_json read it
_CONFIGS = {"finepose": finepose_h36m, "dsgdiffu": dsgdiffu_h36m}


def _rewrite(fixture_json, literal: str) -> int:
  """The value the fixture generator gave an upstream literal (e.g. "num_layers=4")."""
  matches = [v for k, v in fixture_json["literal_rewrites_vs_upstream"].items() if literal in k]
  assert len(matches) == 1, f"{literal!r} in {fixture_json['literal_rewrites_vs_upstream']}"
  return int(matches[0])


@pytest.fixture(scope="module")
def family(request):
  return request.module.PARITY_FAMILY


@pytest.fixture(scope="module")
def config(family, fixture_json, io):
  """configs/<family>_h36m.py turned into the fixture's setting."""
  up = fixture_json
  c = _CONFIGS[family].get_config("cpn")
  c.model.num_frames = up["number_of_frames"]
  c.model.num_joints = io["inputs_2d"].shape[2]
  set_d3dp_fixture_settings(c, up)
  c.model.text_width = _rewrite(up, "'512'")
  c.model.text_ff_dim = _rewrite(up, "dim_feedforward=2048")
  c.model.text_layers = _rewrite(up, "num_layers=4")
  c.text.actions = tuple(up["prompts"]["actions(per batch element)"])
  return c


def _state_dict(root) -> dict[str, np.ndarray]:
  return load_state_dict(root / "denoiser.pth", dict_key="model_pos")


@pytest.fixture(scope="module")
def converted(root, config, family):
  """(denoiser params, report, text state) of denoiser.pth, converted once."""
  return convert.convert_denoiser(_state_dict(root), config.model, config.diffusion,
                                  family=family)


@pytest.fixture(scope="module")
def text(io):
  """The fixture's prompts: (clip_features [B, 77, W] batch-first, eot_index [B])."""
  features = np.transpose(io["clip_text_features"], (1, 0, 2))
  return features, np.argmax(io["text_tokens"], axis=-1).astype(np.int32)


@pytest.fixture(scope="module")
def params(converted, text):
  """{'denoiser', 'text_cache'} with one cache row per fixture clip (actions differ)."""
  features, eot = text
  return {"denoiser": converted[0], "text_cache": {"clip_features": features, "eot_index": eot}}


def _rows(a):
  """[B, H, ...] -> [B·H, ...], clip-major as the model wants its rows."""
  return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


# --- settings and converter ---------------------------------------------------------------------


def test_fixture_settings_are_the_ones_this_family_hard_codes(fixture_json, io, config):
  up = fixture_json
  assert (tuple(up["joints_left"]), tuple(up["joints_right"])) == (
      skeleton.H36M_LEFT, skeleton.H36M_RIGHT)
  assert up["qkv_bias"] and up["dropout"] == 0.0
  assert up["beta_schedule"].startswith("cosine") and config.diffusion.beta_schedule == "cosine"
  assert up["text_encoder"].startswith("nn.TransformerEncoder") and "post-norm" in up[
      "text_encoder"] and "activation=gelu" in up["text_encoder"]
  assert config.model.text_width == config.model.embed_dim == io["clip_text_features"].shape[2]
  # Upstream's EOT rule (argmax of the action's own tokens) and the tokens of its actions.
  assert list(finepose.action_indices(config, ["Walking 1", "SittingDown"])) == [0, 1]
  np.testing.assert_array_equal(np.argmax(io["text_tokens"], -1), [2, 4])
  assert not any(up["ctx_params_receive_gradient"].values())


def test_converter_report_and_text_state(converted, io, config, family):
  _, report, text_state = converted
  assert report.unused == convert.convert_d3dp.SCHEDULE_BUFFERS
  assert report.checked == ("betas", "alphas_cumprod")
  assert report.num_clip_tensors == 0 and text_state.clip_state_dict == {}
  assert set(text_state.ctx) == {"subject", "verb", "speed", "head", "body", "arm", "leg"}
  assert all(v.shape[1] == config.model.text_width for v in text_state.ctx.values())
  depth, layers = config.model.depth, config.model.text_layers
  # D3DP's backbone, the text encoder (12 per layer), text_ln + text_proj, the cross-attention.
  expected = 2 + 2 + 4 + 2 * 12 * depth + 4 + 4 + 12 * layers + 4 + 16
  if family == "dsgdiffu":
    expected += 2 * 4  # STEgat and temporal_cross_attn.gat
  assert report.num_tensors == expected
  rest, _ = convert.split_text_state(convert.convert_d3dp.normalize_keys(_state_dict(
      parity_dir(family))))
  assert convert.detect_family(rest) == family


def test_converter_accepts_every_key_prefix(root, config, family, converted):
  raw = safe_load.load_torch_checkpoint(root / "denoiser.pth")["model_pos"]
  bare = {k.replace("module.", "", 1).replace("pose_estimator.", "", 1): v
          for k, v in raw.items()}
  for sd in (raw, bare):
    params, _, _ = convert.convert_denoiser(sd, config.model, config.diffusion, family=family)
    jax.tree.map(np.testing.assert_array_equal, converted[0], params)


def test_converter_checks_sizes_and_family(root, config, family):
  sd = _state_dict(root)
  assert_wrong_sizes_are_named(
      lambda model_cfg: convert.convert_denoiser(sd, model_cfg, config.diffusion, family=family),
      config.model, (("text_layers", 1), ("text_ff_dim", 8), ("depth", 1), ("embed_dim", 8)))
  other = "dsgdiffu" if family == "finepose" else "finepose"
  with pytest.raises(common.ConversionError, match=rf"use --family {family}"):
    convert.convert_denoiser(sd, config.model, config.diffusion, family=other)
  d3dp_sd = _state_dict(parity_dir("d3dp"))
  with pytest.raises(common.ConversionError, match=r"looks like a D3DP checkpoint"):
    convert.convert_denoiser(d3dp_sd, config.model, config.diffusion, family=family)
  unknown = dict(sd, **{"pose_estimator.text_extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(common.ConversionError, match=r"do not belong to this model: 'text_extra"):
    convert.convert_denoiser(unknown, config.model, config.diffusion, family=family)


def test_checkpoint_without_clip_says_where_to_get_it(root, config, tmp_path):
  with pytest.raises(common.ConversionError,
                     match=r"no CLIP weights.*ViT-B-32\.pt.*openaipublic.*--clip ViT-B-32\.pt"):
    finepose.convert(config, root / "denoiser.pth")
  with pytest.raises(ValueError, match="single network"):
    finepose.convert(config, root / "denoiser.pth", lifter_path=tmp_path / "lifter.pth")


def test_full_size_key_list_converts_with_the_default_config(family):
  config = _CONFIGS[family].get_config("cpn")
  sd = spec_key_list(f"keys_{family}.txt", exclude=".clip_text.")
  betas = schedules.cosine_betas(config.diffusion.num_steps)
  sd["betas"], sd["alphas_cumprod"] = betas, schedules.alpha_bars(betas)
  params, report, text_state = convert.convert_denoiser(sd, config.model, config.diffusion,
                                                        family=family)
  ctx_values = sum(v.size for v in text_state.ctx.values())
  path = spec_key_path(f"keys_{family}.txt")
  non_clip = int(path.read_text().split(" non-CLIP")[0].rsplit(" ", 1)[1])
  assert report.num_elements + ctx_values == non_clip
  assert len(report.unused) == 12
  assert params["text_proj"]["kernel"].shape == (config.model.text_width,
                                                 config.model.embed_dim)


# --- text branch, network, flip step, training path, sampler ------------------------------------


def test_text_branch(config, params, io, text):
  model = finepose.denoiser_module(config)
  xf_out, xf_proj = jax.jit(lambda p, f, e: model.apply({"params": p}, f, e,
                                                        method=model.encode_text))(
                                                            params["denoiser"], *text)
  assert_close(xf_out, io["text_xf_out"], what="text_xf_out")
  assert_close(xf_proj, io["text_xf_proj"], what="text_xf_proj")


def _forward(config, params, io, text, tiling="upstream"):
  config = config.copy_and_resolve_references()
  config.model.text_tiling = tiling
  model = finepose.denoiser_module(config)
  hyp = io["fwd_x3d"].shape[1]
  return jax.jit(model.apply)({"params": params["denoiser"]},
                              np.repeat(io["inputs_2d"], hyp, axis=0), _rows(io["fwd_x3d"]),
                              np.repeat(io["fwd_t"], hyp), *text)


def test_denoiser_forward(config, params, io, text):
  assert_close(_forward(config, params, io, text), _rows(io["fwd_out"]), what="fwd_out")


def test_text_tiling_quirk_and_its_corrected_variant(config, params, io, text):
  # The fixture's clips have different prompts: reading each row's own prompt gives another
  # result than upstream's tiling (spec §11.1).
  corrected = _forward(config, params, io, text, tiling="per_clip")
  gap = float(np.max(np.abs(np.asarray(corrected) - _rows(io["fwd_out"]))))
  assert 1e-2 < gap < 1.0, gap
  with pytest.raises(ValueError, match="text_tiling"):
    _forward(config, params, io, text, tiling="mod_b")


def test_upstream_tiling_reads_the_prompt_of_row_mod_b():
  """Temporal row r = n·J + j of b clips attends to prompt r mod b; per_clip to its own."""
  clips, per_clip, joints, frames, width, length = 2, 3, 5, 4, 8, 6
  rows = clips * per_clip
  style_clip, upstream_clip = finepose_models.text_rows(rows, clips, joints, "upstream")
  n, j = np.meshgrid(np.arange(rows), np.arange(joints), indexing="ij")
  np.testing.assert_array_equal(upstream_clip, (n * joints + j) % clips)
  np.testing.assert_array_equal(style_clip, np.arange(rows) // per_clip)
  own_clip = finepose_models.text_rows(rows, clips, joints, "per_clip")[1]
  np.testing.assert_array_equal(own_clip, n // per_clip)
  with pytest.raises(ValueError, match="b x R rows"):
    finepose_models.text_rows(rows + 1, clips, joints, "upstream")

  rng = np.random.default_rng(0)
  x = rng.normal(size=(rows, joints, frames, width)).astype(np.float32)
  texts = rng.normal(size=(clips, length, width)).astype(np.float32)
  style = rng.normal(size=(rows, width)).astype(np.float32)
  first_row = np.arange(rows) == 0
  attention = finepose_models.TemporalCrossAttention(width, num_heads=2)
  variables = attention.init(jax.random.PRNGKey(0), x, texts, style, upstream_clip, first_row)
  variables = jax.tree.map(lambda v: v + 0.1 * rng.normal(size=v.shape).astype(v.dtype),
                           variables)  # out_layers_2 starts at zero
  for text_clip in (upstream_clip, own_clip):
    # Reference: every temporal row as a call of its own, given the prompt of its index.
    reference = attention.apply(
        variables, x.reshape(-1, 1, frames, width), texts[text_clip.reshape(-1)],
        np.repeat(style, joints, axis=0), np.arange(rows * joints)[:, None],
        np.ones(rows * joints, bool))
    np.testing.assert_allclose(
        attention.apply(variables, x, texts, style, text_clip, first_row),
        reference.reshape(x.shape), rtol=1e-5, atol=1e-6)
  # One prompt for every clip (every Human3.6M evaluation batch): both tilings agree.
  same = np.repeat(texts[:1], clips, axis=0)
  np.testing.assert_allclose(attention.apply(variables, x, same, style, upstream_clip, first_row),
                             attention.apply(variables, x, same, style, own_clip, first_row),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 0])
def test_flip_and_model_predictions_fliping(config, params, io, text, chunk):
  """Any number of rows per pass (eval.cpu_chunk_size) gives upstream's two calls (3 rows: a
  chunk also holds rows of the mirrored call, whose row 0 is in mid-chunk)."""
  config = config.copy_and_resolve_references()
  config.eval.cpu_chunk_size = chunk
  x_start, pred_noise = jax.jit(
      lambda p, x, x2, t, f, e: finepose.denoise_flip(config, p, x, x2, t, clip_features=f,
                                                      eot_index=e))(
                                                          params, io["mpf_x"], io["inputs_2d"],
                                                          io["mpf_t"], *text)
  assert_close(x_start, io["mpf_x_start"], what="mpf_x_start")
  assert_close(pred_noise, io["mpf_pred_noise"], what="mpf_pred_noise")


def test_training_path(config, params, io, text):
  run = jax.jit(lambda p, b, t, n, cache: finepose.denoiser_loss_with_noise(
      config, p, b, t, n, deterministic=True, text_cache=cache))
  batch = {"input_2d": io["inputs_2d"], "target_3d": io["gt_3d"],
           "action_index": np.arange(io["inputs_2d"].shape[0], dtype=np.int32)}
  loss, aux = run(params["denoiser"], batch, io["train_t"], io["train_noise"],
                  params["text_cache"])
  assert_close(aux["x_noisy"], io["train_x_noisy"], what="train_x_noisy")
  assert_close(aux["pred"], io["train_pred"], what="train_pred")
  assert_close(loss, io["train_loss_mpjpe"], what="train_loss_mpjpe")


def test_full_ddim_run_from_the_recorded_noise(config, params, io):
  action_index = np.arange(io["inputs_2d"].shape[0], dtype=np.int32)
  run = jax.jit(lambda p, x2, a, n0, ns: finepose.sample(
      config, p, x2, action_index=a, noise_init=n0, noise_steps=ns, return_details=True))
  preds, details = run(params, io["inputs_2d"], action_index, io["ddim_noise_init"],
                       io["ddim_noise_steps"])
  assert details["times"] == tuple(int(t) for t in io["ddim_times"][:-1])
  np.testing.assert_array_equal(io["ddim_step_t"][0], details["times"])
  assert_close(details["ddim_step_x"], io["ddim_step_x"], what="ddim_step_x")
  assert_close(details["ddim_step_pred_noise"], io["ddim_step_pred_noise"],
               what="ddim_step_pred_noise")
  assert_close(preds, io["ddim_preds"], what="ddim_preds")


def test_aggregation_of_the_sampled_poses(io):
  """agg_*: the same P-Best / P-Agg / J-Best / J-Agg as D3DP's, on this family's samples."""

  @jax.jit
  def run(preds, target, traj, intrinsic, inputs_2d):
    reproj = aggregation.reprojection_error(preds, traj, intrinsic, inputs_2d, "distorted")
    out = {}
    for mode in aggregation.MODES:
      kwargs = dict(reproj_error=reproj)
      out[mode] = (aggregation.aggregate_poses(preds, target, mode, **kwargs),
                   aggregation.mpjpe_per_step(preds, target, mode, **kwargs),
                   aggregation.p_mpjpe_per_step(preds, target, mode, **kwargs))
    return reproj, out

  reproj, out = run(io["ddim_preds"], io["gt_3d"], io["gt_traj"], io["camera_intrinsic"],
                    io["inputs_2d"])
  assert_close(reproj, io["agg_reproj_err_2d"], what="agg_reproj_err_2d")
  for mode, ((poses, indices), p1, p2) in out.items():
    assert_close(poses, io[f"agg_pose_{mode}"], what=f"agg_pose_{mode}")
    if mode != "P_Agg":
      np.testing.assert_array_equal(np.asarray(indices), io[f"agg_idx_{mode}"])
    np.testing.assert_allclose(p1, io[f"agg_err_p1_{mode}"], rtol=1e-5, err_msg=f"p1 {mode}")
    np.testing.assert_allclose(p2, io[f"agg_err_p2_{mode}"], rtol=1e-5, err_msg=f"p2 {mode}")


# --- our own pieces: prompt selection, fresh params, gradients ----------------------------------


def test_prompt_selection_and_its_errors(config, params, io, text):
  batch = io["inputs_2d"].shape[0]
  features, eot = finepose.select_text(params["text_cache"], batch,
                                       action_index=np.arange(batch)[::-1])
  np.testing.assert_array_equal(features, text[0][::-1])
  np.testing.assert_array_equal(eot, text[1][::-1])
  with pytest.raises(ValueError, match="pass action_index"):
    finepose.select_text(params["text_cache"], batch)
  with pytest.raises(ValueError, match=rf"action_index must be \[B={batch}\]"):
    finepose.select_text(params["text_cache"], batch, action_index=np.zeros(batch + 1, int))
  with pytest.raises(ValueError, match="not both"):
    finepose.select_text(params["text_cache"], batch, action_index=np.zeros(batch, int),
                         clip_features=text[0], eot_index=text[1])
  one_row = {k: v[:1] for k, v in params["text_cache"].items()}
  features, _ = finepose.select_text(one_row, batch)
  assert features.shape == (batch,) + text[0].shape[1:]
  with pytest.raises(ValueError, match="no text cache row"):
    finepose.action_indices(config, ["Eating 2"])
  model = finepose.denoiser_module(config)
  frames = config.model.num_frames
  with pytest.raises(ValueError, match=r"clip_features must be \[b, L, text_width="):
    model.apply({"params": params["denoiser"]}, io["inputs_2d"], io["gt_3d"],
                np.zeros(batch), text[0][..., :-1], text[1])
  with pytest.raises(ValueError, match=r"b x R rows"):
    model.apply({"params": params["denoiser"]}, io["inputs_2d"][:1], io["gt_3d"][:1],
                np.zeros(1), text[0], text[1])
  with pytest.raises(ValueError, match=rf"exactly model\.num_frames={frames} "):
    finepose.sample(config, params, io["inputs_2d"][:, :-1], jax.random.PRNGKey(0),
                    action_index=np.zeros(batch, np.int32))


def test_fresh_params_match_the_converted_tree(config, params, family):
  fresh = jax.eval_shape(lambda k: finepose.init_params(config, k), jax.random.PRNGKey(0))
  assert jax.tree.structure(fresh["denoiser"]) == jax.tree.structure(params["denoiser"])
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), fresh["denoiser"],
               params["denoiser"])
  assert fresh["text_cache"]["clip_features"].shape == (
      len(config.text.actions),) + params["text_cache"]["clip_features"].shape[1:]
  assert {a.dtype for a in jax.tree.leaves(fresh["denoiser"])} == {np.dtype(np.float32)}
  meta = finepose.checkpoint_meta(config)
  assert meta["family"] == family and meta["text_actions"] == list(config.text.actions)


def test_training_loss_has_gradients_where_upstream_has(config, family, fixture_json):
  """A small fresh model: finite gradients, zero exactly where upstream has none."""
  config = config.copy_and_resolve_references()
  config.model.update(num_frames=3, embed_dim=16, text_width=16, num_heads=2, depth=1,
                      text_layers=1, text_ff_dim=32, drop_path_rate=0.5)
  params = finepose.init_params(config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  # As the fixture did: parameters constant after init (the zero output layer of the
  # stylisation block, LN scales) get N(0, 0.02²) noise, or the whole text branch has no gradient.
  params["denoiser"] = jax.tree.map(
      lambda x: x + rng.normal(scale=0.02, size=x.shape).astype(x.dtype)
      if np.ptp(np.asarray(x)) == 0 else x, params["denoiser"])
  clips = len(config.text.actions)
  batch = {"input_2d": rng.normal(size=(clips, 3, 17, 2)).astype(np.float32),
           "target_3d": rng.normal(size=(clips, 3, 17, 3)).astype(np.float32),
           "action_index": np.arange(clips, dtype=np.int32)}
  loss_fn = finepose.losses(params["text_cache"])["denoiser"]
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: loss_fn(config, p, batch, jax.random.PRNGKey(1))))(params["denoiser"])
  assert np.isfinite(float(loss)) and float(loss) > 0
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(g)
          for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(np.all(np.isfinite(g)) for g in flat.values())
  # Upstream's list of parameters without gradient (DSGDiffu: the unused STEblocks.0).
  unused = fixture_json["params_without_gradient_in_train_forward(excluding ctx)"]
  zero = {path for path, g in flat.items() if not np.any(g)}
  assert len(zero) == len(unused), sorted(zero)
  assert all(p.startswith("spatial_blocks_0/") for p in zero)
  with pytest.raises(ValueError, match="pass action_index"):
    finepose.denoiser_loss(config, params["denoiser"], {
        k: v for k, v in batch.items() if k != "action_index"}, jax.random.PRNGKey(1),
                           text_cache=params["text_cache"])


def test_layer_norm_eps_follow_upstream():
  assert finepose_models.TEXT_LN_EPS == 1e-5 == d3dp_models.HEAD_LN_EPS
  assert transformer.BLOCK_LN_EPS == 1e-6
  assert finepose.STAGES == d3dp.STAGES and finepose.TEXT_CONDITIONED
