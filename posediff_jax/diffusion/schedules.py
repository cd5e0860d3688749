"""Noise schedules (β_t, ᾱ_t) and the forward-process helpers used in training.

Schedules are host-side numpy constants computed once per config, in the precision upstream uses,
so that they match the torch values bit for bit (JAX runs without float64 by default). They can be
passed straight to jitted code, where they become constants.

Conventions: t runs over 0..T-1 and ᾱ_t = Π_{s<=t} (1 − β_s), so ᾱ_t already includes β_t.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def linear_betas(beta_start: float, beta_end: float, num_steps: int) -> np.ndarray:
  """β linearly spaced from `beta_start` to `beta_end` (DiffPose): float64 linspace cast to float32.

  Returns:
    [num_steps] float32.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if not 0.0 < beta_start <= 1.0 or not 0.0 < beta_end <= 1.0:
    raise ValueError(f"betas must lie in (0, 1], got beta_start={beta_start}, beta_end={beta_end}")
  return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64).astype(np.float32)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """The cosine schedule of Nichol & Dhariwal as D3DP builds it (video spec §5).

  ᾱ(x) = cos²((x/T + s)/(1 + s)·π/2) for x = 0..T, normalised by ᾱ(0); β_t = 1 − ᾱ(t+1)/ᾱ(t),
  clipped to [0, max_beta]. Everything in float64, as upstream keeps its buffers.

  Returns:
    [num_steps] float64.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  x = np.linspace(0, num_steps, num_steps + 1, dtype=np.float64)
  curve = np.cos(((x / num_steps) + s) / (1 + s) * math.pi * 0.5) ** 2
  curve = curve / curve[0]
  betas = 1 - (curve[1:] / curve[:-1])
  return np.clip(betas, 0.0, max_beta)


def _check_betas(betas) -> np.ndarray:
  try:
    betas = np.asarray(betas)
  except jax.errors.TracerArrayConversionError as e:
    raise ValueError("betas must be a concrete array (schedules are host-side constants), got a "
                     "traced value; build the schedule outside jax.jit") from e
  if betas.ndim != 1 or betas.shape[0] < 1 or betas.dtype.kind != "f":
    raise ValueError(f"betas must be a non-empty 1-D float array [T], got {betas.dtype} "
                     f"{betas.shape}")
  if np.any(betas < 0) or np.any(betas > 1):
    raise ValueError("betas must lie in [0, 1]")
  return betas


def alpha_bars(betas) -> np.ndarray:
  """ᾱ_t = cumprod(1 − β) for t = 0..T-1, in the dtype of `betas`.

  1 − β is formed in the betas' dtype and the product accumulated in float64, which is what torch's
  CPU `cumprod` does for float32 (the parity fixtures come from CPU runs).

  Args:
    betas: [T] float32 or float64.

  Returns:
    [T] same dtype as `betas`.
  """
  betas = _check_betas(betas)
  one_minus = (betas.dtype.type(1) - betas).astype(np.float64)
  return np.cumprod(one_minus).astype(betas.dtype)


def alpha_bars_with_start(betas) -> np.ndarray:
  """ᾱ for t = -1..T-1 (upstream DiffPose `compute_alpha`): index t+1 holds ᾱ_t, index 0 is 1.

  Args:
    betas: [T] float32 or float64.

  Returns:
    [T+1] same dtype as `betas`.
  """
  betas = _check_betas(betas)
  return np.concatenate([np.ones(1, betas.dtype), alpha_bars(betas)])


def antithetic_timesteps(key: jax.Array, batch: int, num_steps: int) -> jax.Array:
  """Training timesteps in mirrored pairs (DiffPose, spec §A.3).

  Draws batch//2 + 1 integers uniformly from [0, num_steps), appends their mirrors
  num_steps − 1 − t and keeps the first `batch`.

  Returns:
    [batch] int32.
  """
  if batch < 1 or num_steps < 1:
    raise ValueError(f"batch and num_steps must be >= 1, got batch={batch}, num_steps={num_steps}")
  t = jax.random.randint(key, (batch // 2 + 1,), 0, num_steps, dtype=jnp.int32)
  return antithetic_from_draw(t, batch, num_steps)


def antithetic_from_draw(half: jax.Array, batch: int, num_steps: int) -> jax.Array:
  """`antithetic_timesteps` from its draw: `half` [batch//2 + 1] integers in [0, num_steps)
  (upstream's `randint(0, T, (n//2+1,))`, e.g. recorded by a run being replayed) -> [batch] int32
  `cat([half, T − 1 − half])[:batch]`."""
  half = jnp.asarray(half).astype(jnp.int32)
  if half.shape != (batch // 2 + 1,):
    raise ValueError(f"antithetic timesteps of a batch of {batch} come from {batch // 2 + 1} "
                     f"draws, got an array of shape {half.shape}")
  return jnp.concatenate([half, num_steps - 1 - half])[:batch]


def q_sample(x0: jax.Array, t: jax.Array, noise: jax.Array, alpha_bar) -> jax.Array:
  """Forward diffusion x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise, ᾱ indexed directly at t.

  Args:
    x0: [B, ...] clean samples.
    t: [B] integer timesteps in [0, T).
    noise: [B, ...] noise, same shape as `x0` (may already be scaled, as DiffPose's GMM noise).
    alpha_bar: [T] ᾱ table (`alpha_bars`, *not* the shifted `alpha_bars_with_start`).

  Returns:
    [B, ...] x_t in the dtype of `x0`.
  """
  x0 = jnp.asarray(x0)
  t = jnp.asarray(t)
  if noise.shape != x0.shape or t.shape != x0.shape[:1]:
    raise ValueError(f"q_sample expects x0 [B, ...], noise of the same shape and t [B]; got x0 "
                     f"{x0.shape}, noise {noise.shape}, t {t.shape}")
  a = jnp.asarray(alpha_bar, x0.dtype)[t].reshape((-1,) + (1,) * (x0.ndim - 1))
  return x0 * jnp.sqrt(a) + noise * jnp.sqrt(1.0 - a)
