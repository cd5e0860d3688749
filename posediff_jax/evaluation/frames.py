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


def make_predict_fn(config):
  """The jitted `(params, input_2d [B, 17, 2], key) -> [B, 17, 3]` of the family's pipeline."""
  family = families.get(config.family)
  return jax.jit(functools.partial(family.predict, config))


def _errors(pred, target):
  return metrics.mpjpe(pred, target), metrics.p_mpjpe(pred, target)


def evaluate(config, params, frames: h36m.FrameSet, *, max_batches: int = 0,
             progress: bool = True, predict_fn=None) -> metrics.ActionErrorTable:
  """Runs the family's pipeline over the test frames and accumulates the per-action errors.

  Args:
    config: experiment config.
    params: the model parameters ({'lifter': ..., 'denoiser': ...} for DiffPose).
    frames: the test split from `datasets.load_split`.
    max_batches: > 0 stops after that many batches (quick checks during training).
    progress: show a progress bar on stderr.
    predict_fn: `make_predict_fn(config)`'s result, for callers that evaluate repeatedly: each new
      one compiles again.

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
  key = jax.random.key(config.seed)
  for i, batch in enumerate(batches):
    if i >= num_batches:
      break
    inputs = sharding.global_batch({k: batch[k][rows] for k in ("input_2d", "target_3d")},
                                   by_batch)
    pred = predict(params, inputs["input_2d"], jax.random.fold_in(key, i))
    p1, p2 = errors(pred, inputs["target_3d"])
    table.update(np.asarray(p1), np.asarray(p2), batch["action"], batch["valid"])
    bar.update(1)
  bar.close()
  return table
