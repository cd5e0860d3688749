"""The FinePOSE denoiser: D3DP's MixSTE2 with a text branch (spec video_family.md §2.2-2.3).

FinePOSE conditions the D3DP denoiser on a prompt per clip. The prompt's CLIP output (computed
once per action outside the model, see `posediff_jax.models.prompts`) enters as `clip_features`
[b, L, W] with L = 77 tokens of width W, together with `eot_index` [b], the token whose feature
summarises the prompt. Compared with `MixSTEDenoiser` there are three additions:

* a text encoder: `text_layers` post-norm transformer layers over the CLIP tokens, then
  `text_ln`: `xf_out` [b, L, W]; `xf_proj = text_proj(xf_out[eot_index])` [b, C];
* PTS (prompt-driven timestamp stylization): every row's time embedding becomes
  `time_mlp(t) + xf_proj` of its clip (the "style" vector);
* FPC (fine-grained prompt-pose communication): once, between the first spatial stage and the
  first temporal block, `temporal_cross_attn` lets every frame token of a joint attend to the L
  text tokens; its output is modulated by the style vector (a StylizationBlock) and added back.

Row order. N = b x R rows, clip-major: row n belongs to clip n // R (R = hypotheses for one
sampler call, 1 in training). Upstream runs the plain and the mirrored pass as two separate calls,
so the sampler (`families/finepose.py`) calls the model once per pass (vmapped); each call then
sees exactly upstream's rows. In the temporal layout the rows are (clip, hypothesis, joint).

Text tiling (`text_tiling`). Upstream tiles the b texts over the N·J temporal rows, so temporal row
r = n·J + j attends to the text of clip r mod b, not of its own clip n // R ("upstream", the
default, needed for checkpoint parity). "per_clip" uses each row's own clip. The two agree when
all clips of a call share one prompt (every Human3.6M evaluation batch: one video).

Rows apart (`prepare_text`, `denoise_rows`). Given the encoded text, every row is independent once
it carries its own text indices (`text_rows`) and a flag for the call's row 0 (DSGDiffu's graph
acts there only). So a call can run a few rows at a time (`chunking.map_rows`), which is faster on
CPU, with the same result as `__call__`.

Parameter names (torch key under `pose_estimator.` in brackets), besides MixSTEDenoiser's:
`text_encoder_layers_i/{self_attn/attn_qkv, self_attn/attn_proj, linear1, linear2, norm1, norm2}`
[textTransEncoder.layers.i.{self_attn.in_proj_*, self_attn.out_proj, linear1, linear2, norm1,
norm2}], `text_ln` [text_ln], `text_proj` [text_proj.0], `temporal_cross_attn/{norm, text_norm,
query, key, value, proj_out/{emb_layers_1, norm, out_layers_2}}` [temporal_cross_attn.*].
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax.models import d3dp
from posediff_jax.models import transformer

# torch `nn.LayerNorm` / `nn.TransformerEncoderLayer` default, used by the whole text branch.
TEXT_LN_EPS = 1e-5
TEXT_TILINGS = ("upstream", "per_clip")


class TextEncoderLayer(nn.Module):
  """`torch.nn.TransformerEncoderLayer` as FinePOSE builds it: post-norm, exact GELU, no dropout.

  x = norm1(x + self_attn(x)); x = norm2(x + linear2(GELU(linear1(x)))). The attention's
  in_proj rows are [q; k; v], head-major, like `transformer.SelfAttention`'s fused qkv.

  Attributes:
    num_heads: attention heads.
    ff_dim: feed-forward width (upstream 2048).
    dtype: compute dtype.
  """

  num_heads: int
  ff_dim: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [b, L, W] to [b, L, W]."""
    width = x.shape[-1]
    attended = transformer.SelfAttention(self.num_heads, True, self.dtype, name="self_attn")(x)
    x = transformer.layer_norm(TEXT_LN_EPS, name="norm1")(x + attended)
    hidden = transformer.Dense(self.ff_dim, dtype=self.dtype, name="linear1")(x)
    hidden = transformer.Dense(width, dtype=self.dtype, name="linear2")(
        nn.gelu(hidden, approximate=False))
    return transformer.layer_norm(TEXT_LN_EPS, name="norm2")(x + hidden)


