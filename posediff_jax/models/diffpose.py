"""DiffPose (CVPR 2023, frame-based) networks: the GraFormer 2D->3D lifter and the GCN denoiser.

Both are GraFormer stacks on the Human3.6M 17-joint skeleton: a ChebConv input projection, then per
layer a graph-attention layer followed by a residual Chebyshev block, then a ChebConv output
projection. The denoiser adds a sinusoidal time embedding that every residual block projects in.
Parameter names mirror upstream (`gconv_input`, `atten_layers_i`, `gconv_layers_i`, `gconv_output`,
`temb`) so `posediff_jax.convert.diffpose` maps torch checkpoints mechanically.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from posediff_jax import skeleton
from posediff_jax.models import layers

# The 16 bones of the Human3.6M 17-joint skeleton (spec §1.1).
H36M_EDGES: layers.Edges = skeleton.H36M_EDGES


def _check_poses(name: str, x: jax.Array, num_joints: int, channels: int, what: str) -> None:
  if x.ndim != 3 or x.shape[1] != num_joints or x.shape[2] != channels:
    raise ValueError(f"{name}: expected x of shape [B, {num_joints}, {channels}] ({what}), "
                     f"got {x.shape}")


class GCNLifter(nn.Module):
  """The 2D->3D lifter (upstream GraFormer / DiffPose `GCNpose`, spec §1.7).

  Upstream's `GCNpose` also owns an unused time MLP (`temb.dense.*`); it is left out here and the
  converter reports those checkpoint keys as unused.

  Attributes:
    hid_dim: hidden width h.
    num_layers: number of (attention layer, residual ChebGC block) pairs.
    n_head: attention heads (must divide hid_dim).
    dropout: sublayer dropout of the attention layers.
    inner_dropout: dropout after every ChebGC and on the attention probabilities (upstream
      hard-codes 0.1).
    num_joints: graph nodes.
    edges: skeleton edges.
    in_dim: input channels (2 for uv).
    out_dim: output channels (3 for xyz).
    dtype: compute dtype of the matmuls (None: the inputs' dtype; "bfloat16" rounds only the
      matmul operands, see `layers.matmul`). Parameters are float32 either way.
  """

  hid_dim: int = 96
  num_layers: int = 5
  n_head: int = 4
  dropout: float = 0.25
  inner_dropout: float = 0.1
  num_joints: int = 17
  edges: layers.Edges = H36M_EDGES
  in_dim: int = 2
  out_dim: int = 3
  dtype: layers.Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Lifts normalised 2D keypoints [B, J, 2] to camera-frame 3D [B, J, 3], not root-relative."""
    _check_poses("GCNLifter", x, self.num_joints, self.in_dim, "normalised 2D keypoints")
    graph = dict(num_nodes=self.num_joints, edges=self.edges, dtype=self.dtype)
    out = layers.ChebConv(self.hid_dim, **graph, name="gconv_input")(x)
    self.sow("intermediates", "after_gconv_input", out)
    for i in range(self.num_layers):
      out = layers.GraAttenLayer(self.num_joints, self.n_head, self.dropout, self.inner_dropout,
                                 dtype=self.dtype, name=f"atten_layers_{i}")(
                                     out, deterministic=deterministic)
      self.sow("intermediates", f"after_atten_{i}", out)
      out = layers.ResChebBlock(**graph, dropout_rate=self.inner_dropout,
                                name=f"gconv_layers_{i}")(
          out, deterministic=deterministic)
      self.sow("intermediates", f"after_gconv_{i}", out)
    return layers.ChebConv(self.out_dim, **graph, name="gconv_output")(out)


