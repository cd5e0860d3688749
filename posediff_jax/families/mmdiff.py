"""mmDiff (ECCV 2024): a radar pose refined by a few DDIM steps of a multi-conditional GCN denoiser.

Phase 1 (a point-cloud encoder, `models.mmdiff_phase1`, see `encode`) gives, per radar frame, a
coarse 17-joint pose and per-joint features; upstream caches them. Phase 2 refines the current
coarse pose with the denoiser of `models.mmdiff`, conditioned on those features, the radar points
around each joint, the past coarse poses and the predicted limb lengths. Training runs the stages
in order (`STAGES`): the encoder (HEAD `phase1_train`: MSE on the root-relative joints), then,
with the encoder frozen, the denoiser on its outputs (`radar_phase1` runs it over the splits).
Reading upstream's phase-2 cache (`data.source='cache'`) needs no encoder.

Evaluation (spec §3): the root-relative coarse pose is taken as the state at the largest sampler
step (t = 24 of 51, no noise added) and deterministic DDIM runs 3 steps down to t = -1; the result
is averaged over hypotheses and made root-relative. Two upstream samplers exist
(`sampling.update_history`):
* False, HEAD (Oct 2024, the official code): only the current pose's 3 channels are denoised; the
  past coarse poses stay fixed in the denoiser's input;
* True, v1 (Nov 2023): DDIM runs on the whole [J, 3(P+1)] state, so the history channels are
  "denoised" with the network's (untrained) outputs too and the temporal condition drifts.

Training (spec §6): ε-prediction on the current pose with antithetic timesteps, loss
Σ_{J,3}(ε − ε̂)² + 10 · Σ_16 |limb_pred − limb_gt|, both averaged over the batch. v1 additionally
feeds the ground-truth limb lengths to the limb embedding (`train.limb_teacher_forcing`) and applies
the forward process to the whole state with zero noise on the history, which scales the history by
sqrt(ᾱ_t) (`train.diffuse_history`); HEAD does neither.

Batches are dicts: `x_history` [B, J, 3(P+1)] (the P past coarse poses, oldest first, then the
current coarse pose), `features` [B, J, F], `radar` [B, T, N, C] (only read with LRC on; may be
absent otherwise) and for training `target_3d` [B, J, 3] (root-relative ground truth) and optionally
`limb_lengths` [B, 16] (else computed from `target_3d`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import chunking
from posediff_jax.convert import mmdiff as convert_mmdiff
from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from posediff_jax.families import diffpose
from posediff_jax.models import mmdiff as models
from posediff_jax.models import mmdiff_phase1
from posediff_jax.ops import points as point_ops

STAGES = ("encoder", "denoiser")


def denoiser_module(config, dtype=None) -> models.MultiConditionDenoiser:
  return models.denoiser_from_config(config.model, dtype)


_ENCODERS = {"p4transformer": mmdiff_phase1.P4TransformerEncoder,
             "point_transformer": mmdiff_phase1.PointTransformerEncoder}


def encoder_module(config):
  """The phase-1 encoder of `config.phase1` (`encoder` names it; the other fields are its
  attributes)."""
  fields = dict(config.phase1)
  name = fields.pop("encoder", None)
  if name not in _ENCODERS:
    raise ValueError(f"phase1.encoder must be one of {', '.join(_ENCODERS)}, got {name!r}")
  if "temporal_padding" in fields:
    fields["temporal_padding"] = tuple(fields["temporal_padding"])
  return _ENCODERS[name](**fields)


def encode(config, encoder_variables, radar: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Phase 1 on a radar window [B, T, N, C]: (coarse pose [B, J, 3], features [B, J, F]).

  `encoder_variables` is what `convert` returns under 'encoder' ({'params': ...} and, for the Point
  Transformer, 'batch_stats'). Phase 2 takes the pose root-relative (upstream caches it so).
  """
  return encoder_module(config).apply(encoder_variables, radar)


def checkpoint_meta(config) -> dict:
  """What a checkpoint records about its model, checked against the config when it is loaded."""
  fields = ("hid_dim", "num_layers", "n_head", "feature_size", "past_frames", "radar_channels",
            "local_flag", "temp_flag", "limb_flag")
  phase1 = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.phase1.items()}
  return {"family": "mmdiff", "model": {k: config.model[k] for k in fields}, "phase1": phase1}


def needs_encoder(config) -> bool:
  """Whether phase 2's inputs come from the encoder (raw data) rather than upstream's cache."""
  return config.data.get("source", "cache") == "raw"