class StylizationBlock(nn.Module):
  """Modulates attention output by a per-row style vector (MotionDiffuse's StylizationBlock).

  (scale, shift) = emb_layers_1(SiLU(style)); h = norm(y)·(1 + scale) + shift;
  out = out_layers_2(SiLU(h)). `out_layers_2` starts at zero, so a fresh block adds nothing.

  Attributes:
    features: C, the width of y and of the output.
    dtype: compute dtype.
  """

  features: int
  dtype: Any = None

  @nn.compact
  def __call__(self, y: jax.Array, style: jax.Array) -> jax.Array:
    """y [N, J, F, C] and style [N, E] (one vector per row) -> [N, J, F, C]."""
    emb = transformer.Dense(2 * self.features, dtype=self.dtype, name="emb_layers_1")(
        nn.silu(style))
    scale, shift = jnp.split(emb[:, None, None, :], 2, axis=-1)
    h = transformer.layer_norm(TEXT_LN_EPS, name="norm")(y) * (1 + scale) + shift
    out = nn.Dense(self.features, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                   bias_init=nn.initializers.zeros, name="out_layers_2")
    return out(nn.silu(h))


class TemporalCrossAttention(nn.Module):
  """FPC: the frame tokens of every joint attend to the text tokens; x + stylized attention.

  q = query(norm(x)); k = key(text_norm(xf_out)), v = value(text_norm(xf_out)); softmax over the
  L text tokens per frame and head, scaled by (C / num_heads)^-0.5; the result goes through the
  StylizationBlock `proj_out` with the row's style vector.

  Attributes:
    features: C.
    num_heads: attention heads (must divide C).
    text_tiling: "upstream" (row r of the temporal layout reads clip r mod b) or "per_clip".
    dtype: compute dtype.
  """

  features: int
  num_heads: int = 8
  text_tiling: str = "upstream"
  dtype: Any = None

  def setup(self):
    c, dtype = self.features, self.dtype
    self.norm = transformer.layer_norm(TEXT_LN_EPS)
    self.text_norm = transformer.layer_norm(TEXT_LN_EPS)
    self.query = transformer.Dense(c, dtype=dtype)
    self.key = transformer.Dense(c, dtype=dtype)
    self.value = transformer.Dense(c, dtype=dtype)
    self.proj_out = StylizationBlock(c, dtype=dtype)

  def attend(self, x: jax.Array, xf_out: jax.Array, style: jax.Array,
             text_clip: jax.Array) -> jax.Array:
    """The stylized cross-attention branch alone.

    Args:
      x: [N, J, F, C] temporal-layout tokens.
      xf_out: [b, L, W] encoded text of the b clips.
      style: [N, C] the style vector of every row.
      text_clip: [N, J] int, the clip of xf_out that each (row, joint) reads (`text_rows`).

    Returns:
      [N, J, F, C].
    """
    rows, joints, frames, width = x.shape
    clips, length = xf_out.shape[:2]
    heads = self.num_heads
    head_dim = width // heads
    text = self.text_norm(xf_out)
    # Keys and values once per clip, then each (row, joint) takes its clip's: [N, J, L, H, D].
    key = self.key(text).reshape(clips, length, heads, head_dim)[text_clip]
    value = self.value(text).reshape(clips, length, heads, head_dim)[text_clip]
    query = self.query(self.norm(x)).reshape(rows, joints, frames, heads, head_dim)
    logits = jnp.einsum("njfhd,njmhd->njfhm", query, key)
    probs = jax.nn.softmax(logits.astype(jnp.float32) * head_dim**-0.5, axis=-1)
    attended = jnp.einsum("njfhm,njmhd->njfhd", probs.astype(value.dtype), value)
    return self.proj_out(attended.reshape(x.shape), style)

  def __call__(self, x: jax.Array, xf_out: jax.Array, style: jax.Array, text_clip: jax.Array,
               first_row: jax.Array) -> jax.Array:
    """x [N, J, F, C] + the stylized cross-attention (args as `attend`; `first_row` [N] bool is
    for DSGDiffu's graph and unused here) -> [N, J, F, C]."""
    del first_row
    return x + self.attend(x, xf_out, style, text_clip)


def text_rows(rows: int, clips: int, joints: int, tiling: str) -> tuple[np.ndarray, np.ndarray]:
  """Which clip's text each row of a call reads, for N = `rows` rows of b = `clips` clips.

  Returns:
    style_clip [N] (the clip whose `xf_proj` styles row n: its own, n // R) and text_clip [N, J]
    (the clip whose tokens joint j of row n attends to in the cross-attention), int32.
  """
  if clips < 1 or rows % clips:
    raise ValueError(f"text_rows: {rows} rows are not b x R rows for b={clips} clips")
  row = np.arange(rows)[:, None]
  style_clip = row[:, 0] // (rows // clips)
  if tiling == "upstream":
    # Upstream quirk: texts tiled over the (clip, hypothesis, joint) rows, row r reads r mod b.
    text_clip = (row * joints + np.arange(joints)) % clips
  elif tiling == "per_clip":
    text_clip = np.broadcast_to(style_clip[:, None], (rows, joints))
  else:
    raise ValueError(f"text_tiling must be one of {TEXT_TILINGS}, got {tiling!r}")
  return style_clip.astype(np.int32), np.ascontiguousarray(text_clip, np.int32)


