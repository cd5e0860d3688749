"""The DDIM reverse process (upstream `generalized_steps`) as a single `lax.scan`.

The sampler only sees `denoise_fn(x, t)`, so every family (ε-predicting DiffPose, x0-predicting
D3DP) can use it. Timesteps follow upstream DiffPose: an ascending `seq` such as (0, 12), walked
from the largest step down, each step going to the previous entry and the smallest one to t = −1
(ᾱ_{−1} = 1, which makes the last state equal to that step's x0 prediction).

Per step (spec §A.3), with a_t = ᾱ_t and a_n = ᾱ_next:
  x0̂ = (x − sqrt(1 − a_t)·ε) / sqrt(a_t)          (or ε derived from a predicted x0̂)
  c1 = eta·sqrt((1 − a_t/a_n)(1 − a_n)/(1 − a_t)),  c2 = sqrt(1 − a_n − c1²)
  x ← sqrt(a_n)·x0̂ + c1·z + c2·ε.

The per-step scalars are computed on the host in the dtype of the ᾱ table, with upstream's operation
order: a float32 table (DiffPose) reproduces torch's float32 arithmetic exactly, a float64 table
(D3DP's buffers) its float64 arithmetic. Hence the table and `eta` must be concrete values; `x`,
the model and the noise may be traced.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def _static_timesteps(timesteps, num_table: int) -> np.ndarray:
  try:
    seq = np.asarray(timesteps)
  except jax.errors.TracerArrayConversionError as e:
    raise ValueError("timesteps must be static (a tuple of ints), got a traced array") from e
  if seq.ndim != 1 or seq.size < 1 or seq.dtype.kind not in "iu":
    raise ValueError(f"timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}")
  if np.any(np.diff(seq) <= 0) or seq[0] < 0 or seq[-1] >= num_table - 1:
    raise ValueError(f"timesteps must be strictly ascending in [0, {num_table - 1}) for an ᾱ table "
                     f"of length {num_table} (index t+1 holds ᾱ_t), got {seq.tolist()}")
  return seq.astype(np.int64)


def _concrete_table(alpha_bars_ext) -> np.ndarray:
  try:
    table = np.asarray(alpha_bars_ext)
  except jax.errors.TracerArrayConversionError as e:
    raise ValueError("alpha_bars_ext must be a concrete array (a host-side schedule constant), "
                     "got a traced value") from e
  if table.ndim != 1 or table.shape[0] < 2 or table.dtype.kind != "f":
    raise ValueError(f"alpha_bars_ext must be a 1-D float array [T+1], got {table.dtype} "
                     f"{table.shape}")
  if table[0] != 1:
    raise ValueError("alpha_bars_ext[0] must be ᾱ_{-1} = 1 (use schedules.alpha_bars_with_start), "
                     f"got {table[0]}")
  return table


def _step_coefficients(seq: np.ndarray, table: np.ndarray, eta: float) -> dict[str, np.ndarray]:
  """Per-step scalars [K] in the order the steps run, computed in the table's precision."""
  t_cur = seq[::-1]
  t_next = np.concatenate([[-1], seq[:-1]])[::-1]
  a_t = table[t_cur + 1]
  a_n = table[t_next + 1]
  one = table.dtype.type(1)
  # Same operation order as upstream `generalized_steps`, elementwise in the table's dtype.
  c1 = eta * np.sqrt((one - a_t / a_n) * (one - a_n) / (one - a_t))
  c1 = c1.astype(table.dtype)
  return {
      "t": t_cur.astype(np.float32),
      "sqrt_a_t": np.sqrt(a_t),
      "sqrt_one_minus_a_t": np.sqrt(one - a_t),
      "sqrt_recip_a_t": np.sqrt(one / a_t),
      "sqrt_recip_a_t_minus_one": np.sqrt(one / a_t - one),
      "sqrt_a_n": np.sqrt(a_n),
      "c1": c1,
      "c2": np.sqrt((one - a_n) - c1**2),
  }