def eval_parts(config) -> tuple[str, ...]:
  """The parts a checkpoint needs to be evaluated on `config.data`."""
  return STAGES if needs_encoder(config) else ("denoiser",)


def init_encoder(config, key) -> dict:
  """Fresh phase-1 variables ({'params'[, 'batch_stats']}) with PyTorch's default initialisers."""
  model = encoder_module(config)
  frames = len(config.data.radar_window_offsets)
  if isinstance(model, mmdiff_phase1.P4TransformerEncoder):
    # The parameters do not depend on the number of points: two anchors' worth is enough.
    radar = jnp.zeros((1, frames, 2 * model.spatial_stride, 3 + model.point_feature_channels))
  else:
    radar = jnp.zeros((1, 1, max(model.num_neighbours, 2), model.input_dim))
  return dict(jax.jit(model.init)(key, radar))


def convert(config, denoiser_path, phase1_path=None, *, ema: bool = False
            ) -> tuple[dict, dict[str, list[str]]]:
  """Upstream checkpoints -> ({'denoiser': params[, 'encoder': variables]}, {part: unused keys}).

  Args:
    config: the experiment config (`config.model`, and `config.phase1` with a phase-1 file).
    denoiser_path: `{mmBody,MetaFi}_mmDiff_phase2.pth` (HEAD dict) or a v1 `ckpt_*.pth` list;
      None converts the encoder alone (to train phase 2 on top of it).
    phase1_path: optional `{mmBody,MetaFi}_mmDiff_phase1.pth`, the encoder that makes phase 2's
      inputs (see `encode`) from raw radar data; upstream's cache already holds its outputs.
    ema: take a v1 file's EMA weights (upstream evaluates the live ones).

  Raises:
    ConversionError: a file is not a checkpoint of the expected model (the message says what).
  """
  out, unused = {}, {}
  if denoiser_path:
    state_dict = convert_mmdiff.load_state_dict(denoiser_path, ema=ema)
    out["denoiser"], report = convert_mmdiff.convert_denoiser(state_dict, config.model,
                                                              source=str(denoiser_path))
    unused["denoiser"] = list(report.unused)
  elif not phase1_path:
    raise ValueError("mmDiff conversion needs the phase-2 file, the phase-1 file, or both")
  if phase1_path:
    encoder_sd = convert_mmdiff.load_state_dict(phase1_path)
    out["encoder"], report = convert_mmdiff.convert_phase1(
        encoder_sd, encoder_module(config), source=str(phase1_path))
    unused["encoder"] = list(report.unused)
  return out, unused


def init_params(config, key) -> dict:
  """Fresh parameters {'denoiser': ...} and, on raw data, {'encoder': {'params', ...}} (PyTorch's
  default initialisers)."""
  model = denoiser_module(config)
  # Jitted: run op by op, the radar neighbourhood ops of the example call took ~30 s on 2 cores.
  variables = jax.jit(model.init)(key, *convert_mmdiff.denoiser_example_inputs(model))
  params = {"denoiser": variables["params"]}
  if needs_encoder(config):
    params["encoder"] = init_encoder(config, jax.random.fold_in(key, 1))
  return params


def betas(config) -> np.ndarray:
  """Upstream's linear β schedule (float64 linspace cast to float32), [diffusion.num_steps]."""
  c = config.diffusion
  if c.beta_schedule != "linear":
    raise ValueError(f"mmDiff uses a linear beta schedule, got diffusion.beta_schedule="
                     f"{c.beta_schedule!r}")
  return schedules.linear_betas(c.beta_start, c.beta_end, c.num_steps)


# Upstream's `seq` is DiffPose's uniform skip, range(0, T_test, T_test // steps): (0, 12, 24) here.
sampler_timesteps = diffpose.sampler_timesteps


def root_relative_frames(x_history: jax.Array) -> jax.Array:
  """Subtracts joint 0 of every frame: [B, J, 3(P+1)] -> the same, each pose root-relative."""
  return x_history - x_history[:, :1, :]


