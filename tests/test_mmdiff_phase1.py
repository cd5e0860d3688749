"""mmDiff phase-1 encoders against numpy re-enactments of upstream's forward passes.

There is no upstream fixture for phase 1 (P4Transformer needs the pointnet2 CUDA ops; the Point
Transformer cannot be shrunk upstream), so the references below follow upstream's code line by line
on torch-layout weights (`P4Transformer_feat`, `P4DConv`, `PointTransformerReg_feat`,
`TransformerBlock`, `TransitionDown`, `Transformer`), with the CUDA kernels re-enacted by
`tests.test_points`. Small random models; the full-size key lists of the spec convert too.
"""

import json
import math

import jax
import numpy as np
import pytest

from configs import mmdiff_mmfi
from posediff_jax.convert import common
from posediff_jax.convert import mmdiff as convert
from posediff_jax.families import mmdiff
from posediff_jax.models import mmdiff_phase1 as phase1
from tests import torch_format
from tests.conftest import parity_dir, spec_key_sections
from tests.test_points import reference_ball_query, reference_fps

_erf = np.vectorize(math.erf)


def _gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _linear(sd, name, x):
  out = x @ sd[f"{name}.weight"].T
  return out + sd[f"{name}.bias"] if f"{name}.bias" in sd else out


def _layer_norm(sd, name, x):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def reference_transformer(sd, x, depth, heads):
  """Upstream `Transformer` (Residual(PreNorm(Attention)), Residual(PreNorm(FeedForward)))."""
  for i in range(depth):
    p = f"transformer.layers.{i}"
    h = _layer_norm(sd, f"{p}.0.fn.norm", x)
    q, k, v = (_linear(sd, f"{p}.0.fn.fn.to_{n}", h) for n in "qkv")
    b, n, inner = q.shape
    d = inner // heads
    split = lambda t: t.reshape(b, n, heads, d).transpose(0, 2, 1, 3)
    attn = _softmax(split(q) @ split(k).transpose(0, 1, 3, 2) * d ** -0.5, -1)
    out = (attn @ split(v)).transpose(0, 2, 1, 3).reshape(b, n, inner)
    x = _gelu(_linear(sd, f"{p}.0.fn.fn.to_out.0", out)) + x
    h = _layer_norm(sd, f"{p}.1.fn.norm", x)
    x = _linear(sd, f"{p}.1.fn.fn.net.3", _gelu(_linear(sd, f"{p}.1.fn.fn.net.0", h))) + x
  return x


def reference_p4transformer(sd, radar, cfg):
  """Upstream `P4Transformer_feat.forward` with `P4DConv` ('+', max, max, replicate padding)."""
  xyzs, feats = radar[..., :3], radar[..., 3:]
  frames = list(range(radar.shape[1]))
  frames = [0] * cfg["pad"][0] + frames + [frames[-1]] * cfg["pad"][1]
  half, m = cfg["kernel"] // 2, radar.shape[2] // cfg["stride"]
  w_d = sd["tube_embedding.conv_d.0.weight"][:, :, 0, 0]
  w_f = sd["tube_embedding.conv_f.0.weight"][:, :, 0, 0]
  new_xyz, new_feat = [], []
  for t in range(half, len(frames) - half, cfg["tstride"]):
    anchor_idx = np.stack([reference_fps(c, m) for c in xyzs[:, frames[t]]])
    anchors = np.stack([c[i] for c, i in zip(xyzs[:, frames[t]], anchor_idx)])  # [B, M, 3]
    per_frame = []
    for i in range(t - half, t + half + 1):
      nb_xyz, nb_feat = xyzs[:, frames[i]], feats[:, frames[i]]
      idx = np.stack([reference_ball_query(x, a, cfg["radius"], cfg["nsamples"])
                      for x, a in zip(nb_xyz, anchors)])  # [B, M, S]
      grouped = np.stack([x[j] for x, j in zip(nb_xyz, idx)]) - anchors[:, :, None]
      disp = np.concatenate([grouped, np.full(grouped.shape[:-1] + (1,), i - t)], -1)
      feature = disp @ w_d.T + np.stack([f[j] for f, j in zip(nb_feat, idx)]) @ w_f.T
      per_frame.append(feature.max(axis=2))
    new_xyz.append(anchors)
    new_feat.append(np.max(np.stack(per_frame, 1), axis=1))
  new_xyz, new_feat = np.stack(new_xyz, 1), np.stack(new_feat, 1)  # [B, L, M, 3 | D]
  b, length = new_xyz.shape[:2]
  t_index = np.broadcast_to(np.arange(1, length + 1)[None, :, None, None],
                            new_xyz.shape[:-1] + (1,))
  xyzt = np.concatenate([new_xyz, t_index], -1).reshape(b, -1, 4)
  pos = xyzt @ sd["pos_embedding.weight"][:, :, 0].T + sd["pos_embedding.bias"]
  embedding = pos + new_feat.reshape(b, -1, new_feat.shape[-1])
  tokens = sd["joint_posembeds_vector"]
  tokens = np.broadcast_to(tokens, (b,) + tokens.shape[1:])
  out = reference_transformer(sd, np.concatenate([tokens, embedding], 1), cfg["depth"],
                              cfg["heads"])[:, :17]
  h = np.maximum(_linear(sd, "dim_reduce_head.1", _layer_norm(sd, "dim_reduce_head.0", out)), 0)
  joint = _linear(sd, "dim_reduce_head.3", h)
  h = np.maximum(_linear(sd, "point_prediction_heads.1",
                         _layer_norm(sd, "point_prediction_heads.0", joint)), 0)
  return _linear(sd, "point_prediction_heads.3", h), joint


