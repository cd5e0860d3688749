"""Torch -> Flax conversion of D3DP checkpoints (`D3DP` wrapper around `MixSTE2`).

Released checkpoints are `torch.save({'epoch', 'lr', 'random_state', 'optimizer', 'model_pos'})`
with `model_pos` taken from an nn.DataParallel wrapper: keys look like
`module.pose_estimator.STEblocks.0.attn.qkv.weight` and `module.betas`. Keys are accepted with or
without `module.` and `pose_estimator.`. The wrapper's 12 float64 diffusion buffers are not
parameters: `betas` and `alphas_cumprod` are checked against our cosine schedule and all 12 are
reported as unused; any other key the model does not have is an error. Key list:
spec `keys_d3dp.txt`.
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax.convert import common
from posediff_jax.diffusion import schedules
from posediff_jax.models import d3dp as d3dp_models

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
)
# Largest |difference| tolerated between a checkpoint's schedule buffer and ours (both float64).
SCHEDULE_ATOL = 1e-9

_BLOCK_PARTS = (
    (r"norm1\.weight", "norm1/scale", common.IDENTITY),
    (r"norm1\.bias", "norm1/bias", common.IDENTITY),
    (r"attn\.qkv\.weight", "attn/attn_qkv/kernel", common.LINEAR_WEIGHT),
    (r"attn\.qkv\.bias", "attn/attn_qkv/bias", common.IDENTITY),
    (r"attn\.proj\.weight", "attn/attn_proj/kernel", common.LINEAR_WEIGHT),
    (r"attn\.proj\.bias", "attn/attn_proj/bias", common.IDENTITY),
    (r"norm2\.weight", "norm2/scale", common.IDENTITY),
    (r"norm2\.bias", "norm2/bias", common.IDENTITY),
    (r"mlp\.fc1\.weight", "mlp_fc1/kernel", common.LINEAR_WEIGHT),
    (r"mlp\.fc1\.bias", "mlp_fc1/bias", common.IDENTITY),
    (r"mlp\.fc2\.weight", "mlp_fc2/kernel", common.LINEAR_WEIGHT),
    (r"mlp\.fc2\.bias", "mlp_fc2/bias", common.IDENTITY),
)


RULES = (
    *common.linear_rules("Spatial_patch_to_embedding", "joint_embed"),
    common.Rule(r"Spatial_pos_embed", "spatial_pos_embed"),
    common.Rule(r"Temporal_pos_embed", "temporal_pos_embed"),
    *common.linear_rules("time_mlp.1", "time_mlp/fc1"),
    *common.linear_rules("time_mlp.3", "time_mlp/fc2"),
    *(common.Rule(rf"STEblocks\.(\d+)\.{part}", "spatial_blocks_{0}/" + target, transform)
      for part, target, transform in _BLOCK_PARTS),
    *(common.Rule(rf"TTEblocks\.(\d+)\.{part}", "temporal_blocks_{0}/" + target, transform)
      for part, target, transform in _BLOCK_PARTS),
    *common.layer_norm_rules("Spatial_norm", "spatial_norm"),
    *common.layer_norm_rules("Temporal_norm", "temporal_norm"),
    *common.layer_norm_rules("head.0", "head_norm"),
    *common.linear_rules("head.1", "head_out"),
)


@dataclasses.dataclass(frozen=True)
class D3DPConversionReport(common.ConversionReport):
  """`common.ConversionReport` plus the schedule buffers that were checked against ours.

  Attributes:
    checked: buffer keys compared with the cosine schedule (a subset of `unused`).
  """

  checked: tuple[str, ...] = ()

  def __str__(self) -> str:
    text = super().__str__()
    if self.checked:
      text += "; checked against the cosine schedule: " + ", ".join(self.checked)
    return text


def normalize_keys(state_dict: Mapping[str, np.ndarray], source: str = "checkpoint"
                   ) -> dict[str, np.ndarray]:
  """Drops a leading `module.` and then `pose_estimator.` from every key.

  Raises:
    common.ConversionError: two keys become the same name.
  """
  out, origin = {}, {}
  for key, value in state_dict.items():
    name = key[len("module."):] if key.startswith("module.") else key
    name = name[len("pose_estimator."):] if name.startswith("pose_estimator.") else name
    if name in out:
      raise common.ConversionError(f"{source}: keys {origin[name]!r} and {key!r} both mean "
                                   f"{name!r}")
    out[name], origin[name] = value, key
  return out


def _foreign_family(sd: Mapping[str, np.ndarray]) -> str | None:
  """What a non-D3DP state dict looks like, or None if it could be D3DP."""
  if "gconv_input.weight" in sd:
    if "gconv_input_t.weight" in sd or "fc2.weight" in sd:
      return "an ICASSP'24 cross-channel denoiser checkpoint (gconv_input_t / fc1..fc3 keys)"
    return "a DiffPose/GraFormer checkpoint (gconv_input.weight, atten_layers.*)"
  if any(k.startswith(("clip_text.", "ctx_", "temporal_cross_attn.")) for k in sd):
    if any(k.startswith("STEgat.") for k in sd):
      return "a DSGDiffu/GraphDiffu checkpoint (STEgat.*, clip_text.* keys)"
    return "a FinePOSE checkpoint (clip_text.*, ctx_*, temporal_cross_attn.* keys)"
  return None


def infer_d3dp_dims(state_dict: Mapping[str, np.ndarray], source: str = "checkpoint"
                    ) -> dict[str, Any]:
  """Reads the architecture off a D3DP state dict (any of the accepted key prefixes).

  Returns:
    dict(num_frames, num_joints, embed_dim, depth, mlp_ratio).

  Raises:
    common.ConversionError: not a D3DP (MixSTE2) state dict; the message says what it looks like.
  """
  sd = normalize_keys(state_dict, source)
  foreign = _foreign_family(sd)
  if foreign:
    raise common.ConversionError(
        f"{source}: this is not a D3DP checkpoint; it looks like {foreign}")
  temporal, spatial = sd.get("Temporal_pos_embed"), sd.get("Spatial_pos_embed")
  if (temporal is None or spatial is None or np.ndim(temporal) != 3 or np.ndim(spatial) != 3):
    shown = ", ".join(list(sd)[:6])
    raise common.ConversionError(
        f"{source}: this does not look like a D3DP (MixSTE2) checkpoint: expected "
        "'pose_estimator.Temporal_pos_embed' [1, F, C] and 'pose_estimator.Spatial_pos_embed' "
        f"[1, J, C] (first keys: {shown})")
  depth = len({int(m.group(1)) for k in sd if (m := re.match(r"STEblocks\.(\d+)\.", k))})
  embed_dim = int(temporal.shape[2])
  fc1 = sd.get("STEblocks.0.mlp.fc1.weight")
  mlp_ratio = float(fc1.shape[0]) / embed_dim if fc1 is not None and fc1.ndim == 2 else None
  return dict(num_frames=int(temporal.shape[1]), num_joints=int(spatial.shape[1]),
              embed_dim=embed_dim, depth=depth, mlp_ratio=mlp_ratio)


_EVIDENCE = {
    "num_frames": "read from 'Temporal_pos_embed' [1, F, C]",
    "num_joints": "read from 'Spatial_pos_embed' [1, J, C]",
    "embed_dim": "read from 'Temporal_pos_embed' [1, F, C]",
    "depth": "the number of STEblocks.*",
}


def backbone_mismatches(dims: Mapping[str, Any], model, config_name: str
                        ) -> list[common.SizeMismatch]:
  """The MixSTE sizes in `dims` (`infer_d3dp_dims`) that differ from `model`'s.

  The MLP width is compared at the checkpoint's own width, so a wrong embed_dim is not also
  reported as a wrong mlp_ratio.
  """
  out = []
  for field in ("num_frames", "num_joints", "embed_dim", "depth"):
    if dims[field] != getattr(model, field):
      out.append(common.SizeMismatch(f"{config_name}.{field}", dims[field],
                                     getattr(model, field), _EVIDENCE[field]))
  ratio = dims["mlp_ratio"]
  if ratio is not None and int(dims["embed_dim"] * model.mlp_ratio) != round(
      ratio * dims["embed_dim"]):
    out.append(common.SizeMismatch(
        f"{config_name}.mlp_ratio", float(f"{ratio:g}"), model.mlp_ratio,
        f"the MLP of STEblocks.0 is {round(ratio * dims['embed_dim'])} wide"))
  return out


def schedule_mismatches(sd: Mapping[str, np.ndarray], num_steps: int
                        ) -> list[common.SizeMismatch]:
  """diffusion.num_steps, when the checkpoint's schedule buffers have another length."""
  for key in ("betas", "alphas_cumprod"):
    if key in sd and np.ndim(sd[key]) == 1 and np.shape(sd[key])[0] != num_steps:
      return [common.SizeMismatch("diffusion.num_steps", int(np.shape(sd[key])[0]), num_steps,
                                  f"schedule buffer {key!r} has {np.shape(sd[key])[0]} steps")]
  return []