def _check_batch(config, batch: dict, need_target: bool = False) -> None:
  model = denoiser_module(config)
  needed = ["x_history", "features"] + (["radar"] if model.uses_radar else [])
  needed += ["target_3d"] if need_target else []
  missing = [k for k in needed if k not in batch or batch[k] is None]
  if missing:
    raise ValueError(f"mmDiff batch lacks {', '.join(map(repr, missing))} (has "
                     f"{', '.join(sorted(batch))}); needed: {', '.join(needed)}")
  x = batch["x_history"]
  if x.ndim != 3 or x.shape[1:] != (model.num_joints, model.state_channels):
    raise ValueError(f"mmDiff batch['x_history'] must be [B, {model.num_joints}, "
                     f"{model.state_channels}] (model.past_frames={model.past_frames} past coarse "
                     f"poses + the current one), got {x.shape}")
  if model.uses_radar:
    point_ops.check_finite_points(batch["radar"], "batch['radar']")


def predict(config, params, batch: dict, key=None, noise=None, return_trajectory=False):
  """The whole phase-2 evaluation pipeline for one batch (upstream `mmDiffRunner.test`).

  Args:
    config: the experiment config (model sizes, diffusion, sampling).
    params: {'denoiser': ...}.
    batch: `x_history` [B, J, 3(P+1)], `features` [B, J, F] and, with LRC, `radar` [B, T, N, C].
    key: PRNG key for eta > 0 (unused with upstream's eta = 0).
    noise: optional injected sampler noise [K, H*B, J, D] in the order the steps run (replays a
      recorded run); D = 3 for the HEAD sampler, 3(P+1) for v1 (`sampling.update_history`).
    return_trajectory: also return the sampler's states and x0 predictions.

  Returns:
    [B, J, 3] root-relative refined poses (and, with `return_trajectory`, a dict with `x_start`
    [H*B, J, D], `history` [H*B, J, 3(P+1)] (the root-relative, repeated input), `xs`
    [K+1, H*B, J, D] and `x0_preds` [K, H*B, J, D], hypothesis-major).
  """
  _check_batch(config, batch)
  model = denoiser_module(config, diffpose.compute_dtype(config))
  hyp = int(config.sampling.hypotheses)
  update_history = bool(config.sampling.update_history)
  history = ddim.repeat_hypotheses(root_relative_frames(jnp.asarray(batch["x_history"])), hyp)
  features = ddim.repeat_hypotheses(batch["features"], hyp)
  radar = ddim.repeat_hypotheses(batch["radar"], hyp) if model.uses_radar else None
  chunk = chunking.chunk_rows(config)
  variables = {"params": params["denoiser"]}
  # The conditions no step changes (GRC, the limb prediction, and TMC when the history stays
  # fixed) are computed once, not at every step, and on the whole batch: TMC's convolutions read
  # 64 MB of weights, once per chunk if they went a few rows at a time.
  names = model.step_invariant(update_history)
  static = model.apply(variables, history, jnp.zeros(history.shape[:1]), features,
                       return_static=names)

  def local_context(x_all, feats, radar_rows):
    zeros = jnp.zeros(x_all.shape[:1])
    return model.apply(variables, x_all, zeros, feats, radar_rows, return_static=("local",))

  def run_network(x_all, t):
    # Only the LRC (50 radar points per joint) runs a few rows at a time: the graph network's
    # [rows, 17, 96] matmuls are fastest on the whole batch (~1.5 against ~2.2 ms per frame).
    conditions = static
    if model.uses_radar:
      conditions = {**static, **chunking.map_rows(local_context, chunk, x_all, features, radar)}
    out, _ = model.apply(variables, x_all, t, features, static=conditions)
    return out

  if update_history:
    # v1 sampler: DDIM over the whole state, history channels included. Its `0 * limb_cond(...)`
    # term (a limb-length gradient times 0) is left out: it only matters, as NaN, for coincident
    # joints.
    x_start, denoise = history, run_network
  else:
    past = history[..., :-3]
    x_start = history[..., -3:]

    def denoise(x, t):
      return run_network(jnp.concatenate([past, x], axis=-1), t)[..., -3:]

  out = ddim.ddim_sample(
      denoise, x_start, sampler_timesteps(config), schedules.alpha_bars_with_start(betas(config)),
      eta=config.sampling.eta, key=key, noise=noise, return_trajectory=return_trajectory)
  x_final = out[0] if return_trajectory else out
  pose = ddim.mean_over_hypotheses(x_final, hyp)[..., -3:]
  pose = pose - pose[:, :1, :]
  if return_trajectory:
    return pose, {"x_start": x_start, "history": history, "xs": out[1], "x0_preds": out[2]}
  return pose