def reference_point_transformer(sd, radar, cfg):
  """Upstream `PointTransformerReg_feat.forward` in eval mode (BatchNorm running statistics)."""
  b = radar.shape[0]
  x = radar.reshape(b, -1, radar.shape[-1])
  xyz = x[..., :3]

  def block(prefix, features):
    dists = ((xyz[:, :, None] - xyz[:, None]) ** 2).sum(-1)
    knn = np.argsort(dists, axis=-1, kind="stable")[:, :, :cfg["k"]]
    gather = lambda a: np.stack([p[i] for p, i in zip(a, knn)])
    h = _linear(sd, f"{prefix}.fc1", features)
    q = _linear(sd, f"{prefix}.w_qs", h)
    k, v = gather(_linear(sd, f"{prefix}.w_ks", h)), gather(_linear(sd, f"{prefix}.w_vs", h))
    pos = _linear(sd, f"{prefix}.fc_delta.2",
                  np.maximum(_linear(sd, f"{prefix}.fc_delta.0", xyz[:, :, None] - gather(xyz)), 0))
    attn = _linear(sd, f"{prefix}.fc_gamma.2",
                   np.maximum(_linear(sd, f"{prefix}.fc_gamma.0", q[:, :, None] - k + pos), 0))
    attn = _softmax(attn / np.sqrt(k.shape[-1]), axis=-2)
    return _linear(sd, f"{prefix}.fc2", np.einsum("bmnf,bmnf->bmf", attn, v + pos)) + features

  def transition(prefix, features):
    h = np.concatenate([xyz, features], -1)
    for conv in ("conv1", "conv2"):
      h = h @ sd[f"{prefix}.{conv}.0.weight"][:, :, 0].T + sd[f"{prefix}.{conv}.0.bias"]
      bn = f"{prefix}.{conv}.1"
      h = ((h - sd[f"{bn}.running_mean"]) / np.sqrt(sd[f"{bn}.running_var"] + 1e-5)
           * sd[f"{bn}.weight"] + sd[f"{bn}.bias"])
      h = np.maximum(h, 0)
    return h

  points = _linear(sd, "backbone.fc1.2", np.maximum(_linear(sd, "backbone.fc1.0", x), 0))
  points = block("backbone.transformer1", points)
  for i in range(cfg["blocks"] - 1):
    points = block(f"backbone.transformers.{i}",
                   transition(f"backbone.transition_downs.{i}", points))
  tokens = sd["joint_posembeds_vector"]
  tokens = np.broadcast_to(tokens, (b,) + tokens.shape[1:])
  out = reference_transformer(sd, np.concatenate([tokens, points], 1), cfg["depth"],
                              cfg["heads"])[:, :17]
  feat = _linear(sd, "fc2.3", np.maximum(_linear(sd, "fc2.0", out), 0))
  pts = _linear(sd, "fc3.4", np.maximum(_linear(sd, "fc3.1", np.maximum(feat, 0)), 0))
  return pts, feat