def _check_dims(sd, model: d3dp_models.MixSTEDenoiser, config_name: str, source: str,
                num_steps: int) -> None:
  dims = infer_d3dp_dims(sd, source)
  common.check_sizes(backbone_mismatches(dims, model, config_name)
                     + schedule_mismatches(sd, num_steps), source)


def check_schedule(sd: Mapping[str, np.ndarray], num_steps: int, source: str
                   ) -> tuple[str, ...]:
  """Compares `betas` / `alphas_cumprod` (when present) with the cosine schedule of `num_steps`.

  Returns:
    The keys that were checked.

  Raises:
    common.ConversionError: a buffer has another length or differs by more than SCHEDULE_ATOL.
  """
  betas = schedules.cosine_betas(num_steps)
  ours = {"betas": betas, "alphas_cumprod": schedules.alpha_bars(betas)}
  checked = []
  for key, reference in ours.items():
    if key not in sd:
      continue
    theirs = np.asarray(sd[key], np.float64)
    if theirs.shape != reference.shape:
      raise common.ConversionError(
          f"{source}: schedule buffer {key!r} has shape {list(theirs.shape)}, but "
          f"diffusion.num_steps={num_steps} gives [{num_steps}]; set "
          f"--config.diffusion.num_steps={theirs.shape[0] if theirs.ndim == 1 else '?'}")
    diff = float(np.max(np.abs(theirs - reference)))
    if not diff <= SCHEDULE_ATOL:
      raise common.ConversionError(
          f"{source}: schedule buffer {key!r} differs from the cosine schedule (s=0.008, "
          f"T={num_steps}) by up to {diff:.3g} (> {SCHEDULE_ATOL:g}); the checkpoint was trained "
          "with another noise schedule")
    checked.append(key)
  return tuple(checked)


