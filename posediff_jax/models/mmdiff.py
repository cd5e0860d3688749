"""mmDiff (ECCV 2024) phase 2: the multi-conditional GCN noise predictor (upstream `GCNdiff`).

The denoiser refines the current coarse radar pose. It is DiffPose's GraFormer stack on the
17-joint skeleton, steered by four conditions (spec §1.3):

* GRC, global radar context: a ChebConv over the phase-1 per-joint features (`gconv_input1`);
* LRC, local radar context: per joint, the 50 radar points nearest to the joint's current
  estimate, embedded point-wise (`local_emb`), mixed by 5 residual self-attention blocks
  (`local_attention_i`), averaged and scaled by the fraction of them within 0.2 m;
* TMC, temporal consistency: the past coarse poses through a shared ChebConv (`gconv_input_t`)
  and a 1-D convolution over time (`temperal_conv_0`, `temperal_conv_2`), max-pooled over time;
* SLC, limb-length consistency: an MLP (`limb_linear_*`) regresses the 16 limb lengths, which are
  embedded (`limb_emb_layer`) and added to the time embedding.

GRC + LRC + TMC are added to the input projection and inside every residual block; SLC enters
through the time embedding. Parameter names mirror upstream's module tree (`temperal` sic), so
`posediff_jax.convert.mmdiff` maps checkpoints mechanically. Upstream also builds two ChebConvs its
forward never runs (`gconv_input`, `gconv_input3`), and on mm-Fi (`local_flag=2`) the LRC layers;
they are not parameters here (the converter reports their keys as unused).

The state x is [B, J, 3(P + 1)]: channels 3i..3i+2 hold past coarse pose i (oldest first) and the
last 3 the current noisy pose. Notation: B = batch, J = 17 joints, P = past frames, h = hidden
width, F = phase-1 feature width, T = radar frames, N = points per radar frame, C = point channels.
"""

from collections.abc import Mapping
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posediff_jax import skeleton
from posediff_jax.models import layers
from posediff_jax.ops import points as point_ops

NUM_JOINTS = skeleton.NUM_JOINTS
# The 16 limbs are the skeleton's bones, in upstream's `limb_pairs` order (= the edge order).
LIMBS: layers.Edges = skeleton.H36M_EDGES


def limb_lengths(pose: jax.Array) -> jax.Array:
  """Lengths of the 16 limbs of a 17-joint pose, as upstream's loader computes its targets.

  Args:
    pose: [..., 17, 3].

  Returns:
    [..., 16] Euclidean lengths |p_src - p_end| in the order of `LIMBS`.
  """
  pose = jnp.asarray(pose)
  if pose.ndim < 2 or pose.shape[-2:] != (NUM_JOINTS, 3):
    raise ValueError(f"limb_lengths: expected a pose [..., {NUM_JOINTS}, 3], got {pose.shape}")
  src = jnp.asarray([a for a, _ in LIMBS])
  end = jnp.asarray([b for _, b in LIMBS])
  vectors = pose[..., src, :] - pose[..., end, :]
  return jnp.sqrt(jnp.sum(jnp.square(vectors), axis=-1))


# --------------------------------------------------------------------------------------------------
# Initialisers with PyTorch's defaults (for training from scratch; checkpoints overwrite them).


def _torch_conv1d_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class SwishMLP(nn.Module):
  """`dense_1(swish(dense_0(x)))` with different widths (upstream `local_emb.dense`)."""

  hidden_features: int
  features: int
  dtype: layers.Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, *, factored: bool = False):
    """Maps [..., C] to [..., features].

    With `factored`, returns (hidden [..., hidden_features], (kernel, bias) of `dense_1`) instead,
    for a caller that folds the last layer into the next one.
    """
    hidden = nn.swish(layers.Linear(self.hidden_features, self.dtype, name="dense_0")(x))
    last = layers.Linear(self.features, self.dtype, name="dense_1")
    if factored:
      return hidden, last.kernel_and_bias(self.hidden_features)
    return last(hidden)


