"""Torch -> Flax conversion of DiffPose checkpoints (lifter `GCNpose`, denoiser `GCNdiff`).

Upstream checkpoints are lists; `common.extract_state_dict` finds the state dict (element 0, the
live weights that upstream evaluates) and strips the `module.` prefix. The converters here check
that the checkpoint is of the expected kind and size before the strict key-by-key mapping, so a
wrong file gets a message saying what it looks like. Key lists: spec
`keys_diffpose_{lifter,denoiser}.txt`.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax.convert import common
from posediff_jax.models import diffpose as diffpose_models

_LAYER_RULES = (
    common.Rule(r"gconv_layers\.(\d+)\.gconv([12])\.gconv\.weight",
                "gconv_layers_{0}/gconv{1}/gconv/weight", common.CHEB_WEIGHT),
    common.Rule(r"gconv_layers\.(\d+)\.gconv([12])\.gconv\.bias",
                "gconv_layers_{0}/gconv{1}/gconv/bias", common.CHEB_BIAS),
    common.Rule(r"atten_layers\.(\d+)\.self_attn\.linears\.(\d+)\.weight",
                "atten_layers_{0}/self_attn/linears_{1}/kernel", common.LINEAR_WEIGHT),
    common.Rule(r"atten_layers\.(\d+)\.self_attn\.linears\.(\d+)\.bias",
                "atten_layers_{0}/self_attn/linears_{1}/bias"),
    common.Rule(r"atten_layers\.(\d+)\.feed_forward\.A_hat", "atten_layers_{0}/feed_forward/A_hat"),
    common.Rule(r"atten_layers\.(\d+)\.feed_forward\.gconv([12])\.fc\.weight",
                "atten_layers_{0}/feed_forward/gconv{1}/kernel", common.LINEAR_WEIGHT),
    common.Rule(r"atten_layers\.(\d+)\.feed_forward\.gconv([12])\.fc\.bias",
                "atten_layers_{0}/feed_forward/gconv{1}/bias"),
    common.Rule(r"atten_layers\.(\d+)\.sublayer\.([01])\.norm\.(a_2|b_2)",
                "atten_layers_{0}/sublayer_{1}/{2}"),
    common.Rule(r"gconv_(input|output)\.weight", "gconv_{0}/weight", common.CHEB_WEIGHT),
    common.Rule(r"gconv_(input|output)\.bias", "gconv_{0}/bias", common.CHEB_BIAS),
)

_TEMB_RULES = (
    common.Rule(r"gconv_layers\.(\d+)\.temb_proj\.weight", "gconv_layers_{0}/temb_proj/kernel",
                common.LINEAR_WEIGHT),
    common.Rule(r"gconv_layers\.(\d+)\.temb_proj\.bias", "gconv_layers_{0}/temb_proj/bias"),
    common.Rule(r"temb\.dense\.([01])\.weight", "temb/dense_{0}/kernel", common.LINEAR_WEIGHT),
    common.Rule(r"temb\.dense\.([01])\.bias", "temb/dense_{0}/bias"),
)

# GCNpose builds the time MLP but its forward never calls it (spec §1.7).
_LIFTER_UNUSED = (r"temb\.dense\.[01]\.(weight|bias)",)

_KIND_NAMES = {
    "lifter": "DiffPose lifter (GCNpose)",
    "denoiser": "DiffPose denoiser (GCNdiff)",
    "icassp_denoiser": "ICASSP'24 cross-channel denoiser (DiffModel)",
    "mmdiff_denoiser": "mmDiff phase-2 denoiser (GCNdiff with radar conditions)",
}


def _with_article(name: str) -> str:
  return ("an " if name[0] in "AEIOU" else "a ") + name


def infer_diffpose_dims(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Reads the architecture off a DiffPose-style state dict (with or without `module.`).

  Returns:
    dict(kind='lifter' | 'denoiser' | 'icassp_denoiser' | 'mmdiff_denoiser', hid_dim, num_layers,
    in_dim, out_dim);
    in_dim / out_dim are the channels of `gconv_input` / `gconv_output` (None if absent).

  Raises:
    common.ConversionError: there is no `gconv_input.weight` [K+1, 1, in, hid].
  """
  sd = common.strip_module_prefix(state_dict)
  weight = sd.get("gconv_input.weight")
  if weight is None or np.ndim(weight) != 4:
    shown = ", ".join(list(sd)[:6])
    raise common.ConversionError(
        "this does not look like a DiffPose/GraFormer checkpoint: no 'gconv_input.weight' "
        f"[3, 1, in, hid] (first keys: {shown})")
  # mmDiff's GCNdiff also has gconv_input_t; its temporal and limb branches tell it apart.
  if any(k.startswith(("temperal_conv.", "limb_linear")) for k in sd):
    kind = "mmdiff_denoiser"
  elif "gconv_input_t.weight" in sd or "fc2.weight" in sd:
    kind = "icassp_denoiser"
  elif any(".temb_proj." in k for k in sd):
    kind = "denoiser"
  else:
    kind = "lifter"
  layer_ids = {int(k.split(".")[1]) for k in sd if k.startswith("atten_layers.")}
  output = sd.get("gconv_output.weight")
  return dict(kind=kind, hid_dim=int(weight.shape[3]), num_layers=len(layer_ids),
              in_dim=int(weight.shape[2]),
              out_dim=int(output.shape[3]) if output is not None and output.ndim == 4 else None)


