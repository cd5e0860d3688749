"""Torch -> Flax conversion of mmDiff checkpoints: the phase-2 denoiser `GCNdiff` and the phase-1
encoders (`P4Transformer_feat`, `PointTransformerReg_feat`; `convert_phase1`).

Two upstream layouts hold the same state dict (spec §1.5):
* HEAD (pysensing, `{mmBody,MetaFi}_mmDiff_phase2.pth`): a dict `{'epoch', 'model_state_dict',
  'optimizer_state_dict'}`;
* v1 (Nov 2023, `ckpt_{epoch}.pth`): a list `[state_dict, optimizer, epoch, step, ema]` whose
  state dict keys carry DataParallel's `module.` prefix; element 4 is the EMA shadow.

The key families are DiffPose's (`gconv_layers`, `atten_layers`, `temb`, `gconv_output`) plus the
four conditions (`gconv_input1`, `local_emb`, `local_attention`, `gconv_input_t`, `temperal_conv`,
`limb_linear`, `limb_emb_layer`). Tensors upstream builds but its forward never runs are reported
as unused: `gconv_input`, `gconv_input3`, and the LRC layers when `local_flag` is not 1 (mm-Fi).
Before the strict key-by-key mapping the checkpoint is recognised, so a phase-1 encoder file or a
DiffPose / ICASSP denoiser gets a message saying what it is. Key lists: spec `keys_mmdiff.txt`.
"""

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import safe_load
from posediff_jax.convert import common
from posediff_jax.convert import diffpose as convert_diffpose
from posediff_jax.models import mmdiff as mmdiff_models
from posediff_jax.models import mmdiff_phase1

# torch Conv1d weight [out, in, k] -> [k, in, out].
CONV1D_WEIGHT = common.Transform("transpose (2, 1, 0)", lambda a: a.transpose(2, 1, 0),
                                 lambda s: (s[2], s[1], s[0]))

# DiffPose's per-layer rules minus its `gconv_(input|output)` rule: here `gconv_input` is dead.
_DIFFPOSE_LAYER_RULES = tuple(
    rule for rule in convert_diffpose._LAYER_RULES  # pylint: disable=protected-access
    if not rule.pattern.startswith("gconv_(input|output)"))
_DIFFPOSE_TEMB_RULES = convert_diffpose._TEMB_RULES  # pylint: disable=protected-access

_CONDITION_RULES = (
    common.Rule(r"gconv_(input1|input2|input_t|output)\.weight", "gconv_{0}/weight",
                common.CHEB_WEIGHT),
    common.Rule(r"gconv_(input1|input2|input_t|output)\.bias", "gconv_{0}/bias", common.CHEB_BIAS),
    common.Rule(r"limb_emb_layer\.dense\.([01])\.weight", "limb_emb_layer/dense_{0}/kernel",
                common.LINEAR_WEIGHT),
    common.Rule(r"limb_emb_layer\.dense\.([01])\.bias", "limb_emb_layer/dense_{0}/bias"),
    common.Rule(r"temperal_conv\.([02])\.weight", "temperal_conv_{0}/kernel", CONV1D_WEIGHT),
    common.Rule(r"temperal_conv\.([02])\.bias", "temperal_conv_{0}/bias"),
    common.Rule(r"limb_linear\.0\.weight", "limb_linear_0/scale"),
    common.Rule(r"limb_linear\.0\.bias", "limb_linear_0/bias"),
    common.Rule(r"limb_linear\.([13])\.weight", "limb_linear_{0}/kernel", common.LINEAR_WEIGHT),
    common.Rule(r"limb_linear\.([13])\.bias", "limb_linear_{0}/bias"),
)

