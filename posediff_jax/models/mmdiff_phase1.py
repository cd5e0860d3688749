"""mmDiff phase 1: the radar point-cloud encoders that give the coarse pose and per-joint features.

Each encoder maps a radar window to a coarse 17-joint pose [B, 17, 3] and per-joint features
[B, 17, F], the phase-2 denoiser's GRC input (spec §1.4):

* `P4TransformerEncoder` (mmBody, upstream `P4Transformer_feat`): a P4D "tube" convolution (per
  anchor frame, furthest point sampling picks N / 32 anchors, a ball query of radius 0.1 collects 32
  points in each of 3 neighbouring frames, their 4-D displacements and features are embedded,
  max-pooled over points and frames), a point-wise position embedding of (x, y, z, frame), 17
  learnable joint tokens in front, a pre-norm transformer, and two heads on the joint tokens.
* `PointTransformerEncoder` (mm-Fi, upstream `PointTransformerReg_feat`): Point-Transformer blocks
  (vector attention over the 16 nearest points) on all points of the window with no down-sampling,
  then the same joint-token transformer and two heads.

The point operations are `posediff_jax.ops.points`, with the pointnet2 CUDA kernels' semantics.
Parameter names follow upstream's module tree, flattened where upstream nests containers
(torch `transformer.layers.3.0.fn.fn.to_q` is `transformer/layers_3_0_to_q`,
`backbone.transformers.1.fc1` is `backbone_transformers_1/fc1`), so `posediff_jax.convert.mmdiff`
maps checkpoints mechanically; upstream's unused heads (`mlp_head`, `var_prediction_heads`) are
not parameters here. The Point Transformer's batch norms keep torch's running statistics in the
`batch_stats` collection.

Notation: B = batch, T = radar frames, N = points per frame, C = point channels, J = 17 joints,
D = transformer width.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import skeleton
from posediff_jax.models import layers
from posediff_jax.ops import points as point_ops

NUM_JOINTS = skeleton.NUM_JOINTS


def _torch_kernel_init(key, shape, dtype=jnp.float32):
  """torch `nn.Linear`'s default weight init, U(±1/sqrt(fan_in)), for a kernel [in, out]."""
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _dense(features: int, name: str, use_bias: bool = True) -> nn.Module:
  """A torch-initialised dense layer; `layers.Linear` when it has a bias."""
  if use_bias:
    return layers.Linear(features, name=name)
  return nn.Dense(features, use_bias=False, kernel_init=_torch_kernel_init, name=name)


def _layer_norm(name: str) -> nn.Module:
  """torch `nn.LayerNorm` (eps 1e-5, two-pass variance)."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


def sinusoid_joint_tokens(num_tokens: int, width: int) -> np.ndarray:
  """Upstream `get_positional_embeddings1`, the joint tokens' initial value: float32 [1, J, D].

  Entry (i, j) is sin(i / 10000^(j/D)) for even j and cos(i / 10000^((j-1)/D)) for odd j.
  """
  i = np.arange(num_tokens, dtype=np.float64)[:, None]
  j = np.arange(width)[None, :]
  even = np.sin(i / (10000.0 ** (j / width)))
  odd = np.cos(i / (10000.0 ** ((j - 1) / width)))
  return np.where(j % 2 == 0, even, odd)[None].astype(np.float32)


class PreNormTransformer(nn.Module):
  """Upstream `Transformer`: per layer x += Attn(LN(x)), then x += FFN(LN(x)); no final norm.

  The attention projections are bias-free, its output projection is followed by GELU (upstream's
  `to_out = Linear, GELU`); the FFN is Linear, GELU, Linear. GELU is the exact (erf) one.
  Submodules `layers_{i}_0_{norm,to_q,to_k,to_v,to_out_0}` and `layers_{i}_1_{norm,net_0,net_3}`.
  """

  depth: int
  heads: int
  dim_head: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [B, L, D] to [B, L, D]."""
    batch, length, width = x.shape
    inner = self.heads * self.dim_head
    for i in range(self.depth):
      with_norm = _layer_norm(f"layers_{i}_0_norm")(x)

      def heads(y):  # [B, L, H*d] -> [B, H, L, d]
        return jnp.swapaxes(y.reshape(batch, length, self.heads, self.dim_head), 1, 2)

      q = heads(_dense(inner, f"layers_{i}_0_to_q", use_bias=False)(with_norm))
      k = heads(_dense(inner, f"layers_{i}_0_to_k", use_bias=False)(with_norm))
      v = heads(_dense(inner, f"layers_{i}_0_to_v", use_bias=False)(with_norm))
      scores = (q @ jnp.swapaxes(k, -1, -2)) * (self.dim_head ** -0.5)
      attended = jnp.swapaxes(jax.nn.softmax(scores, axis=-1) @ v, 1, 2).reshape(
          batch, length, inner)
      x = x + jax.nn.gelu(_dense(width, f"layers_{i}_0_to_out_0")(attended), approximate=False)
      hidden = _dense(self.mlp_dim, f"layers_{i}_1_net_0")(_layer_norm(f"layers_{i}_1_norm")(x))
      x = x + _dense(width, f"layers_{i}_1_net_3")(jax.nn.gelu(hidden, approximate=False))
    return x


