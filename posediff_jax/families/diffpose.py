"""DiffPose (CVPR 2023): a GCN lifter's 3D guess refined by a few DDIM steps of a GCN denoiser.

Evaluation (spec §A.3): lift the 2D, root-subtract, stack [u, v, x, y, z] per joint, treat that
clean state as x_t at the largest sampler step and run deterministic DDIM down to t = 0; read out
xyz. Training: the denoiser learns to predict GMM-scaled noise on [u, v, x, y, z]; our lifter recipe
(upstream released none) is plain MPJPE regression.
"""

import jax
import jax.numpy as jnp

from posediff_jax import safe_load
from posediff_jax.convert import common as convert_common
from posediff_jax.convert import diffpose as convert_diffpose
from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from posediff_jax.models import diffpose as models

STAGES = ("lifter", "denoiser")
# Checkpoints whose lifter this family can start from (both use DiffPose's GraFormer).
LIFTER_FAMILIES = ("diffpose", "icassp")


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(config, section: str = "eval"):
  """`config.<section>.compute_dtype` as the networks take it: None for float32, else the dtype.

  "bfloat16" rounds the operands of the networks' dense matmuls to bfloat16 (on a 2-core EPYC with
  AVX512-BF16 the ICASSP evaluation ran ~1.5x and DiffPose's ~1.4x faster); parameters stay
  float32, and products, norms, attention and the sampler float32. `section` is "eval" (the
  sampler) or "train" (the training losses).
  """
  name = str(config[section].get("compute_dtype", "float32"))
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"{section}.compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
  return None if name == "float32" else jnp.dtype(name)


def draws_of(batch: dict) -> dict:
  """The recorded random draws a batch carries for replaying a run (`batch['draws']`), or {}."""
  return batch.get("draws") or {}


def lifter_module(config, dtype=None) -> models.GCNLifter:
  return models.lifter_from_config(config.lifter, dtype)


def denoiser_module(config, dtype=None) -> models.GCNDenoiser:
  return models.denoiser_from_config(config.model, dtype)


def checkpoint_meta(config) -> dict:
  """What a checkpoint records about its model, checked against the config when it is loaded."""
  sizes = ("hid_dim", "num_layers", "n_head")
  return {"family": "diffpose", "model": {k: config.model[k] for k in sizes},
          "lifter": {k: config.lifter[k] for k in sizes}}


def convert(config, denoiser_path, lifter_path) -> tuple[dict, dict[str, list[str]]]:
  """Released torch checkpoints -> ({'lifter': ..., 'denoiser': ...}, {part: unused torch keys}).

  Both files are upstream's lists; element 0 (the live weights) is what upstream evaluates. With
  `denoiser_path` None only the lifter is converted (a start for training a denoiser).
  """
  return convert_parts(config, denoiser_path, lifter_path, convert_diffpose.convert_denoiser,
                       "DiffPose", "diffpose_uvxyz_*.pth")


def convert_parts(config, denoiser_path, lifter_path, convert_denoiser, name: str,
                  denoiser_file: str) -> tuple[dict, dict[str, list[str]]]:
  """The lifter (DiffPose's GraFormer) and, if given, the denoiser with `convert_denoiser`."""
  if not lifter_path:
    raise ValueError(f"{name} needs --lifter (DiffPose's gcn_xyz_*.pth), with --checkpoint "
                     f"({denoiser_file}) for a complete model, or alone to train a denoiser")
  params, unused = {}, {}
  # The denoiser first: a checkpoint of the wrong family is the likelier mistake, and says so.
  if denoiser_path:
    den_sd = convert_common.extract_state_dict(safe_load.load_torch_checkpoint(denoiser_path),
                                               denoiser_path)
    params["denoiser"], den_report = convert_denoiser(den_sd, config.model,
                                                      source=str(denoiser_path))
    unused["denoiser"] = list(den_report.unused)
  lift_sd = convert_common.extract_state_dict(safe_load.load_torch_checkpoint(lifter_path),
                                              lifter_path)
  params["lifter"], lift_report = convert_diffpose.convert_lifter(lift_sd, config.lifter,
                                                                 source=str(lifter_path))
  unused["lifter"] = list(lift_report.unused)
  return params, unused