class TorchConv1d(nn.Module):
  """`torch.nn.Conv1d(C, features, kernel, padding=kernel // 2)` over the time axis, channels last.

  Params `kernel` [k, C, features] (torch's weight [features, C, k] transposed) and `bias`.
  """

  features: int
  kernel_size: int = 3
  dtype: layers.Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [B, L, C] to [B, L, features]."""
    in_features = x.shape[-1]
    init = _torch_conv1d_init(in_features * self.kernel_size)
    kernel = self.param("kernel", init, (self.kernel_size, in_features, self.features))
    bias = self.param("bias", init, (self.features,))
    pad = self.kernel_size // 2
    if layers.narrow_dtype(self.dtype) is not None:
      # As one matmul over the k shifted copies of x, so that the gradient's products run in
      # the narrow dtype too (`layers.mixed_matmul`).
      length = x.shape[1]
      padded = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
      shifted = jnp.concatenate([padded[:, k:k + length] for k in range(self.kernel_size)], -1)
      out = layers.matmul(shifted, kernel.reshape(-1, self.features), self.dtype)
      return out + bias
    out = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1,), padding=[(pad, pad)],
        dimension_numbers=("NWC", "WIO", "NWC"), preferred_element_type=x.dtype)
    return out + bias.astype(x.dtype)


class ConditionedResChebBlock(nn.Module):
  """Upstream `_ResChebGC_diff` with a condition:
  `x + gconv2(gconv1(x) + temb_proj(swish(temb)) + condition)`.

  DiffPose's `layers.ResChebTimeBlock` without the condition term; the submodule names are the same.
  """

  num_nodes: int
  edges: layers.Edges
  dropout_rate: float = 0.1
  dtype: layers.Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, condition: jax.Array, *,
               deterministic: bool = True) -> jax.Array:
    """Maps x [B, N, h], temb [B, E] and condition [B, N, h] to [B, N, h]."""
    width = x.shape[-1]
    graph = dict(num_nodes=self.num_nodes, edges=self.edges, dropout_rate=self.dropout_rate,
                 dtype=self.dtype)
    out = layers.GraphConvBlock(width, **graph, name="gconv1")(x, deterministic=deterministic)
    out = (out + layers.Linear(width, self.dtype, name="temb_proj")(nn.swish(temb))[..., None, :]
           + condition)
    out = layers.GraphConvBlock(width, **graph, name="gconv2")(out, deterministic=deterministic)
    return x + out


# --------------------------------------------------------------------------------------------------
# The denoiser.


class MultiConditionDenoiser(nn.Module):
  """The mmDiff phase-2 noise predictor (upstream `GCNdiff`, spec §1.3).

  The condition switches take upstream's values: `local_flag` 1 = LRC from the radar, 0 or 2 = no
  LRC (2 is mm-Fi's: upstream builds the layers but never runs them); `temp_flag` 1/0 = TMC on/off;
  `limb_flag` 1 = limb lengths regressed from the phase-1 features, 2 = from the whole state x
  (mm-Fi). Upstream's forward cannot run without GRC or SLC, so `global_flag` and `limb_flag` must
  be on.

  Attributes:
    hid_dim: hidden width h; the time and limb embeddings are 4h wide.
    num_layers: number of (attention layer, conditioned residual ChebGC block) pairs.
    n_head: attention heads (must divide hid_dim), also in the LRC attention blocks.
    dropout: sublayer dropout of the attention layers.
    inner_dropout: dropout after every ChebGC and on the attention probabilities, LRC blocks
      included (upstream hard-codes 0.1).
    feature_size: F, width of the phase-1 joint features.
    past_frames: P, past coarse poses in the state.
    radar_channels: C, channels per radar point (the first 3 are xyz).
    global_flag, local_flag, temp_flag, limb_flag: the condition switches above.
    local_points: radar points per joint in the LRC (upstream 50).
    local_radius_sq: squared radius of the LRC point-count scale (upstream 0.04, strict <).
    local_attn_layers: residual attention blocks in the LRC (upstream 5).
    limb_hidden: hidden width of the limb regressor (upstream 1024).
    num_joints: graph nodes.
    edges: skeleton edges (also the limbs).
    dtype: compute dtype of the matmuls (None: the inputs' dtype; bfloat16 rounds only their
      operands, see `layers.matmul`); the kNN search, norms and softmax stay float32.
  """

  hid_dim: int = 96
  num_layers: int = 5
  n_head: int = 4
  dropout: float = 0.25
  inner_dropout: float = 0.1
  feature_size: int = 64
  past_frames: int = 6
  radar_channels: int = 6
  global_flag: int = 1
  local_flag: int = 1
  temp_flag: int = 1
  limb_flag: int = 1
  local_points: int = 50
  local_radius_sq: float = 0.04
  local_attn_layers: int = 5
  limb_hidden: int = 1024
  num_joints: int = NUM_JOINTS
  edges: layers.Edges = LIMBS
  dtype: layers.Dtype = None

  @property
  def state_channels(self) -> int:
    """3(P + 1): the channels of the state x and of the network output."""
    return 3 * (self.past_frames + 1)

  @property
  def uses_radar(self) -> bool:
    """Whether the forward reads the radar (only with `local_flag` = 1)."""
    return self.local_flag == 1

  def _check_settings(self) -> None:
    if self.global_flag != 1:
      raise ValueError(f"MultiConditionDenoiser: global_flag must be 1, got {self.global_flag} "
                       "(upstream's forward reads the global embedding unconditionally)")
    if self.limb_flag not in (1, 2):
      raise ValueError(f"MultiConditionDenoiser: limb_flag must be 1 (from features) or 2 (from "
                       f"the pose state), got {self.limb_flag} (upstream's forward returns the "
                       "limb prediction unconditionally)")
    if self.local_flag not in (0, 1, 2) or self.temp_flag not in (0, 1):
      raise ValueError(f"MultiConditionDenoiser: local_flag must be 0, 1 or 2 and temp_flag 0 or "
                       f"1, got {self.local_flag} and {self.temp_flag}")
    if self.past_frames < 1 and self.temp_flag == 1:
      raise ValueError("MultiConditionDenoiser: the temporal condition needs past_frames >= 1")
    if self.hid_dim < 2 or self.hid_dim % self.n_head:
      raise ValueError(f"MultiConditionDenoiser: hid_dim {self.hid_dim} must be divisible by "
                       f"n_head {self.n_head} (and >= 2)")

  def _check_inputs(self, x, t, features, radar, limb_len, need_radar=True) -> None:
    joints, channels = self.num_joints, self.state_channels
    if x.ndim != 3 or x.shape[1:] != (joints, channels):
      raise ValueError(f"MultiConditionDenoiser: expected x of shape [B, {joints}, {channels}] "
                       f"(past_frames={self.past_frames} poses + the current one, 3 channels "
                       f"each), got {x.shape}")
    batch = x.shape[0]
    if t.shape != (batch,):
      raise ValueError(f"MultiConditionDenoiser: expected t of shape [B] = ({batch},), got "
                       f"{t.shape}")
    if features.shape != (batch, joints, self.feature_size):
      raise ValueError(f"MultiConditionDenoiser: expected phase-1 features of shape [B, {joints}, "
                       f"{self.feature_size}] = {(batch, joints, self.feature_size)}, got "
                       f"{features.shape}")
    if self.uses_radar and need_radar:
      if radar is None:
        raise ValueError("MultiConditionDenoiser: local_flag=1 needs the radar window [B, T, N, "
                         f"{self.radar_channels}], got None")
      if radar.ndim != 4 or radar.shape[0] != batch or radar.shape[-1] != self.radar_channels:
        raise ValueError(f"MultiConditionDenoiser: expected radar of shape [B={batch}, T, N, "
                         f"{self.radar_channels}], got {radar.shape}")
      if radar.shape[1] * radar.shape[2] < self.local_points:
        raise ValueError(f"MultiConditionDenoiser: the radar window holds {radar.shape[1]} x "
                         f"{radar.shape[2]} points, fewer than local_points={self.local_points}")
      point_ops.check_finite_points(radar, "radar")
    if limb_len is not None and limb_len.shape != (batch, len(self.edges)):
      raise ValueError(f"MultiConditionDenoiser: expected limb_len of shape [B, {len(self.edges)}]"
                       f", got {limb_len.shape}")

  def local_context(self, current: jax.Array, radar: jax.Array, *,
                    deterministic: bool = True) -> jax.Array:
    """LRC: [B, J, 3] current joints and [B, T, N, C] radar -> [B, J, h]."""
    batch = radar.shape[0]
    cloud = radar.reshape(batch, -1, radar.shape[-1])  # [B, T·N, C]
    # The anchors are the current noisy joints, so the neighbourhoods change every step.
    sq_dist, index = point_ops.knn(current, cloud[..., :3], self.local_points)
    nearby = point_ops.group_points(cloud, index)  # [B, J, K, C], raw channels, not re-centred
    scale = jnp.sum(sq_dist < self.local_radius_sq, axis=-1, keepdims=True) / self.local_points
    hidden, emb_map = SwishMLP(self.hid_dim // 2, self.hid_dim, self.dtype, name="local_emb")(
        nearby, factored=True)
    emb = layers.matmul(hidden, emb_map[0], self.dtype) + emb_map[1]  # [B, J, K, h]
    blocks = self.local_attn_layers
    for i in range(blocks):
      # The first block's Q, K, V read the 48-wide hidden layer through the folded embedding, and
      # the last one pools over the points before its V projection: only the mean is read.
      last = i == blocks - 1
      attention = layers.MultiHeadAttention(self.n_head, self.inner_dropout, dtype=self.dtype,
                                            pool_nodes=last,
                                            name=f"local_attention_{i}")
      attended = attention(hidden if i == 0 else emb, deterministic=deterministic,
                           input_map=emb_map if i == 0 else None)
      if not last:
        emb = emb + attended
    pooled = jnp.mean(emb, axis=-2) + (attended if blocks else 0.0)  # [B, J, h]
    return pooled * scale.astype(emb.dtype)

  def temporal_context(self, x: jax.Array) -> jax.Array:
    """TMC: the past poses of the state [B, J, 3(P+1)] -> [B, J, h]."""
    batch, joints = x.shape[:2]
    past = x[..., :3 * self.past_frames].reshape(batch, joints, self.past_frames, 3)
    past = jnp.swapaxes(past, 1, 2)  # [B, P, J, 3], oldest first
    graph = dict(num_nodes=self.num_joints, edges=self.edges, dtype=self.dtype)
    emb = layers.ChebConv(self.hid_dim, **graph, name="gconv_input_t")(past)  # [B, P, J, h]
    # Channel index joint·h + feature, as upstream's view of the stacked frames.
    emb = emb.reshape(batch, self.past_frames, joints * self.hid_dim)
    width = joints * self.hid_dim
    emb = nn.relu(TorchConv1d(width, dtype=self.dtype, name="temperal_conv_0")(emb))
    emb = TorchConv1d(width, dtype=self.dtype, name="temperal_conv_2")(emb)
    return jnp.max(emb, axis=1).reshape(batch, joints, self.hid_dim)

  def step_invariant(self, update_history: bool) -> tuple[str, ...]:
    """The `static` conditions that stay fixed over a sampler run (see `__call__`).

    GRC and the limb prediction read only the phase-1 features (limb_flag 1); TMC reads the past
    poses, fixed unless the sampler updates the history channels (v1).
    """
    names = ["global"]
    if self.temp_flag == 1 and not update_history:
      names.append("past")
    if self.limb_flag == 1:
      names.append("limb")
    return tuple(names)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, features: jax.Array, radar=None, limb_len=None,
               *, deterministic: bool = True, static=None, return_static=None):
    """Predicts the noise of the state and the limb lengths.

    Args:
      x: [B, J, 3(P+1)] state: past coarse poses (oldest first), then the current noisy pose.
      t: [B] diffusion steps (float or int).
      features: [B, J, F] phase-1 per-joint features (GRC, and SLC with limb_flag 1).
      radar: [B, T, N, C] radar window (only read with local_flag 1; may be None otherwise).
      limb_len: optional [B, 16] limb lengths for the SLC embedding (v1 training passes the
        ground truth); None uses the network's own prediction, as at inference.
      deterministic: disables dropout when True; otherwise the 'dropout' rng is needed.
      static: optional {'global': [B, J, h], 'past': [B, J, h], 'limb': [B, 16], 'local':
        [B, J, h]} conditions computed before (by a call with `return_static`): a sampler
        computes the ones that do not change between its steps once, and may compute this call's
        LRC ('local', which reads the current pose and the radar) a few rows at a time. Missing
        entries are computed here.
      return_static: a tuple of those names: return just these conditions, as a dict.

    Returns:
      (out [B, J, 3(P+1)], limb_pred [B, 16]). Only `out[..., -3:]`, the noise of the current
      pose, is trained; the other channels are what upstream's v1 sampler applies to the history.
    """
    self._check_settings()
    x, features = jnp.asarray(x), jnp.asarray(features)
    t = jnp.asarray(t)
    radar = None if radar is None else jnp.asarray(radar)
    limb_len = None if limb_len is None else jnp.asarray(limb_len)
    static = dict(static or {})
    need_radar = ("local" in return_static if return_static is not None
                  else "local" not in static)
    self._check_inputs(x, t, features, radar, limb_len, need_radar=need_radar)
    graph = dict(num_nodes=self.num_joints, edges=self.edges, dtype=self.dtype)
    batch = x.shape[0]
    current = x[..., -3:]

    def limb_prediction():
      limb_input = (features.reshape(batch, -1) if self.limb_flag == 1
                    else x.reshape(batch, -1))
      hidden = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="limb_linear_0")(
          limb_input)
      hidden = nn.relu(layers.Linear(self.limb_hidden, self.dtype, name="limb_linear_1")(hidden))
      return layers.Linear(len(self.edges), self.dtype, name="limb_linear_3")(hidden)

    builders = {
        "global": lambda: layers.ChebConv(self.hid_dim, **graph, name="gconv_input1")(features),
        "past": lambda: self.temporal_context(x),
        "limb": limb_prediction,
        "local": lambda: self.local_context(current, radar, deterministic=deterministic),
    }
    if return_static is not None:
      return {name: builders[name]() for name in return_static}
    for name in (("global",) + (("local",) if self.uses_radar else ())
                 + (("past",) if self.temp_flag == 1 else ()) + ("limb",)):
      if name not in static:
        static[name] = builders[name]()

    sinusoid = layers.timestep_embedding(t, self.hid_dim)
    # Upstream quirk (spec §1.2): the embeddings are 4 * hid_dim wide; config emd_dim is ignored.
    temb = layers.TimeEmbedding(4 * self.hid_dim, self.dtype, name="temb")(sinusoid)

    condition = static["global"]
    self.sow("intermediates", "global_emb", condition)
    if self.uses_radar:
      self.sow("intermediates", "local_emb", static["local"])
      condition = condition + static["local"]
    if self.temp_flag == 1:
      self.sow("intermediates", "past_emb", static["past"])
      condition = condition + static["past"]

    limb_pred = static["limb"]
    limb = limb_pred if limb_len is None else limb_len
    temb = temb + layers.TimeEmbedding(4 * self.hid_dim, self.dtype, name="limb_emb_layer")(limb)

    out = layers.ChebConv(self.hid_dim, **graph, name="gconv_input2")(current) + condition
    for i in range(self.num_layers):
      out = layers.GraAttenLayer(self.num_joints, self.n_head, self.dropout, self.inner_dropout,
                                 dtype=self.dtype, name=f"atten_layers_{i}")(
                                     out, deterministic=deterministic)
      out = ConditionedResChebBlock(**graph, dropout_rate=self.inner_dropout,
                                    name=f"gconv_layers_{i}")(
          out, temb, condition, deterministic=deterministic)
    out = layers.ChebConv(self.state_channels, **graph, name="gconv_output")(out)
    return out, limb_pred


_MODEL_FIELDS = {
    # config field: (attribute, type)
    "hid_dim": int, "num_layers": int, "n_head": int, "dropout": float, "inner_dropout": float,
    "feature_size": int,
    "past_frames": int, "radar_channels": int, "global_flag": int, "local_flag": int,
    "temp_flag": int, "limb_flag": int, "local_points": int, "local_radius_sq": float,
    "local_attn_layers": int, "limb_hidden": int,
}
_REQUIRED = ("hid_dim", "num_layers", "n_head", "dropout", "feature_size", "past_frames",
             "radar_channels")


def denoiser_from_config(cfg, dtype: layers.Dtype = None) -> MultiConditionDenoiser:
  """A `MultiConditionDenoiser` from a config (ConfigDict, dict or object).

  Required fields: hid_dim, num_layers, n_head, dropout, feature_size, past_frames,
  radar_channels. Optional, with upstream's defaults: inner_dropout (0.1), global_flag,
  local_flag, temp_flag, limb_flag (1), local_points (50), local_radius_sq (0.04),
  local_attn_layers (5), limb_hidden (1024).
  `dtype` is the compute dtype of the matmuls (None = float32).
  """
  values = {}
  for name, kind in _MODEL_FIELDS.items():
    if isinstance(cfg, Mapping):
      present, value = name in cfg, cfg.get(name)
    else:
      present, value = hasattr(cfg, name), getattr(cfg, name, None)
    if present:
      values[name] = kind(value)
    elif name in _REQUIRED:
      raise ValueError(f"mmDiff model config lacks field {name!r} (needs {', '.join(_REQUIRED)}); "
                       f"got {cfg!r}")
  return MultiConditionDenoiser(**values, dtype=dtype)
