"""The DSGDiffu (GraphDiffu) denoiser: FinePOSE plus graph attention (spec video_family.md §3).

DSGDiffu's released code is FinePOSE with two edits to the denoiser (its prompt edits live in
`posediff_jax.models.prompts`, outside the model):

* `ste_gat` [STEgat], a single-head graph attention layer (PyG `GATConv`), replaces the first
  spatial block; the shared spatial norm still follows it. The first spatial block
  [STEblocks.0] is still built and saved upstream but never run; it is kept here too, so
  checkpoints load strictly (its parameters never receive a gradient).
* the cross-attention adds its output to `gat(x)` [temporal_cross_attn.gat] instead of to x.

How the graph is applied (upstream behaviour, reproduced): the tokens are flattened to one node
matrix and the skeleton's edge list only names node ids 0..16. In `ste_gat` (spatial layout
[N, F, J, C]) those are the 17 joints of frame 0 of row 0; in the cross-attention (temporal layout
[N, J, F, C]) they are frames 0..16 of joint 0 of row 0 (F < 17: running on into joint 1). Every
other node only has its self-loop, so it gets lin(x) + bias. Here each row is its own node matrix
and the graph acts on the rows flagged `first_row` (the call's row 0), so that a call can also
run a few rows at a time (see `models/finepose.py`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import skeleton
from posediff_jax.models import finepose

# Upstream `Graph(dataset)`: 1-based (child, parent) pairs, in the order it lists them.
_GRAPH_PAIRS_1BASED = {
    "h36m": ((2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 1), (9, 8), (10, 9), (11, 10),
             (12, 9), (13, 12), (14, 13), (15, 9), (16, 15), (17, 16)),
    "3dhp": ((2, 1), (3, 2), (4, 3), (5, 4), (6, 2), (7, 6), (8, 7), (16, 2), (16, 15), (15, 12),
             (15, 9), (13, 12), (14, 13), (10, 9), (11, 10), (17, 2)),
}
GRAPHS = tuple(_GRAPH_PAIRS_1BASED)


def graph_edge_index(graph: str) -> np.ndarray:
  """Upstream's `edge_index` [2, 2E + V] (row 0 source, row 1 target), 0-based node ids.

  The V self-loops first, then the E inward (child -> parent) edges, then the E outward ones.
  """
  if graph not in _GRAPH_PAIRS_1BASED:
    raise ValueError(f"unknown skeleton graph {graph!r}; expected one of {', '.join(GRAPHS)}")
  inward = [(child - 1, parent - 1) for child, parent in _GRAPH_PAIRS_1BASED[graph]]
  self_loops = [(i, i) for i in range(skeleton.NUM_JOINTS)]
  edges = self_loops + inward + [(parent, child) for child, parent in inward]
  return np.asarray(edges, np.int64).T


def graph_edges(graph: str) -> tuple[tuple[int, int], ...]:
  """`graph_edge_index(graph)` as a hashable tuple of (source, target) pairs (a model field)."""
  return tuple((int(s), int(d)) for s, d in graph_edge_index(graph).T)


class GraphAttention(nn.Module):
  """PyG `GATConv(C, C, heads=1)` over a node matrix whose edges name only the first nodes.

  z = lin(x) (no bias); for an edge j -> i, e_ji = LeakyReLU_0.2(<z_j, att_src> + <z_i, att_dst>),
  softmax over the edges into i; out_i = sum_j softmax * z_j + bias. As in PyG, the listed
  self-loops are dropped and every node gets exactly one self-loop, so a node that no listed edge
  reaches gets z_i + bias.

  Attributes:
    features: C (input and output width).
    edges: directed (source, target) pairs; nodes 0..max id form the graph.
    dtype: compute dtype.
  """

  features: int
  edges: tuple[tuple[int, int], ...]
  dtype: Any = None

  def _edge_counts(self) -> np.ndarray:
    """[V, V]: counts[i, j] = edges j -> i (self-loops: exactly 1), V = max id + 1."""
    nodes = 1 + max(max(pair) for pair in self.edges)
    counts = np.eye(nodes, dtype=np.float32)
    for source, target in self.edges:
      if source != target:
        counts[target, source] += 1.0
    return counts

  @nn.compact
  def __call__(self, nodes: jax.Array, mix: jax.Array) -> jax.Array:
    """Maps R node matrices [R, M, C] to [R, M, C]; the edges act on nodes 0..V-1 (M >= V) of
    the matrices whose flag in `mix` [R] (bool) is set, the others get lin(x) + bias."""
    glorot = nn.initializers.glorot_uniform()
    z = nn.Dense(self.features, use_bias=False, dtype=self.dtype, kernel_init=glorot,
                 name="lin")(nodes)
    att_src = self.param("att_src", glorot, (1, 1, self.features))
    att_dst = self.param("att_dst", glorot, (1, 1, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    counts = self._edge_counts()
    num_graph = counts.shape[0]
    if nodes.shape[1] < num_graph:
      raise ValueError(f"GraphAttention: the edges name {num_graph} nodes but each row has only "
                       f"{nodes.shape[1]}")
    graph = z[:, :num_graph].astype(jnp.float32)  # [R, V, C]
    score_src = graph @ att_src[0, 0].astype(jnp.float32)
    score_dst = graph @ att_dst[0, 0].astype(jnp.float32)
    logits = nn.leaky_relu(score_dst[:, :, None] + score_src[:, None, :], negative_slope=0.2)
    logits = jnp.where(counts > 0, logits, -jnp.inf)
    # A repeated edge counts once per copy in PyG's softmax, hence the multiplicities.
    weights = counts * jnp.exp(logits - jnp.max(logits, axis=2, keepdims=True))
    weights = weights / jnp.sum(weights, axis=2, keepdims=True)
    mixed = jnp.where(mix[:, None, None], (weights @ graph).astype(z.dtype), z[:, :num_graph])
    return z.at[:, :num_graph].set(mixed) + bias.astype(z.dtype)


def graph_over_tokens(gat: GraphAttention, tokens: jax.Array, first_row: jax.Array) -> jax.Array:
  """Applies `gat` to tokens [N, ..., C], each row flattened to a node matrix and the graph on the
  rows where `first_row` [N] is set; same shape back."""
  rows, width = tokens.shape[0], tokens.shape[-1]
  return gat(tokens.reshape(rows, -1, width), first_row).reshape(tokens.shape)


class GraphTemporalCrossAttention(finepose.TemporalCrossAttention):
  """DSGDiffu's cross-attention: gat(x) + the stylized cross-attention (instead of x + ...).

  Attributes (besides TemporalCrossAttention's):
    graph_edges: the skeleton's (source, target) pairs for `gat`.
  """

  graph_edges: tuple[tuple[int, int], ...] = ()

  def setup(self):
    super().setup()
    self.gat = GraphAttention(self.features, self.graph_edges, self.dtype)

  def __call__(self, x: jax.Array, xf_out: jax.Array, style: jax.Array, text_clip: jax.Array,
               first_row: jax.Array) -> jax.Array:
    """[N, J, F, C], [b, L, W], [N, C], [N, J], [N] -> [N, J, F, C]."""
    # Upstream quirk (spec §11.3): the skeleton edges land on nodes 0..16 of the flattened tokens.
    return (graph_over_tokens(self.gat, x, first_row)
            + self.attend(x, xf_out, style, text_clip))


class DsgDiffuDenoiser(finepose.FinePoseDenoiser):
  """DSGDiffu's x0 predictor (upstream `GraphDiffu` `pose_estimator` without its CLIP).

  Attributes (besides FinePoseDenoiser's):
    graph_edges: directed (source, target) skeleton edges (`graph_edges("h36m")` by default).
  """

  graph_edges: tuple[tuple[int, int], ...] = graph_edges("h36m")

  def setup(self):
    super().setup()
    self.ste_gat = GraphAttention(self.embed_dim, self.graph_edges, self.dtype)

  def _make_cross_attention(self) -> GraphTemporalCrossAttention:
    return GraphTemporalCrossAttention(self.embed_dim, self.num_heads, self.text_tiling,
                                       self.dtype, graph_edges=self.graph_edges)

  def first_spatial_stage(self, x: jax.Array, first_row: jax.Array,
                          deterministic: bool = True) -> jax.Array:
    """`ste_gat` + the shared spatial norm on [N, F, J, C]; first_row [N] bool."""
    if self.is_initializing():
      # Upstream quirk (spec §11.4): STEblocks.0 exists (and is saved) but is never run.
      self.spatial_blocks[0](x, deterministic)
    return self.spatial_norm(graph_over_tokens(self.ste_gat, x, first_row))


def denoiser_from_config(model_config, dtype=None) -> DsgDiffuDenoiser:
  """The DSGDiffu denoiser for `config.model`: FinePOSE's fields plus `graph` ("h36m" or
  "3dhp", upstream's `-d`)."""
  graph = str(finepose.config_getter(model_config)("graph"))
  return DsgDiffuDenoiser(**finepose.denoiser_fields(model_config, dtype),
                          graph_edges=graph_edges(graph))
