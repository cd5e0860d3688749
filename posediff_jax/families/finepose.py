"""FinePOSE (CVPR 2024): D3DP's sampler and loss with a text prompt per clip (spec §2).

Everything diffusion-related is D3DP's (`families/d3dp.py`: schedule, flip-TTA DDIM, MPJPE loss,
stochastic depth); the difference is the network (`models/finepose.py`), which also takes the
CLIP output of each clip's prompt. CLIP and the prompt context are frozen upstream, so that
output is one constant per action, computed once when a checkpoint is converted and carried in
the params:

  params = {"denoiser": ...,
            "text_cache": {"clip_features": [A, 77, W], "eot_index": [A] int32}}

with one row per name of `config.text.actions` (Human3.6M), or a single row (MPI-INF-3DHP, which
has no action text). Training only updates params["denoiser"]; the cache rides along unchanged.
A clip selects its row with `action_index` [B] (`action_indices` maps Human3.6M action keys).

The plain and the mirrored pass of each flip-TTA step are two network calls, as upstream (the
text tiling quirk and DSGDiffu's graph depend on which rows share a call); they run vmapped.
DSGDiffu (`families/dsgdiffu.py`) is this module with another network: every function here
dispatches on `config.family`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import chunking
from posediff_jax import safe_load
from posediff_jax.convert import common as convert_common
from posediff_jax.convert import finepose as convert_finepose
from posediff_jax.families import d3dp
from posediff_jax.models import prompts

STAGES = d3dp.STAGES
VIDEO = d3dp.VIDEO
TEXT_CONDITIONED = True  # sample() and the losses need each clip's prompt (action_index)
FAMILIES = convert_finepose.FAMILIES

alpha_bars_ext = d3dp.alpha_bars_ext
timesteps = d3dp.timesteps
flip_pose = d3dp.flip_pose

_SIZES = ("num_frames", "num_joints", "embed_dim", "depth", "num_heads", "mlp_ratio",
          "text_width", "text_layers", "text_ff_dim")


def _family(config) -> str:
  if config.family not in FAMILIES:
    raise ValueError(f"config.family={config.family!r} is not a text-conditioned family; "
                     f"expected one of {', '.join(FAMILIES)}")
  return config.family


def denoiser_module(config, dtype=None):
  """The Flax denoiser of `config.family` ("finepose" or "dsgdiffu") for `config.model`."""
  return convert_finepose.denoiser_module(_family(config), config.model, dtype)


def text_actions(config) -> tuple[str, ...]:
  """The prompt names of the text cache rows: `config.text.actions`, or `(prompts.NO_ACTION,)`
  for MPI-INF-3DHP (one prompt without action text)."""
  if config.data.dataset == "3dhp":
    return (prompts.NO_ACTION,)
  return tuple(prompts.action_prompt_name(a) for a in config.text.actions)


def checkpoint_meta(config) -> dict:
  """What a checkpoint records about its model and its text cache rows."""
  sizes = _SIZES + (("graph",) if _family(config) == "dsgdiffu" else ())
  return {"family": config.family, "model": {k: config.model[k] for k in sizes},
          "text_actions": list(text_actions(config))}


def action_indices(config, action_keys: Sequence[str]) -> np.ndarray:
  """Text cache rows [B] int32 of Human3.6M action keys ("Directions 1" -> "Directions"'s row).

  Raises:
    ValueError: an action whose prompt name is not in `config.text.actions`.
  """
  names = text_actions(config)
  if config.data.dataset == "3dhp":
    return np.zeros((len(action_keys),), np.int32)
  rows = []
  for key in action_keys:
    name = prompts.action_prompt_name(key)
    if name not in names:
      raise ValueError(f"action {key!r} (prompt {name!r}) has no text cache row; "
                       f"config.text.actions is {list(names)} (add it and convert again)")
    rows.append(names.index(name))
  return np.asarray(rows, np.int32)


def convert(config, denoiser_path, lifter_path=None, clip_path=None
            ) -> tuple[dict, dict[str, list[str]]]:
  """A released checkpoint -> ({'denoiser', 'text_cache'}, {part: unconverted torch keys}).

  The file is upstream's `torch.save` dict; the weights are under `model_pos`. The denoiser is
  converted strictly; the prompt context (`ctx_*`) and CLIP ViT-B/32's text tower are run once
  over the prompt of every name in `text_actions(config)` to fill the text cache. Released
  checkpoints carry CLIP (`clip_text.*`); for one that does not, pass OpenAI's ViT-B-32.pt as
  `clip_path`.

  Raises:
    ValueError: `lifter_path` given; `clip_path` given although the checkpoint carries CLIP.
    common.ConversionError: another family or size; no CLIP anywhere (the message says where to
      download it and how to pass it).
  """
  family = _family(config)
  if lifter_path:
    raise ValueError(f"{family} has a single network; --lifter ({lifter_path}) is not used by it")
  obj = safe_load.load_torch_checkpoint(denoiser_path)
  state_dict = convert_common.extract_state_dict(obj, denoiser_path, dict_key="model_pos")
  source = str(denoiser_path)
  params, report, text_state = convert_finepose.convert_denoiser(
      state_dict, config.model, config.diffusion, family=family, source=source)
  cache, clip_unused = convert_finepose.text_cache(
      text_state, family=family, dataset=config.data.dataset,
      actions=None if config.data.dataset == "3dhp" else text_actions(config),
      clip_path=clip_path, source=source)
  if cache["clip_features"].shape[-1] != config.model.text_width:
    raise convert_common.ConversionError(
        f"{source}: CLIP's width is {cache['clip_features'].shape[-1]}, but the model's "
        f"text_width is {config.model.text_width}")
  return ({"denoiser": params, "text_cache": {"clip_features": cache["clip_features"],
                                              "eot_index": cache["eot_index"]}},
          {"denoiser": list(report.unused), "text_cache": clip_unused})


def rows_interact(config, stage: str) -> bool:
  """Whether a training batch's rows depend on each other, so that cutting it into passes would
  change the step: with upstream's text tiling a row's cross-attention reads another clip's
  prompt, and DSGDiffu's graph attention acts on a call's row 0 only."""
  del stage
  return _family(config) == "dsgdiffu" or config.model.text_tiling == "upstream"


def untrained_params(config) -> dict[str, tuple[str, ...]]:
  """{stage: parameter path prefixes no loss reaches}: DSGDiffu's `STEblocks.0`, built and saved
  upstream but never run, so its gradient is None and AdamW neither moves nor decays it."""
  return {"denoiser": ("spatial_blocks_0",)} if _family(config) == "dsgdiffu" else {}


def init_params(config, key) -> dict:
  """Fresh parameters {'denoiser', 'text_cache'}; the cache is random N(0, 1) features.

  A random cache has the right shapes for tests and for wiring; real training needs the cache a
  converted checkpoint provides (CLIP and the checkpoint's prompt context): take it from
  `convert(...)["text_cache"]` and train only params["denoiser"].
  """
  frames, joints = config.model.num_frames, config.model.num_joints
  width = config.model.text_width
  k_model, k_text = jax.random.split(key)
  rows = len(text_actions(config))
  variables = denoiser_module(config).init(
      k_model, jnp.zeros((1, frames, joints, 2), jnp.float32),
      jnp.zeros((1, frames, joints, 3), jnp.float32), jnp.zeros((1,), jnp.float32),
      jnp.zeros((1, prompts.CONTEXT_LENGTH, width), jnp.float32), jnp.zeros((1,), jnp.int32))
  cache = {"clip_features": jax.random.normal(k_text, (rows, prompts.CONTEXT_LENGTH, width),
                                              jnp.float32),
           "eot_index": jnp.full((rows,), prompts.CONTEXT_LENGTH - 1, jnp.int32)}
  return {"denoiser": variables["params"], "text_cache": cache}


def _check_params(params) -> None:
  if not isinstance(params, dict) or "denoiser" not in params:
    found = list(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError(f"FinePOSE/DSGDiffu expect params {{'denoiser': ..., 'text_cache': ...}} "
                     f"(from init_params or convert), got {found}")


def select_text(text_cache, batch_size: int, *, action_index=None, clip_features=None,
                eot_index=None) -> tuple[jax.Array, jax.Array]:
  """The prompt of each of B clips: (clip_features [B, L, W], eot_index [B]).

  Either explicit `clip_features` [B, L, W] and `eot_index` [B], or `action_index` [B] rows of
  `text_cache` ({'clip_features' [A, L, W], 'eot_index' [A]}). A one-row cache (MPI-INF-3DHP)
  needs no action_index.

  Raises:
    ValueError: both or neither ways given, or shapes that do not fit B.
  """
  if clip_features is not None or eot_index is not None:
    if action_index is not None:
      raise ValueError("pass either action_index or clip_features and eot_index, not both")
    if clip_features is None or eot_index is None:
      raise ValueError("clip_features and eot_index go together")
    clip_features, eot_index = jnp.asarray(clip_features), jnp.asarray(eot_index)
    if clip_features.ndim != 3 or clip_features.shape[0] != batch_size:
      raise ValueError(f"clip_features must be [B={batch_size}, L, W], got {clip_features.shape}")
    if eot_index.shape != (batch_size,):
      raise ValueError(f"eot_index must be [B={batch_size}], got {eot_index.shape}")
    return clip_features, eot_index
  if not isinstance(text_cache, dict) or set(text_cache) < {"clip_features", "eot_index"}:
    found = list(text_cache) if isinstance(text_cache, dict) else type(text_cache).__name__
    raise ValueError("the text cache must be {'clip_features': [A, L, W], 'eot_index': [A]} "
                     f"(params['text_cache'] from convert or init_params), got {found}")
  rows = text_cache["clip_features"].shape[0]
  if action_index is None:
    if rows != 1:
      raise ValueError(f"the text cache has {rows} prompts: pass action_index [B] (the prompt "
                       "row of each clip, see action_indices)")
    action_index = jnp.zeros((batch_size,), jnp.int32)
  action_index = jnp.asarray(action_index)
  if action_index.shape != (batch_size,):
    raise ValueError(f"action_index must be [B={batch_size}] (one text cache row per clip), got "
                     f"shape {action_index.shape}")
  return (jnp.asarray(text_cache["clip_features"])[action_index],
          jnp.asarray(text_cache["eot_index"])[action_index])


def denoiser_apply(config, denoiser_params, clip_features, eot_index, dtype=None, rows=0
                   ) -> d3dp.DenoiserApply:
  """The network as a `d3dp.DenoiserApply`, with the B clips' prompts bound.

  Each group is its own model call, as upstream's separate plain and mirrored passes: in training
  the groups are vmapped; a deterministic pass encodes the text once and then runs the rows of all
  groups `rows` at a time (`prepare_text` / `denoise_rows`), with every row carrying its group's
  text indices, so the result is the same.

  Args:
    config: the experiment config.
    denoiser_params: params['denoiser'].
    clip_features: [B, L, W] and eot_index: [B], the prompt of each clip (`select_text`).
    dtype: compute dtype (None = float32).
    rows: rows per deterministic pass (`chunking.map_rows`; 0 = all rows in one pass).
  """
  model = denoiser_module(config, dtype)
  variables = {"params": denoiser_params}

  def one_call(rows_2d, rows_x, rows_t, deterministic, rngs):
    return model.apply(variables, rows_2d, rows_x, rows_t, clip_features, eot_index,
                       deterministic=deterministic, rngs=rngs)

  def row_pass(rows_2d, rows_x, rows_t, text):
    return model.apply(variables, rows_2d, rows_x, rows_t, method="denoise_rows", **text)

  def apply(rows_2d, rows_x, rows_t, deterministic=True, rngs=None):
    if not deterministic:
      return jax.vmap(lambda a, b, c: one_call(a, b, c, False, rngs))(rows_2d, rows_x, rows_t)
    groups, num = rows_x.shape[:2]
    text = model.apply(variables, rows_2d[0], rows_x[0], rows_t[0], clip_features, eot_index,
                       method="prepare_text")
    xf_out = text.pop("xf_out")
    del text["t"]  # each group's own timesteps come from rows_t
    # Every group is a call of its own: the same text indices, and its own row 0.
    per_row = jax.tree.map(lambda v: jnp.concatenate([v] * groups), text)
    merge = lambda a: a.reshape((groups * num,) + a.shape[2:])
    out = chunking.map_rows(
        lambda r2, rx, rt, per: row_pass(r2, rx, rt, dict(per, xf_out=xf_out)), rows,
        merge(rows_2d), merge(rows_x), merge(rows_t), per_row)
    return out.reshape((groups, num) + out.shape[1:])

  return apply


def _eval_apply(config, params, batch_size, action_index, clip_features, eot_index):
  _check_params(params)
  features, eot = select_text(params.get("text_cache"), batch_size, action_index=action_index,
                              clip_features=clip_features, eot_index=eot_index)
  return denoiser_apply(config, params["denoiser"], features, eot, config.eval.compute_dtype,
                        chunking.chunk_rows(config))


def denoise_flip(config, params, x, input_2d, t, *, action_index=None, clip_features=None,
                 eot_index=None):
  """`d3dp.denoise_flip` (upstream `model_predictions_fliping`) with each clip's prompt.

  Args:
    x: [B, H, F, J, 3]; input_2d: [B, F, J, 2]; t: [B].
    action_index / clip_features, eot_index: the prompts, see `select_text`.

  Returns:
    (x_start, pred_noise), both [B, H, F, J, 3].
  """
  apply_fn = _eval_apply(config, params, input_2d.shape[0], action_index, clip_features,
                         eot_index)
  return d3dp.denoise_flip_with(config, apply_fn, x, input_2d, t)


def sample(config, params, input_2d, key=None, *, action_index=None, clip_features=None,
           eot_index=None, noise_init=None, noise_steps=None, num_hypotheses=None,
           num_steps=None, return_details=False):
  """The evaluation sampler (upstream `ddim_sample_flip`) with each clip's prompt.

  Args:
    config: the experiment config.
    params: {'denoiser', 'text_cache'}.
    input_2d: [B, F, J, 2] normalised 2D keypoints of B clips.
    key: PRNG key for x_T and the eta noise.
    action_index: [B] int, the text cache row of each clip (not needed with a one-row cache).
    clip_features, eot_index: [B, L, W] and [B], explicit prompts instead of action_index.
    noise_init, noise_steps, num_hypotheses, num_steps, return_details: see `d3dp.sample_with`.

  Returns:
    x0 of every step [B, K, H, F, J, 3] (and the details), as `d3dp.sample_with`.
  """
  apply_fn = _eval_apply(config, params, input_2d.shape[0], action_index, clip_features,
                         eot_index)
  return d3dp.sample_with(config, apply_fn, input_2d, key, noise_init=noise_init,
                          noise_steps=noise_steps, num_hypotheses=num_hypotheses,
                          num_steps=num_steps, return_details=return_details)


def _train_apply(config, denoiser_params, batch, text_cache):
  batch_size = batch["input_2d"].shape[0] if "input_2d" in batch else 0
  features, eot = select_text(
      text_cache, batch_size, action_index=batch.get("action_index"),
      clip_features=batch.get("clip_features"), eot_index=batch.get("eot_index"))
  return denoiser_apply(config, denoiser_params, features, eot,
                        config.train.get("compute_dtype", "float32"))


def denoiser_loss_with_noise(config, denoiser_params, batch, t, noise, deterministic=True,
                             key=None, *, text_cache=None):
  """`d3dp.denoiser_loss_with_noise` with each clip's prompt.

  Args:
    batch: {'input_2d', 'target_3d'} as D3DP, plus 'action_index' [B] (rows of `text_cache`) or
      'clip_features' [B, L, W] and 'eot_index' [B].
    text_cache: params['text_cache'] (needed with 'action_index').
    Others: as `d3dp.denoiser_loss_with_noise`.
  """
  apply_fn = _train_apply(config, denoiser_params, batch, text_cache)
  return d3dp.loss_with_noise_with(config, apply_fn, batch, t, noise, deterministic, key)


def denoiser_loss(config, denoiser_params, batch, key, *, text_cache=None) -> jax.Array:
  """`d3dp.denoiser_loss` (random t, stochastic depth) with each clip's prompt.

  The training loop passes params['text_cache'] as `text_cache` (see `losses`).
  """
  return d3dp.loss_with(config, _train_apply(config, denoiser_params, batch, text_cache), batch,
                        key)


def losses(text_cache) -> dict:
  """{stage: loss(config, stage_params, batch, key)} with this run's text cache bound."""
  return {"denoiser": lambda config, params, batch, key: denoiser_loss(
      config, params, batch, key, text_cache=text_cache)}


# Batches that carry 'clip_features' and 'eot_index' themselves need no bound cache.
LOSSES = {"denoiser": denoiser_loss}