def loss_terms(config, denoiser_params, batch: dict, t: jax.Array, noise: jax.Array, *,
               dropout_key=None) -> dict[str, jax.Array]:
  """Upstream's phase-2 objective for given timesteps and noise (spec §6).

  Args:
    config: the experiment config (`train.limb_teacher_forcing`, `train.diffuse_history`,
      `train.limb_loss_weight`).
    denoiser_params: the denoiser's params.
    batch: `x_history`, `features`, `radar` (with LRC), `target_3d` and optionally `limb_lengths`.
    t: [B] integer timesteps in [0, diffusion.num_steps).
    noise: [B, J, 3] ε for the current pose.
    dropout_key: enables dropout (training); None runs the network deterministically.

  Returns:
    {'eps': mean_B Σ_{J,3} (ε − ε̂)², 'limb': mean_B Σ_16 |limb_pred − limb_gt|,
     'total': eps + train.limb_loss_weight · limb}.
  """
  _check_batch(config, batch, need_target=True)
  model = denoiser_module(config, diffpose.compute_dtype(config, "train"))
  train = config.train
  target = jnp.asarray(batch["target_3d"])
  if noise.shape != target.shape:
    raise ValueError(f"noise must have the shape of batch['target_3d'] {target.shape}, got "
                     f"{noise.shape}")
  limb_gt = batch.get("limb_lengths")
  limb_gt = models.limb_lengths(target) if limb_gt is None else jnp.asarray(limb_gt)
  alpha_bar = schedules.alpha_bars(betas(config))
  x_t = schedules.q_sample(target, t, noise, alpha_bar)
  past = jnp.asarray(batch["x_history"])[..., :-3]
  if train.diffuse_history:
    # v1 quirk: the whole state goes through q_sample with zero noise on the history.
    past = schedules.q_sample(past, t, jnp.zeros_like(past), alpha_bar)
  x_all = jnp.concatenate([past, x_t], axis=-1)
  kwargs = ({"deterministic": True} if dropout_key is None
            else {"deterministic": False, "rngs": {"dropout": dropout_key}})
  eps, limb_pred = model.apply(
      {"params": denoiser_params}, x_all, jnp.asarray(t).astype(jnp.float32), batch["features"],
      batch.get("radar") if model.uses_radar else None,
      limb_gt if train.limb_teacher_forcing else None, **kwargs)
  eps_loss = jnp.mean(jnp.sum(jnp.square(noise - eps[..., -3:]), axis=(-2, -1)))
  limb_loss = jnp.mean(jnp.sum(jnp.abs(limb_pred - limb_gt), axis=-1))
  return {"eps": eps_loss, "limb": limb_loss,
          "total": eps_loss + train.limb_loss_weight * limb_loss}


def denoiser_loss(config, denoiser_params, batch, key):
  """The training loss: antithetic timesteps, Gaussian noise on the current pose, `loss_terms`.

  `batch['draws']` may hold the step's `t_half` [B//2+1] and `noise` [B, J, 3] draws (upstream's
  noise scale is all ones). Returns (total, {'terms': {'eps', 'limb'}}).
  """
  k_t, k_noise, k_drop = jax.random.split(key, 3)
  target = jnp.asarray(batch["target_3d"])
  t, noise = diffpose.training_draws(config, k_t, k_noise, target.shape[0], target.shape,
                                     diffpose.draws_of(batch))
  terms = loss_terms(config, denoiser_params, batch, t, noise, dropout_key=k_drop)
  return terms["total"], {"terms": {"eps": terms["eps"], "limb": terms["limb"]}}


def encoder_loss(config, encoder_variables, batch, key):
  """Phase 1's objective (HEAD `phase1_train`): MSE of the coarse pose to the root-relative joints.

  The Point Transformer's batch norms use batch statistics, as torch's train mode: the loss then
  comes with the updated running statistics, `(loss, {'collections': {'batch_stats': ...}})`, which
  the train step writes back.
  """
  del key  # upstream's encoders have no dropout
  model = encoder_module(config)
  target = jnp.asarray(batch["target_3d"])
  if "batch_stats" in encoder_variables:
    (pose, _), updates = model.apply(encoder_variables, batch["radar"], train=True,
                                     mutable=["batch_stats"])
    return (jnp.mean(jnp.square(pose - target)),
            {"collections": {"batch_stats": updates["batch_stats"]}})
  pose, _ = model.apply(encoder_variables, batch["radar"])
  return jnp.mean(jnp.square(pose - target))


LOSSES = {"encoder": encoder_loss, "denoiser": denoiser_loss}