# The local radar context (LRC); mapped only when the model runs it (local_flag = 1).
_LOCAL_RULES = (
    common.Rule(r"local_emb\.dense\.([01])\.weight", "local_emb/dense_{0}/kernel",
                common.LINEAR_WEIGHT),
    common.Rule(r"local_emb\.dense\.([01])\.bias", "local_emb/dense_{0}/bias"),
    common.Rule(r"local_attention\.(\d+)\.linears\.(\d+)\.weight",
                "local_attention_{0}/linears_{1}/kernel", common.LINEAR_WEIGHT),
    common.Rule(r"local_attention\.(\d+)\.linears\.(\d+)\.bias",
                "local_attention_{0}/linears_{1}/bias"),
)

_RULES = _DIFFPOSE_LAYER_RULES + _DIFFPOSE_TEMB_RULES + _CONDITION_RULES

# Built by upstream's constructor, never run by its forward (spec §1.3).
_ALWAYS_UNUSED = (r"gconv_input\.(weight|bias)", r"gconv_input3\.(weight|bias)")
_LOCAL_KEYS = (r"local_emb\.dense\.[01]\.(weight|bias)",
               r"local_attention\.\d+\.linears\.\d+\.(weight|bias)")


def checkpoint_kind(state_dict: Mapping[str, np.ndarray]) -> str:
  """Recognises a state dict (with or without `module.`) by its key families.

  Returns:
    One of 'mmdiff_phase2' (GCNdiff), 'mmdiff_wrapper' (the whole `mmDiff` module:
    `model_feat.*` + `model_diff.*`), 'p4transformer' and 'point_transformer' (phase-1 encoders),
    'diffpose_like' (a DiffPose / ICASSP'24 denoiser or lifter), or 'unknown'.
  """
  keys = set(common.strip_module_prefix(state_dict))
  if any(k.startswith("model_diff.") for k in keys) and any(k.startswith("model_feat.")
                                                               for k in keys):
    return "mmdiff_wrapper"
  if {"gconv_input1.weight", "limb_linear.1.weight"} & keys or any(
      k.startswith("temperal_conv.") for k in keys):
    return "mmdiff_phase2"
  if any(k.startswith("tube_embedding.") for k in keys):
    return "p4transformer"
  if "joint_posembeds_vector" in keys and any(k.startswith(("backbone.", "fc2.")) for k in keys):
    return "point_transformer"
  if "gconv_input.weight" in keys:
    return "diffpose_like"
  return "unknown"


_KIND_DESCRIPTIONS = {
    "mmdiff_wrapper": ("the whole upstream mmDiff module (model_feat.* and model_diff.* keys); "
                       "save or pass model_diff.state_dict() instead"),
    "p4transformer": ("an mmDiff phase-1 encoder checkpoint (P4Transformer_feat, mmBody: "
                      "tube_embedding.*, transformer.*), not the phase-2 denoiser; phase-2 files "
                      "are {mmBody,MetaFi}_mmDiff_phase2.pth or v1 ckpt_*.pth"),
    "point_transformer": ("an mmDiff phase-1 encoder checkpoint (PointTransformerReg_feat, mm-Fi: "
                          "backbone.*, fc2.*, fc3.*), not the phase-2 denoiser; phase-2 files are "
                          "{mmBody,MetaFi}_mmDiff_phase2.pth or v1 ckpt_*.pth"),
    "diffpose_like": ("a DiffPose or ICASSP'24 checkpoint (gconv_input.* without mmDiff's "
                      "condition layers), not an mmDiff phase-2 denoiser"),
    "unknown": ("not an mmDiff phase-2 denoiser (no gconv_input1 / temperal_conv / limb_linear "
                "keys)"),
}