class GCNDenoiser(nn.Module):
  """The DiffPose noise predictor (upstream `GCNdiff`, spec §A.1).

  The state x holds per joint (u, v, x, y, z): the 2D condition sits in channels 0-1 and is
  denoised along with the 3D channels. The network predicts the noise of all channels.

  Attributes:
    hid_dim: hidden width h; the time embedding is 4h wide.
    num_layers: number of (attention layer, residual ChebGC block) pairs.
    n_head: attention heads (must divide hid_dim).
    dropout: sublayer dropout of the attention layers.
    inner_dropout: dropout after every ChebGC and on the attention probabilities (upstream
      hard-codes 0.1).
    num_joints: graph nodes.
    edges: skeleton edges.
    coords_dim: channels of the state and of the predicted noise.
    dtype: compute dtype of the matmuls, as for `GCNLifter`.
  """

  hid_dim: int = 96
  num_layers: int = 5
  n_head: int = 4
  dropout: float = 0.25
  inner_dropout: float = 0.1
  num_joints: int = 17
  edges: layers.Edges = H36M_EDGES
  coords_dim: int = 5
  dtype: layers.Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Predicts the noise.

    Args:
      x: [B, J, 5] noisy state (u, v, x, y, z).
      t: [B] diffusion steps (float or int), or [1]: one step shared by every row, whose time
        embedding is then computed once.
      deterministic: disables dropout when True; otherwise the 'dropout' rng is needed.

    Returns:
      [B, J, 5] predicted noise.
    """
    _check_poses("GCNDenoiser", x, self.num_joints, self.coords_dim, "per-joint u, v, x, y, z")
    t = jnp.asarray(t)
    if t.shape not in ((x.shape[0],), (1,)):
      raise ValueError(f"GCNDenoiser: expected t of shape [B] = ({x.shape[0]},) matching x "
                       f"{x.shape} (or [1], shared), got {t.shape}")
    graph = dict(num_nodes=self.num_joints, edges=self.edges, dtype=self.dtype)

    sinusoid = layers.timestep_embedding(t, self.hid_dim)
    self.sow("intermediates", "timestep_embedding_sin", sinusoid)
    # Upstream quirk (spec §0.6): the time embedding is 4 * hid_dim wide; config emd_dim is ignored.
    temb = layers.TimeEmbedding(4 * self.hid_dim, self.dtype, name="temb")(sinusoid)

    out = layers.ChebConv(self.hid_dim, **graph, name="gconv_input")(x)
    self.sow("intermediates", "after_gconv_input", out)
    for i in range(self.num_layers):
      out = layers.GraAttenLayer(self.num_joints, self.n_head, self.dropout, self.inner_dropout,
                                 dtype=self.dtype, name=f"atten_layers_{i}")(
                                     out, deterministic=deterministic)
      self.sow("intermediates", f"after_atten_{i}", out)
      out = layers.ResChebTimeBlock(**graph, dropout_rate=self.inner_dropout,
                                    name=f"gconv_layers_{i}")(
          out, temb, deterministic=deterministic)
      self.sow("intermediates", f"after_gconv_{i}", out)
    return layers.ChebConv(self.coords_dim, **graph, name="gconv_output")(out)


def _config_value(cfg, name: str):
  try:
    return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)
  except (KeyError, AttributeError):
    raise ValueError(f"model config lacks field {name!r} (needs hid_dim, num_layers, n_head, "
                     f"dropout); got {cfg!r}") from None


def inner_dropout(cfg) -> float:
  """`cfg.inner_dropout` if the config sets it, else upstream's hard-coded 0.1."""
  value = cfg.get("inner_dropout") if isinstance(cfg, Mapping) else getattr(cfg, "inner_dropout",
                                                                             None)
  return 0.1 if value is None else float(value)


def lifter_from_config(cfg, dtype: layers.Dtype = None) -> GCNLifter:
  """A `GCNLifter` from a config with `hid_dim`, `num_layers`, `n_head`, `dropout` (and optionally
  `inner_dropout`)."""
  return GCNLifter(hid_dim=int(_config_value(cfg, "hid_dim")),
                   num_layers=int(_config_value(cfg, "num_layers")),
                   n_head=int(_config_value(cfg, "n_head")),
                   dropout=float(_config_value(cfg, "dropout")),
                   inner_dropout=inner_dropout(cfg), dtype=dtype)


def denoiser_from_config(cfg, dtype: layers.Dtype = None) -> GCNDenoiser:
  """A `GCNDenoiser` from a config with `hid_dim`, `num_layers`, `n_head`, `dropout` (and optionally
  `coords_dim`, default 5)."""
  coords_dim = (cfg.get("coords_dim", 5) if isinstance(cfg, Mapping)
                else getattr(cfg, "coords_dim", 5))
  return GCNDenoiser(hid_dim=int(_config_value(cfg, "hid_dim")),
                     num_layers=int(_config_value(cfg, "num_layers")),
                     n_head=int(_config_value(cfg, "n_head")),
                     dropout=float(_config_value(cfg, "dropout")),
                     inner_dropout=inner_dropout(cfg), coords_dim=int(coords_dim), dtype=dtype)
