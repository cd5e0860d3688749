"""The D3DP denoiser: MixSTE2 on [2D keypoints | noisy 3D] tokens, predicting the clean 3D clip.

Spec video_family.md §1.2-1.3. Every joint of every frame is one token: [u, v, x, y, z] embedded to
C channels, plus a learned joint embedding and the time embedding of its row. `depth` times, a
spatial block attends over the J joints of each frame and a temporal block over the F frames of
each joint; one shared `spatial_norm` follows every spatial block and one shared `temporal_norm`
every temporal block; the learned frame embedding is added once, before the first temporal block.
A LayerNorm (eps 1e-5) and a Linear(C, 3) head give x0.

Rows N fold clips, hypotheses and flips: each row is one clip with its own t, which equals
upstream's per-clip time embedding broadcast over its H hypotheses. Tokens stay in a
`[N, F, J, C]` grid and are only transposed to `[N, J, F, C]` for the temporal blocks.

The forward pass is split into methods (`time_embedding`, `embed`, `spatial_stage`,
`temporal_stage`, `predict_head`) so FinePOSE/DSGDiffu can subclass `MixSTEDenoiser`, extend
`setup` and recompose `__call__` with their extra modules.

Parameter names (torch key in brackets): `joint_embed` [Spatial_patch_to_embedding],
`spatial_pos_embed` [Spatial_pos_embed] [1, J, C], `temporal_pos_embed` [Temporal_pos_embed]
[1, F, C], `time_mlp/fc1|fc2` [time_mlp.1|3], `spatial_blocks_i` [STEblocks.i],
`temporal_blocks_i` [TTEblocks.i], `spatial_norm` [Spatial_norm], `temporal_norm`
[Temporal_norm], `head_norm` [head.0], `head_out` [head.1].
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from posediff_jax.models import transformer

HEAD_LN_EPS = 1e-5  # torch `nn.LayerNorm` default; the blocks use 1e-6


class MixSTEDenoiser(nn.Module):
  """MixSTE2 as D3DP's x0 predictor (upstream `D3DP.pose_estimator`).

  Attributes:
    num_frames: F, the only clip length the model accepts (upstream -f, 243).
    num_joints: J (17).
    embed_dim: C (upstream -cs, 512).
    depth: number of spatial/temporal block pairs (upstream -dep, 8).
    num_heads: attention heads (8).
    mlp_ratio: MLP hidden width / C (2.0).
    drop_path_rate: stochastic depth at the last depth; block i uses linspace(0, rate, depth)[i].
    dtype: matmul operand dtype (parameters, activations and the output stay float32).
    remat: rematerialise every block in the backward pass (`config.model.remat`): a block keeps
      only its input, so training's activation memory falls about depth-fold for about a third
      more FLOPs. Same parameters, same values.
  """

  num_frames: int = 243
  num_joints: int = 17
  embed_dim: int = 512
  depth: int = 8
  num_heads: int = 8
  mlp_ratio: float = 2.0
  drop_path_rate: float = 0.0
  dtype: Any = None
  remat: bool = False

  def setup(self):
    c, dtype = self.embed_dim, self.dtype
    self.joint_embed = transformer.Dense(c, dtype=dtype)
    self.spatial_pos_embed = self.param("spatial_pos_embed", nn.initializers.zeros,
                                        (1, self.num_joints, c))
    self.temporal_pos_embed = self.param("temporal_pos_embed", nn.initializers.zeros,
                                         (1, self.num_frames, c))
    self.time_mlp = transformer.TimeMLP(c, dtype=dtype)
    rates = transformer.drop_path_rates(self.drop_path_rate, self.depth)
    block = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=dtype)
    # `deterministic` (argument 2, counting self) is a Python bool: static for the remat trace.
    block_type = (nn.remat(transformer.Block, static_argnums=(2,)) if self.remat
                  else transformer.Block)
    self.spatial_blocks = [block_type(drop_path_rate=r, **block) for r in rates]
    self.temporal_blocks = [block_type(drop_path_rate=r, **block) for r in rates]
    self.spatial_norm = transformer.layer_norm(transformer.BLOCK_LN_EPS)
    self.temporal_norm = transformer.layer_norm(transformer.BLOCK_LN_EPS)
    self.head_norm = transformer.layer_norm(HEAD_LN_EPS)
    self.head_out = transformer.Dense(3, dtype=dtype)

  def check_inputs(self, input_2d: jax.Array, noisy_3d: jax.Array, t: jax.Array) -> jax.Array:
    """Raises a ValueError naming the wrong shape; returns t as [N]."""
    frames, joints = self.num_frames, self.num_joints
    if input_2d.ndim != 4 or input_2d.shape[1:] != (frames, joints, 2):
      hint = ""
      if input_2d.ndim == 4 and input_2d.shape[1] != frames:
        hint = (f": the model takes clips of exactly num_frames={frames} frames, this one has "
                f"{input_2d.shape[1]} (set --config.model.num_frames or cut the clip)")
      raise ValueError(f"MixSTEDenoiser: input_2d must be [N, {frames}, {joints}, 2], got "
                       f"{input_2d.shape}{hint}")
    if noisy_3d.shape != input_2d.shape[:3] + (3,):
      raise ValueError(f"MixSTEDenoiser: noisy_3d must be [N, {frames}, {joints}, 3] with the "
                       f"N={input_2d.shape[0]} rows of input_2d, got {noisy_3d.shape}")
    t = jnp.asarray(t)
    if t.ndim == 0:
      t = jnp.broadcast_to(t, input_2d.shape[:1])
    if t.shape != input_2d.shape[:1]:
      raise ValueError(f"MixSTEDenoiser: t must be [N] = [{input_2d.shape[0]}] (one timestep per "
                       f"row), got shape {t.shape}")
    return t

  def time_embedding(self, t: jax.Array) -> jax.Array:
    """Timesteps [N] -> [N, C]."""
    return self.time_mlp(t)

  def embed(self, input_2d: jax.Array, noisy_3d: jax.Array, time_emb: jax.Array) -> jax.Array:
    """[N, F, J, 2], [N, F, J, 3], [N, C] -> tokens [N, F, J, C] (joint and time embeddings in)."""
    tokens = jnp.concatenate([input_2d, noisy_3d], axis=-1).astype(jnp.float32)
    x = self.joint_embed(tokens) + self.spatial_pos_embed
    return x + time_emb[:, None, None, :]

  def spatial_stage(self, i: int, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """Spatial block i + the shared spatial norm on [N, F, J, C] (attention over joints)."""
    return self.spatial_norm(self.spatial_blocks[i](x, deterministic))

  def temporal_stage(self, i: int, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """Temporal block i + the shared temporal norm on [N, J, F, C] (attention over frames).

    The frame embedding is added before block 0 only, as upstream.
    """
    if i == 0:
      x = x + self.temporal_pos_embed
    return self.temporal_norm(self.temporal_blocks[i](x, deterministic))

  def predict_head(self, x: jax.Array) -> jax.Array:
    """[N, F, J, C] -> x0 [N, F, J, 3], float32."""
    return self.head_out(self.head_norm(x))

  def __call__(self, input_2d: jax.Array, noisy_3d: jax.Array, t: jax.Array,
               deterministic: bool = True) -> jax.Array:
    """Predicts the clean 3D clip.

    Args:
      input_2d: [N, F, J, 2] normalised 2D keypoints.
      noisy_3d: [N, F, J, 3] the noisy 3D, already clamped and divided by the diffusion scale.
      t: [N] timesteps (int or float), one per row.
      deterministic: False turns on stochastic depth (rng stream 'dropout').

    Returns:
      x0 [N, F, J, 3] in scaled units (before the sampler's ×scale and clamp), float32.
    """
    t = self.check_inputs(input_2d, noisy_3d, t)
    x = self.embed(input_2d, noisy_3d, self.time_embedding(t))
    for i in range(self.depth):
      x = self.spatial_stage(i, x, deterministic)
      x = transformer.spatial_to_temporal(x)
      x = self.temporal_stage(i, x, deterministic)
      x = transformer.temporal_to_spatial(x)
    return self.predict_head(x)


def denoiser_from_config(model_config, dtype=None) -> MixSTEDenoiser:
  """The denoiser for `config.model` (num_frames, num_joints, embed_dim, depth, num_heads,
  mlp_ratio, drop_path_rate; a ConfigDict, a dict or any object with those attributes);
  `dtype` is the compute dtype (a name or a dtype; None = float32)."""
  get = ((lambda name: model_config[name]) if isinstance(model_config, Mapping)
         else (lambda name: getattr(model_config, name)))
  embed_dim, num_heads = int(get("embed_dim")), int(get("num_heads"))
  if embed_dim % num_heads:
    raise ValueError(f"model.embed_dim ({embed_dim}) must be divisible by model.num_heads "
                     f"({num_heads})")
  if embed_dim % 2:
    raise ValueError(f"model.embed_dim must be even (sinusoidal time embedding), got {embed_dim}")
  # `remat` is optional (configs and model dicts from before it have none).
  remat = (model_config.get("remat", False) if isinstance(model_config, Mapping)
           else getattr(model_config, "remat", False))
  return MixSTEDenoiser(
      num_frames=int(get("num_frames")), num_joints=int(get("num_joints")), embed_dim=embed_dim,
      depth=int(get("depth")), num_heads=num_heads, mlp_ratio=float(get("mlp_ratio")),
      drop_path_rate=float(get("drop_path_rate")),
      dtype=None if dtype is None else jnp.dtype(dtype), remat=bool(remat))
