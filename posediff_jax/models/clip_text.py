"""The text tower of OpenAI CLIP (ViT-B/32) in Flax, as FinePOSE and DSGDiffu run it.

FinePOSE and DSGDiffu (spec video_family.md §2.2, §3) feed a 77-token prompt of embeddings, not
token ids, through CLIP's text transformer: they build the prompt from learnable context vectors and
CLIP token embeddings (see `posediff_jax.models.prompts`), add CLIP's positional embedding, run the
12 pre-LN residual blocks with a causal mask, and apply `ln_final`. `text_projection` and the vision
tower are never used, so they are not part of this module.

Each block is `x + attn(ln_1(x))`, then `x + c_proj(QuickGELU(c_fc(ln_2(x))))`. `attn` is torch's
`nn.MultiheadAttention`: one `in_proj` whose 3W outputs are [q | k | v], each split head-major into
`num_heads` heads; softmax(q k^T / sqrt(head_dim) + mask) over the keys with the causal mask
(position i sees positions <= i); then `out_proj`. All LayerNorms use eps 1e-5.

Parameter names follow the torch keys so the converter (`posediff_jax.convert.clip_text`) maps them
by rule: `transformer.resblocks.3.mlp.c_fc.weight` is `resblocks_3/mlp_c_fc/kernel` (transposed).
Everything is float32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax.models import transformer

# OpenAI CLIP ViT-B/32 text tower.
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
WIDTH = 512
NUM_LAYERS = 12
NUM_HEADS = 8
# torch nn.LayerNorm default, used by every CLIP LayerNorm.
LN_EPS = 1e-5


def quick_gelu(x: jax.Array) -> jax.Array:
  """CLIP's activation: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def causal_mask(length: int) -> np.ndarray:
  """bool [L, L]: True where query i may see key j, i.e. j <= i (CLIP `build_attention_mask`)."""
  return np.tril(np.ones((length, length), dtype=bool))


class CausalSelfAttention(nn.Module):
  """torch `nn.MultiheadAttention` self-attention with CLIP's causal mask, over axis -2.

  Attributes:
    num_heads: attention heads (must divide the width).

  Params: `in_proj` (kernel [W, 3W], bias [3W]; torch `in_proj_weight` rows [q; k; v]) and
  `out_proj` (kernel [W, W], bias [W]).
  """

  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [..., L, W] to [..., L, W]."""
    width, length = x.shape[-1], x.shape[-2]
    if width % self.num_heads:
      raise ValueError(f"CausalSelfAttention: width {width} is not divisible by num_heads "
                       f"{self.num_heads}")
    head_dim = width // self.num_heads
    qkv = transformer.Dense(3 * width, name="in_proj")(x)
    qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, head_dim)
    query, key, value = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key) * head_dim**-0.5
    logits = jnp.where(causal_mask(length), logits.astype(jnp.float32), -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    out = jnp.einsum("...hqk,...khd->...qhd", probs, value).reshape(x.shape)
    return transformer.Dense(width, name="out_proj")(out)


class ClipResidualBlock(nn.Module):
  """CLIP `ResidualAttentionBlock`: pre-LN causal attention and QuickGELU MLP (4W), both residual.

  Attributes:
    num_heads: attention heads.

  Params: `ln_1`, `attn`, `ln_2`, `mlp_c_fc` (W -> 4W), `mlp_c_proj` (4W -> W).
  """

  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [..., L, W] to [..., L, W]."""
    width = x.shape[-1]
    x = x + CausalSelfAttention(self.num_heads, name="attn")(
        transformer.layer_norm(LN_EPS, name="ln_1")(x))
    hidden = transformer.Dense(4 * width, name="mlp_c_fc")(
        transformer.layer_norm(LN_EPS, name="ln_2")(x))
    return x + transformer.Dense(width, name="mlp_c_proj")(quick_gelu(hidden))


class ClipTextTransformer(nn.Module):
  """CLIP's text tower without the final projection, taking prompt embeddings.

  Attributes:
    vocab_size: rows of the token embedding (49408).
    context_length: prompt length L (77).
    width: W (512).
    num_layers: residual blocks (12).
    num_heads: attention heads (8).

  Params: `token_embedding` [vocab_size, W], `positional_embedding` [L, W], `resblocks_{i}`,
  `ln_final`.
  """

  vocab_size: int = VOCAB_SIZE
  context_length: int = CONTEXT_LENGTH
  width: int = WIDTH
  num_layers: int = NUM_LAYERS
  num_heads: int = NUM_HEADS

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f"ClipTextTransformer: width {self.width} is not divisible by num_heads "
                       f"{self.num_heads}")
    self.token_embedding = self.param(
        "token_embedding", nn.initializers.normal(0.02), (self.vocab_size, self.width))
    self.positional_embedding = self.param(
        "positional_embedding", nn.initializers.normal(0.01), (self.context_length, self.width))
    self.resblocks = [ClipResidualBlock(self.num_heads, name=f"resblocks_{i}")
                      for i in range(self.num_layers)]
    self.ln_final = transformer.layer_norm(LN_EPS, name="ln_final")

  def __call__(self, prompt_embeddings: jax.Array) -> jax.Array:
    """ln_final(transformer(prompt_embeddings + positional_embedding)), causal.

    Args:
      prompt_embeddings: [B, L, W] (any leading axes) float, without the positional embedding.

    Returns:
      float32 [B, L, W], the text features FinePOSE / DSGDiffu call X_clip (batch-first here).
    """
    expected = (self.context_length, self.width)
    if tuple(prompt_embeddings.shape[-2:]) != expected:
      raise ValueError(f"ClipTextTransformer: prompt embeddings have shape "
                       f"{list(prompt_embeddings.shape)}, expected [..., {expected[0]}, "
                       f"{expected[1]}] (context_length, width)")
    x = jnp.asarray(prompt_embeddings, jnp.float32) + self.positional_embedding
    for block in self.resblocks:
      x = block(x)
    return self.ln_final(x)

  def embed_tokens(self, ids: jax.Array) -> jax.Array:
    """CLIP's token embedding: ids [..., L] int -> float32 [..., L, W].

    Raises:
      ValueError: concrete (non-traced) ids that are not integers or lie outside [0, vocab_size).
    """
    if not isinstance(ids, jax.core.Tracer):
      ids_np = np.asarray(ids)
      if not np.issubdtype(ids_np.dtype, np.integer):
        raise ValueError(f"embed_tokens: token ids must be integers, got dtype {ids_np.dtype}")
      if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= self.vocab_size):
        raise ValueError(f"embed_tokens: token ids must lie in [0, {self.vocab_size}), got "
                         f"[{ids_np.min()}, {ids_np.max()}]")
    return jnp.take(self.token_embedding, jnp.asarray(ids), axis=0)
