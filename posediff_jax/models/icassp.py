"""The ICASSP'24 cross-channel denoiser (upstream `DiffModel`, jjkislele/monoMotionDiff).

The state's 2D and 3D halves become the two halves of one 34-node graph: nodes 0-16 carry the 2D
pose (lifted from 2 to 3 channels by `fc1`), nodes 17-33 the 3D pose, with every joint linked to
its twin. A second, "context" branch embeds the clean 2D condition on the 17-joint skeleton, maps
it onto the 34 nodes along the joint axis (`fc3`) and is merged into the main branch before every
residual block. The readout puts each joint's 2D and 3D node side by side (6 channels) and maps
them to the noise of (u, v, x, y, z) with `fc2`.

The blocks are those of DiffPose (`posediff_jax.models.layers`); the 2D->3D lifter is DiffPose's
`GCNLifter`. Parameter names follow upstream's module tree (`gconv_input`, `gconv_layers_i`,
`atten_layers_i`, `gconv_output`, `gconv_input_t`, `gconv_layers_t_i`, `atten_layers_t_i`,
`fc1`..`fc3`, `temb`), so `posediff_jax.convert.icassp` maps checkpoints mechanically. Upstream
also builds `gconv_output_t` and the context branch's last residual block, which its forward
never runs; they are not parameters here (the converter reports their keys as unused).

Notation: B = batch, J = 17 joints, h = hidden width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from posediff_jax import skeleton
from posediff_jax.models import diffpose as diffpose_models
from posediff_jax.models import layers

NUM_JOINTS = skeleton.NUM_JOINTS
NUM_NODES = 2 * NUM_JOINTS


def cross_channel_edges(edges: layers.Edges = skeleton.H36M_EDGES,
                        num_joints: int = NUM_JOINTS) -> layers.Edges:
  """The 34-node 2D+3D graph: the skeleton on nodes 0..J-1, joint-twin links, the skeleton again
  shifted by J (upstream's edge order; the adjacency does not depend on it)."""
  twins = tuple((i, i + num_joints) for i in range(num_joints))
  shifted = tuple((i + num_joints, j + num_joints) for i, j in edges)
  return tuple(edges) + twins + shifted


class CrossChannelDenoiser(nn.Module):
  """The ICASSP'24 noise predictor (spec §B.1): a 34-node main branch guided by a 2D branch.

  The context branch's first stages (its input convolution, `fc3` and its first attention layer)
  see only the guide; `guide_context` computes them once so that a sampler can reuse them at
  every step (`__call__(..., context=...)`).

  Attributes:
    hid_dim: hidden width h; the time embedding is 4h wide.
    num_layers: number of (attention layer, residual ChebGC block) pairs per branch (>= 1).
    n_head: attention heads (must divide hid_dim).
    dropout: sublayer dropout of the attention layers.
    inner_dropout: dropout after every ChebGC and on the attention probabilities (upstream
      hard-codes 0.1).
    num_joints: skeleton joints J; the main graph has 2J nodes.
    edges: skeleton edges.
    dtype: compute dtype of the matmuls (None: the inputs' dtype; "bfloat16" rounds only the
      matmul operands, see `layers.matmul`). Parameters are float32 either way.
  """

  hid_dim: int = 96
  num_layers: int = 5
  n_head: int = 4
  dropout: float = 0.25
  inner_dropout: float = 0.1
  num_joints: int = NUM_JOINTS
  edges: layers.Edges = skeleton.H36M_EDGES
  dtype: layers.Dtype = None

  def setup(self):
    if self.num_layers < 1:
      raise ValueError(f"CrossChannelDenoiser: num_layers must be >= 1, got {self.num_layers}")
    joints, dtype = self.num_joints, self.dtype
    main = dict(num_nodes=2 * joints, edges=cross_channel_edges(self.edges, joints), dtype=dtype)
    attention = dict(num_nodes=2 * joints, num_heads=self.n_head, dropout_rate=self.dropout,
                     attention_dropout_rate=self.inner_dropout, dtype=dtype)
    residual = dict(main, dropout_rate=self.inner_dropout)
    # Upstream quirk (spec §0.6): the time embedding is 4 * hid_dim wide; config emd_dim is ignored.
    self.temb = layers.TimeEmbedding(4 * self.hid_dim, dtype)
    self.fc1 = layers.Linear(3, dtype)
    self.fc2 = layers.Linear(5, dtype)
    self.fc3 = layers.Linear(2 * joints, dtype)
    self.gconv_input_t = layers.ChebConv(self.hid_dim, joints, self.edges, dtype=dtype)
    self.gconv_input = layers.ChebConv(self.hid_dim, **main)
    self.atten_layers = [layers.GraAttenLayer(**attention) for _ in range(self.num_layers)]
    self.atten_layers_t = [layers.GraAttenLayer(**attention) for _ in range(self.num_layers)]
    self.gconv_layers = [layers.ResChebTimeBlock(**residual) for _ in range(self.num_layers)]
    # After the last layer the context branch feeds nothing: its last residual block never runs.
    self.gconv_layers_t = [layers.ResChebTimeBlock(**residual)
                           for _ in range(self.num_layers - 1)]
    self.gconv_output = layers.ChebConv(3, **main)

  def _check_guide(self, guide: jax.Array, rows: int | None = None) -> None:
    joints = self.num_joints
    if guide.ndim != 3 or guide.shape[1:] != (joints, 2) or (
        rows is not None and guide.shape[0] != rows):
      expected = f"[B, {joints}, 2]" + ("" if rows is None else f" = {(rows, joints, 2)}")
      raise ValueError(f"CrossChannelDenoiser: expected guide of shape {expected} (the 2D "
                       f"condition), got {guide.shape}")

  def guide_context(self, guide: jax.Array, *,
                    deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """The context branch's guide-only stages, shared by every sampler step.

    Args:
      guide: [B, J, 2] the clean normalised 2D pose.
      deterministic: disables dropout when True.

    Returns:
      (the context merged into the main branch's input, the context after its first attention
      layer), both [B, 2J, h].
    """
    self._check_guide(guide)
    ctx = self.gconv_input_t(guide)
    self.sow("intermediates", "out_gconv_input_t", ctx)
    # fc3 maps the J joints onto the 2J nodes, per channel: it acts on the joint axis.
    ctx = self.fc3(jnp.swapaxes(ctx, -1, -2))
    self.sow("intermediates", "out_fc3", ctx)
    ctx = jnp.swapaxes(ctx, -1, -2)  # [B, 2J, h]
    return ctx, self.atten_layers_t[0](ctx, deterministic=deterministic)

  def __call__(self, x: jax.Array, guide: jax.Array, t: jax.Array, *,
               context: tuple[jax.Array, jax.Array] | None = None,
               deterministic: bool = True) -> jax.Array:
    """Predicts the noise of the state.

    Args:
      x: [B, J, 5] noisy state (u, v, x, y, z).
      guide: [B, J, 2] the clean normalised 2D pose the state is conditioned on.
      t: [B] diffusion steps (float or int), or [1]: one step shared by every row, whose time
        embedding is then computed once.
      context: `guide_context(guide)` when already computed (the guide is then not read again).
      deterministic: disables dropout when True; otherwise the 'dropout' rng is needed.

    Returns:
      [B, J, 5] predicted noise.
    """
    joints = self.num_joints
    if x.ndim != 3 or x.shape[1:] != (joints, 5):
      raise ValueError(f"CrossChannelDenoiser: expected x of shape [B, {joints}, 5] (per-joint u, "
                       f"v, x, y, z), got {x.shape}")
    self._check_guide(guide, x.shape[0])
    t = jnp.asarray(t)
    if t.shape not in ((x.shape[0],), (1,)):
      raise ValueError(f"CrossChannelDenoiser: expected t of shape [B] = ({x.shape[0]},) matching "
                       f"x {x.shape} (or [1], shared), got {t.shape}")

    sinusoid = layers.timestep_embedding(t, self.hid_dim)
    self.sow("intermediates", "timestep_embedding_sin", sinusoid)
    temb = self.temb(sinusoid)

    uv_lifted = self.fc1(x[..., :2])
    self.sow("intermediates", "out_fc1", uv_lifted)
    nodes = jnp.concatenate([uv_lifted, x[..., 2:]], axis=-2)  # [B, 2J, 3]
    ctx_input, ctx = context if context is not None else self.guide_context(
        guide, deterministic=deterministic)

    out = self.gconv_input(nodes)
    self.sow("intermediates", "out_gconv_input", out)
    out = out + ctx_input
    for i in range(self.num_layers):
      out = self.atten_layers[i](out, deterministic=deterministic)
      if i > 0:  # layer 0's context attention is part of `guide_context`
        ctx = self.atten_layers_t[i](ctx, deterministic=deterministic)
      self.sow("intermediates", f"out_atten_{i}", out)
      self.sow("intermediates", f"out_atten_t_{i}", ctx)
      out = out + ctx
      if i < self.num_layers - 1:  # after the last layer the context branch feeds nothing
        # Upstream merges in place, `out += guide; guide += out`: the context adds the merged sum.
        ctx = ctx + out
      out = self.gconv_layers[i](out, temb, deterministic=deterministic)
      self.sow("intermediates", f"out_gconv_{i}", out)
      if i < self.num_layers - 1:
        ctx = self.gconv_layers_t[i](ctx, temb, deterministic=deterministic)
        self.sow("intermediates", f"out_gconv_t_{i}", ctx)
    out = self.gconv_output(out)
    self.sow("intermediates", "out_gconv_output", out)
    # Readout: each joint's 2D node and 3D node side by side, [B, J, 6] -> [B, J, 5].
    paired = jnp.concatenate([out[..., :joints, :], out[..., joints:, :]], axis=-1)
    eps = self.fc2(paired)
    self.sow("intermediates", "out_fc2", eps)
    return eps


def denoiser_from_config(cfg, dtype: layers.Dtype = None) -> CrossChannelDenoiser:
  """A `CrossChannelDenoiser` from a config with `hid_dim`, `num_layers`, `n_head`, `dropout`."""
  value = diffpose_models._config_value  # pylint: disable=protected-access
  return CrossChannelDenoiser(hid_dim=int(value(cfg, "hid_dim")),
                              num_layers=int(value(cfg, "num_layers")),
                              n_head=int(value(cfg, "n_head")),
                              dropout=float(value(cfg, "dropout")),
                              inner_dropout=diffpose_models.inner_dropout(cfg), dtype=dtype)