def _joint_token_transformer(encoder: nn.Module, embedding: jax.Array) -> jax.Array:
  """The encoders' shared tail: J learnable joint tokens in front of the points, the transformer.

  Called inside `encoder`'s compact `__call__`, so the parameter `joint_posembeds_vector` [1, J, D]
  and the submodule `transformer` are the encoder's own.

  Args:
    encoder: a module with fields `num_joints`, `dim`, `depth`, `heads`, `dim_head`, `mlp_dim`.
    embedding: [B, L, D] point tokens.

  Returns:
    [B, J, D] the transformer's output at the joint tokens.
  """
  tokens = encoder.param("joint_posembeds_vector",
                         lambda key, shape: jnp.asarray(sinusoid_joint_tokens(*shape[1:])),
                         (1, encoder.num_joints, encoder.dim))
  tokens = jnp.broadcast_to(tokens, (embedding.shape[0],) + tokens.shape[1:])
  embedding = jnp.concatenate([tokens.astype(embedding.dtype), embedding], axis=1)
  out = PreNormTransformer(encoder.depth, encoder.heads, encoder.dim_head, encoder.mlp_dim,
                           name="transformer")(embedding)
  return out[:, :encoder.num_joints]


class TubeEmbedding(nn.Module):
  """Upstream `P4DConv` as P4Transformer uses it: '+' operator, max pooling over points and frames,
  no batch norm, activation or bias, no further MLP.

  Params `conv_d_0/kernel` [4, D] (displacement embedding) and `conv_f_0/kernel` [C, D] (feature
  embedding), torch's 1x1 Conv2d weights [D, in, 1, 1] transposed. (Upstream also ships a
  `point_4d_convolution_v2.P4DConv` that discards the point features; `P4Transformer_feat` imports
  the original `point_4d_convolution`, which this is.)
  """

  features: int
  radius: float = 0.1
  num_samples: int = 32
  spatial_stride: int = 32
  temporal_kernel_size: int = 3
  temporal_stride: int = 2
  temporal_padding: tuple[int, int] = (1, 0)

  @nn.compact
  def __call__(self, xyz: jax.Array, point_features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Embeds a point-cloud sequence.

    Args:
      xyz: [B, T, N, 3] point coordinates.
      point_features: [B, T, N, C] point features.

    Returns:
      (anchor xyz [B, T', M, 3], features [B, T', M, D]) with M = N // spatial_stride and
      T' = (T + sum(padding) - kernel) // stride + 1.
    """
    frames, num_points = xyz.shape[1], xyz.shape[2]
    half = self.temporal_kernel_size // 2
    padded = frames + sum(self.temporal_padding)
    if self.temporal_kernel_size % 2 != 1 or (
        padded - self.temporal_kernel_size) % self.temporal_stride:
      raise ValueError(f"TubeEmbedding: {frames} frames padded by {self.temporal_padding} do not "
                       f"fit an odd temporal kernel {self.temporal_kernel_size} with stride "
                       f"{self.temporal_stride}")
    num_anchors = num_points // self.spatial_stride
    if num_anchors < 1:
      raise ValueError(f"TubeEmbedding: {num_points} points per frame give no anchor at spatial "
                       f"stride {self.spatial_stride}")
    # Upstream pads by repeating the first and last frames ('replicate').
    order = ([0] * self.temporal_padding[0] + list(range(frames))
             + [frames - 1] * self.temporal_padding[1])
    embed_d = _dense(self.features, "conv_d_0", use_bias=False)
    embed_f = _dense(self.features, "conv_f_0", use_bias=False)
    anchors_out, features_out = [], []
    for t in range(half, padded - half, self.temporal_stride):
      anchor_frame = xyz[:, order[t]]
      anchor_index = point_ops.furthest_point_sample(anchor_frame, num_anchors)
      anchors = point_ops.group_points(anchor_frame, anchor_index)  # [B, M, 3]
      per_frame = []
      for i in range(t - half, t + half + 1):
        neighbours = xyz[:, order[i]]
        index = point_ops.ball_query(neighbours, anchors, self.radius, self.num_samples)
        offsets = point_ops.group_points(neighbours, index) - anchors[:, :, None, :]
        dt = jnp.full(offsets.shape[:-1] + (1,), float(i - t), offsets.dtype)
        embedded = embed_d(jnp.concatenate([offsets, dt], axis=-1))  # [B, M, S, D]
        embedded = embedded + embed_f(point_ops.group_points(point_features[:, order[i]], index))
        per_frame.append(jnp.max(embedded, axis=2))
      anchors_out.append(anchors)
      features_out.append(jnp.max(jnp.stack(per_frame, axis=1), axis=1))
    return jnp.stack(anchors_out, axis=1), jnp.stack(features_out, axis=1)


class P4TransformerEncoder(nn.Module):
  """mmBody's phase-1 encoder (upstream `P4Transformer_feat`, spec §1.4).

  Attributes:
    radius, num_samples, spatial_stride, temporal_kernel_size, temporal_stride,
      temporal_padding: the tube embedding (upstream 0.1, 32, 32, 3, 2, (1, 0)).
    dim: transformer width D (upstream 1024).
    depth, heads, dim_head, mlp_dim: the transformer (upstream 10, 8, 256, 2048).
    feature_size: width F of the per-joint features (upstream 64).
    point_feature_channels: radar channels after xyz that enter the tube embedding (upstream 3).
    num_joints: joint tokens J.
  """

  radius: float = 0.1
  num_samples: int = 32
  spatial_stride: int = 32
  temporal_kernel_size: int = 3
  temporal_stride: int = 2
  temporal_padding: tuple[int, int] = (1, 0)
  dim: int = 1024
  depth: int = 10
  heads: int = 8
  dim_head: int = 256
  mlp_dim: int = 2048
  feature_size: int = 64
  point_feature_channels: int = 3
  num_joints: int = NUM_JOINTS

  @nn.compact
  def __call__(self, radar: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes a radar window.

    Args:
      radar: [B, T, N, 3 + point_feature_channels]: xyz, then the point features.

    Returns:
      (coarse pose [B, J, 3], per-joint features [B, J, F]).
    """
    channels = 3 + self.point_feature_channels
    if radar.ndim != 4 or radar.shape[-1] != channels:
      raise ValueError(f"P4TransformerEncoder: expected radar [B, T, N, {channels}] (xyz + "
                       f"{self.point_feature_channels} features), got {radar.shape}")
    point_ops.check_finite_points(radar, "radar")
    batch = radar.shape[0]
    anchors, features = TubeEmbedding(
        self.dim, self.radius, self.num_samples, self.spatial_stride, self.temporal_kernel_size,
        self.temporal_stride, tuple(self.temporal_padding), name="tube_embedding")(
            radar[..., :3], radar[..., 3:])
    frames, num_anchors = anchors.shape[1:3]
    # Each anchor's frame enters as a 4th coordinate, counted from 1.
    frame_index = jnp.broadcast_to(
        jnp.arange(1, frames + 1, dtype=anchors.dtype)[None, :, None, None],
        anchors.shape[:-1] + (1,))
    xyzt = jnp.concatenate([anchors, frame_index], axis=-1).reshape(batch, -1, 4)
    embedding = (layers.Linear(self.dim, name="pos_embedding")(xyzt)
                 + features.reshape(batch, frames * num_anchors, self.dim))
    out = _joint_token_transformer(self, embedding)
    hidden = _dense(self.dim // 2, "dim_reduce_head_1")(_layer_norm("dim_reduce_head_0")(out))
    joint_features = _dense(self.feature_size, "dim_reduce_head_3")(nn.relu(hidden))
    hidden = _dense(self.feature_size // 2, "point_prediction_heads_1")(
        _layer_norm("point_prediction_heads_0")(joint_features))
    pose = _dense(3, "point_prediction_heads_3")(nn.relu(hidden))
    return pose, joint_features


# --------------------------------------------------------------------------------------------------
# Point Transformer (mm-Fi).


class PointTransformerBlock(nn.Module):
  """Upstream `TransformerBlock`: vector self-attention over each point's k nearest points.

  For point i with neighbours j (itself included): a_ij = gamma(q_i − k_j + delta(p_i − p_j)),
  softmax over j of a_ij / sqrt(d) per channel, and
  y_i = fc2(Σ_j a_ij ⊙ (v_j + delta(p_i − p_j))) + x_i.
  """

  model_dim: int
  num_neighbours: int

  @nn.compact
  def __call__(self, xyz: jax.Array, features: jax.Array) -> jax.Array:
    """Maps xyz [B, N, 3] and features [B, N, C] to [B, N, C]."""
    _, neighbours = point_ops.knn(xyz, xyz, self.num_neighbours)  # [B, N, k]
    offsets = xyz[:, :, None, :] - point_ops.group_points(xyz, neighbours)
    x = _dense(self.model_dim, "fc1")(features)
    query = _dense(self.model_dim, "w_qs", use_bias=False)(x)
    key = point_ops.group_points(_dense(self.model_dim, "w_ks", use_bias=False)(x), neighbours)
    value = point_ops.group_points(_dense(self.model_dim, "w_vs", use_bias=False)(x), neighbours)
    position = _dense(self.model_dim, "fc_delta_2")(
        nn.relu(_dense(self.model_dim, "fc_delta_0")(offsets)))
    logits = _dense(self.model_dim, "fc_gamma_2")(
        nn.relu(_dense(self.model_dim, "fc_gamma_0")(query[:, :, None, :] - key + position)))
    weights = jax.nn.softmax(logits / np.sqrt(self.model_dim), axis=-2)
    out = jnp.sum(weights * (value + position), axis=2)
    return _dense(features.shape[-1], "fc2")(out) + features


class TransitionDown(nn.Module):
  """Upstream `TransitionDown` (which does not down-sample): [xyz, features] through two
  (1x1 Conv1d, BatchNorm, ReLU) stages. Params `conv1_0`, `conv2_0` (kernel, bias) and the batch
  norms `conv1_1`, `conv2_1` (scale, bias; running `mean`, `var` in `batch_stats`)."""

  internal_channels: int
  out_channels: int

  @nn.compact
  def __call__(self, xyz: jax.Array, features: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps xyz [B, N, 3] and features [B, N, C] to [B, N, out_channels]."""
    x = jnp.concatenate([xyz, features], axis=-1)
    for stage, width in (("conv1", self.internal_channels), ("conv2", self.out_channels)):
      x = layers.Linear(width, name=f"{stage}_0")(x)
      # torch BatchNorm1d: eps 1e-5, running averages with momentum 0.1.
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       name=f"{stage}_1")(x)
      x = nn.relu(x)
    return x


class PointTransformerEncoder(nn.Module):
  """mm-Fi's phase-1 encoder (upstream `PointTransformerReg_feat`, spec §1.4).

  Attributes:
    input_dim: channels per point (upstream 5: x, y, z, doppler, intensity).
    num_blocks: Point-Transformer stages; the backbone ends at 32·2^(num_blocks−1) channels, which
      must equal `dim` (upstream 5 -> 512).
    num_neighbours: k of the vector attention (upstream 16).
    model_dim: width inside the Point-Transformer blocks (upstream 128).
    dim, depth, heads, dim_head, mlp_dim: the joint-token transformer (upstream 512, 5, 4, 128,
      256).
    feature_size: width F of the per-joint features (upstream 32).
    num_joints: joint tokens J.
  """

  input_dim: int = 5
  num_blocks: int = 5
  num_neighbours: int = 16
  model_dim: int = 128
  dim: int = 512
  depth: int = 5
  heads: int = 4
  dim_head: int = 128
  mlp_dim: int = 256
  feature_size: int = 32
  num_joints: int = NUM_JOINTS

  @nn.compact
  def __call__(self, radar: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Encodes a radar window.

    Args:
      radar: [B, T, N, input_dim]; the T·N points are one cloud.
      train: batch norms use (and update) batch statistics; needs `mutable=['batch_stats']`.

    Returns:
      (coarse pose [B, J, 3], per-joint features [B, J, F]).
    """
    if radar.ndim != 4 or radar.shape[-1] != self.input_dim:
      raise ValueError(f"PointTransformerEncoder: expected radar [B, T, N, {self.input_dim}], got "
                       f"{radar.shape}")
    if 32 * 2 ** (self.num_blocks - 1) != self.dim:
      raise ValueError(f"PointTransformerEncoder: the backbone ends at 32 * 2^(num_blocks - 1) = "
                       f"{32 * 2 ** (self.num_blocks - 1)} channels but dim is {self.dim}")
    point_ops.check_finite_points(radar, "radar")
    batch = radar.shape[0]
    cloud = radar.reshape(batch, -1, self.input_dim)
    xyz = cloud[..., :3]
    hidden = layers.Linear(32, name="backbone_fc1_0")(cloud)
    points = layers.Linear(32, name="backbone_fc1_2")(nn.relu(hidden))
    points = PointTransformerBlock(self.model_dim, self.num_neighbours,
                                   name="backbone_transformer1")(xyz, points)
    for i in range(self.num_blocks - 1):
      channels = 32 * 2 ** (i + 1)
      points = TransitionDown(channels, channels, name=f"backbone_transition_downs_{i}")(
          xyz, points, train=train)
      points = PointTransformerBlock(self.model_dim, self.num_neighbours,
                                     name=f"backbone_transformers_{i}")(xyz, points)
    out = _joint_token_transformer(self, points)
    hidden = nn.relu(layers.Linear(256, name="fc2_0")(out))
    joint_features = layers.Linear(self.feature_size, name="fc2_3")(hidden)
    hidden = nn.relu(layers.Linear(64, name="fc3_1")(nn.relu(joint_features)))
    pose = layers.Linear(3, name="fc3_4")(hidden)
    return pose, joint_features