def size_mismatches(sd, dims: Mapping[str, Any], *, hid_dim: int, num_layers: int, in_dim: int,
                    config_name: str, in_field: str | None = None) -> list[common.SizeMismatch]:
  """Every size `infer_diffpose_dims` read off `sd` that differs from the model's.

  Args:
    sd: the state dict (for the evidence).
    dims: `infer_diffpose_dims(sd)`.
    hid_dim, num_layers, in_dim: the model's.
    config_name: the config section of the model ('model' or 'lifter').
    in_field: the config field of the input channels (e.g. 'coords_dim'), if the config has one.
  """
  out = []
  if dims["hid_dim"] != hid_dim:
    found = list(np.shape(sd["gconv_input.weight"]))
    needs = [found[0], 1, dims["in_dim"], hid_dim]
    out.append(common.SizeMismatch(
        f"{config_name}.hid_dim", dims["hid_dim"], hid_dim,
        f"key 'gconv_input.weight' has shape {found}, where the config's hid_dim={hid_dim} "
        f"needs {needs}"))
  if dims["num_layers"] != num_layers:
    out.append(common.SizeMismatch(f"{config_name}.num_layers", dims["num_layers"], num_layers,
                                   f"{dims['num_layers']} attention layers atten_layers.*"))
  if in_field is not None and dims["in_dim"] != in_dim:
    out.append(common.SizeMismatch(f"{config_name}.{in_field}", dims["in_dim"], in_dim,
                                   f"gconv_input takes {dims['in_dim']} channels"))
  return out


def _check_checkpoint(sd, kind: str, hid_dim: int, num_layers: int, in_dim: int,
                      config_name: str, source: str, in_field: str | None = None) -> None:
  """Fails early, with a family-level diagnosis, when the checkpoint is not the expected model,
  and with every differing size at once when it is one of other sizes."""
  dims = infer_diffpose_dims(sd)
  if dims["kind"] != kind:
    evidence = {
        "lifter": f"no temb_proj keys, gconv_input takes {dims['in_dim']} channels",
        "denoiser": f"temb_proj keys present, gconv_input takes {dims['in_dim']} channels",
        "icassp_denoiser": "it has the context branch (gconv_input_t, fc1..fc3)",
        "mmdiff_denoiser": "it has the temporal and limb-length branches (temperal_conv, limb_*)",
    }[dims["kind"]]
    raise common.ConversionError(
        f"{source}: this looks like {_with_article(_KIND_NAMES[dims['kind']])} checkpoint "
        f"({evidence}), expected {_with_article(_KIND_NAMES[kind])}")
  common.check_sizes(size_mismatches(sd, dims, hid_dim=hid_dim, num_layers=num_layers,
                                     in_dim=in_dim, config_name=config_name, in_field=in_field),
                     source)


