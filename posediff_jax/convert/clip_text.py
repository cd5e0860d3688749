"""Torch -> Flax conversion of the CLIP text tower, and FinePOSE/DSGDiffu's prompt context vectors.

Two sources hold the same CLIP weights:
- FinePOSE / DSGDiffu checkpoints, whose `model_pos` carries the whole frozen CLIP ViT-B/32 under
  `module.pose_estimator.clip_text.*` (spec video_family.md §4, `keys_finepose.txt`) and the prompt
  context vectors as `module.pose_estimator.ctx_*`;
- OpenAI's `ViT-B-32.pt`, a TorchScript archive (read by `load_openai_clip` without torch and
  without running its code), whose keys have no prefix.

`clip_params_from_state_dict` maps the text tower strictly onto `ClipTextTransformer`; the vision
tower, `text_projection`, `logit_scale` and the archive's `input_resolution` / `context_length` /
`vocab_size` buffers are listed in the report as unused, and any other key under the prefix is an
error.
"""

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import safe_load
from posediff_jax.convert import common
from posediff_jax.models import clip_text as clip_models

# FinePOSE / DSGDiffu checkpoints (DataParallel `module.` kept).
CHECKPOINT_PREFIX = "module.pose_estimator.clip_text."

_BLOCK = r"transformer\.resblocks\.(\d+)\."

RULES = (
    common.Rule(r"token_embedding\.weight", "token_embedding"),
    common.Rule(r"positional_embedding", "positional_embedding"),
    common.Rule(_BLOCK + r"attn\.in_proj_weight", "resblocks_{0}/attn/in_proj/kernel",
                common.LINEAR_WEIGHT),
    common.Rule(_BLOCK + r"attn\.in_proj_bias", "resblocks_{0}/attn/in_proj/bias"),
    common.Rule(_BLOCK + r"attn\.out_proj\.weight", "resblocks_{0}/attn/out_proj/kernel",
                common.LINEAR_WEIGHT),
    common.Rule(_BLOCK + r"attn\.out_proj\.bias", "resblocks_{0}/attn/out_proj/bias"),
    common.Rule(_BLOCK + r"ln_1\.weight", "resblocks_{0}/ln_1/scale"),
    common.Rule(_BLOCK + r"ln_1\.bias", "resblocks_{0}/ln_1/bias"),
    common.Rule(_BLOCK + r"mlp\.c_fc\.weight", "resblocks_{0}/mlp_c_fc/kernel",
                common.LINEAR_WEIGHT),
    common.Rule(_BLOCK + r"mlp\.c_fc\.bias", "resblocks_{0}/mlp_c_fc/bias"),
    common.Rule(_BLOCK + r"mlp\.c_proj\.weight", "resblocks_{0}/mlp_c_proj/kernel",
                common.LINEAR_WEIGHT),
    common.Rule(_BLOCK + r"mlp\.c_proj\.bias", "resblocks_{0}/mlp_c_proj/bias"),
    common.Rule(_BLOCK + r"ln_2\.weight", "resblocks_{0}/ln_2/scale"),
    common.Rule(_BLOCK + r"ln_2\.bias", "resblocks_{0}/ln_2/bias"),
    common.Rule(r"ln_final\.weight", "ln_final/scale"),
    common.Rule(r"ln_final\.bias", "ln_final/bias"),
)

# Loaded with CLIP but never used by the text features.
UNUSED = (
    r"visual\..*", r"text_projection", r"logit_scale",
    r"input_resolution", r"context_length", r"vocab_size",
)

# The prompt segments, in prompt order (`ctx_<name>` in the checkpoints).
CTX_NAMES = ("subject", "verb", "speed", "head", "body", "arm", "leg")


def _select(state_dict: Mapping[str, np.ndarray], prefix: str, source: str
            ) -> dict[str, np.ndarray]:
  selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not selected:
    shown = ", ".join(repr(k) for k in list(state_dict)[:6])
    raise common.ConversionError(
        f"{source}: no key starts with the CLIP prefix {prefix!r} (first keys: {shown}); "
        f"FinePOSE/DSGDiffu checkpoints use {CHECKPOINT_PREFIX!r} (or 'pose_estimator.clip_text.' "
        "once 'module.' is stripped), OpenAI's ViT-B-32.pt uses ''")
  return selected