def infer_mmdiff_dims(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Reads the architecture off a phase-2 state dict (with or without `module.`).

  Returns:
    dict(hid_dim, num_layers, feature_size, past_frames, radar_channels or None (no LRC layers),
    has_local, has_temporal, limb_inputs (the width the limb LayerNorm normalises)).

  Raises:
    common.ConversionError: not a phase-2 checkpoint (the message says what it looks like).
  """
  sd = common.strip_module_prefix(state_dict)
  kind = checkpoint_kind(sd)
  if kind != "mmdiff_phase2":
    raise common.ConversionError(f"this looks like {_KIND_DESCRIPTIONS[kind]}")

  def shape(key, ndim):
    value = sd.get(key)
    if value is None or np.ndim(value) != ndim:
      raise common.ConversionError(f"mmDiff phase-2 checkpoint lacks {key!r} with {ndim} axes")
    return tuple(np.shape(value))

  global_w = shape("gconv_input1.weight", 4)  # [3, 1, F, h]
  output_w = shape("gconv_output.weight", 4)  # [3, 1, h, 3(P+1)]
  local = sd.get("local_emb.dense.0.weight")
  limb_norm = sd.get("limb_linear.0.weight")
  return dict(
      hid_dim=int(global_w[3]), feature_size=int(global_w[2]),
      num_layers=len({int(k.split(".")[1]) for k in sd if k.startswith("atten_layers.")}),
      past_frames=int(output_w[3]) // 3 - 1,
      radar_channels=None if local is None else int(np.shape(local)[1]),
      has_local=local is not None,
      has_temporal=any(k.startswith("temperal_conv.") for k in sd),
      limb_inputs=None if limb_norm is None else int(np.size(limb_norm)))


def denoiser_size_mismatches(sd, model: mmdiff_models.MultiConditionDenoiser,
                             config_name: str = "model") -> list[common.SizeMismatch]:
  """Every size and condition switch the phase-2 weights determine that differs from `model`'s.

  Raises:
    common.ConversionError: not a phase-2 checkpoint (the message says what it looks like).
  """
  dims = infer_mmdiff_dims(sd)
  evidence = {"hid_dim": "read from 'gconv_input1.weight' [3, 1, F, hid]",
              "feature_size": "read from 'gconv_input1.weight' [3, 1, F, hid]",
              "num_layers": "the number of atten_layers.*",
              "past_frames": "read from 'gconv_output.weight' [3, 1, hid, 3 (P + 1)]"}
  out = [common.SizeMismatch(f"{config_name}.{name}", dims[name], getattr(model, name),
                             evidence[name])
         for name in ("hid_dim", "num_layers", "feature_size", "past_frames")
         if dims[name] != getattr(model, name)]
  if model.uses_radar and dims["radar_channels"] is None:
    out.append(common.SizeMismatch(
        f"{config_name}.local_flag", 0, model.local_flag,
        "the checkpoint has no local radar context layers (local_emb.*)"))
  elif model.uses_radar and dims["radar_channels"] != model.radar_channels:
    out.append(common.SizeMismatch(f"{config_name}.radar_channels", dims["radar_channels"],
                                   model.radar_channels,
                                   "read from 'local_emb.dense.0.weight' [out, C]"))
  if dims["has_temporal"] != (model.temp_flag == 1):
    out.append(common.SizeMismatch(
        f"{config_name}.temp_flag", int(dims["has_temporal"]), model.temp_flag,
        f"the checkpoint {'has' if dims['has_temporal'] else 'lacks'} the temporal layers "
        "(temperal_conv.*)"))
  # The limb MLP reads the features (limb_flag 1) or the whole state (2), at the checkpoint's own
  # sizes, so a wrong feature_size or past_frames is not also reported as a wrong limb_flag.
  joints = model.num_joints
  by_flag = {1: joints * dims["feature_size"], 2: joints * 3 * (dims["past_frames"] + 1)}
  found = next((flag for flag, width in by_flag.items() if width == dims["limb_inputs"]), None)
  expected = by_flag[model.limb_flag] if model.limb_flag in by_flag else None
  if dims["limb_inputs"] != expected:
    out.append(common.SizeMismatch(
        f"{config_name}.limb_flag", found, model.limb_flag,
        f"key 'limb_linear.0.weight' normalises {dims['limb_inputs']} values, where limb_flag="
        f"{model.limb_flag} needs {expected}",
        "" if found else "neither limb_flag 1 nor 2 fits"))
  return out


def _check_dims(sd, model: mmdiff_models.MultiConditionDenoiser, config_name: str,
                source: str) -> None:
  """Fails early, naming every size that differs, before any key is mapped."""
  try:
    mismatches = denoiser_size_mismatches(sd, model, config_name)
  except common.ConversionError as e:
    raise common.ConversionError(f"{source}: {e}") from None
  common.check_sizes(mismatches, source)


def convert_denoiser(state_dict: Mapping[str, np.ndarray], model_cfg, *, config_name: str = "model",
                     source: str = "mmDiff phase-2 checkpoint"
                     ) -> tuple[dict[str, Any], common.ConversionReport]:
  """Maps an mmDiff `GCNdiff` state dict onto `MultiConditionDenoiser` params, strictly.

  Args:
    state_dict: flat `{torch_key: array}`; a `module.` prefix on every key is accepted.
    model_cfg: the model config (see `models.mmdiff.denoiser_from_config`).
    config_name: the config section named in "set --config.<name>.hid_dim=..." hints.
    source: names the checkpoint in error messages (e.g. the file path).

  Returns:
    `(params, report)`: the Flax `params` collection and a report listing the keys upstream's
    forward never reads.

  Raises:
    common.ConversionError: a phase-1 or non-mmDiff checkpoint, other sizes, unknown, missing or
      mis-shaped keys.
  """
  sd = common.strip_module_prefix(state_dict)
  model = mmdiff_models.denoiser_from_config(model_cfg)
  _check_dims(sd, model, config_name, source)
  rules = _RULES + (_LOCAL_RULES if model.uses_radar else ())
  unused = _ALWAYS_UNUSED + (() if model.uses_radar else _LOCAL_KEYS)
  template = params_template(model)
  return common.map_state_dict(sd, rules, template, unused=unused, source=source)


def denoiser_example_inputs(model: mmdiff_models.MultiConditionDenoiser) -> tuple:
  """Inputs `model.init` can build the parameters from: (state, t, features, radar or None) for a
  batch of one, the radar 2 frames of max(local_points, 64) points (no size of them is a
  parameter's)."""
  radar = (jnp.zeros((1, 2, max(model.local_points, 64), model.radar_channels), jnp.float32)
           if model.uses_radar else None)
  return (jnp.zeros((1, model.num_joints, model.state_channels), jnp.float32),
          jnp.zeros((1,), jnp.float32),
          jnp.zeros((1, model.num_joints, model.feature_size), jnp.float32), radar)


def params_template(model: mmdiff_models.MultiConditionDenoiser) -> dict[str, Any]:
  """The model's `params` shapes (no computation), for `denoiser_example_inputs`."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *denoiser_example_inputs(model))
  return shapes["params"]


def load_state_dict(path, *, ema: bool = False) -> dict[str, np.ndarray]:
  """The phase-2 state dict of an upstream checkpoint file, in either layout.

  Args:
    path: a HEAD dict file (`model_state_dict`) or a v1 list file.
    ema: take v1's EMA shadow (list element 4) instead of the live weights (element 0), which is
      what upstream evaluates. HEAD files carry no EMA.

  Returns:
    `{name: np.ndarray}` without the `module.` prefix.

  Raises:
    common.ConversionError: neither layout, or an EMA asked of a file that has none.
    FileNotFoundError: no such file.
  """
  obj = safe_load.load_torch_checkpoint(path)
  if isinstance(obj, (list, tuple)):
    if ema and len(obj) < 5:
      raise common.ConversionError(f"{path}: this v1 checkpoint list has {len(obj)} elements; the "
                                   "EMA shadow would be element 4 (saved only with model.ema)")
    return common.extract_state_dict(obj, path, list_index=4 if ema else 0)
  if ema:
    raise common.ConversionError(f"{path}: a HEAD (pysensing) checkpoint dict holds no EMA "
                                 "weights; only v1 list checkpoints do")
  return common.extract_state_dict(obj, path, dict_key="model_state_dict")


# --------------------------------------------------------------------------------------------------
# Phase 1: the point-cloud encoders.

# torch 1x1 Conv2d weight [out, in, 1, 1] / Conv1d weight [out, in, 1] -> dense kernel [in, out].
CONV2D_1X1_WEIGHT = common.Transform("squeeze 1x1 and transpose", lambda a: a[:, :, 0, 0].T,
                                     lambda s: (s[1], s[0], 1, 1))
CONV1D_1X1_WEIGHT = common.Transform("squeeze 1 and transpose", lambda a: a[:, :, 0].T,
                                     lambda s: (s[1], s[0], 1))


def _linear(pattern: str, target: str) -> tuple[common.Rule, ...]:
  """A torch Linear (weight, bias) -> a dense layer (kernel, bias); `pattern` may have groups."""
  return (common.Rule(pattern + r"\.weight", target + "/kernel", common.LINEAR_WEIGHT),
          common.Rule(pattern + r"\.bias", target + "/bias"))


def _layer_norm(pattern: str, target: str) -> tuple[common.Rule, ...]:
  return (common.Rule(pattern + r"\.weight", target + "/scale"),
          common.Rule(pattern + r"\.bias", target + "/bias"))


_TRANSFORMER_RULES = (
    *_layer_norm(r"transformer\.layers\.(\d+)\.([01])\.fn\.norm",
                 "params/transformer/layers_{0}_{1}_norm"),
    common.Rule(r"transformer\.layers\.(\d+)\.0\.fn\.fn\.to_([qkv])\.weight",
                "params/transformer/layers_{0}_0_to_{1}/kernel", common.LINEAR_WEIGHT),
    *_linear(r"transformer\.layers\.(\d+)\.0\.fn\.fn\.to_out\.0",
             "params/transformer/layers_{0}_0_to_out_0"),
    *_linear(r"transformer\.layers\.(\d+)\.1\.fn\.fn\.net\.([03])",
             "params/transformer/layers_{0}_1_net_{1}"),
    common.Rule(r"joint_posembeds_vector", "params/joint_posembeds_vector"),
)

_P4TRANSFORMER_RULES = _TRANSFORMER_RULES + (
    common.Rule(r"tube_embedding\.conv_([df])\.0\.weight",
                "params/tube_embedding/conv_{0}_0/kernel", CONV2D_1X1_WEIGHT),
    common.Rule(r"pos_embedding\.weight", "params/pos_embedding/kernel", CONV1D_1X1_WEIGHT),
    common.Rule(r"pos_embedding\.bias", "params/pos_embedding/bias"),
    *_layer_norm(r"(dim_reduce_head|point_prediction_heads)\.0", "params/{0}_0"),
    *_linear(r"(dim_reduce_head|point_prediction_heads)\.([13])", "params/{0}_{1}"),
)
# Built upstream, never run by P4Transformer_feat's forward.
_P4TRANSFORMER_UNUSED = (r"mlp_head\.\d+\.(weight|bias)",
                         r"var_prediction_heads\.\d+\.(weight|bias)")


def _point_block_rules(torch_prefix: str, flax_prefix: str) -> tuple[common.Rule, ...]:
  """A Point-Transformer block; `torch_prefix` has one group (the block), filling `{0}`."""
  return (
      *_linear(torch_prefix + r"\.(fc1|fc2)", flax_prefix + "/{1}"),
      *_linear(torch_prefix + r"\.(fc_delta|fc_gamma)\.([02])", flax_prefix + "/{1}_{2}"),
      common.Rule(torch_prefix + r"\.(w_qs|w_ks|w_vs)\.weight", flax_prefix + "/{1}/kernel",
                  common.LINEAR_WEIGHT),
  )


_POINT_TRANSFORMER_RULES = _TRANSFORMER_RULES + (
    *_linear(r"backbone\.fc1\.([02])", "params/backbone_fc1_{0}"),
    *_point_block_rules(r"backbone\.(transformer1)", "params/backbone_{0}"),
    *_point_block_rules(r"backbone\.transformers\.(\d+)", "params/backbone_transformers_{0}"),
    common.Rule(r"backbone\.transition_downs\.(\d+)\.(conv[12])\.0\.weight",
                "params/backbone_transition_downs_{0}/{1}_0/kernel", CONV1D_1X1_WEIGHT),
    common.Rule(r"backbone\.transition_downs\.(\d+)\.(conv[12])\.0\.bias",
                "params/backbone_transition_downs_{0}/{1}_0/bias"),
    *_layer_norm(r"backbone\.transition_downs\.(\d+)\.(conv[12])\.1",
                 "params/backbone_transition_downs_{0}/{1}_1"),
    common.Rule(r"backbone\.transition_downs\.(\d+)\.(conv[12])\.1\.running_mean",
                "batch_stats/backbone_transition_downs_{0}/{1}_1/mean"),
    common.Rule(r"backbone\.transition_downs\.(\d+)\.(conv[12])\.1\.running_var",
                "batch_stats/backbone_transition_downs_{0}/{1}_1/var"),
    *_linear(r"fc2\.([03])", "params/fc2_{0}"),
    *_linear(r"fc3\.([14])", "params/fc3_{0}"),
)
_POINT_TRANSFORMER_UNUSED = (r"backbone\.transition_downs\.\d+\.conv[12]\.1\.num_batches_tracked",)

_KIND_NAMES = {
    "mmdiff_phase2": "an mmDiff phase-2 denoiser (GCNdiff) checkpoint",
    "mmdiff_wrapper": "the whole mmDiff module (model_feat.*, model_diff.*)",
    "p4transformer": "an mmDiff phase-1 P4Transformer_feat (mmBody) checkpoint",
    "point_transformer": "an mmDiff phase-1 PointTransformerReg_feat (mm-Fi) checkpoint",
    "diffpose_like": "a DiffPose or ICASSP'24 checkpoint",
    "unknown": "no mmDiff checkpoint",
}


def phase1_size_mismatches(state_dict: Mapping[str, np.ndarray], model,
                           config_name: str = "phase1") -> list[common.SizeMismatch]:
  """Every size a phase-1 encoder's weights determine that differs from `model`'s.

  The joint-token transformer's width, depth and MLP width and the feature width (both encoders);
  the point-feature channels (P4Transformer); the input channels, block width and number of
  blocks (Point Transformer). Heads and head width are only known as their product.
  """
  sd = common.strip_module_prefix(state_dict)

  def shape(key):
    value = sd.get(key)
    return None if value is None else tuple(np.shape(value))

  found = {}  # field -> (value, evidence)
  norm = shape("transformer.layers.0.0.fn.norm.weight")
  if norm and len(norm) == 1:
    found["dim"] = (norm[0], "read from 'transformer.layers.0.0.fn.norm.weight' [dim]")
  layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
  if layers:
    found["depth"] = (len(layers), "the number of transformer.layers.*")
  mlp = shape("transformer.layers.0.1.fn.fn.net.0.weight")
  if mlp and len(mlp) == 2:
    found["mlp_dim"] = (mlp[0],
                        "read from 'transformer.layers.0.1.fn.fn.net.0.weight' [mlp_dim, dim]")
  features = "dim_reduce_head.3.weight" if isinstance(
      model, mmdiff_phase1.P4TransformerEncoder) else "fc2.3.weight"
  if shape(features) and len(shape(features)) == 2:
    found["feature_size"] = (shape(features)[0], f"read from {features!r} [feature_size, in]")
  if isinstance(model, mmdiff_phase1.P4TransformerEncoder):
    conv = shape("tube_embedding.conv_f.0.weight")
    if conv and len(conv) == 4:
      found["point_feature_channels"] = (conv[1], "'tube_embedding.conv_f.0.weight' is "
                                                  "[dim, channels, 1, 1]")
  else:
    fc1, block = shape("backbone.fc1.0.weight"), shape("backbone.transformer1.fc1.weight")
    if fc1 and len(fc1) == 2:
      found["input_dim"] = (fc1[1], "read from 'backbone.fc1.0.weight' [32, input_dim]")
    if block and len(block) == 2:
      found["model_dim"] = (block[0],
                            "read from 'backbone.transformer1.fc1.weight' [model_dim, 32]")
    downs = {int(m.group(1)) for k in sd
             if (m := re.match(r"backbone\.transition_downs\.(\d+)\.", k))}
    if downs or block:
      found["num_blocks"] = (len(downs) + 1, "1 + number of backbone.transition_downs.*")
  out = [common.SizeMismatch(f"{config_name}.{field}", int(value), getattr(model, field), why)
         for field, (value, why) in found.items() if value != getattr(model, field)]
  inner = shape("transformer.layers.0.0.fn.fn.to_q.weight")
  if inner and len(inner) == 2 and inner[0] != model.heads * model.dim_head:
    out.append(common.SizeMismatch(
        f"{config_name}.heads x {config_name}.dim_head", None,
        f"{model.heads} x {model.dim_head}",
        f"'transformer.layers.0.0.fn.fn.to_q.weight' is [{inner[0]}, dim]",
        f"set {config_name}.heads and {config_name}.dim_head so that their product is {inner[0]}"))
  return out


def _phase1_template(model, radar_shape) -> dict[str, Any]:
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             jnp.zeros(radar_shape, jnp.float32))
  return dict(variables)


def convert_phase1(state_dict: Mapping[str, np.ndarray], model, *,
                   source: str = "mmDiff phase-1 checkpoint"
                   ) -> tuple[dict[str, Any], common.ConversionReport]:
  """Maps a phase-1 encoder state dict onto a `models.mmdiff_phase1` encoder's variables.

  Args:
    state_dict: flat `{torch_key: array}` of `P4Transformer_feat` or `PointTransformerReg_feat`
      (`load_state_dict` reads the HEAD `{mmBody,MetaFi}_mmDiff_phase1.pth` files); a `module.`
      prefix on every key is accepted.
    model: the encoder to fill, a `P4TransformerEncoder` or a `PointTransformerEncoder`.
    source: names the checkpoint in error messages.

  Returns:
    `(variables, report)`: {'params': ...} (and 'batch_stats' for the Point Transformer) and a
    report listing the keys the forward never reads (unused heads, BatchNorm step counters).

  Raises:
    common.ConversionError: a checkpoint of the other encoder, of phase 2 or of another family;
      other sizes; unknown, missing or mis-shaped keys.
  """
  sd = common.strip_module_prefix(state_dict)
  kind = checkpoint_kind(sd)
  if isinstance(model, mmdiff_phase1.P4TransformerEncoder):
    expected, rules, unused = "p4transformer", _P4TRANSFORMER_RULES, _P4TRANSFORMER_UNUSED
    channels = 3 + model.point_feature_channels
    padding, kernel = sum(model.temporal_padding), model.temporal_kernel_size
    frames = next(t for t in range(1, kernel + model.temporal_stride + 1)
                  if t + padding >= kernel and (t + padding - kernel) % model.temporal_stride == 0)
    radar_shape = (1, frames, max(model.spatial_stride, 1) * 2, channels)
  elif isinstance(model, mmdiff_phase1.PointTransformerEncoder):
    expected = "point_transformer"
    rules, unused = _POINT_TRANSFORMER_RULES, _POINT_TRANSFORMER_UNUSED
    radar_shape = (1, 1, max(model.num_neighbours, 2), model.input_dim)
  else:
    raise TypeError(f"convert_phase1: expected a P4TransformerEncoder or PointTransformerEncoder, "
                    f"got {type(model).__name__}")
  if kind != expected:
    raise common.ConversionError(f"{source}: this looks like {_KIND_NAMES[kind]}, expected "
                                 f"{_KIND_NAMES[expected]} ({{mmBody,MetaFi}}_mmDiff_phase1.pth)")
  common.check_sizes(phase1_size_mismatches(sd, model), source)
  return common.map_state_dict(sd, rules, _phase1_template(model, radar_shape), unused=unused,
                               source=source)
