"""Torch -> Flax conversion of the ICASSP'24 denoiser `DiffModel` (the lifter is DiffPose's).

The denoiser file is upstream's list `[state_dict, optimizer, epoch, step, ema]` with unprefixed
keys (upstream does not wrap it in DataParallel). Its main branch uses DiffPose's key names, so
DiffPose's rules map it unchanged; the context branch repeats them with a `_t` suffix on the module
name. The lifter is DiffPose's released `gcn_xyz_*.pth`, mapped by
`convert.diffpose.convert_lifter`: upstream loads it with `strict=False`, which silently skips its
`temb.dense.*` tensors; here they are reported. Key list: spec `keys_icassp_denoiser.txt`.
"""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from posediff_jax.convert import common
from posediff_jax.convert import diffpose as convert_diffpose
from posediff_jax.models import icassp as icassp_models

# DiffPose's rules: the main branch has the same key names.
_DIFFPOSE_LAYER_RULES = convert_diffpose._LAYER_RULES  # pylint: disable=protected-access
_DIFFPOSE_TEMB_RULES = convert_diffpose._TEMB_RULES  # pylint: disable=protected-access

_CROSS_CHANNEL_RULES = (
    common.Rule(r"gconv_input_t\.weight", "gconv_input_t/weight", common.CHEB_WEIGHT),
    common.Rule(r"gconv_input_t\.bias", "gconv_input_t/bias", common.CHEB_BIAS),
    common.Rule(r"fc([123])\.weight", "fc{0}/kernel", common.LINEAR_WEIGHT),
    common.Rule(r"fc([123])\.bias", "fc{0}/bias"),
)


def _context_branch_rules(num_layers: int) -> tuple[common.Rule, ...]:
  """DiffPose's per-layer rules moved onto the context branch (`atten_layers_t`, `gconv_layers_t`).

  Only the residual blocks 0..L-2 run upstream, so only their keys are mapped; the last block's
  keys then fall through to the unused list.
  """
  blocks_run = {"atten_layers": range(num_layers), "gconv_layers": range(num_layers - 1)}
  rules = []
  for rule in _DIFFPOSE_LAYER_RULES + _DIFFPOSE_TEMB_RULES:
    for module, run in blocks_run.items():
      torch_prefix = module + r"\.(\d+)\."
      if rule.pattern.startswith(torch_prefix) and run:
        index = "|".join(str(i) for i in run)
        rules.append(common.Rule(
            f"{module}_t\\.({index})\\." + rule.pattern[len(torch_prefix):],
            rule.target.replace(f"{module}_{{0}}", f"{module}_t_{{0}}", 1), rule.transform))
  return tuple(rules)


def _unused_keys(num_layers: int) -> tuple[str, ...]:
  """Tensors upstream builds but its forward never runs (spec §B.1)."""
  return (r"gconv_output_t\.(weight|bias)",
          rf"gconv_layers_t\.{num_layers - 1}\.(gconv[12]\.gconv|temb_proj)\.(weight|bias)")


def convert_denoiser(state_dict: Mapping[str, np.ndarray], model_cfg, *,
                     config_name: str = "model", source: str = "denoiser checkpoint"
                     ) -> tuple[dict[str, Any], common.ConversionReport]:
  """Maps an ICASSP'24 `DiffModel` state dict onto `CrossChannelDenoiser` params.

  Args:
    state_dict: flat `{torch_key: array}`, e.g. `common.extract_state_dict(obj, path)` for the live
      weights (list element 0) or `list_index=4` for the EMA shadow.
    model_cfg: `hid_dim`, `num_layers`, `n_head`, `dropout`.
    config_name: the config section named in "set --config.<name>.hid_dim=..." hints.
    source: names the checkpoint in error messages (e.g. the file path).

  Returns:
    `(params, report)`: the Flax `params` collection and a report listing the keys of the modules
    upstream never runs (`gconv_output_t.*`, the context branch's last residual block).

  Raises:
    common.ConversionError: a checkpoint of another kind (e.g. a DiffPose denoiser) or other sizes,
      unknown, missing or mis-shaped keys.
  """
  sd = common.strip_module_prefix(state_dict)
  model = icassp_models.denoiser_from_config(model_cfg)
  # The main branch's input ChebConv takes 3 channels: fc1's lifted 2D and the 3D.
  convert_diffpose._check_checkpoint(  # pylint: disable=protected-access
      sd, "icassp_denoiser", model.hid_dim, model.num_layers, 3, config_name, source)
  joints = model.num_joints
  template = convert_diffpose._params_template(  # pylint: disable=protected-access
      model, jnp.zeros((1, joints, 5), jnp.float32), jnp.zeros((1, joints, 2), jnp.float32),
      jnp.zeros((1,), jnp.float32))
  rules = (_DIFFPOSE_LAYER_RULES + _DIFFPOSE_TEMB_RULES + _CROSS_CHANNEL_RULES
           + _context_branch_rules(model.num_layers))
  return common.map_state_dict(sd, rules, template, unused=_unused_keys(model.num_layers),
                               source=source)
