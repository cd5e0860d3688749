"""Evaluation of the frame families (DiffPose, ICASSP'24): upstream batch order, per-action table.

Every process walks the same global batches of `frame_pipeline.eval_batches`; each feeds its own
rows, the batch is split over the mesh's `data` axis, and the per-frame MPJPE and P-MPJPE come back
to every process, which all fill the same `metrics.ActionErrorTable` (only process 0 prints it).
"""

import functools

import jax
import numpy as np

from posediff_jax import families
from posediff_jax import metrics
from posediff_jax import sharding
from posediff_jax import summary
from posediff_jax.data import frame_pipeline
from posediff_jax.data import h36m
from posediff_jax.evaluation import noise
from posediff_jax.evaluation import predictions


def make_predict_fn(config):
  """The jitted `(params, input_2d [B, 17, 2], key, noise=None) -> [B, 17, 3]` of the family's
  pipeline (`noise`: the sampler's z, replayed from `eval.noise_file`)."""
  family = families.get(config.family)
  return jax.jit(functools.partial(family.predict, config))


def _noise_rows(config, noise_file, index: int, valid: np.ndarray, batch_size: int):
  """The replayed z of global batch `index` ([K, H·P·B, 17, 5]; noise.py), or None."""
  if noise_file is None:
    return None
  family = families.get(config.family)
  steps = len(family.sampler_timesteps(config))
  passes = 2 if config.eval.get("flip_tta", False) else 1
  return noise_file.rows(index, steps, int(config.sampling.hypotheses) * passes,
                         int(np.sum(valid)), batch_size, (17, 5))


def _errors(pred, target):
  return metrics.mpjpe(pred, target), metrics.p_mpjpe(pred, target)


def evaluate(config, params, frames: h36m.FrameSet, *, max_batches: int = 0,
             progress: bool = True, predict_fn=None,
             collector: predictions.Collector | None = None) -> metrics.ActionErrorTable:
  """Runs the family's pipeline over the test frames and accumulates the per-action errors.

  Args:
    config: experiment config.
    params: the model parameters ({'lifter': ..., 'denoiser': ...} for DiffPose).
    frames: the test split from `datasets.load_split`.
    max_batches: > 0 stops after that many batches (quick checks during training).
    progress: show a progress bar on stderr.
    predict_fn: `make_predict_fn(config)`'s result, for callers that evaluate repeatedly: each new
      one compiles again.
    collector: gets every frame's prediction, target, labels and errors (`predictions`).

  Returns:
    The filled `metrics.ActionErrorTable`.
  """
  mesh = sharding.make_mesh(config.get("mesh"))
  batch_size = config.eval.batch_size
  sharding.check_divisible(batch_size, mesh, "eval.batch_size")
  rows = sharding.process_slice(batch_size)
  by_batch, repl = sharding.by_batch(mesh), sharding.replicated(mesh)
  params = jax.device_put(params, repl)
  predict = predict_fn or make_predict_fn(config)
  errors = jax.jit(_errors, out_shardings=(repl, repl))
  table = metrics.ActionErrorTable(upstream_p2_batch_mean=config.eval.upstream_p2_batch_mean)
  batches, num_batches = frame_pipeline.eval_batches(frames, batch_size)
  if max_batches > 0:
    num_batches = min(num_batches, max_batches)
  bar = summary.ProgressBar(num_batches, "evaluate", enabled=progress)
  replay = noise.open_noise_file(config)
  gather = jax.jit(lambda x: x, out_shardings=repl)  # the whole batch's poses on every process
  for i, batch in enumerate(batches):
    if i >= num_batches:
      break
    inputs = sharding.global_batch({k: batch[k][rows] for k in ("input_2d", "target_3d")},
                                   by_batch)
    z = _noise_rows(config, replay, i, batch["valid"], batch_size)
    key = noise.batch_key(config, i)
    pred = (predict(params, inputs["input_2d"], key) if z is None
            else predict(params, inputs["input_2d"], key, jax.device_put(z, repl)))
    p1, p2 = errors(pred, inputs["target_3d"])
    p1, p2 = np.asarray(p1), np.asarray(p2)
    table.update(p1, p2, batch["action"], batch["valid"])
    if collector is not None:
      _collect(collector, frames, batch, np.asarray(gather(pred)), p1, p2)
    bar.update(1)
  bar.close()
  return table


def _collect(collector, frames: h36m.FrameSet, batch, pred, p1, p2) -> None:
  valid = np.asarray(batch["valid"])
  index = np.asarray(batch["index"])[valid]
  sequence = [frames.sequence_names[s].split("/", 1) for s in frames.sequence[index]]
  collector.add(
      pred=pred[valid], target=frames.target_3d[index], mpjpe_mm=1000 * p1[valid],
      p_mpjpe_mm=1000 * p2[valid], subject=np.asarray([s for s, _ in sequence]),
      action=np.asarray([h36m.ACTIONS[a] for a in frames.action[index]]),
      sequence=np.asarray([name for _, name in sequence]), camera=frames.camera[index],
      frame=frames.frame[index])