class FinePoseDenoiser(d3dp.MixSTEDenoiser):
  """FinePOSE's x0 predictor (upstream `FinePOSE.pose_estimator` without its CLIP).

  Attributes (besides MixSTEDenoiser's):
    text_width: W, the width of the CLIP features and of the text encoder (upstream 512).
    text_layers: text encoder depth (upstream 4).
    text_ff_dim: text encoder feed-forward width (upstream 2048).
    text_tiling: "upstream" or "per_clip" (module docstring).
  """

  text_width: int = 512
  text_layers: int = 4
  text_ff_dim: int = 2048
  text_tiling: str = "upstream"

  def setup(self):
    super().setup()
    if self.text_tiling not in TEXT_TILINGS:
      raise ValueError(f"{type(self).__name__}: text_tiling must be one of {TEXT_TILINGS}, got "
                       f"{self.text_tiling!r}")
    dtype = self.dtype
    self.text_encoder_layers = [TextEncoderLayer(self.num_heads, self.text_ff_dim, dtype)
                                for _ in range(self.text_layers)]
    self.text_ln = transformer.layer_norm(TEXT_LN_EPS)
    self.text_proj = transformer.Dense(self.embed_dim, dtype=dtype)
    self.temporal_cross_attn = self._make_cross_attention()

  def _make_cross_attention(self) -> TemporalCrossAttention:
    return TemporalCrossAttention(self.embed_dim, self.num_heads, self.text_tiling, self.dtype)

  def check_text(self, input_2d: jax.Array, clip_features: jax.Array,
                 eot_index: jax.Array) -> None:
    """Raises a ValueError naming the wrong shape."""
    if clip_features.ndim != 3 or clip_features.shape[2] != self.text_width:
      raise ValueError(f"{type(self).__name__}: clip_features must be [b, L, text_width="
                       f"{self.text_width}] (batch-first CLIP output per clip), got "
                       f"{clip_features.shape}")
    clips = clip_features.shape[0]
    if eot_index.shape != (clips,):
      raise ValueError(f"{type(self).__name__}: eot_index must be [b] = [{clips}] (one token "
                       f"index per clip of clip_features), got shape {eot_index.shape}")
    rows = input_2d.shape[0]
    if clips == 0 or rows % clips:
      raise ValueError(f"{type(self).__name__}: the {rows} rows of input_2d must be b x R rows "
                       f"for the b={clips} clips of clip_features (clip-major)")

  def encode_text(self, clip_features: jax.Array, eot_index: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """CLIP features [b, L, W] and EOT indices [b] -> (xf_out [b, L, W], xf_proj [b, C])."""
    x = clip_features.astype(jnp.float32)
    for layer in self.text_encoder_layers:
      x = layer(x)
    xf_out = self.text_ln(x)
    # Upstream quirk (spec §11.5): the EOT position of the action's own tokens indexes the prompt.
    summary = xf_out[jnp.arange(xf_out.shape[0]), eot_index]
    return xf_out, self.text_proj(summary)

  def first_spatial_stage(self, x: jax.Array, first_row: jax.Array,
                          deterministic: bool = True) -> jax.Array:
    """Spatial stage 0 on [N, F, J, C] (DSGDiffu replaces it; `first_row` is for its graph)."""
    del first_row
    return self.spatial_stage(0, x, deterministic)

  def prepare_text(self, input_2d: jax.Array, noisy_3d: jax.Array, t: jax.Array,
                   clip_features: jax.Array, eot_index: jax.Array) -> dict:
    """Checks a call's inputs and encodes its prompts once: what `denoise_rows` takes.

    Args: as `__call__`.

    Returns:
      {'t' [N], 'xf_out' [b, L, W], 'row_text' [N, C] (each row's `xf_proj`), 'text_clip'
      [N, J] and 'first_row' [N] bool (True for row 0 only)}.
    """
    t = self.check_inputs(input_2d, noisy_3d, t)
    eot_index = jnp.asarray(eot_index)
    self.check_text(input_2d, clip_features, eot_index)
    xf_out, xf_proj = self.encode_text(clip_features, eot_index)
    rows, clips = input_2d.shape[0], clip_features.shape[0]
    style_clip, text_clip = text_rows(rows, clips, self.num_joints, self.text_tiling)
    return {"t": t, "xf_out": xf_out, "row_text": xf_proj[style_clip],
            "text_clip": jnp.asarray(text_clip), "first_row": jnp.arange(rows) == 0}

  def denoise_rows(self, input_2d: jax.Array, noisy_3d: jax.Array, t: jax.Array,
                   xf_out: jax.Array, row_text: jax.Array, text_clip: jax.Array,
                   first_row: jax.Array, deterministic: bool = True) -> jax.Array:
    """The network after the text encoder; row n depends only on row n of every [N, ...] input.

    Args:
      input_2d: [N, F, J, 2]; noisy_3d: [N, F, J, 3]; t: [N] (as `__call__`, already checked).
      xf_out: [b, L, W] the encoded text of the call's b clips.
      row_text: [N, C] each row's `xf_proj`; text_clip: [N, J]; first_row: [N] bool
        (`prepare_text`).
      deterministic: False turns on stochastic depth (rng stream 'dropout').

    Returns:
      x0 [N, F, J, 3] in scaled units, float32.
    """
    style = self.time_embedding(t) + row_text
    x = self.embed(input_2d, noisy_3d, style)
    x = transformer.spatial_to_temporal(self.first_spatial_stage(x, first_row, deterministic))
    x = self.temporal_cross_attn(x, xf_out, style.astype(x.dtype), text_clip, first_row)
    x = transformer.temporal_to_spatial(self.temporal_stage(0, x, deterministic))
    for i in range(1, self.depth):
      x = transformer.spatial_to_temporal(self.spatial_stage(i, x, deterministic))
      x = transformer.temporal_to_spatial(self.temporal_stage(i, x, deterministic))
    return self.predict_head(x)

  def __call__(self, input_2d: jax.Array, noisy_3d: jax.Array, t: jax.Array,
               clip_features: jax.Array, eot_index: jax.Array,
               deterministic: bool = True) -> jax.Array:
    """Predicts the clean 3D clip from the 2D clip, the noisy 3D and the prompt.

    Args:
      input_2d: [N, F, J, 2] normalised 2D keypoints; N = b x R rows, clip-major.
      noisy_3d: [N, F, J, 3] the noisy 3D, already clamped and divided by the diffusion scale.
      t: [N] timesteps, one per row.
      clip_features: [b, L, W] the CLIP text-transformer output of each clip's prompt.
      eot_index: [b] int, the token of each prompt that `text_proj` reads.
      deterministic: False turns on stochastic depth (rng stream 'dropout').

    Returns:
      x0 [N, F, J, 3] in scaled units, float32.
    """
    text = self.prepare_text(input_2d, noisy_3d, t, clip_features, eot_index)
    return self.denoise_rows(input_2d, noisy_3d, deterministic=deterministic, **text)


def config_getter(model_config):
  """`name -> value` for `config.model` given as a ConfigDict, a dict or any object."""
  if isinstance(model_config, Mapping):
    return lambda name: model_config[name]
  return lambda name: getattr(model_config, name)


_BACKBONE_FIELDS = ("num_frames", "num_joints", "embed_dim", "depth", "num_heads", "mlp_ratio",
                    "drop_path_rate", "dtype", "remat")


def denoiser_fields(model_config, dtype=None) -> dict:
  """FinePoseDenoiser's constructor arguments from `config.model`: D3DP's fields (checked as
  D3DP checks them) plus text_width, text_layers, text_ff_dim and text_tiling."""
  backbone = d3dp.denoiser_from_config(model_config, dtype)
  get = config_getter(model_config)
  tiling = str(get("text_tiling"))
  if tiling not in TEXT_TILINGS:
    raise ValueError(f"model.text_tiling must be one of {TEXT_TILINGS}, got {tiling!r}")
  return dict({name: getattr(backbone, name) for name in _BACKBONE_FIELDS},
              text_width=int(get("text_width")), text_layers=int(get("text_layers")),
              text_ff_dim=int(get("text_ff_dim")), text_tiling=tiling)


def denoiser_from_config(model_config, dtype=None) -> FinePoseDenoiser:
  """The FinePOSE denoiser for `config.model` (D3DP's fields plus the text fields); `dtype` is
  the compute dtype (None = float32)."""
  return FinePoseDenoiser(**denoiser_fields(model_config, dtype))
