"""D3DP (ICCV 2023): a MixSTE transformer that denoises H 3D hypotheses of a whole 2D clip.

Evaluation (spec video_family.md §5): draw x_T ~ N(0, I) per hypothesis [B, H, F, J, 3] and run
K DDIM steps (eta 1) over the cosine schedule. The network predicts x0; each step feeds it
clamp(x, ±clip·scale)/scale, averages the prediction with that of the mirrored clip (flip
test-time augmentation, both passes in one call), multiplies by scale, clamps, and derives ε from
the unclamped x. The x0 of every step is returned, [B, K, H, F, J, 3].
Training: t ~ U{0..T-1} and ε ~ N(0, I) per clip; the network sees the clamped, rescaled x_t and
the loss is the MPJPE of its x0 prediction (root included).

Descendants (FinePOSE, DSGDiffu) reuse the sampler and the loss through their `*_with` forms,
which take a `DenoiserApply` instead of params: how the network is called on the rows of one
step, with whatever conditioning it needs already bound.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import chunking
from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.convert import common as convert_common
from posediff_jax.convert import d3dp as convert_d3dp
from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from posediff_jax.models import d3dp as models

STAGES = ("denoiser",)
VIDEO = True  # the family works on clips [B, F, J, C], not single frames

# `(rows_2d [G, N, F, J, 2], rows_x [G, N, F, J, 3], rows_t [G, N], deterministic=True,
# rngs=None) -> x0 [G, N, F, J, 3]`: the network on G groups of N rows. A group is one upstream
# forward call (the plain and the mirrored pass of a flip-TTA step are two groups; training has
# one); its rows are clip-major, (clip, hypothesis).
DenoiserApply = Callable[..., jax.Array]

_MIRROR_PAIRS = {
    "h36m": (skeleton.H36M_LEFT, skeleton.H36M_RIGHT),
    "3dhp": (skeleton.MPI3DHP_LEFT, skeleton.MPI3DHP_RIGHT),
}


def denoiser_module(config, dtype=None) -> models.MixSTEDenoiser:
  return models.denoiser_from_config(config.model, dtype=dtype)


def checkpoint_meta(config) -> dict:
  """What a checkpoint records about its model, checked against the config when it is loaded."""
  sizes = ("num_frames", "num_joints", "embed_dim", "depth", "num_heads", "mlp_ratio")
  return {"family": "d3dp", "model": {k: config.model[k] for k in sizes}}


def convert(config, denoiser_path, lifter_path=None) -> tuple[dict, dict[str, list[str]]]:
  """A released D3DP checkpoint -> ({'denoiser': params}, {'denoiser': unconverted torch keys}).

  The file is upstream's `torch.save` dict (`.pth` / `.bin`); the weights are under `model_pos`.
  Its pickled numpy `random_state` is read as inert data and ignored. The unconverted keys are the
  12 diffusion buffers, of which `betas` and `alphas_cumprod` were checked against our schedule.
  """
  if lifter_path:
    raise ValueError(f"D3DP has a single network; --lifter ({lifter_path}) is not used by it")
  obj = safe_load.load_torch_checkpoint(denoiser_path)
  state_dict = convert_common.extract_state_dict(obj, denoiser_path, dict_key="model_pos")
  params, report = convert_d3dp.convert_denoiser(state_dict, config.model, config.diffusion,
                                                 source=str(denoiser_path))
  return {"denoiser": params}, {"denoiser": list(report.unused)}


def init_params(config, key) -> dict:
  """Fresh parameters {'denoiser': ...} (PyTorch's default init, zero position embeddings)."""
  frames, joints = config.model.num_frames, config.model.num_joints
  variables = denoiser_module(config).init(
      key, jnp.zeros((1, frames, joints, 2), jnp.float32),
      jnp.zeros((1, frames, joints, 3), jnp.float32), jnp.zeros((1,), jnp.float32))
  return {"denoiser": variables["params"]}


def alpha_bars_ext(config) -> np.ndarray:
  """float64 [T+1]: index t+1 holds ᾱ_t of the cosine schedule, index 0 is 1."""
  if config.diffusion.beta_schedule != "cosine":
    raise ValueError(f"D3DP uses the cosine schedule, got diffusion.beta_schedule="
                     f"{config.diffusion.beta_schedule!r}")
  return schedules.alpha_bars_with_start(schedules.cosine_betas(config.diffusion.num_steps))


def timesteps(config, num_steps=None) -> tuple[int, ...]:
  """Ascending DDIM steps, e.g. T=1000, K=5 -> (199, 399, 599, 799, 999); run from the largest."""
  k = config.sampling.num_steps if num_steps is None else num_steps
  return ddim.linspace_timesteps(config.diffusion.num_steps, k)


def flip_pose(x, dataset: str):
  """Mirrors poses [..., 17, C]: channel 0 negated, left and right joints swapped.

  Args:
    x: numpy or jax array [..., 17, C] (2D keypoints or 3D joints).
    dataset: "h36m" or "3dhp" (which joints are left and right).

  Returns:
    The mirrored poses, same shape and array type; applying it twice gives x back.
  """
  if dataset not in _MIRROR_PAIRS:
    raise ValueError(f"flip_pose: unknown dataset {dataset!r}; expected one of "
                     f"{', '.join(_MIRROR_PAIRS)}")
  if x.ndim < 2 or x.shape[-2] != skeleton.NUM_JOINTS:
    raise ValueError(f"flip_pose: expected poses [..., {skeleton.NUM_JOINTS}, C], got shape "
                     f"{x.shape}")
  left, right = _MIRROR_PAIRS[dataset]
  perm = np.arange(skeleton.NUM_JOINTS)
  perm[list(left)], perm[list(right)] = right, left
  sign = np.ones(x.shape[-1], dtype=x.dtype)
  sign[0] = -1
  return x[..., perm, :] * sign


def _denoiser_params(params):
  if not isinstance(params, dict) or "denoiser" not in params:
    found = list(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError(f"D3DP expects params {{'denoiser': ...}} (from init_params or convert), "
                     f"got {found}")
  return params["denoiser"]


def _check_clip(config, input_2d) -> None:
  frames, joints = config.model.num_frames, config.model.num_joints
  if input_2d.ndim != 4 or input_2d.shape[1:] != (frames, joints, 2):
    raise ValueError(f"D3DP: input_2d must be [B, {frames}, {joints}, 2] (clips of exactly "
                     f"model.num_frames={frames} frames), got shape {input_2d.shape}")


def denoiser_apply(config, denoiser_params, dtype=None, rows=0) -> DenoiserApply:
  """D3DP's `DenoiserApply`: its rows are independent, so the G groups run as one batch.

  Args:
    config: the experiment config.
    denoiser_params: the denoiser's params (the stage's tree).
    dtype: compute dtype (None = float32).
    rows: rows per deterministic pass (`chunking.map_rows`; 0 = all rows in one pass).
  """
  model = denoiser_module(config, dtype=dtype)

  def apply(rows_2d, rows_x, rows_t, deterministic=True, rngs=None):
    groups, num = rows_x.shape[:2]
    merge = lambda a: a.reshape((groups * num,) + a.shape[2:])
    run = lambda r2, rx, rt: model.apply({"params": denoiser_params}, r2, rx, rt,
                                         deterministic=deterministic, rngs=rngs)
    if deterministic:
      out = chunking.map_rows(run, rows, merge(rows_2d), merge(rows_x), merge(rows_t))
    else:
      out = run(merge(rows_2d), merge(rows_x), merge(rows_t))
    return out.reshape((groups, num) + out.shape[1:])

  return apply


def _x0_scaled(config, apply_fn: DenoiserApply, x, input_2d, t):
  """The flip-averaged x0·scale, not yet clamped (upstream `model_predictions_fliping` body).

  Args:
    apply_fn: the network (`DenoiserApply`).
    x: [B, H, F, J, 3] the diffusion state.
    input_2d: [B, F, J, 2].
    t: [B] timesteps.

  Returns:
    [B, H, F, J, 3] float32.
  """
  batch, hyp = x.shape[:2]
  scale, bound = config.diffusion.scale, config.diffusion.clip * config.diffusion.scale
  rows_x = (jnp.clip(x, -bound, bound) / scale).reshape((batch * hyp,) + x.shape[2:])
  rows_2d = jnp.repeat(input_2d, hyp, axis=0)
  rows_t = jnp.repeat(jnp.asarray(t), hyp, axis=0)
  if not config.sampling.flip:
    pred = apply_fn(rows_2d[None], rows_x[None], rows_t[None])[0]
  else:
    dataset = config.data.dataset
    both = apply_fn(jnp.stack([rows_2d, flip_pose(rows_2d, dataset)]),
                    jnp.stack([rows_x, flip_pose(rows_x, dataset)]),
                    jnp.stack([rows_t, rows_t]))
    pred = (both[0] + flip_pose(both[1], dataset)) / 2
  return pred.reshape(x.shape) * scale


def _noise_coefficients(config):
  """float32 [T] sqrt(1/ᾱ_t) and sqrt(1/ᾱ_t − 1), computed in float64 as upstream's buffers."""
  a = alpha_bars_ext(config)[1:]
  return (jnp.asarray(np.sqrt(1.0 / a), jnp.float32), jnp.asarray(np.sqrt(1.0 / a - 1.0),
                                                                   jnp.float32))


def denoise_flip(config, params, x, input_2d, t):
  """Upstream `model_predictions_fliping`: (x_start, pred_noise) for a state x at timesteps t.

  Args:
    config: the experiment config.
    params: {'denoiser': ...}.
    x: [B, H, F, J, 3] the state (not clamped).
    input_2d: [B, F, J, 2].
    t: [B] integer timesteps.

  Returns:
    x_start [B, H, F, J, 3] clamped to ±clip·scale, and the noise derived from the unclamped x.
  """
  apply_fn = denoiser_apply(config, _denoiser_params(params), config.eval.compute_dtype,
                            chunking.chunk_rows(config))
  return denoise_flip_with(config, apply_fn, x, input_2d, t)


def denoise_flip_with(config, apply_fn: DenoiserApply, x, input_2d, t):
  """`denoise_flip` with the network given as a `DenoiserApply`."""
  _check_clip(config, input_2d)
  bound = config.diffusion.clip * config.diffusion.scale
  x_start = jnp.clip(_x0_scaled(config, apply_fn, x, input_2d, t), -bound, bound)
  recip, recipm1 = _noise_coefficients(config)
  t = jnp.asarray(t)
  expand = (slice(None),) + (None,) * (x.ndim - 1)
  pred_noise = (recip[t][expand] * x - x_start) / recipm1[t][expand]
  return x_start, pred_noise


def sample(config, params, input_2d, key=None, *, noise_init=None, noise_steps=None,
           num_hypotheses=None, num_steps=None, return_details=False):
  """The evaluation sampler (upstream `ddim_sample_flip`), jit-friendly.

  Args:
    config: the experiment config (diffusion, sampling, eval.compute_dtype, data.dataset).
    params: {'denoiser': ...}.
    input_2d: [B, F, J, 2] normalised 2D keypoints of B clips.
    key, noise_init, noise_steps, num_hypotheses, num_steps, return_details: see `sample_with`.

  Returns:
    See `sample_with`.
  """
  apply_fn = denoiser_apply(config, _denoiser_params(params), config.eval.compute_dtype,
                            chunking.chunk_rows(config))
  return sample_with(config, apply_fn, input_2d, key, noise_init=noise_init,
                     noise_steps=noise_steps, num_hypotheses=num_hypotheses,
                     num_steps=num_steps, return_details=return_details)


def sample_with(config, apply_fn: DenoiserApply, input_2d, key=None, *, noise_init=None,
                noise_steps=None, num_hypotheses=None, num_steps=None, return_details=False):
  """The evaluation sampler with the network given as a `DenoiserApply`.

  Args:
    config: the experiment config (diffusion, sampling, data.dataset).
    apply_fn: the network, e.g. `denoiser_apply(config, params['denoiser'], dtype)`.
    input_2d: [B, F, J, 2] normalised 2D keypoints of B clips.
    key: PRNG key for x_T and the eta noise (not needed when both are given).
    noise_init: [B, H, F, J, 3] x_T (replays a recorded run).
    noise_steps: [K-1, B, H, F, J, 3] the eta noise of every step but the last.
    num_hypotheses: H (default config.sampling.num_hypotheses).
    num_steps: K (default config.sampling.num_steps).
    return_details: also return {'ddim_step_x', 'ddim_step_pred_noise'} [B, K, H, F, J, 3] (the
      state entering each step, before the clamp, and the noise derived at it) and 'times' [K]
      (descending).

  Returns:
    x0 of every step [B, K, H, F, J, 3] in the model's units times scale (metres for H36M); index
    K-1 is the final result. With return_details, (that, details).
  """
  _check_clip(config, input_2d)
  hyp = config.sampling.num_hypotheses if num_hypotheses is None else num_hypotheses
  k = config.sampling.num_steps if num_steps is None else num_steps
  seq = timesteps(config, k)
  shape = (input_2d.shape[0], hyp) + input_2d.shape[1:3] + (3,)
  eta = config.sampling.eta
  k_init = k_steps = None
  if key is not None:
    k_init, k_steps = jax.random.split(key)
  if noise_init is None:
    if key is None:
      raise ValueError("D3DP sample: pass `key` or `noise_init`")
    noise_init = jax.random.normal(k_init, shape, jnp.float32)
  elif noise_init.shape != shape:
    raise ValueError(f"D3DP sample: noise_init must be [B, H, F, J, 3] = {shape}, got "
                     f"{noise_init.shape}")
  z = None
  if noise_steps is not None:
    if noise_steps.shape != (k - 1,) + shape:
      raise ValueError(f"D3DP sample: noise_steps must be [K-1, B, H, F, J, 3] = "
                       f"{(k - 1,) + shape}, got {noise_steps.shape}")
    # The last step goes to t = -1, where σ = 0: its noise is never used.
    z = jnp.concatenate([jnp.asarray(noise_steps, jnp.float32),
                         jnp.zeros((1,) + shape, jnp.float32)])
  elif eta != 0 and key is None:
    raise ValueError(f"D3DP sample: eta={eta} needs `key` or `noise_steps`")

  def denoise(x, t):
    return _x0_scaled(config, apply_fn, x, input_2d, t)

  table = alpha_bars_ext(config)
  _, xs, x0s = ddim.ddim_sample(
      denoise, jnp.asarray(noise_init, jnp.float32), seq, table, eta=eta, key=k_steps, noise=z,
      return_trajectory=True, prediction="x0",
      clip_x0=config.diffusion.clip * config.diffusion.scale)
  preds = jnp.moveaxis(x0s, 0, 1)
  if not return_details:
    return preds
  times = np.asarray(seq[::-1])
  # Same float64-derived float32 coefficients and formula as inside ddim_sample.
  a_t = table[times + 1]
  recip = jnp.asarray(np.sqrt(1.0 / a_t), jnp.float32).reshape((-1,) + (1,) * len(shape))
  recipm1 = jnp.asarray(np.sqrt(1.0 / a_t - 1.0), jnp.float32).reshape(recip.shape)
  step_x = xs[:-1]
  step_noise = (recip * step_x - x0s) / recipm1
  details = {"ddim_step_x": jnp.moveaxis(step_x, 0, 1),
             "ddim_step_pred_noise": jnp.moveaxis(step_noise, 0, 1),
             "times": tuple(int(t) for t in times)}
  return preds, details


def _check_batch(config, batch) -> None:
  for name, channels in (("input_2d", 2), ("target_3d", 3)):
    if name not in batch:
      raise ValueError(f"D3DP loss: batch has no {name!r} (keys: {', '.join(batch)})")
    want = (config.model.num_frames, config.model.num_joints, channels)
    if batch[name].ndim != 4 or batch[name].shape[1:] != want:
      raise ValueError(f"D3DP loss: batch[{name!r}] must be [B, {', '.join(map(str, want))}], "
                       f"got {batch[name].shape}")


def denoiser_loss_with_noise(config, denoiser_params, batch, t, noise, deterministic=True,
                             key=None):
  """The training objective for given timesteps and noise (upstream `is_train` path).

  Args:
    config: the experiment config.
    denoiser_params: the denoiser's params (the stage's tree, not {'denoiser': ...}).
    batch: {'input_2d': [B, F, J, 2], 'target_3d': [B, F, J, 3] root-relative, root = 0}.
    t: [B] integer timesteps in [0, T).
    noise: [B, F, J, 3] ε.
    deterministic: False turns on stochastic depth, which then needs `key`.
    key: PRNG key for stochastic depth.

  Returns:
    (MPJPE of the x0 prediction, {'x_noisy': network 3D input, 'pred': x0 prediction}).
  """
  apply_fn = denoiser_apply(config, denoiser_params, config.train.get("compute_dtype", "float32"))
  return loss_with_noise_with(config, apply_fn, batch, t, noise, deterministic, key)


def loss_with_noise_with(config, apply_fn: DenoiserApply, batch, t, noise, deterministic=True,
                         key=None):
  """`denoiser_loss_with_noise` with the network given as a `DenoiserApply` (one group)."""
  _check_batch(config, batch)
  target = batch["target_3d"]
  scale, bound = config.diffusion.scale, config.diffusion.clip * config.diffusion.scale
  a = alpha_bars_ext(config)[1:]
  t = jnp.asarray(t)
  expand = (slice(None),) + (None,) * (target.ndim - 1)
  sqrt_a = jnp.asarray(np.sqrt(a), jnp.float32)[t][expand]
  sqrt_one_minus_a = jnp.asarray(np.sqrt(1.0 - a), jnp.float32)[t][expand]
  x_noisy = jnp.clip(sqrt_a * (target * scale) + sqrt_one_minus_a * noise, -bound, bound) / scale
  rngs = None if deterministic else {"dropout": key}
  if not deterministic and key is None:
    raise ValueError("D3DP loss: deterministic=False (stochastic depth) needs `key`")
  pred = apply_fn(batch["input_2d"][None], x_noisy[None], t[None], deterministic=deterministic,
                  rngs=rngs)[0]
  # Upstream quirk: the loss compares the raw prediction (not ×scale) with the unscaled target.
  squared = jnp.sum(jnp.square(pred - target.astype(jnp.float32)), axis=-1)
  # The epsilon keeps the gradient of the norm finite where the error is exactly 0.
  loss = jnp.mean(jnp.sqrt(squared + 1e-12))
  return loss, {"x_noisy": x_noisy, "pred": pred}


def denoiser_loss(config, denoiser_params, batch, key) -> jax.Array:
  """MPJPE of the x0 prediction at a random t per clip, with stochastic depth on.

  (Upstream's `loss.backward(loss)`, `train.upstream_loss_scaled_gradient`, is applied by the
  train step to the whole batch's gradient.)
  """
  apply_fn = denoiser_apply(config, denoiser_params, config.train.get("compute_dtype", "float32"))
  return loss_with(config, apply_fn, batch, key)


def loss_with(config, apply_fn: DenoiserApply, batch, key) -> jax.Array:
  """`denoiser_loss` with the network given as a `DenoiserApply`.

  `batch['draws']` may hold the step's `t` [B] and `noise` [B, F, J, 3] (upstream's per-clip
  `randint(0, T, (1,))` and `randn(F, J, 3)`), replayed instead of drawn from `key`.
  """
  _check_batch(config, batch)
  k_t, k_noise, k_drop = jax.random.split(key, 3)
  target = batch["target_3d"]
  draws = batch.get("draws") or {}
  if "t" in draws:
    t = jnp.asarray(draws["t"]).astype(jnp.int32)
    if t.shape != target.shape[:1]:
      raise ValueError(f"draws['t'] must be [B={target.shape[0]}] timesteps, got {t.shape}")
  else:
    t = jax.random.randint(k_t, target.shape[:1], 0, config.diffusion.num_steps,
                           dtype=jnp.int32)
  if "noise" in draws:
    noise = jnp.asarray(draws["noise"], jnp.float32)
    if noise.shape != target.shape:
      raise ValueError(f"draws['noise'] must have the target's shape {target.shape}, got "
                       f"{noise.shape}")
  else:
    noise = jax.random.normal(k_noise, target.shape, jnp.float32)
  loss, _ = loss_with_noise_with(config, apply_fn, batch, t, noise, deterministic=False,
                                 key=k_drop)
  return loss


LOSSES = {"denoiser": denoiser_loss}
