"""Evaluation of the clip families (D3DP and its descendants): every hypothesis, every DDIM step.

Each evaluation mini-batch holds up to `eval.batch_size` clips of one video, as upstream's loop
(P-Best picks its hypothesis per mini-batch). The sampler runs all hypotheses, both flips and all
steps in one call; the four aggregations (spec §6) and their P1/P2 errors are computed on device.
For data parallelism, `D` consecutive mini-batches (D = the mesh's `data` axis) form one call,
split over the devices and processes; every process gets all errors back and fills the same tables.

Human3.6M: a per-action table per mode at the last step (upstream weighting: every clip-frame
counts once, the overlapping last clip's frames twice), plus every step's averages.
MPI-INF-3DHP: each mode's final-step poses are stitched back into whole sequences (the last clip
overwrites, as upstream writes its .mat files) and scored with the official metric on the valid
frames (`metrics_3dhp`).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import cameras
from posediff_jax import datasets
from posediff_jax import families
from posediff_jax import metrics
from posediff_jax import metrics_3dhp
from posediff_jax import sharding
from posediff_jax import summary
from posediff_jax.data import clip_pipeline
from posediff_jax.data import videos
from posediff_jax.diffusion import aggregation
from posediff_jax.evaluation import noise
from posediff_jax.evaluation import predictions

_ARRAY_KEYS = ("input_2d", "target_3d", "trajectory", "clip_mask", "frame_mask", "intrinsic",
               "image_size", "linear_projection")


def headline_mode(config) -> str:
  """The mode whose numbers stand for a run (logs, `averages`): J-Agg, the practical one."""
  modes = tuple(config.eval.modes)
  return "J_Agg" if "J_Agg" in modes else modes[0]


def _check_modes(config) -> tuple[str, ...]:
  modes = tuple(config.eval.modes)
  unknown = [m for m in modes if m not in aggregation.MODES]
  if not modes or unknown:
    raise ValueError(f"config.eval.modes must be a non-empty subset of {aggregation.MODES}, "
                     f"got {modes}")
  return modes


def make_predict_fn(config, mesh=None, *, with_poses: bool = False):
  """A jitted `(params, batch [D, B, ...], key) -> {mode: {...}}` over D mini-batches.

  Per mode: `p1`, `p2` [D, B, K, F] per-frame errors (mean over joints) for every step; with
  `eval.hypotheses_curve`, `p1_by_h` [D, B, H, F]: the last step's P1 when only the first h
  hypotheses are aggregated; for 3DHP (or `with_poses`) `pose` [D, B, F, J, 3], the aggregated
  final-step pose (metres, root at 0). With `with_poses` also `hypotheses` [D, B, H, F, J, 3], the
  last step's samples (root at 0). A batch holding `noise_init` [D, B, H, F, J, 3] and `noise_steps`
  [D, K-1, B, H, F, J, 3] samples from them instead of the key (`noise`). The results are
  replicated over `mesh` (None = `config.mesh` over this process's devices).
  """
  family = families.get(config.family)
  modes = _check_modes(config)
  _, _, root = datasets.joint_symmetry(config)
  pixels = config.data.get("dataset", "h36m") == "3dhp"
  curve = config.eval.get("hypotheses_curve", False)

  text = {"action_index"} if getattr(family, "TEXT_CONDITIONED", False) else set()

  def one_minibatch(params, batch, key):
    conditions = {k: batch[k] for k in text}  # prompt families: each clip's text cache row
    if "noise_init" in batch:  # replayed noise (eval.noise_file)
      conditions.update(noise_init=batch["noise_init"], noise_steps=batch["noise_steps"])
    preds = family.sample(config, params, batch["input_2d"], key, **conditions)
    # preds: [B, K, H, F, J, 3]
    if pixels:
      # 3DHP compares in pixels: TS1-4 project linearly, TS5/6 with (zero) distortion terms.
      width, height = batch["image_size"][0], batch["image_size"][1]
      target_px = (batch["input_2d"] + jnp.stack([1.0, height / width])) * (width / 2)
      reproject = functools.partial(aggregation.reproject, preds, batch["trajectory"],
                                    batch["intrinsic"], root_joint=root)
      projected = jnp.where(batch["linear_projection"], reproject(projection="linear"),
                            reproject(projection="distorted"))
      reproj_error = jnp.linalg.norm(projected - target_px[:, None, None], axis=-1)
    else:
      reproj_error = aggregation.reprojection_error(
          preds, batch["trajectory"], batch["intrinsic"], batch["input_2d"], root_joint=root)
    out = {}
    for mode in modes:
      kwargs = dict(reproj_error=reproj_error, clip_mask=batch["clip_mask"], root_joint=root)
      p1 = aggregation.per_joint_errors(preds, batch["target_3d"], mode, **kwargs)
      p2 = aggregation.per_joint_errors(preds, batch["target_3d"], mode, procrustes=True,
                                        **kwargs)
      out[mode] = {"p1": jnp.mean(p1, axis=-1), "p2": jnp.mean(p2, axis=-1)}
      if curve:
        out[mode]["p1_by_h"] = jnp.stack([jnp.mean(aggregation.per_joint_errors(
            preds[:, -1:, :h], batch["target_3d"], mode,
            **{**kwargs, "reproj_error": reproj_error[:, -1:, :h]})[:, 0], axis=-1)
                                          for h in range(1, preds.shape[2] + 1)], axis=1)
      if pixels or with_poses:  # 3DHP's metric and --save_predictions need the poses
        pose, _ = aggregation.aggregate_poses(
            preds[:, -1:], batch["target_3d"], mode,
            **{**kwargs, "reproj_error": reproj_error[:, -1:]})
        out[mode]["pose"] = pose[:, 0]
    if with_poses:  # root at 0, as the errors and the aggregated poses see them
      out["hypotheses"] = preds[:, -1].at[..., root, :].set(0)
    return out

  def many_minibatches(params, batch, keys):
    return jax.vmap(one_minibatch, in_axes=(None, 0, 0))(params, batch, keys)

  mesh = mesh or sharding.make_mesh(config.get("mesh"))
  # Each device runs its own mini-batches start to end: left to the partitioner, the Procrustes
  # SVDs were gathered onto every chip (FinePOSE on 128 TPU chips: 214 GiB of temporaries each).
  per_device = sharding.per_data_shard(many_minibatches, mesh, batch_args=(1, 2), num_args=3)
  # Every process gets every result back, to fill identical tables.
  return jax.jit(per_device, out_shardings=sharding.replicated(mesh))


@dataclasses.dataclass
class ClipEvaluation:
  """The filled tables of one clip-family evaluation.

  Attributes:
    config_summary: H, K and the dataset, for the printed headers.
    modes: the aggregation modes, in printing order.
    headline: the mode `averages` reports.
    tables: Human3.6M: {mode: [ActionErrorTable per step]}.
    sequences: MPI-INF-3DHP: {mode: `metrics_3dhp.Mpi3dhpResults`}.
    step_averages: {mode: [(P1 mm, P2 mm) per step]} (3DHP: frame-weighted over valid frames).
    by_hypotheses: {mode: {h: P1 mm at the last step using the first h hypotheses}} (the
      action-wise average; 3DHP: frame-weighted), empty without `eval.hypotheses_curve`.
  """
  config_summary: dict[str, Any]
  modes: tuple[str, ...]
  headline: str
  tables: dict[str, list[metrics.ActionErrorTable]]
  sequences: dict[str, metrics_3dhp.Mpi3dhpResults]
  step_averages: dict[str, list[tuple[float, float]]]
  by_hypotheses: dict[str, dict[int, float]]

  def averages(self) -> tuple[float, float]:
    """(P1, P2) in mm of the headline mode at the last step (3DHP: MPJPE of the paper metric)."""
    if self.sequences:
      return (self.sequences[self.headline].paper_mpjpe, self.step_averages[self.headline][-1][1])
    return self.tables[self.headline][-1].averages()

  def format_table(self) -> str:
    c = self.config_summary
    blocks = []
    for mode in self.modes:
      header = (f"== {mode} (H={c['num_hypotheses']}, K={c['num_steps']}: last step; "
                f"{c['dataset']}) ==")
      if self.sequences:
        body = metrics_3dhp.format_sequence_table(self.sequences[mode])
      else:
        body = self.tables[mode][-1].format_table()
      steps = "  ".join(f"{p1:.2f}" for p1, _ in self.step_averages[mode])
      blocks.append(f"{header}\n{body}\nP1 (mm) after each step: {steps}")
    return "\n\n".join(blocks)

  def tables_by_mode(self) -> dict[str, dict[str, Any]]:
    """{mode: per-row table} in `ActionErrorTable.to_dict()` form (3DHP: one row per sequence,
    P1 = its MPJPE, no P2), what `plots.action_error_chart` draws."""
    if not self.sequences:
      return {m: self.tables[m][-1].to_dict() for m in self.modes}
    out = {}
    for mode in self.modes:
      r = self.sequences[mode]
      rows = {name: {"p1_mm": float(r.seq_mpjpe[i, -1]), "p2_mm": float("nan"),
                     "count": int(r.frame_counts[i])} for i, name in enumerate(r.sequence_names)}
      out[mode] = {"actions": rows,
                   "average": {"p1_mm": r.paper_mpjpe, "p2_mm": float("nan")}}
    return out

  def to_dict(self) -> dict[str, Any]:
    out = {"settings": self.config_summary, "headline_mode": self.headline, "modes": {}}
    for mode in self.modes:
      entry = {"per_step": [{"p1_mm": p1, "p2_mm": p2} for p1, p2 in self.step_averages[mode]]}
      if self.sequences:
        entry["mpi_inf_3dhp"] = self.sequences[mode].to_dict()
      else:
        entry["last_step"] = self.tables[mode][-1].to_dict()
      if self.by_hypotheses:
        entry["mpjpe_by_hypotheses"] = {str(h): v for h, v in self.by_hypotheses[mode].items()}
      out["modes"][mode] = entry
    return out


def _stack(batches: list[dict[str, Any]], sequences, config) -> dict[str, np.ndarray]:
  """The arrays of `D` mini-batches stacked on a new leading axis, with the camera each needs."""
  out = {k: [] for k in _ARRAY_KEYS}
  for b in batches:
    if config.data.get("dataset", "h36m") == "3dhp":
      camera = cameras.mpi3dhp_test_camera(str(b["subject"]))
      intrinsic = np.asarray(camera.intrinsic, np.float32)
      linear = camera.projection == "linear"
    else:
      intrinsic, linear = np.asarray(b["intrinsic"], np.float32), False
    extra = {"intrinsic": intrinsic, "image_size": np.asarray(b["image_size"], np.float32),
             "linear_projection": np.asarray(linear)}
    family = families.get(config.family)
    if getattr(family, "TEXT_CONDITIONED", False):
      actions = [str(b["action"])] * len(b["clip_mask"])
      extra["action_index"] = family.action_indices(config, actions)
      out.setdefault("action_index", [])
    for k in out:
      out[k].append(extra[k] if k in extra else np.asarray(b[k]))
  return {k: np.stack(v) for k, v in out.items()}


def evaluate(config, params, sequences: list[videos.VideoSequence], *, max_batches: int = 0,
             progress: bool = True, predict_fn=None,
             collector: predictions.Collector | None = None) -> ClipEvaluation:
  """Samples every test clip, aggregates the hypotheses and fills the tables (see module doc).

  Mini-batch b samples with `noise.batch_key(config, b)`, or with the noise of `eval.noise_file`;
  `collector` gets every clip frame's poses, labels and errors (`predictions`).
  """
  modes = _check_modes(config)
  mesh = sharding.make_mesh(config.get("mesh"))
  group = mesh.shape["data"]
  sharding.check_divisible(group, mesh, "the mesh's data axis")
  rows = sharding.process_slice(group)
  by_batch, repl = sharding.by_batch(mesh), sharding.replicated(mesh)
  params = jax.device_put(params, repl)
  if collector is not None:
    predict_fn = None  # the poses are needed too
  predict = predict_fn or make_predict_fn(config, with_poses=collector is not None)
  replay = noise.open_noise_file(config)
  is_3dhp = config.data.get("dataset", "h36m") == "3dhp"
  num_frames = config.model.num_frames
  batches, num_batches = clip_pipeline.eval_batches(sequences, num_frames, config.eval.batch_size)
  if max_batches > 0:
    num_batches = min(num_batches, max_batches)
  num_steps = config.sampling.num_steps
  tables = {m: [metrics.ActionErrorTable() for _ in range(num_steps)] for m in modes}
  # 3DHP: final-step poses stitched per sequence, and frame-weighted per-step error sums.
  stitched = {m: {} for m in modes}
  sums = {m: np.zeros((num_steps, 2)) for m in modes}
  num_h = int(config.sampling.num_hypotheses)
  curve = config.eval.get("hypotheses_curve", False)
  h_tables = {m: [metrics.ActionErrorTable() for _ in range(num_h)] for m in modes}
  h_sums = {m: np.zeros(num_h) for m in modes}
  frames_seen = 0
  bar = summary.ProgressBar(num_batches, "evaluate", enabled=progress)
  clips_seen = 0

  def run(group_batches):
    nonlocal frames_seen, clips_seen
    fillers = [group_batches[-1]] * (group - len(group_batches))
    stacked = _stack(group_batches + fillers, sequences, config)
    stacked["clip_mask"][len(group_batches):] = False  # filler mini-batches change nothing
    if replay is not None:
      stacked.update(_replayed(config, replay, group_batches + fillers))
    inputs = sharding.global_batch({k: v[rows] for k, v in stacked.items()}, by_batch)
    keys = jnp.stack([noise.batch_key(config, int(b["batch_index"])) for b in group_batches]
                     + [noise.batch_key(config, 0)] * len(fillers))
    out = jax.device_get(predict(params, inputs, jax.device_put(keys, by_batch)))
    for d, b in enumerate(group_batches):
      clip_mask = np.asarray(b["clip_mask"])
      # Upstream scores every frame of a real clip: frames edge-padded onto a short video count
      # (only ever on tiny synthetic sets); 3DHP scores valid frames only, as its metric does.
      weight = (np.asarray(b["frame_mask"]) if is_3dhp
                else np.broadcast_to(clip_mask[:, None], b["frame_mask"].shape))
      actions = np.repeat(np.asarray([b["action"]] * len(clip_mask)), num_frames)
      for mode in modes:
        p1, p2 = out[mode]["p1"][d], out[mode]["p2"][d]  # [B, K, F]
        by_h = out[mode]["p1_by_h"][d] if curve else None  # [B, H, F]
        if is_3dhp:
          sums[mode] += np.stack([(p1 * weight[:, None]).sum((0, 2)),
                                  (p2 * weight[:, None]).sum((0, 2))], axis=-1)
          _stitch(stitched[mode], b, out[mode]["pose"][d], sequences)
          if curve:
            h_sums[mode] += (by_h * weight[:, None]).sum((0, 2))
        else:
          for k in range(num_steps):
            tables[mode][k].update(p1[:, k].reshape(-1), p2[:, k].reshape(-1), actions,
                                   weight.reshape(-1))
          for h in range(num_h if curve else 0):
            h_tables[mode][h].update(by_h[:, h].reshape(-1), np.zeros(by_h[:, h].size), actions,
                                     weight.reshape(-1))
      frames_seen += int(weight.sum()) if is_3dhp else 0
      if collector is not None:
        clips_seen += _collect(collector, modes, b, out, d, sequences, clips_seen)
    bar.update(len(group_batches))

  pending = []
  for i, batch in enumerate(batches):
    if i >= num_batches:
      break
    pending.append(batch)
    if len(pending) == group:
      run(pending)
      pending = []
  if pending:
    run(pending)
  bar.close()

  summary_ = {"dataset": config.data.get("dataset", "h36m"),
              "num_hypotheses": int(config.sampling.num_hypotheses), "num_steps": num_steps,
              "batch_size": int(config.eval.batch_size)}
  if is_3dhp:
    results = {m: _score_3dhp(stitched[m], sequences) for m in modes}
    per_frame = 1000 / max(frames_seen, 1)
    steps = {m: [tuple(float(v) for v in s * per_frame) for s in sums[m]] for m in modes}
    by_h = ({m: {h + 1: float(v * per_frame) for h, v in enumerate(h_sums[m])} for m in modes}
            if curve else {})
    return ClipEvaluation(summary_, modes, headline_mode(config), {}, results, steps, by_h)
  steps = {m: [t.averages() for t in tables[m]] for m in modes}
  by_h = ({m: {h + 1: t.averages()[0] for h, t in enumerate(h_tables[m])} for m in modes}
          if curve else {})
  return ClipEvaluation(summary_, modes, headline_mode(config), tables, {}, steps, by_h)


def _replayed(config, replay: noise.NoiseFile, batches) -> dict[str, np.ndarray]:
  """`noise_init` [D, B, H, F, J, 3] and `noise_steps` [D, K-1, B, H, F, J, 3] of the mini-batches
  from the noise file (a filler mini-batch repeats its neighbour's)."""
  shape = (int(config.sampling.num_hypotheses), int(config.model.num_frames),
           int(config.model.num_joints), 3)
  init, steps = [], []
  for b in batches:
    a, z = replay.clips(int(b["batch_index"]), int(np.sum(b["clip_mask"])),
                        len(b["clip_mask"]), shape, int(config.sampling.num_steps),
                        float(config.sampling.eta))
    init.append(a)
    steps.append(z)
  return {"noise_init": np.stack(init), "noise_steps": np.stack(steps)}


def _collect(collector, modes, batch, out, d: int, sequences, clips_seen: int) -> int:
  """Adds mini-batch `d` of a call's output to `collector`; returns its number of clips."""
  real = np.asarray(batch["clip_mask"])
  frames = int(batch["frame_index"].shape[1])
  count = int(real.sum())
  flat = lambda x: np.asarray(x)[real].reshape((count * frames,) + np.shape(x)[2:])
  hypotheses = np.moveaxis(np.asarray(out["hypotheses"][d]), 1, 2)  # [B, F, H, J, 3]
  video = sequences[int(batch["sequence"])]
  n = count * frames
  columns = {
      "hypotheses": flat(hypotheses), "target": flat(batch["target_3d"]),
      "subject": np.full(n, str(batch["subject"])),
      "action": np.full(n, str(batch["action"]).split(" ")[0]),
      "sequence": np.full(n, str(batch["action"])), "camera": np.full(n, batch["camera"]),
      "frame": flat(batch["frame_index"]).astype(np.int32),
      "clip": np.repeat(clips_seen + np.arange(count), frames).astype(np.int32),
      "batch": np.full(n, int(batch["batch_index"]), np.int32),
      "real": flat(batch["real_frame"]).astype(bool),
      "valid": np.asarray(video.valid, bool)[flat(batch["frame_index"])]}
  for mode in modes:
    columns[f"pred_{mode}"] = flat(out[mode]["pose"][d])
    columns[f"mpjpe_mm_{mode}"] = 1000 * flat(np.asarray(out[mode]["p1"][d])[:, -1])
    columns[f"p_mpjpe_mm_{mode}"] = 1000 * flat(np.asarray(out[mode]["p2"][d])[:, -1])
  collector.add(**columns)
  return count


def _stitch(store: dict, batch: dict[str, Any], poses: np.ndarray, sequences) -> None:
  """Writes a mini-batch's clip poses [B, F, J, 3] into their sequence's frames; later clips win."""
  index = int(batch["sequence"])
  length = len(sequences[index].input_2d)
  seq = store.setdefault(index, np.full((length,) + poses.shape[-2:], np.nan, np.float64))
  for clip, real in enumerate(np.asarray(batch["clip_mask"])):
    if real:
      frames = np.asarray(batch["frame_index"][clip])
      keep = np.asarray(batch["real_frame"][clip])
      seq[frames[keep]] = poses[clip][keep]


def _score_3dhp(store: dict, sequences) -> metrics_3dhp.Mpi3dhpResults:
  errors, names = [], []
  for index in sorted(store):
    seq = sequences[index]
    pred = store[index]
    valid = np.asarray(seq.valid, bool) & ~np.isnan(pred).any(axis=(1, 2))
    errors.append(metrics_3dhp.per_joint_errors(pred * 1000, np.asarray(seq.target_3d) * 1000,
                                                valid, root_joint=seq.root_joint))
    names.append(str(seq.subject))
  # The _ori test files carry no activity labels, so every frame is filed under activity 1 and
  # only the sequence-wise table is meaningful.
  activities = [np.ones(e.shape[1], np.int64) for e in errors]
  return metrics_3dhp.evaluate(errors, activities, names)