def lifter_size_mismatches(state_dict: Mapping[str, np.ndarray], model_cfg, *,
                           config_name: str = "lifter") -> list[common.SizeMismatch]:
  """The sizes of a lifter checkpoint that differ from `model_cfg` (nothing is mapped).

  Raises:
    common.ConversionError: not a DiffPose lifter checkpoint.
  """
  sd = common.strip_module_prefix(state_dict)
  model = diffpose_models.lifter_from_config(model_cfg)
  dims = infer_diffpose_dims(sd)
  if dims["kind"] != "lifter":
    raise common.ConversionError(f"this looks like {_with_article(_KIND_NAMES[dims['kind']])} "
                                 "checkpoint, not a lifter")
  return size_mismatches(sd, dims, hid_dim=model.hid_dim, num_layers=model.num_layers,
                         in_dim=model.in_dim, config_name=config_name)


def _params_template(model, *inputs) -> dict[str, Any]:
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)
  return shapes["params"]


def convert_lifter(state_dict: Mapping[str, np.ndarray], model_cfg, *, config_name: str = "lifter",
                   source: str = "lifter checkpoint"
                   ) -> tuple[dict[str, Any], common.ConversionReport]:
  """Maps a DiffPose `GCNpose` (or ICASSP GraFormer lifter) state dict onto `GCNLifter` params.

  Args:
    state_dict: flat `{torch_key: array}`, e.g. from `common.extract_state_dict`; a `module.`
      prefix on every key is accepted.
    model_cfg: `hid_dim`, `num_layers`, `n_head`, `dropout` (ConfigDict, dict or any object).
    config_name: the config section named in "set --config.<name>.hid_dim=..." hints.
    source: names the checkpoint in error messages (e.g. the file path).

  Returns:
    `(params, report)`: the Flax `params` collection (use as `{'params': params}`) and a report
    listing the unused `temb.dense.*` keys.

  Raises:
    common.ConversionError: wrong kind of checkpoint, other sizes, unknown or missing keys.
  """
  sd = common.strip_module_prefix(state_dict)
  model = diffpose_models.lifter_from_config(model_cfg)
  _check_checkpoint(sd, "lifter", model.hid_dim, model.num_layers, model.in_dim, config_name,
                    source)
  template = _params_template(model, jnp.zeros((1, model.num_joints, model.in_dim), jnp.float32))
  return common.map_state_dict(sd, _LAYER_RULES, template, unused=_LIFTER_UNUSED, source=source)


def convert_denoiser(state_dict: Mapping[str, np.ndarray], model_cfg, *, config_name: str = "model",
                     source: str = "denoiser checkpoint"
                     ) -> tuple[dict[str, Any], common.ConversionReport]:
  """Maps a DiffPose `GCNdiff` state dict onto `GCNDenoiser` params.

  Args:
    state_dict: flat `{torch_key: array}`, e.g. `common.extract_state_dict(obj, path)` for the
      live weights (list element 0) or `list_index=4` for the EMA shadow.
    model_cfg: `hid_dim`, `num_layers`, `n_head`, `dropout` and optionally `coords_dim` (5).
    config_name: the config section named in "set --config.<name>.hid_dim=..." hints.
    source: names the checkpoint in error messages (e.g. the file path).

  Returns:
    `(params, report)`: the Flax `params` collection and a report (no unused keys expected).

  Raises:
    common.ConversionError: wrong kind of checkpoint, other sizes, unknown or missing keys.
  """
  sd = common.strip_module_prefix(state_dict)
  model = diffpose_models.denoiser_from_config(model_cfg)
  _check_checkpoint(sd, "denoiser", model.hid_dim, model.num_layers, model.coords_dim, config_name,
                    source, in_field="coords_dim")
  template = _params_template(
      model, jnp.zeros((1, model.num_joints, model.coords_dim), jnp.float32),
      jnp.zeros((1,), jnp.float32))
  return common.map_state_dict(sd, _LAYER_RULES + _TEMB_RULES, template, source=source)
