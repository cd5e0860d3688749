"""ICASSP 2024 cross-channel diffusion: DiffPose's lifter refined by a two-branch GCN denoiser.

Evaluation (spec §B.2): lift the 2D with DiffPose's released lifter, root-subtract, stack
[u, v, x, y, z] per joint and run 2 deterministic DDIM steps from t = 6, the denoiser guided by the
clean 2D; with flip test-time augmentation the mirrored state (u and x negated, left and right
joints swapped; the lifter is not re-run) is denoised too, mirrored back and averaged in. Both
passes run as one batch through one sampler call.
Training: the denoiser learns to predict noise of a constant scale [0.1, 0.1, 1, 1, 1] on the
(randomly mirrored) [u, v, x, y, z]; the lifter stage, if asked for, is DiffPose's.
"""

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import chunking
from posediff_jax import skeleton
from posediff_jax.convert import icassp as convert_icassp
from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from posediff_jax.families import diffpose
from posediff_jax.models import icassp as models

STAGES = ("lifter", "denoiser")
# Checkpoints whose lifter this family can start from (both use DiffPose's GraFormer).
LIFTER_FAMILIES = ("diffpose", "icassp")

# DiffPose's lifter, schedule, sampler steps and root subtraction, unchanged.
lifter_module = diffpose.lifter_module
sampler_timesteps = diffpose.sampler_timesteps
betas = diffpose.betas
root_subtract = diffpose.root_subtract
compute_dtype = diffpose.compute_dtype


def denoiser_module(config, dtype=None) -> models.CrossChannelDenoiser:
  return models.denoiser_from_config(config.model, dtype)


def checkpoint_meta(config) -> dict:
  """What a checkpoint records about its model: DiffPose's sizes, under this family's name."""
  return {**diffpose.checkpoint_meta(config), "family": "icassp"}


def convert(config, denoiser_path, lifter_path) -> tuple[dict, dict[str, list[str]]]:
  """Released torch checkpoints -> ({'lifter': ..., 'denoiser': ...}, {part: unused torch keys}).

  The denoiser is upstream's `ckpt_{cpn,gt}.pth`, the lifter DiffPose's `gcn_xyz_{cpn,gt}.pth`; of
  both lists element 0 (the live weights) is what upstream evaluates. With `denoiser_path` None only
  the lifter is converted (a start for training a denoiser).
  """
  return diffpose.convert_parts(config, denoiser_path, lifter_path,
                                convert_icassp.convert_denoiser, "ICASSP", "ckpt_*.pth")


def init_params(config, key) -> dict:
  """Fresh parameters {'lifter': ..., 'denoiser': ...}."""
  k_lift, k_den = jax.random.split(key)
  joints = skeleton.NUM_JOINTS
  lifter = lifter_module(config).init(k_lift, jnp.zeros((1, joints, 2), jnp.float32))
  denoiser = denoiser_module(config).init(
      k_den, jnp.zeros((1, joints, 5), jnp.float32), jnp.zeros((1, joints, 2), jnp.float32),
      jnp.zeros((1,), jnp.float32))
  return {"lifter": lifter["params"], "denoiser": denoiser["params"]}


def _mirror(pose: jax.Array) -> jax.Array:
  """[..., 17, C]: the horizontal coordinate (channel 0) negated, left and right joints swapped."""
  return skeleton.flip_pose(pose, x_channel=0)