def convert_denoiser(state_dict: Mapping[str, np.ndarray], model_cfg, diffusion_cfg, *,
                     config_name: str = "model", source: str = "denoiser checkpoint"
                     ) -> tuple[dict[str, Any], D3DPConversionReport]:
  """Maps a D3DP `model_pos` state dict onto `MixSTEDenoiser` params.

  Args:
    state_dict: flat `{torch_key: array}`, e.g. `common.extract_state_dict(obj, path,
      dict_key="model_pos")`; `module.` and `pose_estimator.` prefixes are accepted.
    model_cfg: `config.model` (num_frames, num_joints, embed_dim, depth, num_heads, mlp_ratio,
      drop_path_rate).
    diffusion_cfg: `config.diffusion` (num_steps; beta_schedule must be "cosine").
    config_name: the config section named in "set --config.<name>.x=..." hints.
    source: names the checkpoint in error messages (e.g. the file path).

  Returns:
    `(params, report)`: the Flax `params` collection (float32 numpy arrays) and a report whose
    `unused` lists the schedule buffers present and `checked` those compared with our schedule.

  Raises:
    common.ConversionError: another family, other sizes, another schedule, unknown or missing keys.
  """
  if diffusion_cfg.beta_schedule != "cosine":
    raise common.ConversionError(f"D3DP uses the cosine schedule, got diffusion.beta_schedule="
                                 f"{diffusion_cfg.beta_schedule!r}")
  sd = normalize_keys(state_dict, source)
  model = d3dp_models.denoiser_from_config(model_cfg)
  _check_dims(sd, model, config_name, source, int(diffusion_cfg.num_steps))
  checked = check_schedule(sd, int(diffusion_cfg.num_steps), source)
  frames, joints = model.num_frames, model.num_joints
  template = jax.eval_shape(
      model.init, jax.random.PRNGKey(0), jnp.zeros((1, frames, joints, 2), jnp.float32),
      jnp.zeros((1, frames, joints, 3), jnp.float32), jnp.zeros((1,), jnp.float32))["params"]
  params, report = common.map_state_dict(sd, RULES, template, unused=SCHEDULE_BUFFERS,
                                         source=source)
  return params, D3DPConversionReport(unused=report.unused, num_tensors=report.num_tensors,
                                      num_elements=report.num_elements, checked=checked)