def init_params(config, key) -> dict:
  """Fresh parameters {'lifter': ..., 'denoiser': ...}."""
  k_lift, k_den = jax.random.split(key)
  lifter = lifter_module(config).init(k_lift, jnp.zeros((1, 17, 2), jnp.float32))["params"]
  denoiser = denoiser_module(config).init(
      k_den, jnp.zeros((1, 17, config.model.coords_dim), jnp.float32), jnp.zeros((1,), jnp.float32))
  return {"lifter": lifter, "denoiser": denoiser["params"]}


def sampler_timesteps(config) -> tuple[int, ...]:
  """Upstream `seq` for the uniform skip: range(0, T_test, T_test // steps), e.g. (0, 12)."""
  c = config.sampling
  if c.num_steps < 1 or c.timestep_range < c.num_steps:
    raise ValueError(f"sampling.timestep_range ({c.timestep_range}) must be >= sampling.num_steps "
                     f"({c.num_steps}) >= 1")
  seq = tuple(range(0, c.timestep_range, c.timestep_range // c.num_steps))
  if seq[-1] >= config.diffusion.num_steps:
    raise ValueError(f"sampler step {seq[-1]} is outside the {config.diffusion.num_steps}-step "
                     "schedule")
  return seq


def betas(config) -> jax.Array:
  c = config.diffusion
  if c.beta_schedule != "linear":
    raise ValueError("DiffPose uses a linear beta schedule, got "
                     f"diffusion.beta_schedule={c.beta_schedule!r}")
  return schedules.linear_betas(c.beta_start, c.beta_end, c.num_steps)


def root_subtract(xyz: jax.Array, upstream_aliasing: bool = False) -> jax.Array:
  """[..., J, 3] -> root-relative; optionally as upstream's aliased in-place op behaves on CPU."""
  if upstream_aliasing:
    # Upstream quirk (spec §0.4): `a[:, :, :] -= a[:, :1, :]` on CPU zeroes only the root.
    return xyz.at[..., 0, :].set(0.0)
  return xyz - xyz[..., :1, :]


# Frames per piece when `predict` splits a large batch on CPU: the activations of 256 frames stay in
# the caches from layer to layer (15-20% faster than one 1024-frame pass on a 2-core EPYC). On
# accelerators the whole batch runs in one pass.
CPU_CHUNK_SIZE = 256


def predict(config, params, input_2d: jax.Array, key=None, noise=None, return_trajectory=False,
            chunk_size: int | None = None):
  """The whole upstream evaluation pipeline for one batch.

  Every frame is computed independently, so with a deterministic sampler (eta = 0, no injected
  noise, no trajectory) a batch larger than `chunk_size` runs as a `lax.map` over pieces of
  `chunk_size` frames, zero-padded to whole pieces; the result is the same as in one pass.

  Args:
    config: the experiment config (model sizes, sampling, eval flags).
    params: {'lifter': ..., 'denoiser': ...}.
    input_2d: [B, 17, 2] normalised 2D keypoints.
    key: PRNG key for eta > 0 (unused with upstream's eta = 0).
    noise: optional injected sampler noise [K, H*B, 17, 5] (replays a recorded run).
    return_trajectory: also return the sampler's states and x0 predictions.
    chunk_size: frames per piece; 0 runs the batch in one pass; None (default) means
      `CPU_CHUNK_SIZE` on the CPU backend and one pass elsewhere.

  Returns:
    [B, 17, 3] root-relative 3D in metres (and the trajectory dict if asked).
  """
  if chunk_size is None:
    chunk_size = CPU_CHUNK_SIZE if jax.default_backend() == "cpu" else 0
  if chunk_size < 0:
    raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
  deterministic = noise is None and not return_trajectory and config.sampling.eta == 0
  if not (deterministic and input_2d.ndim == 3 and 0 < chunk_size < input_2d.shape[0]):
    return _predict_batch(config, params, input_2d, key, noise, return_trajectory)
  batch = input_2d.shape[0]
  num_chunks = -(-batch // chunk_size)
  padded = jnp.pad(input_2d, ((0, num_chunks * chunk_size - batch), (0, 0), (0, 0)))
  # Piece j holds frames j, j + num_chunks, ...: a batch sharded over devices along its first
  # axis stays evenly sharded inside every piece.
  pieces = jnp.swapaxes(padded.reshape(chunk_size, num_chunks, *input_2d.shape[1:]), 0, 1)
  pred = jax.lax.map(lambda piece: _predict_batch(config, params, piece, key), pieces)
  return jnp.swapaxes(pred, 0, 1).reshape(num_chunks * chunk_size, *pred.shape[2:])[:batch]


def _predict_batch(config, params, input_2d, key=None, noise=None, return_trajectory=False):
  """`predict` for one piece, in one pass."""
  aliasing = config.eval.upstream_root_aliasing
  hyp = config.sampling.hypotheses
  dtype = compute_dtype(config)
  xyz = lifter_module(config, dtype).apply({"params": params["lifter"]}, input_2d)
  xyz = root_subtract(xyz, aliasing)
  x_start = ddim.repeat_hypotheses(jnp.concatenate([input_2d, xyz], axis=-1), hyp)
  denoiser = denoiser_module(config, dtype)

  def denoise(x, t):
    # The sampler moves every row to the same step: one time embedding serves them all.
    return denoiser.apply({"params": params["denoiser"]}, x, t[:1])

  out = ddim.ddim_sample(
      denoise, x_start, sampler_timesteps(config), schedules.alpha_bars_with_start(betas(config)),
      eta=config.sampling.eta, key=key, noise=noise, return_trajectory=return_trajectory)
  x_final = out[0] if return_trajectory else out
  pred = root_subtract(ddim.mean_over_hypotheses(x_final, hyp)[..., 2:5], aliasing)
  if return_trajectory:
    return pred, {"x_start": x_start, "xs": out[1], "x0_preds": out[2]}
  return pred


def lifter_loss(config, lifter_params, batch, key) -> jax.Array:
  """MPJPE of the root-subtracted lifter output (our recipe; upstream released none)."""
  xyz = lifter_module(config, compute_dtype(config, "train")).apply(
      {"params": lifter_params}, batch["input_2d"], deterministic=False, rngs={"dropout": key})
  squared = jnp.sum(jnp.square(root_subtract(xyz) - batch["target_3d"]), axis=-1)
  # The root's error is exactly 0 after root subtraction, where sqrt has an infinite gradient.
  return jnp.mean(jnp.sqrt(squared + 1e-12))


def training_draws(config, k_t, k_noise, batch_size: int, shape, draws: dict):
  """The timesteps [B] and unit noise `shape` of a training step: upstream's antithetic
  `randint(0, T, (B//2+1,))` draw and `randn_like(x)`, taken from `draws` when a recorded run is
  replayed ('t' [B] itself or its draw 't_half', and 'noise'), else drawn from `k_t` and
  `k_noise`."""
  num_steps = config.diffusion.num_steps
  if "t" in draws:
    t = jnp.asarray(draws["t"]).astype(jnp.int32)
    if t.shape != (batch_size,):
      raise ValueError(f"draws['t'] must be [B={batch_size}] timesteps, got {t.shape}")
  elif "t_half" in draws:
    t = schedules.antithetic_from_draw(draws["t_half"], batch_size, num_steps)
  else:
    t = schedules.antithetic_timesteps(k_t, batch_size, num_steps)
  if "noise" in draws:
    unit = jnp.asarray(draws["noise"], jnp.float32)
    if unit.shape != tuple(shape):
      raise ValueError(f"draws['noise'] must have the shape {tuple(shape)} of the diffused "
                       f"state, got {unit.shape}")
  else:
    unit = jax.random.normal(k_noise, shape, jnp.float32)
  return t, unit


def denoiser_loss(config, denoiser_params, batch, key) -> jax.Array:
  """Upstream's objective (spec §A.3): squared error of the GMM-scaled noise, summed per pose.

  `batch['draws']` may hold the step's `t_half` [B//2+1] and unit `noise` [B, 17, 5] draws.
  """
  x0 = jnp.concatenate([batch["input_2d"], batch["target_3d"]], axis=-1)
  noise_scale = jnp.concatenate(
      [batch["input_2d_var"], jnp.ones_like(batch["target_3d"])], axis=-1)
  k_t, k_noise, k_drop = jax.random.split(key, 3)
  t, unit = training_draws(config, k_t, k_noise, x0.shape[0], x0.shape, draws_of(batch))
  # Upstream quirk: the regression target is the GMM-scaled noise, not the unit draw.
  noise = unit * noise_scale
  x_t = schedules.q_sample(x0, t, noise, schedules.alpha_bars(betas(config)))
  eps = denoiser_module(config, compute_dtype(config, "train")).apply(
      {"params": denoiser_params}, x_t, t.astype(jnp.float32), deterministic=False,
      rngs={"dropout": k_drop})
  return jnp.mean(jnp.sum(jnp.square(noise - eps), axis=(-2, -1)))


LOSSES = {"lifter": lifter_loss, "denoiser": denoiser_loss}