def infer_clip_config(state_dict: Mapping[str, np.ndarray], prefix: str = "", *,
                      num_heads: int | None = None, source: str = "checkpoint") -> dict[str, int]:
  """Reads the text tower's sizes off a state dict.

  Args:
    state_dict: flat `{torch_key: array}`.
    prefix: what precedes the CLIP keys (`CHECKPOINT_PREFIX`, `"pose_estimator.clip_text."` or "").
    num_heads: attention heads; default width // 64, the rule of CLIP's `build_model`.
    source: names the checkpoint in error messages.

  Returns:
    `ClipTextTransformer` keyword arguments: vocab_size, context_length, width, num_layers,
    num_heads.

  Raises:
    common.ConversionError: no key under `prefix`, or the embeddings are missing or malformed.
  """
  sd = _select(state_dict, prefix, source)
  tokens, positions = sd.get("token_embedding.weight"), sd.get("positional_embedding")
  if tokens is None or positions is None or np.ndim(tokens) != 2 or np.ndim(positions) != 2:
    raise common.ConversionError(
        f"{source}: expected {prefix}token_embedding.weight [vocab, W] and "
        f"{prefix}positional_embedding [context, W]; found shapes "
        f"{None if tokens is None else list(np.shape(tokens))} and "
        f"{None if positions is None else list(np.shape(positions))}")
  width = int(tokens.shape[1])
  if positions.shape[1] != width:
    raise common.ConversionError(
        f"{source}: {prefix}positional_embedding has width {positions.shape[1]}, but "
        f"{prefix}token_embedding.weight has width {width}")
  layers = {int(m.group(1)) for k in sd if (m := re.match(_BLOCK, k))}
  if layers != set(range(len(layers))):
    raise common.ConversionError(
        f"{source}: the text transformer blocks under {prefix}transformer.resblocks. are "
        f"numbered {sorted(layers)}, expected 0..n-1")
  if num_heads is None:
    num_heads = max(width // 64, 1)
  return dict(vocab_size=int(tokens.shape[0]), context_length=int(positions.shape[0]),
              width=width, num_layers=len(layers), num_heads=int(num_heads))


def clip_params_from_state_dict(state_dict: Mapping[str, np.ndarray], prefix: str = "", *,
                                source: str = "checkpoint"
                                ) -> tuple[dict[str, Any], common.ConversionReport]:
  """Maps CLIP's text tower onto `ClipTextTransformer` params, strictly.

  Keys outside `prefix` are ignored (they belong to the model around CLIP); every key under it must
  be a text-tower parameter or one of `UNUSED`, which the report lists.

  Args:
    state_dict: flat `{torch_key: array}` (any float dtype; OpenAI's archive is float16).
    prefix: `CHECKPOINT_PREFIX` for FinePOSE/DSGDiffu `model_pos`, `"pose_estimator.clip_text."`
      after `common.extract_state_dict` stripped `module.`, "" for OpenAI's ViT-B-32.pt.
    source: names the checkpoint in error messages.

  Returns:
    `(params, report)`: the Flax `params` collection of
    `ClipTextTransformer(**infer_clip_config(state_dict, prefix))` (float32 numpy arrays) and a
    report whose `unused` lists the vision tower, `text_projection`, `logit_scale` etc. present.

  Raises:
    common.ConversionError: nothing under the prefix, unknown or missing keys, wrong shapes.
  """
  config = infer_clip_config(state_dict, prefix, source=source)
  model = clip_models.ClipTextTransformer(**config)
  template = jax.eval_shape(
      model.init, jax.random.PRNGKey(0),
      jnp.zeros((1, config["context_length"], config["width"]), jnp.float32))["params"]
  return common.map_state_dict(_select(state_dict, prefix, source), RULES, template,
                               unused=UNUSED, source=source)


def ctx_from_state_dict(state_dict: Mapping[str, np.ndarray],
                        prefix: str = "module.pose_estimator.", *, source: str = "checkpoint"
                        ) -> dict[str, np.ndarray]:
  """The prompt context vectors `{name: [n, W] float32}` from `<prefix>ctx_<name>` keys.

  Args:
    state_dict: flat `{torch_key: array}`.
    prefix: what precedes `ctx_`; `"pose_estimator."` once `module.` is stripped.
    source: names the checkpoint in error messages.

  Returns:
    Only the names present (3DHP models have no `ctx_verb`); zero-row vectors (DSGDiffu's
    `ctx_subject` / `ctx_verb`) are kept.

  Raises:
    common.ConversionError: no `ctx_*` key at all, or one that is not 2-D.
  """
  ctx = {}
  for name in CTX_NAMES:
    key = f"{prefix}ctx_{name}"
    if key in state_dict:
      value = np.asarray(state_dict[key])
      if value.ndim != 2:
        raise common.ConversionError(f"{source}: {key!r} has shape {list(value.shape)}, expected "
                                     "[n, W]")
      ctx[name] = value.astype(np.float32)
  if not ctx:
    raise common.ConversionError(
        f"{source}: no prompt context vectors {prefix}ctx_{{{','.join(CTX_NAMES)}}}; is this a "
        "FinePOSE/DSGDiffu checkpoint, and is the prefix right?")
  return ctx


def load_openai_clip(path) -> dict[str, np.ndarray]:
  """OpenAI's CLIP weights (e.g. `ViT-B-32.pt`) as a flat `{name: array}` state dict, torch-free.

  The released files are TorchScript archives; they are read with
  `safe_load.load_torchscript_state_dict` (no code from the file runs). A plain `torch.save` state
  dict, which `clip.load` also accepts, is read with `safe_load.load_torch_checkpoint`.

  Raises:
    FileNotFoundError: the file does not exist.
    safe_load.UnsafePickleError: the pickle names something outside the allowlist.
    ValueError / common.ConversionError: not a torch zip archive, truncated, or no state dict.
  """
  path = pathlib.Path(path)
  if safe_load.is_torchscript_archive(path):
    return safe_load.load_torchscript_state_dict(path)
  return common.extract_state_dict(safe_load.load_torch_checkpoint(path), path,
                                   dict_key="state_dict")