def _random_state_dict(shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in shapes.items():
    if key.endswith("num_batches_tracked"):
      out[key] = np.array(7, np.int64)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      scale = 1.0 / math.sqrt(shape[-1]) if len(shape) >= 2 else 0.3
      out[key] = (scale * rng.normal(size=shape)).astype(np.float32)
  return out


def _transformer_shapes(dim, depth, heads, dim_head, mlp):
  shapes = {}
  for i in range(depth):
    p = f"transformer.layers.{i}"
    shapes.update({f"{p}.0.fn.norm.weight": (dim,), f"{p}.0.fn.norm.bias": (dim,),
                   **{f"{p}.0.fn.fn.to_{n}.weight": (heads * dim_head, dim) for n in "kvq"},
                   f"{p}.0.fn.fn.to_out.0.weight": (dim, heads * dim_head),
                   f"{p}.0.fn.fn.to_out.0.bias": (dim,),
                   f"{p}.1.fn.norm.weight": (dim,), f"{p}.1.fn.norm.bias": (dim,),
                   f"{p}.1.fn.fn.net.0.weight": (mlp, dim), f"{p}.1.fn.fn.net.0.bias": (mlp,),
                   f"{p}.1.fn.fn.net.3.weight": (dim, mlp), f"{p}.1.fn.fn.net.3.bias": (dim,)})
  return shapes


def _head_shapes(name, dim, hidden, out):
  return {f"{name}.0.weight": (dim,), f"{name}.0.bias": (dim,), f"{name}.1.weight": (hidden, dim),
          f"{name}.1.bias": (hidden,), f"{name}.3.weight": (out, hidden), f"{name}.3.bias": (out,)}


def test_p4transformer_matches_the_upstream_forward():
  cfg = dict(radius=0.7, nsamples=5, stride=6, kernel=3, tstride=2, pad=(1, 0), dim=16, depth=2,
             heads=2, dim_head=8, mlp=24, feat=8)
  dim = cfg["dim"]
  shapes = {"joint_posembeds_vector": (1, 17, dim),
            "tube_embedding.conv_d.0.weight": (dim, 4, 1, 1),
            "tube_embedding.conv_f.0.weight": (dim, 3, 1, 1), "pos_embedding.weight": (dim, 4, 1),
            "pos_embedding.bias": (dim,),
            **_transformer_shapes(dim, cfg["depth"], cfg["heads"], cfg["dim_head"], cfg["mlp"]),
            **_head_shapes("mlp_head", dim, cfg["mlp"], 51),
            **_head_shapes("dim_reduce_head", dim, dim // 2, cfg["feat"]),
            **_head_shapes("point_prediction_heads", cfg["feat"], cfg["feat"] // 2, 3),
            **_head_shapes("var_prediction_heads", cfg["feat"], cfg["feat"] // 2, 3)}
  sd = _random_state_dict(shapes, 0)
  model = phase1.P4TransformerEncoder(
      radius=cfg["radius"], num_samples=cfg["nsamples"], spatial_stride=cfg["stride"], dim=dim,
      depth=cfg["depth"], heads=cfg["heads"], dim_head=cfg["dim_head"], mlp_dim=cfg["mlp"],
      feature_size=cfg["feat"])
  variables, report = convert.convert_phase1(sd, model)
  assert set(report.unused) == {k for k in sd if k.startswith(("mlp_head", "var_prediction"))}
  rng = np.random.default_rng(1)
  radar = rng.normal(size=(2, 4, 36, 6)).astype(np.float32)
  radar[:, :, -8:] = 0.0  # zero padding, which FPS never picks
  radar[0, 1, 5] = radar[0, 1, 6]  # a duplicate point
  pose, feats = jax.jit(model.apply)(variables, radar)
  ref_pose, ref_feats = reference_p4transformer(sd, radar.astype(np.float64), cfg)
  np.testing.assert_allclose(feats, ref_feats, rtol=0, atol=2e-5 * np.abs(ref_feats).max())
  np.testing.assert_allclose(pose, ref_pose, rtol=0, atol=2e-5 * np.abs(ref_pose).max())


def test_point_transformer_matches_the_upstream_forward():
  cfg = dict(blocks=2, k=4, model_dim=16, dim=64, depth=1, heads=2, dim_head=8, mlp=24)
  md, dim = cfg["model_dim"], cfg["dim"]

  def block_shapes(prefix, d_points):
    return {f"{prefix}.fc1.weight": (md, d_points), f"{prefix}.fc1.bias": (md,),
            f"{prefix}.fc2.weight": (d_points, md), f"{prefix}.fc2.bias": (d_points,),
            f"{prefix}.fc_delta.0.weight": (md, 3), f"{prefix}.fc_delta.0.bias": (md,),
            f"{prefix}.fc_delta.2.weight": (md, md), f"{prefix}.fc_delta.2.bias": (md,),
            f"{prefix}.fc_gamma.0.weight": (md, md), f"{prefix}.fc_gamma.0.bias": (md,),
            f"{prefix}.fc_gamma.2.weight": (md, md), f"{prefix}.fc_gamma.2.bias": (md,),
            **{f"{prefix}.w_{n}s.weight": (md, md) for n in "qkv"}}

  td = "backbone.transition_downs.0"
  shapes = {"joint_posembeds_vector": (1, 17, dim), "backbone.fc1.0.weight": (32, 5),
            "backbone.fc1.0.bias": (32,), "backbone.fc1.2.weight": (32, 32),
            "backbone.fc1.2.bias": (32,), **block_shapes("backbone.transformer1", 32),
            **block_shapes("backbone.transformers.0", 64),
            **{f"{td}.{c}.0.weight": (64, cin, 1) for c, cin in (("conv1", 35), ("conv2", 64))},
            **{f"{td}.{c}.{p}": (64,) for c in ("conv1", "conv2")
               for p in ("0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                         "1.num_batches_tracked")},
            **_transformer_shapes(dim, cfg["depth"], cfg["heads"], cfg["dim_head"], cfg["mlp"]),
            "fc2.0.weight": (256, dim), "fc2.0.bias": (256,), "fc2.3.weight": (32, 256),
            "fc2.3.bias": (32,), "fc3.1.weight": (64, 32), "fc3.1.bias": (64,),
            "fc3.4.weight": (3, 64), "fc3.4.bias": (3,)}
  sd = _random_state_dict(shapes, 2)
  model = phase1.PointTransformerEncoder(num_blocks=cfg["blocks"], num_neighbours=cfg["k"],
                                         model_dim=md, dim=dim, depth=cfg["depth"],
                                         heads=cfg["heads"], dim_head=cfg["dim_head"],
                                         mlp_dim=cfg["mlp"])
  variables, report = convert.convert_phase1(sd, model)
  assert set(report.unused) == {k for k in sd if k.endswith("num_batches_tracked")}
  radar = np.random.default_rng(3).normal(size=(2, 2, 10, 5)).astype(np.float32)
  pose, feats = jax.jit(model.apply)(variables, radar)
  ref_pose, ref_feats = reference_point_transformer(sd, radar.astype(np.float64), cfg)
  np.testing.assert_allclose(feats, ref_feats, rtol=0, atol=2e-5 * np.abs(ref_feats).max())
  np.testing.assert_allclose(pose, ref_pose, rtol=0, atol=2e-5 * np.abs(ref_pose).max())
  # Training mode normalises with the batch statistics and updates the running ones.
  _, updates = jax.jit(lambda v, r: model.apply(v, r, train=True, mutable=["batch_stats"]))(
      variables, radar)
  assert not np.allclose(updates["batch_stats"]["backbone_transition_downs_0"]["conv1_1"]["mean"],
                         variables["batch_stats"]["backbone_transition_downs_0"]["conv1_1"]["mean"])


def _spec_sections() -> dict[str, dict[str, np.ndarray]]:
  """The phase-1 encoders' zero state dicts in `keys_mmdiff.txt`, by module name (`*_feat`)."""
  names = [(title[3:].split(" ")[0].rstrip(":,"), sd)
           for title, sd in spec_key_sections("keys_mmdiff.txt")]
  return {name.rstrip("0123456789"): sd for name, sd in names if "_feat" in name}


def test_full_size_phase1_key_lists_convert_and_wrong_files_are_named():
  sections = _spec_sections()
  p4, point = sections["P4Transformer_feat"], sections["PointTransformerReg_feat"]
  variables, report = convert.convert_phase1(p4, phase1.P4TransformerEncoder())
  assert report.num_tensors + len(report.unused) == len(p4) == 159
  assert variables["params"]["tube_embedding"]["conv_d_0"]["kernel"].shape == (4, 1024)
  variables, report = convert.convert_phase1(point, phase1.PointTransformerEncoder())
  assert report.num_tensors + len(report.unused) == len(point) == 209
  assert variables["batch_stats"]["backbone_transition_downs_3"]["conv2_1"]["var"].shape == (512,)
  with pytest.raises(common.ConversionError,
                     match=r"looks like an mmDiff phase-1 P4Transformer_feat \(mmBody\) "
                           r"checkpoint, expected an mmDiff phase-1 PointTransformerReg_feat"):
    convert.convert_phase1(p4, phase1.PointTransformerEncoder())
  with pytest.raises(common.ConversionError, match=r"phase-1 encoder checkpoint \(P4Transformer"):
    convert.convert_denoiser(p4, {"hid_dim": 96, "num_layers": 5, "n_head": 4, "dropout": 0.25,
                                  "feature_size": 64, "past_frames": 6, "radar_channels": 6})


def test_family_converts_a_phase1_file_and_encodes(tmp_path):
  denoiser = parity_dir("mmdiff") / "model.pth"
  fixture = json.loads((denoiser.parent / "config.json").read_text())
  config = mmdiff_mmfi.get_config()
  ctor, model_cfg = fixture["gcndiff_ctor"], fixture["config_model"]
  # The fixture's denoiser is an mmBody-style GCNdiff; the encoder file is a small random one.
  config.model.update(hid_dim=model_cfg["hid_dim"], num_layers=model_cfg["num_layer"],
                      feature_size=ctor["global_feat_size"], past_frames=ctor["past_frames"],
                      radar_channels=ctor["radar_input_c"], local_flag=1, limb_flag=1)
  config.phase1.update(num_blocks=1, dim=32, depth=1, heads=2, dim_head=8, mlp_dim=16,
                       model_dim=8, num_neighbours=3)
  # One block: no TransitionDown, hence no batch norm.
  sd = _random_state_dict({
      "joint_posembeds_vector": (1, 17, 32), "backbone.fc1.0.weight": (32, 5),
      "backbone.fc1.0.bias": (32,), "backbone.fc1.2.weight": (32, 32), "backbone.fc1.2.bias": (32,),
      **{f"backbone.transformer1.{n}.weight": s for n, s in (
          ("fc1", (8, 32)), ("fc2", (32, 8)), ("fc_delta.0", (8, 3)), ("fc_delta.2", (8, 8)),
          ("fc_gamma.0", (8, 8)), ("fc_gamma.2", (8, 8)), ("w_qs", (8, 8)), ("w_ks", (8, 8)),
          ("w_vs", (8, 8)))},
      **{f"backbone.transformer1.{n}.bias": (s,) for n, s in (
          ("fc1", 8), ("fc2", 32), ("fc_delta.0", 8), ("fc_delta.2", 8), ("fc_gamma.0", 8),
          ("fc_gamma.2", 8))},
      **_transformer_shapes(32, 1, 2, 8, 16),
      "fc2.0.weight": (256, 32), "fc2.0.bias": (256,), "fc2.3.weight": (32, 256),
      "fc2.3.bias": (32,), "fc3.1.weight": (64, 32), "fc3.1.bias": (64,),
      "fc3.4.weight": (3, 64), "fc3.4.bias": (3,)}, 4)
  path = tmp_path / "MetaFi_mmDiff_phase1.pth"
  torch_format.save({"epoch": 0, "model_state_dict": sd, "optimizer_state_dict": {}}, path)
  params, unused = mmdiff.convert(config, denoiser, path)
  assert set(params) == {"denoiser", "encoder"} and unused["encoder"] == []
  radar = np.random.default_rng(5).normal(size=(1, 2, 6, 5)).astype(np.float32)
  pose, feats = jax.jit(lambda v, r: mmdiff.encode(config, v, r))(params["encoder"], radar)
  ref_pose, ref_feats = reference_point_transformer(sd, radar.astype(np.float64),
                                                    dict(blocks=1, k=3, depth=1, heads=2))
  np.testing.assert_allclose(feats, ref_feats, rtol=0, atol=2e-5 * np.abs(ref_feats).max())
  np.testing.assert_allclose(pose, ref_pose, rtol=0, atol=2e-5 * np.abs(ref_pose).max())
