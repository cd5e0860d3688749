"""DiffPose networks and checkpoint conversion against the upstream PyTorch fixtures.

The fixture (`parity/diffpose/`) holds upstream checkpoints of a reduced model and forward passes
computed by the authors' code; every size is read from its `config.json`.
"""

import functools
import json

import jax
import numpy as np
import pytest

from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.convert import common
from posediff_jax.convert import diffpose as convert
from posediff_jax.models import diffpose
from posediff_jax.models import layers
from tests.conftest import parity_dir

RTOL = 1e-5


def _rel_err(got, ref) -> float:
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  return float(np.abs(got - ref).max() / np.abs(ref).max())


@functools.cache
def _fixture():
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
  path = _fixture()[0] / name
  return common.extract_state_dict(safe_load.load_torch_checkpoint(path), path, **kwargs)


def test_graph_constants():
  _, _, io = _fixture()
  adj = layers.normalized_adjacency(17, skeleton.H36M_EDGES)
  np.testing.assert_array_equal(adj, io["adj17"])
  basis = layers.chebyshev_basis(adj)
  np.testing.assert_array_equal(basis[1], io["laplacian17"])
  np.testing.assert_allclose(basis, io["cheb17"], rtol=0, atol=1e-7)


def test_lifter_forward_matches_upstream():
  _, cfg, io = _fixture()
  params, report = convert.convert_lifter(_state_dict("lifter.pth"), cfg)
  assert report.unused == ("temb.dense.0.weight", "temb.dense.0.bias", "temb.dense.1.weight",
                           "temb.dense.1.bias")
  model = diffpose.lifter_from_config(cfg)
  out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, io["lifter_in_2d"])
  assert _rel_err(out, io["lifter_out_xyz"]) <= RTOL


def test_denoiser_forward_and_activations_match_upstream():
  _, cfg, io = _fixture()
  params, report = convert.convert_denoiser(_state_dict("denoiser.pth"), cfg)
  assert report.unused == ()
  model = diffpose.denoiser_from_config(cfg)
  apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, mutable=["intermediates"]))
  eps, state = apply(params, io["denoiser_in_x"], io["denoiser_in_t"])
  assert _rel_err(eps, io["denoiser_out_eps"]) <= RTOL
  debug = {k[len("dbg_"):] for k in io if k.startswith("dbg_")}
  assert debug == set(state["intermediates"])
  for name in debug:
    (value,) = state["intermediates"][name]
    assert _rel_err(value, io[f"dbg_{name}"]) <= RTOL, name


def test_denoiser_ema_weights_convert_too():
  _, cfg, _ = _fixture()
  live, _ = convert.convert_denoiser(_state_dict("denoiser.pth"), cfg)
  ema, report = convert.convert_denoiser(_state_dict("denoiser.pth", list_index=4), cfg)
  # Per layer 17 attention + 6 residual-block tensors; 2 + 2 ChebConv in/out and 4 time-MLP tensors.
  assert report.num_tensors == 23 * cfg["num_layers"] + 8
  # The fixture built the EMA from other weights; upstream evaluates element 0.
  assert not np.allclose(live["gconv_input"]["weight"], ema["gconv_input"]["weight"])


def test_infer_dims():
  _, cfg, _ = _fixture()
  dims = convert.infer_diffpose_dims(_state_dict("denoiser.pth"))
  assert dims == dict(kind="denoiser", hid_dim=cfg["hid_dim"], num_layers=cfg["num_layers"],
                      in_dim=5, out_dim=5)
  assert convert.infer_diffpose_dims(_state_dict("lifter.pth"))["kind"] == "lifter"


def test_wrong_kind_fails_clearly():
  _, cfg, _ = _fixture()
  with pytest.raises(common.ConversionError,
                     match=r"looks like a DiffPose lifter \(GCNpose\) checkpoint .*expected a "
                           r"DiffPose denoiser \(GCNdiff\)"):
    convert.convert_denoiser(_state_dict("lifter.pth"), cfg)
  with pytest.raises(common.ConversionError,
                     match=r"looks like a DiffPose denoiser \(GCNdiff\) checkpoint .*expected a "
                           r"DiffPose lifter"):
    convert.convert_lifter(_state_dict("denoiser.pth"), cfg)


def test_other_sizes_fail_with_key_shapes_and_hint():
  _, cfg, _ = _fixture()
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
  _, cfg, _ = _fixture()
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
