"""Torch -> Flax conversion of FinePOSE and DSGDiffu checkpoints (D3DP backbone + text branch).

A released checkpoint is upstream's `torch.save({'epoch', 'lr', 'random_state', 'optimizer',
'model_pos'})` with DataParallel keys (`module.pose_estimator.*`, `module.betas`). Its state dict
holds three things:

* the denoiser: D3DP's MixSTE2 keys (mapped by `convert.d3dp.RULES`), the text encoder, the
  cross-attention and, for DSGDiffu, the two graph attention layers (`STEgat.*`,
  `temporal_cross_attn.gat.*`);
* the learnable prompt context vectors `ctx_*` (frozen in effect upstream, spec §2.2) and the
  frozen CLIP ViT-B/32 under `clip_text.*`: neither is a denoiser parameter, both are only needed
  to precompute the per-action CLIP output (the text cache, `posediff_jax.models.prompts`);
* the 12 float64 schedule buffers, checked against our cosine schedule and reported as unused.

PyG key layouts of the graph layers: torch-geometric 2.6 saves `lin.weight`; 2.4 (the version
DSGDiffu's README names) saves the same tensor twice, as `lin_src.weight` and `lin_dst.weight`.
Both are accepted; the two copies must be equal. Key lists: spec `keys_{finepose,dsgdiffu}.txt`.
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax.convert import clip_text as convert_clip
from posediff_jax.convert import common
from posediff_jax.convert import d3dp as convert_d3dp
from posediff_jax.models import dsgdiffu as dsgdiffu_models
from posediff_jax.models import finepose as finepose_models
from posediff_jax.models import prompts

FAMILIES = ("finepose", "dsgdiffu")
CLIP_PREFIX = "clip_text."
CTX_PREFIX = "ctx_"
GAT_PREFIXES = ("STEgat.", "temporal_cross_attn.gat.")
# openai/CLIP `clip/clip.py` `_MODELS["ViT-B/32"]`.
OPENAI_VIT_B32_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")


def _gat(torch_name: str, flax_name: str) -> tuple[common.Rule, ...]:
  return (common.Rule(re.escape(torch_name) + r"\.lin\.weight", flax_name + "/lin/kernel",
                      common.LINEAR_WEIGHT),
          common.Rule(re.escape(torch_name) + r"\.att_src", flax_name + "/att_src"),
          common.Rule(re.escape(torch_name) + r"\.att_dst", flax_name + "/att_dst"),
          common.Rule(re.escape(torch_name) + r"\.bias", flax_name + "/bias"))


_TEXT_LAYER = r"textTransEncoder\.layers\.(\d+)\."
FINEPOSE_RULES = convert_d3dp.RULES + (
    common.Rule(_TEXT_LAYER + r"self_attn\.in_proj_weight",
                "text_encoder_layers_{0}/self_attn/attn_qkv/kernel", common.LINEAR_WEIGHT),
    common.Rule(_TEXT_LAYER + r"self_attn\.in_proj_bias",
                "text_encoder_layers_{0}/self_attn/attn_qkv/bias"),
    common.Rule(_TEXT_LAYER + r"self_attn\.out_proj\.weight",
                "text_encoder_layers_{0}/self_attn/attn_proj/kernel", common.LINEAR_WEIGHT),
    common.Rule(_TEXT_LAYER + r"self_attn\.out_proj\.bias",
                "text_encoder_layers_{0}/self_attn/attn_proj/bias"),
    *(common.Rule(_TEXT_LAYER + rf"{name}\.weight", f"text_encoder_layers_{{0}}/{name}/kernel",
                  common.LINEAR_WEIGHT) for name in ("linear1", "linear2")),
    *(common.Rule(_TEXT_LAYER + rf"{name}\.bias", f"text_encoder_layers_{{0}}/{name}/bias")
      for name in ("linear1", "linear2")),
    *(common.Rule(_TEXT_LAYER + rf"{name}\.weight", f"text_encoder_layers_{{0}}/{name}/scale")
      for name in ("norm1", "norm2")),
    *(common.Rule(_TEXT_LAYER + rf"{name}\.bias", f"text_encoder_layers_{{0}}/{name}/bias")
      for name in ("norm1", "norm2")),
    *common.layer_norm_rules("text_ln", "text_ln"),
    *common.linear_rules("text_proj.0", "text_proj"),
    *common.layer_norm_rules("temporal_cross_attn.norm", "temporal_cross_attn/norm"),
    *common.layer_norm_rules("temporal_cross_attn.text_norm", "temporal_cross_attn/text_norm"),
    *(rule for name in ("query", "key", "value")
      for rule in common.linear_rules(f"temporal_cross_attn.{name}",
                                      f"temporal_cross_attn/{name}")),
    *common.linear_rules("temporal_cross_attn.proj_out.emb_layers.1",
                         "temporal_cross_attn/proj_out/emb_layers_1"),
    *common.layer_norm_rules("temporal_cross_attn.proj_out.norm",
                             "temporal_cross_attn/proj_out/norm"),
    *common.linear_rules("temporal_cross_attn.proj_out.out_layers.2",
                         "temporal_cross_attn/proj_out/out_layers_2"),
)
DSGDIFFU_RULES = FINEPOSE_RULES + (
    *_gat("STEgat", "ste_gat"),
    *_gat("temporal_cross_attn.gat", "temporal_cross_attn/gat"),
)
RULES = {"finepose": FINEPOSE_RULES, "dsgdiffu": DSGDIFFU_RULES}
_NAMES = {"finepose": "FinePOSE", "dsgdiffu": "DSGDiffu", "d3dp": "D3DP"}


@dataclasses.dataclass(frozen=True)
class TextConversionReport(convert_d3dp.D3DPConversionReport):
  """The D3DP report plus what the text branch consumed.

  Attributes:
    ctx_keys: the prompt context keys (`ctx_*`), kept for the text cache.
    num_clip_tensors: `clip_text.*` tensors found (0: CLIP must come from elsewhere).
    gat_layout: "lin" (torch-geometric 2.6), "lin_src/lin_dst" (2.4) or "" (FinePOSE).
  """

  ctx_keys: tuple[str, ...] = ()
  num_clip_tensors: int = 0
  gat_layout: str = ""

  def __str__(self) -> str:
    text = super().__str__()
    text += f"; prompt context {', '.join(self.ctx_keys) or 'none'}"
    text += f"; {self.num_clip_tensors} CLIP tensors"
    if self.gat_layout:
      text += f"; graph attention keys in the {self.gat_layout} layout"
    return text


@dataclasses.dataclass(frozen=True)
class TextState:
  """The checkpoint's inputs to the text cache.

  Attributes:
    ctx: {'subject': [n, W], 'verb': ..., 'speed', 'head', 'body', 'arm', 'leg'} (the names after
      `ctx_`; 3DHP checkpoints have no 'verb'), float32.
    clip_state_dict: the `clip_text.*` tensors with that prefix removed (OpenAI's key names), or
      {} when the checkpoint has none.
  """

  ctx: dict[str, np.ndarray]
  clip_state_dict: dict[str, np.ndarray]


def clip_missing_message(source: str) -> str:
  """Where to get CLIP when a checkpoint does not carry it, and how to pass it."""
  return (f"{source}: the checkpoint holds no CLIP weights (no 'clip_text.*' keys), and the "
          "FinePOSE/DSGDiffu prompts need CLIP ViT-B/32's text tower to be encoded once. Download "
          f"OpenAI's ViT-B-32.pt ({OPENAI_VIT_B32_URL}, the 'ViT-B/32' entry of _MODELS in "
          "openai/CLIP's clip/clip.py) and pass it with "
          "`convert_torch_weights.py --clip ViT-B-32.pt`")


def split_text_state(state_dict: Mapping[str, np.ndarray]
                     ) -> tuple[dict[str, np.ndarray], TextState]:
  """Separates the `ctx_*` and `clip_text.*` entries from a normalised state dict.

  Returns:
    (the remaining keys, their TextState).
  """
  rest, ctx, clip = {}, {}, {}
  for key, value in state_dict.items():
    if key.startswith(CLIP_PREFIX):
      clip[key[len(CLIP_PREFIX):]] = value
    elif key.startswith(CTX_PREFIX):
      ctx[key[len(CTX_PREFIX):]] = np.asarray(value, np.float32)
    else:
      rest[key] = value
  return rest, TextState(ctx=ctx, clip_state_dict=clip)


def merge_gat_weights(state_dict: Mapping[str, np.ndarray], source: str = "checkpoint"
                      ) -> tuple[dict[str, np.ndarray], str]:
  """Rewrites torch-geometric 2.4 GAT keys (`lin_src.weight` + `lin_dst.weight`) as 2.6's
  `lin.weight`.

  Returns:
    (the state dict, the layout found: "lin", "lin_src/lin_dst" or "" without GAT keys).

  Raises:
    common.ConversionError: only one of the two copies, copies that differ, or both layouts.
  """
  out = dict(state_dict)
  layouts = set()
  for prefix in GAT_PREFIXES:
    src, dst, lin = (prefix + "lin_src.weight", prefix + "lin_dst.weight",
                     prefix + "lin.weight")
    if src not in out and dst not in out:
      if lin in out:
        layouts.add("lin")
      continue
    if src not in out or dst not in out:
      raise common.ConversionError(
          f"{source}: {src if src in out else dst!r} without {dst if src in out else src!r}; "
          "torch-geometric 2.4 saves the GAT weight under both names")
    if lin in out:
      raise common.ConversionError(f"{source}: both {lin!r} (torch-geometric 2.6) and {src!r} "
                                   "(2.4) are present")
    if out[src].shape != out[dst].shape or not np.array_equal(out[src], out[dst]):
      raise common.ConversionError(f"{source}: {src!r} and {dst!r} differ; torch-geometric 2.4 "
                                   "stores one shared weight under both names")
    out[lin] = out.pop(src)
    del out[dst]
    layouts.add("lin_src/lin_dst")
  if len(layouts) > 1:
    raise common.ConversionError(f"{source}: the GAT layers mix torch-geometric key layouts")
  return out, layouts.pop() if layouts else ""


def detect_family(state_dict: Mapping[str, np.ndarray]) -> str:
  """'finepose', 'dsgdiffu' or 'd3dp' for a normalised state dict of the video family.

  Raises:
    common.ConversionError: none of the three.
  """
  keys = list(state_dict)
  has_text = any(k.startswith(("textTransEncoder.", "temporal_cross_attn.")) for k in keys)
  if has_text:
    return "dsgdiffu" if any(k.startswith("STEgat.") for k in keys) else "finepose"
  if "Temporal_pos_embed" in state_dict and "Spatial_pos_embed" in state_dict:
    return "d3dp"
  shown = ", ".join(keys[:6])
  raise common.ConversionError(
      "this is not a FinePOSE/DSGDiffu checkpoint: expected 'pose_estimator.textTransEncoder.*' "
      f"and 'pose_estimator.temporal_cross_attn.*' keys (first keys: {shown})")


def infer_text_dims(state_dict: Mapping[str, np.ndarray]) -> dict[str, int]:
  """text_width, text_layers and text_ff_dim of a normalised FinePOSE/DSGDiffu state dict."""
  layers = {int(m.group(1)) for k in state_dict
            if (m := re.match(r"textTransEncoder\.layers\.(\d+)\.", k))}
  ln = state_dict.get("text_ln.weight")
  ff = state_dict.get("textTransEncoder.layers.0.linear1.weight")
  return dict(text_width=int(ln.shape[0]) if ln is not None else -1, text_layers=len(layers),
              text_ff_dim=int(ff.shape[0]) if ff is not None else -1)


_TEXT_EVIDENCE = {
    "text_width": "read from 'text_ln.weight' [width]",
    "text_layers": "the number of textTransEncoder.layers.*",
    "text_ff_dim": "read from 'textTransEncoder.layers.0.linear1.weight' [ff, width]",
}


def _check_dims(sd, model, config_name: str, source: str, num_steps: int) -> None:
  """Every size the weights determine, compared with the model's before any key is mapped."""
  backbone = {k: v for k, v in sd.items() if not k.startswith((
      "textTransEncoder.", "temporal_cross_attn.", "text_ln.", "text_proj.", "STEgat."))}
  mismatches = convert_d3dp.backbone_mismatches(convert_d3dp.infer_d3dp_dims(backbone, source),
                                                model, config_name)
  for field, found in infer_text_dims(sd).items():
    if found >= 0 and found != getattr(model, field):
      mismatches.append(common.SizeMismatch(f"{config_name}.{field}", found,
                                            getattr(model, field), _TEXT_EVIDENCE[field]))
  mismatches += convert_d3dp.schedule_mismatches(sd, num_steps)
  common.check_sizes(mismatches, source)


def denoiser_module(family: str, model_cfg, dtype=None) -> finepose_models.FinePoseDenoiser:
  """The Flax denoiser of `family` ("finepose" or "dsgdiffu") for `config.model`."""
  if family == "finepose":
    return finepose_models.denoiser_from_config(model_cfg, dtype)
  if family == "dsgdiffu":
    return dsgdiffu_models.denoiser_from_config(model_cfg, dtype)
  raise ValueError(f"unknown text-conditioned family {family!r}; expected one of "
                   f"{', '.join(FAMILIES)}")


def param_template(model: finepose_models.FinePoseDenoiser) -> dict[str, Any]:
  """The params tree of `model` as shape/dtype structs (nothing is computed)."""
  frames, joints = model.num_frames, model.num_joints
  return jax.eval_shape(
      model.init, jax.random.PRNGKey(0), jnp.zeros((1, frames, joints, 2), jnp.float32),
      jnp.zeros((1, frames, joints, 3), jnp.float32), jnp.zeros((1,), jnp.float32),
      jnp.zeros((1, 1, model.text_width), jnp.float32), jnp.zeros((1,), jnp.int32))["params"]


def convert_denoiser(state_dict: Mapping[str, np.ndarray], model_cfg, diffusion_cfg, *,
                     family: str, config_name: str = "model",
                     source: str = "denoiser checkpoint"
                     ) -> tuple[dict[str, Any], TextConversionReport, TextState]:
  """Maps a FinePOSE or DSGDiffu `model_pos` state dict onto the Flax denoiser's params.

  Args:
    state_dict: flat `{torch_key: array}`; `module.` and `pose_estimator.` prefixes accepted.
    model_cfg: `config.model` (D3DP's fields, text_width, text_layers, text_ff_dim, text_tiling;
      DSGDiffu: graph).
    diffusion_cfg: `config.diffusion` (num_steps; beta_schedule must be "cosine").
    family: "finepose" or "dsgdiffu".
    config_name: the config section named in "set --config.<name>.x=..." hints.
    source: names the checkpoint in error messages.

  Returns:
    (params, report, text_state): the denoiser's params (float32 numpy), the report (schedule
    buffers unused), and the `ctx_*` / `clip_text.*` tensors for the text cache.

  Raises:
    common.ConversionError: another family, other sizes, another schedule, unknown or missing
      keys, inconsistent GAT keys.
  """
  if family not in FAMILIES:
    raise ValueError(f"unknown text-conditioned family {family!r}; expected one of "
                     f"{', '.join(FAMILIES)}")
  if diffusion_cfg.beta_schedule != "cosine":
    raise common.ConversionError(f"{_NAMES[family]} uses the cosine schedule, got "
                                 f"diffusion.beta_schedule={diffusion_cfg.beta_schedule!r}")
  sd = convert_d3dp.normalize_keys(state_dict, source)
  sd, text_state = split_text_state(sd)
  found = detect_family(sd)
  if found != family:
    raise common.ConversionError(
        f"{source}: this is not a {_NAMES[family]} checkpoint; it looks like a {_NAMES[found]} "
        f"checkpoint (use --family {found})")
  sd, gat_layout = merge_gat_weights(sd, source)
  model = denoiser_module(family, model_cfg)
  _check_dims(sd, model, config_name, source, int(diffusion_cfg.num_steps))
  checked = convert_d3dp.check_schedule(sd, int(diffusion_cfg.num_steps), source)
  params, report = common.map_state_dict(sd, RULES[family], param_template(model),
                                         unused=convert_d3dp.SCHEDULE_BUFFERS, source=source)
  report = TextConversionReport(
      unused=report.unused, num_tensors=report.num_tensors, num_elements=report.num_elements,
      checked=checked, ctx_keys=tuple(CTX_PREFIX + k for k in text_state.ctx),
      num_clip_tensors=len(text_state.clip_state_dict), gat_layout=gat_layout)
  return params, report, text_state


def text_cache(text_state: TextState, *, family: str, dataset: str,
               actions: tuple[str, ...] | None = None, clip_path=None,
               source: str = "checkpoint") -> tuple[dict[str, Any], list[str]]:
  """Runs CLIP's text tower once over every prompt: the denoiser's text cache.

  Args:
    text_state: the checkpoint's `ctx_*` and `clip_text.*` tensors (`convert_denoiser`).
    family: "finepose" or "dsgdiffu".
    dataset: "h36m" or "3dhp".
    actions: the Human3.6M prompt names, one cache row each (None: `prompts.H36M_ACTIONS`;
      must be None for 3dhp, which has one prompt).
    clip_path: OpenAI's ViT-B-32.pt, for a checkpoint without `clip_text.*`.
    source: names the checkpoint in error messages.

  Returns:
    ({'actions', 'clip_features' [A, 77, W], 'eot_index' [A]} from `prompts.text_cache`, the
    CLIP keys left unused: the vision tower, text_projection, logit_scale, ...).

  Raises:
    ValueError: `clip_path` given for a checkpoint that carries CLIP.
    common.ConversionError: no CLIP anywhere (`clip_missing_message`), or a malformed one.
  """
  if text_state.clip_state_dict:
    if clip_path:
      raise ValueError(f"{source} carries its own CLIP weights ('clip_text.*' keys); do not pass "
                       f"a CLIP file as well ({clip_path})")
    clip_sd, clip_source = text_state.clip_state_dict, source
  elif clip_path:
    clip_sd, clip_source = convert_clip.load_openai_clip(clip_path), str(clip_path)
  else:
    raise common.ConversionError(clip_missing_message(source))
  clip_config = convert_clip.infer_clip_config(clip_sd, "", source=clip_source)
  clip_params, report = convert_clip.clip_params_from_state_dict(clip_sd, "", source=clip_source)
  cache = prompts.text_cache(clip_params, clip_config, text_state.ctx, family=family,
                             dataset=dataset, actions=actions)
  return cache, list(report.unused)