def ddim_sample(denoise_fn: DenoiseFn, x_start: jax.Array, timesteps: Sequence[int],
                alpha_bars_ext, *, eta: float = 0.0, key: Optional[jax.Array] = None,
                noise: Optional[jax.Array] = None, return_trajectory: bool = False,
                prediction: str = "eps", clip_x0: Optional[float] = None):
  """Runs the DDIM reverse process from `x_start`, treated as the state at max(timesteps).

  Args:
    denoise_fn: `(x [B, ...], t [B] float32) -> [B, ...]`, the model's ε (or x0) prediction; t is
      the step index as a float, as upstream passes it.
    x_start: [B, ...] initial state (hypotheses already folded into B, see `repeat_hypotheses`).
    timesteps: static ascending step list, upstream `seq`, e.g. (0, 12).
    alpha_bars_ext: [T+1] concrete table from `schedules.alpha_bars_with_start` (index t+1 = ᾱ_t).
    eta: DDIM stochasticity (0 = deterministic); a concrete number.
    key: PRNG key for z; step k (0 = the first step run) uses `jax.random.fold_in(key, k)`.
    noise: [K, *x_start.shape] z for each step in the order the steps run (replays a recorded
      upstream run); takes precedence over `key`. With eta = 0 and no noise, no z is drawn.
    return_trajectory: also return every state and every x0 prediction.
    prediction: "eps" (the model predicts noise) or "x0" (it predicts the clean sample; ε is then
      (sqrt(1/a_t)·x − x0̂)/sqrt(1/a_t − 1), as D3DP).
    clip_x0: if set, x0̂ is clipped to [−clip_x0, clip_x0] before use (D3DP clamps its x0).

  Returns:
    The final state [B, ...]; with `return_trajectory`, the tuple (final state, xs [K+1, B, ...]
    including `x_start`, x0_preds [K, B, ...]), like upstream's two lists.
  """
  if prediction not in ("eps", "x0"):
    raise ValueError(f"prediction must be 'eps' or 'x0', got {prediction!r}")
  x_start = jnp.asarray(x_start)
  if x_start.ndim < 1:
    raise ValueError(f"x_start must have a batch axis [B, ...], got shape {x_start.shape}")
  try:
    eta = float(eta)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise ValueError(f"eta must be a concrete Python number, got {eta!r}") from e
  table = _concrete_table(alpha_bars_ext)
  seq = _static_timesteps(timesteps, table.shape[0])
  coef = _step_coefficients(seq, table, eta)
  num_steps = seq.shape[0]
  dtype = x_start.dtype
  scan_inputs = {name: jnp.asarray(value, jnp.float32 if name == "t" else dtype)
                 for name, value in coef.items()}
  scan_inputs["step"] = jnp.arange(num_steps, dtype=jnp.int32)

  if noise is not None:
    noise = jnp.asarray(noise, dtype)
    if noise.shape != (num_steps,) + x_start.shape:
      raise ValueError(f"noise must have shape [K={num_steps}, *x_start.shape] = "
                       f"{(num_steps,) + x_start.shape}, got {noise.shape}")
    scan_inputs["z"] = noise
  elif eta != 0.0 and key is None:
    raise ValueError(f"eta={eta} needs random noise: pass `key` or `noise`")
  draw_noise = noise is None and eta != 0.0
  batch = x_start.shape[0]

  def step(x, s):
    model_out = denoise_fn(x, jnp.full((batch,), s["t"], jnp.float32))
    if model_out.shape != x.shape:
      raise ValueError(f"denoise_fn returned shape {model_out.shape}, expected {x.shape}")
    if prediction == "eps":
      eps = model_out
      x0 = (x - eps * s["sqrt_one_minus_a_t"]) / s["sqrt_a_t"]
      if clip_x0 is not None:
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
    else:
      x0 = model_out
      if clip_x0 is not None:
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
      eps = (s["sqrt_recip_a_t"] * x - x0) / s["sqrt_recip_a_t_minus_one"]
    if "z" in s:
      z = s["z"]
    elif draw_noise:
      z = jax.random.normal(jax.random.fold_in(key, s["step"]), x.shape, dtype)
    else:
      z = None
    x_next = s["sqrt_a_n"] * x0
    if prediction == "eps":
      # Upstream DiffPose order: sqrt(a_n)·x0 + c1·z + c2·ε.
      if z is not None:
        x_next = x_next + s["c1"] * z
      x_next = x_next + s["c2"] * eps
    else:
      # D3DP order: x0·sqrt(a_n) + c·ε + σ·z.
      x_next = x_next + s["c2"] * eps
      if z is not None:
        x_next = x_next + s["c1"] * z
    return x_next, ((x_next, x0) if return_trajectory else None)

  x_final, trajectory = jax.lax.scan(step, x_start, scan_inputs)
  if not return_trajectory:
    return x_final
  states, x0_preds = trajectory
  xs = jnp.concatenate([x_start[None], states], axis=0)
  return x_final, xs, x0_preds


def linspace_timesteps(num_train_steps: int, num_sampling_steps: int) -> tuple[int, ...]:
  """D3DP's step list as an ascending `seq`: int(linspace(−1, T−1, K+1)) in float32, minus the −1.

  E.g. T=1000, K=5 -> (199, 399, 599, 799, 999); K=3 -> (332, 665, 999).
  """
  if num_sampling_steps < 1 or num_train_steps < num_sampling_steps:
    raise ValueError(f"need 1 <= num_sampling_steps ({num_sampling_steps}) <= num_train_steps "
                     f"({num_train_steps})")
  # torch.linspace (float32) fills the first half from the start and the second from the end.
  n = num_sampling_steps + 1
  start, end = np.float32(-1.0), np.float32(num_train_steps - 1)
  step = (end - start) / np.float32(n - 1)
  i = np.arange(n, dtype=np.float32)
  values = np.where(i < n // 2, start + step * i, end - step * (np.float32(n - 1) - i))
  times = np.trunc(values).astype(np.int64)
  return tuple(int(t) for t in times[1:])


def repeat_hypotheses(x: jax.Array, num_hypotheses: int) -> jax.Array:
  """[B, ...] -> [H*B, ...] in torch `repeat` order (hypothesis-major: rows h0 b0..bB, h1 ...)."""
  if num_hypotheses < 1:
    raise ValueError(f"num_hypotheses must be >= 1, got {num_hypotheses}")
  x = jnp.asarray(x)
  return jnp.tile(x, (num_hypotheses,) + (1,) * (x.ndim - 1))


def mean_over_hypotheses(x: jax.Array, num_hypotheses: int) -> jax.Array:
  """[H*B, ...] (hypothesis-major) -> [B, ...], the mean over the H hypotheses."""
  x = jnp.asarray(x)
  if num_hypotheses < 1 or x.ndim < 1 or x.shape[0] % num_hypotheses:
    raise ValueError(f"leading axis {x.shape[:1]} is not a multiple of num_hypotheses="
                     f"{num_hypotheses}")
  return jnp.mean(x.reshape((num_hypotheses, -1) + x.shape[1:]), axis=0)
