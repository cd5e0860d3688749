"""Transformer layers of the MixSTE backbone, shared by D3DP, FinePOSE and DSGDiffu.

The video family (spec video_family.md §1.2) stacks timm-style pre-LN ViT blocks that alternate
attention over the joints of a frame (spatial) and over the frames of a joint (temporal). This
module holds the pieces every member reuses: a PyTorch-initialised dense layer with a compute
dtype, multi-head self-attention with one fused qkv projection, stochastic depth, the block itself,
the sinusoidal time embedding with its MLP, and the cheap re-layouts between the spatial
`[N, F, J, C]` and temporal `[N, J, F, C]` token grids.

Parameter names spell out the torch module they come from (`attn_qkv` is `attn.qkv`, `mlp_fc1` is
`mlp.fc1`, ...) so a converter maps them by rule. Parameters are always float32. `dtype` is the
matmul operand dtype (None = float32), so bfloat16 compute is a config option: products accumulate
in float32 and everything else (residual stream, LayerNorm, softmax, GELU) stays float32, which
on CPU is also the fast layout (bfloat16 element-wise ops there are emulated).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax.models import layers

Dtype = Any

# torch `nn.LayerNorm` defaults used by MixSTE2: 1e-6 in the blocks and the shared norms.
BLOCK_LN_EPS = 1e-6


def _torch_uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Dense(nn.Module):
  """`torch.nn.Linear` with its default init: kernel and bias ~ U(±1/sqrt(fan_in)).

  Attributes:
    features: output width.
    use_bias: whether to add a bias.
    dtype: matmul operand dtype (None: the promoted dtype of input and kernel).

  Params: `kernel` [in, out] (the transpose of torch's `weight`) and `bias` [out], float32.
  The output is float32.
  """

  features: int
  use_bias: bool = True
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [..., in] to float32 [..., features]."""
    fan_in = x.shape[-1]
    init = _torch_uniform(1.0 / math.sqrt(fan_in))
    kernel = self.param("kernel", init, (fan_in, self.features))
    # float32 accumulation: for bfloat16 operands both more accurate and ~2x faster on CPU than
    # the bf16-output dot; the gradient's products run in bfloat16 too (`layers.mixed_matmul`).
    y = layers.matmul(x, kernel, self.dtype)
    if self.use_bias:
      y = y + self.param("bias", init, (self.features,))
    return y


def layer_norm(eps: float, name: str | None = None) -> nn.LayerNorm:
  """`torch.nn.LayerNorm(C, eps)` in float32: two-pass variance, params `scale` (torch weight)
  and `bias`."""
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class SelfAttention(nn.Module):
  """Multi-head self-attention over axis -2 (timm `Attention`, upstream `attn`).

  One `attn_qkv` projection whose 3C outputs are [q | k | v], each split head-major into
  `num_heads` heads of C / num_heads channels; softmax(q k^T * head_dim^-0.5) over the keys; then
  `attn_proj`. Any leading axes are batch axes, so the same module attends over the joints of
  `[N, F, J, C]` or over the frames of `[N, J, F, C]` without reshapes.

  Attributes:
    num_heads: attention heads (must divide C).
    qkv_bias: whether `attn_qkv` has a bias (True in MixSTE2).
    dtype: compute dtype.
  """

  num_heads: int
  qkv_bias: bool = True
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [..., L, C] to [..., L, C]."""
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"SelfAttention: width {width} is not divisible by num_heads "
                       f"{self.num_heads}")
    head_dim = width // self.num_heads
    qkv = Dense(3 * width, use_bias=self.qkv_bias, dtype=self.dtype, name="attn_qkv")(x)
    qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, head_dim)
    out = attention_core(qkv, head_dim**-0.5, self.dtype).reshape(x.shape[:-1] + (width,))
    return Dense(width, dtype=self.dtype, name="attn_proj")(out)


def attention_core(qkv: jax.Array, scale: float, dtype=None) -> jax.Array:
  """softmax(q k^T * scale) v for fused [..., L, 3, heads, d] projections -> [..., L, heads, d].

  Laid out head-major ([3, ..., heads, L, d]) so both products are plain batched matmuls, and the
  softmax is normalised after the value product (an [L, d] division instead of an [L, L] one):
  on CPU this runs ~5x faster than the einsum over the token-major layout, with the same result
  to float32 rounding. `dtype` (None = as given) is the operand dtype of the two products; the
  logits, the softmax and the output are float32.
  """
  if layers.narrow_dtype(dtype) is not None:
    qkv = qkv.astype(dtype)  # before the re-layout: half the bytes to move
  qkv = jnp.moveaxis(qkv, (-3, -2), (0, -3))
  query, key, value = qkv[0], qkv[1], qkv[2]
  logits = layers.matmul(query * jnp.asarray(scale, query.dtype), jnp.swapaxes(key, -1, -2),
                         dtype)
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  out = layers.matmul(weights, value, dtype)
  return jnp.swapaxes(out / total, -2, -3)


class DropPath(nn.Module):
  """Stochastic depth (timm `DropPath`): zeroes a residual branch per row, rescales the rest.

  A row is everything but the last two axes (one token sequence), as timm drops per sample of the
  block's batch. Active only when `deterministic=False` and `rate > 0`; it then draws from the
  'dropout' rng stream.

  Attributes:
    rate: probability of dropping a row's branch.
  """

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """Maps [..., L, C] to the same shape."""
    if deterministic or self.rate == 0.0:
      return x
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f"DropPath: rate must lie in [0, 1), got {self.rate}")
    keep = 1.0 - self.rate
    mask_shape = x.shape[:-2] + (1, 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, mask_shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class Block(nn.Module):
  """The pre-LN ViT block of MixSTE2 (timm `Block`): attention then MLP, both residual.

  x + DropPath(attn(norm1(x))), then x + DropPath(mlp_fc2(GELU(mlp_fc1(norm2(x))))) with the
  exact (erf) GELU; norm1/norm2 are LayerNorms with eps 1e-6.

  Attributes:
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / C (int(C * mlp_ratio), as timm).
    drop_path_rate: stochastic depth rate of both branches.
    qkv_bias: whether `attn_qkv` has a bias.
    dtype: compute dtype.
  """

  num_heads: int
  mlp_ratio: float = 2.0
  drop_path_rate: float = 0.0
  qkv_bias: bool = True
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """Maps [..., L, C] to [..., L, C], attending over axis -2."""
    width = x.shape[-1]
    drop = DropPath(self.drop_path_rate)
    attended = SelfAttention(self.num_heads, self.qkv_bias, self.dtype, name="attn")(
        layer_norm(BLOCK_LN_EPS, name="norm1")(x))
    x = x + drop(attended, deterministic)
    hidden = Dense(int(width * self.mlp_ratio), dtype=self.dtype, name="mlp_fc1")(
        layer_norm(BLOCK_LN_EPS, name="norm2")(x))
    hidden = Dense(width, dtype=self.dtype, name="mlp_fc2")(nn.gelu(hidden, approximate=False))
    return x + drop(hidden, deterministic)


def drop_path_rates(rate: float, depth: int) -> tuple[float, ...]:
  """Per-depth stochastic depth rates, torch `linspace(0, rate, depth)` in float32.

  Block i of the spatial and of the temporal stack share rate i.
  """
  if depth < 1:
    raise ValueError(f"depth must be >= 1, got {depth}")
  return tuple(float(r) for r in np.linspace(0.0, rate, depth, dtype=np.float32))


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal timestep embedding, sin half first (upstream `SinusoidalPositionEmbeddings`).

  freq_i = exp(-i ln(10000) / (half - 1)) for i < half = dim / 2; output [sin(t f), cos(t f)].
  The same function as DiffPose's `layers.timestep_embedding`, reused here.

  Args:
    t: [N] timesteps (integers or floats; used as float32).
    dim: embedding width (even, >= 4).

  Returns:
    float32 [N, dim].
  """
  if dim % 2:
    raise ValueError(f"sinusoidal_embedding: dim must be even, got {dim}")
  return layers.timestep_embedding(t, dim)


class TimeMLP(nn.Module):
  """upstream `time_mlp`: sinusoid(C) -> `fc1` Linear(C, 2C) -> exact GELU -> `fc2` Linear(2C, C).

  Torch keys `time_mlp.1` and `time_mlp.3` map to `fc1` and `fc2`.

  Attributes:
    features: C.
    dtype: compute dtype (the sinusoid itself is always float32).
  """

  features: int
  dtype: Dtype = None

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    """Maps timesteps [N] to [N, C]."""
    emb = sinusoidal_embedding(t, self.features)
    hidden = Dense(2 * self.features, dtype=self.dtype, name="fc1")(emb)
    return Dense(self.features, dtype=self.dtype, name="fc2")(nn.gelu(hidden, approximate=False))


def spatial_to_temporal(x: jax.Array) -> jax.Array:
  """[N, F, J, C] (attention over joints) -> [N, J, F, C] (attention over frames)."""
  return jnp.swapaxes(x, -3, -2)


def temporal_to_spatial(x: jax.Array) -> jax.Array:
  """[N, J, F, C] -> [N, F, J, C]; the inverse of `spatial_to_temporal`."""
  return jnp.swapaxes(x, -3, -2)
