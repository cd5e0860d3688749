"""mmDiff on radar data: phase 1 over a split, then phase 2; MPJPE and PA-MPJPE per scene.

`radar_phase1.phase2_split` runs the phase-1 encoder over every frame of a raw split (upstream's
cache already holds its outputs). `evaluate` then runs the phase-2 pipeline
(`families.mmdiff.predict`) over the frames in order and files each frame's errors under its
scene: the refined pose's MPJPE and PA-MPJPE (spec §5: both poses re-centred on joint 0;
per-frame similarity Procrustes), and the same for the coarse pose, so the gain of phase 2 is
visible.

Both passes are data parallel like the other evaluators: every process walks the same global
batches and reads its own rows, the batch is split over the mesh's `data` axis, and the results
come back to every process, which all fill the same table (only process 0 prints it).

Averages (`eval.average`): 'scenes' is the unweighted mean over the scenes (v1's "Average" over the
7 mmBody test scenes), 'frames' the mean over all frames (HEAD's single "Test" bucket).
"""

import dataclasses
from typing import Any

import jax
import numpy as np

from posediff_jax import families
from posediff_jax import metrics
from posediff_jax import radar_phase1
from posediff_jax import sharding
from posediff_jax import summary
from posediff_jax.data import radar as radar_data
from posediff_jax.data import radar_pipeline
from posediff_jax.evaluation import noise
from posediff_jax.evaluation import predictions

AVERAGES = ("scenes", "frames")
_COLUMNS = ("p1", "p2", "coarse_p1", "coarse_p2")


def _check_average(config) -> str:
  average = config.eval.get("average", "frames")
  if average not in AVERAGES:
    raise ValueError(f"config.eval.average must be one of {AVERAGES}, got {average!r}")
  return average


def make_predict_fn(config, mesh=None, *, with_poses: bool = False):
  """A jitted `(params, batch, key, noise=None) -> {'p1', 'p2', 'coarse_p1', 'coarse_p2'}`:
  per-frame errors [B] in metres of the refined and of the coarse pose (with `with_poses` also
  the poses `pred`, `coarse`, `target` [B, 17, 3]), replicated on every device of `mesh` (None =
  `config.mesh` over this process's devices). `noise` is the sampler's z, replayed from
  `eval.noise_file`."""
  family = families.get(config.family)

  def errors(params, batch, key, z=None):
    pred = (family.predict(config, params, batch, key) if z is None
            else family.predict(config, params, batch, key, z))
    target = batch["target_3d"] - batch["target_3d"][:, :1]
    coarse = batch["x_history"][..., -3:]
    coarse = coarse - coarse[:, :1]
    out = {"p1": metrics.mpjpe(pred, target), "p2": metrics.p_mpjpe(pred, target),
           "coarse_p1": metrics.mpjpe(coarse, target),
           "coarse_p2": metrics.p_mpjpe(coarse, target)}
    if with_poses:
      out.update(pred=pred, coarse=coarse, target=target)
    return out

  mesh = mesh or sharding.make_mesh(config.get("mesh"))
  return jax.jit(errors, out_shardings=sharding.replicated(mesh))