def predict(config, params, input_2d: jax.Array, key=None, noise=None, return_trajectory=False):
  """The whole upstream evaluation pipeline for one batch.

  Every frame is computed independently, so with the deterministic sampler (eta = 0, no injected
  noise, no trajectory) on CPU the whole pipeline (lifter, both passes, every sampler step) runs
  as a `lax.map` over pieces of frames, `eval.cpu_chunk_size` denoiser rows each; otherwise each
  network call goes over the batch `eval.cpu_chunk_size` rows at a time. The result is the same.

  Args:
    config: the experiment config (model sizes, sampling, eval flags, eval.compute_dtype).
    params: {'lifter': ..., 'denoiser': ...}.
    input_2d: [B, 17, 2] normalised 2D keypoints.
    key: PRNG key for eta > 0 (unused with upstream's eta = 0).
    noise: optional injected sampler noise [K, H*B', 17, 5] (replays a recorded run), B' = 2B with
      flip test-time augmentation, else B. Rows are ordered (hypothesis, pass, sample), the
      unmirrored pass first.
    return_trajectory: also return the sampler's states and x0 predictions.

  Returns:
    [B, 17, 3] root-relative 3D in metres. With `return_trajectory`, also a dict with `x_start`
    and `guide` [H*B, 17, 5 | 2], `xs` [K+1, H*B, 17, 5] and `x0_preds` [K, H*B, 17, 5] of the
    unmirrored pass (hypothesis-major) and, with flip test-time augmentation, the same under
    `flip_*` for the mirrored pass.
  """
  chunk = chunking.chunk_rows(config)
  lifter = lifter_module(config, compute_dtype(config))
  # The lifter's graph has half the denoiser's nodes: twice the rows give the same matmul sizes.
  xyz = chunking.map_rows(lambda uv: lifter.apply({"params": params["lifter"]}, uv), 2 * chunk,
                          input_2d)
  deterministic = noise is None and not return_trajectory and config.sampling.eta == 0
  if deterministic and 0 < chunk:
    # One loop over pieces of frames instead of one per network call and sampler step: a piece's
    # activations and its guide context stay in cache from the first sampler step to the last.
    rows_per_frame = config.sampling.hypotheses * (2 if config.eval.flip_tta else 1)
    return chunking.map_rows(lambda uv, xyz: _refine(config, params, uv, xyz),
                    max(1, chunk // rows_per_frame), input_2d, xyz)
  return _refine(config, params, input_2d, xyz, key, noise, return_trajectory, chunk)


def _refine(config, params, input_2d, xyz, key=None, noise=None, return_trajectory=False,
            chunk=0):
  """`predict` after the lifter: input_2d [B, 17, 2] and the lifter's raw xyz [B, 17, 3], each
  denoiser call taking `chunk` rows at a time (0: all at once)."""
  aliasing = config.eval.upstream_root_aliasing
  hyp = config.sampling.hypotheses
  flip = bool(config.eval.flip_tta)
  xyz = root_subtract(xyz, aliasing)
  x_start = jnp.concatenate([input_2d, xyz], axis=-1)
  guide = input_2d
  if flip:
    # Mirroring uv and xyz separately equals mirroring the 5-channel state with u, x negated.
    x_start = jnp.concatenate([x_start, jnp.concatenate([_mirror(input_2d), _mirror(xyz)], -1)])
    guide = jnp.concatenate([guide, _mirror(input_2d)])
  x_start = ddim.repeat_hypotheses(x_start, hyp)
  guide = ddim.repeat_hypotheses(guide, hyp)
  denoiser = denoiser_module(config, compute_dtype(config))
  variables = {"params": params["denoiser"]}
  # The context branch's guide-only stages are the same at every sampler step: computed once.
  context = chunking.map_rows(lambda g: denoiser.apply(variables, g, method="guide_context"),
                              chunk, guide)

  def denoise(x, t):
    # The sampler moves every row to the same step: one time embedding serves them all.
    return chunking.map_rows(
        lambda x, g, *c: denoiser.apply(variables, x, g, t[:1], context=c), chunk, x, guide,
        *context)

  out = ddim.ddim_sample(
      denoise, x_start, sampler_timesteps(config), schedules.alpha_bars_with_start(betas(config)),
      eta=config.sampling.eta, key=key, noise=noise, return_trajectory=return_trajectory)
  x_final = out[0] if return_trajectory else out
  pred = root_subtract(ddim.mean_over_hypotheses(x_final, hyp)[..., 2:5], aliasing)
  if flip:
    pred, pred_mirrored = jnp.split(pred, 2)
    pred = (pred + _mirror(pred_mirrored)) / 2
  if not return_trajectory:
    return pred
  trajectory = {"x_start": x_start, "guide": guide, "xs": out[1], "x0_preds": out[2]}
  if flip:
    trajectory = _split_passes(trajectory, hyp)
  return pred, trajectory


def _split_passes(trajectory: dict, hypotheses: int) -> dict:
  """Splits rows ordered (hypothesis, pass, sample) into the two passes, each hypothesis-major."""
  out = {}
  for name, value in trajectory.items():
    batch_axis = 0 if name in ("x_start", "guide") else 1
    shape = value.shape
    grouped = value.reshape(shape[:batch_axis] + (hypotheses, 2, -1) + shape[batch_axis + 1:])
    for index, prefix in ((0, ""), (1, "flip_")):
      part = jnp.take(grouped, index, axis=batch_axis + 1)
      out[prefix + name] = part.reshape(shape[:batch_axis] + (-1,) + shape[batch_axis + 1:])
  return out


def mirror_batch(uv: jax.Array, xyz: jax.Array, mirror: jax.Array):
  """Upstream's training flip (`PoseDataLoader.__getitem__`): the poses of the rows where
  `mirror` [B] is set mirrored, 2D [B, 17, 2] and root-relative 3D [B, 17, 3] together."""
  mirror = jnp.asarray(mirror)[:, None, None]
  return jnp.where(mirror, _mirror(uv), uv), jnp.where(mirror, _mirror(xyz), xyz)


def denoiser_loss(config, denoiser_params, batch, key) -> jax.Array:
  """Upstream's objective (spec §B.2): squared error of constant-scale noise, summed per pose.

  Each pose is first mirrored (2D and 3D together) with probability `train.flip_probability`, as
  upstream's training loader does. The denoiser is guided by the clean 2D. `batch['draws']` may
  hold the step's `mirror` [B] bool, `t_half` [B//2+1] and unit `noise` [B, 17, 5] draws.
  """
  k_flip, k_t, k_noise, k_drop = jax.random.split(key, 4)
  draws = diffpose.draws_of(batch)
  uv, xyz = batch["input_2d"], batch["target_3d"]
  if "mirror" in draws:
    mirror = jnp.asarray(draws["mirror"], bool)
    if mirror.shape != uv.shape[:1]:
      raise ValueError(f"draws['mirror'] must be [B={uv.shape[0]}] bool, got {mirror.shape}")
  else:
    mirror = jax.random.bernoulli(k_flip, config.train.flip_probability, uv.shape[:1])
  uv, xyz = mirror_batch(uv, xyz, mirror)
  x0 = jnp.concatenate([uv, xyz], axis=-1)
  noise_scale = np.asarray(config.train.noise_scale, np.float32)
  if noise_scale.shape != (x0.shape[-1],):
    raise ValueError(f"train.noise_scale must have {x0.shape[-1]} entries (u, v, x, y, z), got "
                     f"{tuple(config.train.noise_scale)}")
  t, unit = diffpose.training_draws(config, k_t, k_noise, x0.shape[0], x0.shape, draws)
  # Upstream computes the noise, x_t and the loss in float64 (its noise scale is a float64
  # tensor); float32 here differs by float32 rounding only.
  noise = unit * noise_scale
  x_t = schedules.q_sample(x0, t, noise, schedules.alpha_bars(betas(config)))
  eps = denoiser_module(config, compute_dtype(config, "train")).apply(
      {"params": denoiser_params}, x_t, uv, t.astype(jnp.float32), deterministic=False,
      rngs={"dropout": k_drop})
  return jnp.mean(jnp.sum(jnp.square(noise - eps), axis=(-2, -1)))


LOSSES = {"lifter": diffpose.lifter_loss, "denoiser": denoiser_loss}