@dataclasses.dataclass
class RadarEvaluation:
  """Per-scene errors of one evaluation (millimetres).

  Attributes:
    settings: dataset, source, sampler settings, for the printed header.
    scene_names: the scenes, in table order.
    counts: int `[S]` frames per scene.
    sums: `{column: float64 [S]}` summed per-frame errors in metres for 'p1', 'p2' (refined pose)
      and 'coarse_p1', 'coarse_p2' (phase 1).
    average: 'scenes' or 'frames' (module docstring).
  """
  settings: dict[str, Any]
  scene_names: tuple[str, ...]
  counts: np.ndarray
  sums: dict[str, np.ndarray]
  average: str

  def _scene_mm(self, column: str) -> np.ndarray:
    return 1000 * self.sums[column] / np.maximum(self.counts, 1)

  def _mean_mm(self, column: str, how: str) -> float:
    seen = self.counts > 0
    if not seen.any():
      return float("nan")
    if how == "scenes":
      return float(np.mean(self._scene_mm(column)[seen]))
    return float(1000 * self.sums[column].sum() / self.counts.sum())

  def averages(self) -> tuple[float, float]:
    """(MPJPE, PA-MPJPE) in mm of the refined pose, averaged as `average` says."""
    return self._mean_mm("p1", self.average), self._mean_mm("p2", self.average)

  def coarse_averages(self) -> tuple[float, float]:
    """(MPJPE, PA-MPJPE) in mm of the phase-1 pose, averaged as `average` says."""
    return self._mean_mm("coarse_p1", self.average), self._mean_mm("coarse_p2", self.average)

  def format_table(self) -> str:
    s = self.settings
    lines = [f"== mmDiff on {s['dataset']} ({s['source']} data): {s['num_steps']} DDIM steps, "
             f"{s['hypotheses']} hypothesis(es), eta {s['eta']} ==",
             f"{'scene':<16}{'frames':>8}{'MPJPE':>9}{'PA-MPJPE':>10}"
             f"{'phase-1 MPJPE':>15}{'phase-1 PA':>12}"]
    rows = [(name, int(self.counts[i]), *(self._scene_mm(c)[i] for c in _COLUMNS))
            for i, name in enumerate(self.scene_names) if self.counts[i] > 0]
    rows.append(("mean of scenes", int(self.counts.sum()),
                 *(self._mean_mm(c, "scenes") for c in _COLUMNS)))
    rows.append(("all frames", int(self.counts.sum()),
                 *(self._mean_mm(c, "frames") for c in _COLUMNS)))
    for name, count, p1, p2, c1, c2 in rows:
      lines.append(f"{name:<16}{count:>8}{p1:>9.2f}{p2:>10.2f}{c1:>15.2f}{c2:>12.2f}")
    lines.append(f"Average ({'mean of scenes' if self.average == 'scenes' else 'all frames'}): "
                 f"MPJPE {self.averages()[0]:.2f} mm, PA-MPJPE {self.averages()[1]:.2f} mm")
    return "\n".join(lines)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: `actions` (per scene, the per-action table layout the plots read), `average`,
    `mean_of_scenes`, `all_frames`, `phase1` (the coarse pose's errors) and the settings."""

    def entry(p1, p2, count=None):
      out = {"p1_mm": float(p1), "p2_mm": float(p2)}
      return out if count is None else {**out, "count": int(count)}

    seen = [i for i in range(len(self.scene_names)) if self.counts[i] > 0]
    p1, p2, c1, c2 = (self._scene_mm(c) for c in _COLUMNS)
    return {
        "mode": self.average, "settings": self.settings,
        "num_samples": int(self.counts.sum()),
        "actions": {self.scene_names[i]: entry(p1[i], p2[i], self.counts[i]) for i in seen},
        "average": entry(*self.averages()),
        "mean_of_scenes": entry(self._mean_mm("p1", "scenes"), self._mean_mm("p2", "scenes")),
        "all_frames": entry(self._mean_mm("p1", "frames"), self._mean_mm("p2", "frames")),
        "phase1": {"actions": {self.scene_names[i]: entry(c1[i], c2[i], self.counts[i])
                               for i in seen},
                   "average": entry(*self.coarse_averages())},
    }


def evaluate(config, params, split: radar_data.RadarSplit, *, max_batches: int = 0,
             progress: bool = True, predict_fn=None,
             collector: predictions.Collector | None = None) -> RadarEvaluation:
  """Runs phase 2 (after phase 1 if `split` is raw) over the split and fills the table.

  Args:
    config: experiment config.
    params: {'denoiser': ...[, 'encoder': ...]}.
    split: the test split from `datasets.load_split` (or `radar_phase1.encode_split`'s result).
    max_batches: > 0 stops after that many batches (quick checks during training).
    progress: show progress bars on stderr.
    predict_fn: `make_predict_fn(config)`'s result, for callers that evaluate repeatedly.
    collector: gets every frame's poses, labels and errors (`predictions`).

  Batch i samples with `noise.batch_key(config, i)`, or with the noise of `eval.noise_file`.

  Returns:
    The filled `RadarEvaluation`.
  """
  average = _check_average(config)
  settings = radar_data.settings_from_config(config)
  split = radar_phase1.phase2_split(config, params, split, progress=progress)
  mesh = sharding.make_mesh(config.get("mesh"))
  batch_size = int(config.eval.batch_size)
  sharding.check_divisible(batch_size, mesh, "eval.batch_size")
  by_batch, repl = sharding.by_batch(mesh), sharding.replicated(mesh)
  params = jax.device_put({"denoiser": params["denoiser"]}, repl)
  if collector is not None:
    predict_fn = None  # the poses are needed too
  predict = predict_fn or make_predict_fn(config, with_poses=collector is not None)
  replay = noise.open_noise_file(config)
  batches, num_batches = radar_pipeline.eval_batches(
      split, batch_size, stage="denoiser", settings=settings, shard_index=jax.process_index(),
      shard_count=jax.process_count())
  if max_batches > 0:
    num_batches = min(num_batches, max_batches)
  scenes = len(split.scene_names)
  counts = np.zeros(scenes, np.int64)
  sums = {c: np.zeros(scenes, np.float64) for c in _COLUMNS}
  bar = summary.ProgressBar(num_batches, "evaluate", enabled=progress)
  for i, batch in enumerate(batches):
    if i >= num_batches:
      break
    inputs = sharding.global_batch(batch["arrays"], by_batch)
    key = noise.batch_key(config, i)
    if replay is None:
      out = predict(params, inputs, key)
    else:
      z = replay.rows(i, len(families.get(config.family).sampler_timesteps(config)),
                      int(config.sampling.hypotheses), int(np.sum(batch["valid"])), batch_size,
                      _state_shape(config, inputs))
      out = predict(params, inputs, key, jax.device_put(z, repl))
    out = jax.device_get(out)
    valid, scene = batch["valid"], batch["scene"]
    np.add.at(counts, scene[valid], 1)
    for column in _COLUMNS:
      np.add.at(sums[column], scene[valid], np.asarray(out[column], np.float64)[valid])
    if collector is not None:
      index = np.asarray(batch["index"])[valid]
      collector.add(
          pred=np.asarray(out["pred"])[valid], coarse=np.asarray(out["coarse"])[valid],
          target=np.asarray(out["target"])[valid],
          **{name: 1000 * np.asarray(out[column])[valid] for name, column in (
              ("mpjpe_mm", "p1"), ("p_mpjpe_mm", "p2"), ("coarse_mpjpe_mm", "coarse_p1"),
              ("coarse_p_mpjpe_mm", "coarse_p2"))},
          scene=np.asarray([split.scene_names[s] for s in scene[valid]]),
          sequence=np.asarray(split.sequence)[index], index=index)
    bar.update(1)
  bar.close()
  s = config.sampling
  summary_ = {"dataset": str(config.data.dataset), "source": settings.source,
              "num_steps": len(families.get(config.family).sampler_timesteps(config)),
              "hypotheses": int(s.hypotheses), "eta": float(s.eta),
              "batch_size": batch_size}
  return RadarEvaluation(summary_, split.scene_names, counts, sums, average)


def _state_shape(config, inputs) -> tuple[int, int]:
  """(J, D) of the sampler's state: the pose (D = 3), or v1's whole history (D = 3(P+1))."""
  joints, history = inputs["x_history"].shape[1:]
  return (joints, history if config.sampling.get("update_history", False) else 3)
