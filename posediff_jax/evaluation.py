"""Evaluation over a test set: upstream batch order, data-parallel jitted calls, per-action table.

Every process walks the same global batches; each feeds its own rows, the batch is split over the
mesh's `data` axis, and the per-frame errors come back to every process, which all fill the same
table (only process 0 prints it). Clip families (D3DP and its descendants) are evaluated by
`video_evaluation`, radar data (mmDiff) by `radar_evaluation`.
"""

import copy
import functools
import json
import pathlib
import sys
from typing import Any

import jax
import numpy as np

from posediff_jax import checkpoint
from posediff_jax import config_checks
from posediff_jax import datasets
from posediff_jax import families
from posediff_jax import metrics
from posediff_jax import sharding
from posediff_jax import summary
from posediff_jax.data import frame_pipeline
from posediff_jax.data import h36m

# Kept here too: the data layout is `datasets`' business, but callers used to find these here.
data_paths = datasets.data_paths
load_split = datasets.load_split


def training_eval_config(config):
  """The config the in-training evaluations use: the clip families' cheaper upstream validation
  (`train.eval_num_hypotheses`, `train.eval_num_steps`), otherwise `config` itself."""
  t = config.train
  if datasets.layout(config) != "clips" or "eval_num_hypotheses" not in t:
    return config
  config = copy.deepcopy(config)
  config.sampling.num_hypotheses = t.eval_num_hypotheses
  config.sampling.num_steps = t.eval_num_steps
  return config


def make_predict_fn(config, mesh=None):
  """The jitted batch function `evaluate` calls: for frame families `(params, input_2d [B, 17, 2],
  key) -> [B, 17, 3]`; for clip families `video_evaluation.make_predict_fn`'s.

  `mesh` is where results are laid out (clip and radar families); None = `config.mesh` over this
  process's devices. `posediff_jax.plan` passes a TPU topology's mesh.
  """
  if datasets.layout(config) == "clips":
    from posediff_jax import video_evaluation  # pylint: disable=g-import-not-at-top
    return video_evaluation.make_predict_fn(config, mesh=mesh)
  if datasets.layout(config) == "radar":
    from posediff_jax import radar_evaluation  # pylint: disable=g-import-not-at-top
    return radar_evaluation.make_predict_fn(config, mesh=mesh)
  family = families.get(config.family)
  return jax.jit(functools.partial(family.predict, config))


def _errors(pred, target):
  return metrics.mpjpe(pred, target), metrics.p_mpjpe(pred, target)


def evaluate(config, params, data, *, max_batches: int = 0, progress: bool = True,
             predict_fn=None):
  """Runs the family's pipeline over the test split and accumulates the per-action errors.

  Args:
    config: experiment config.
    params: the model parameters ({'lifter': ..., 'denoiser': ...} for DiffPose).
    data: the test split from `datasets.load_split` (frames, or clip sequences).
    max_batches: > 0 stops after that many batches (quick checks during training).
    progress: show a progress bar on stderr.
    predict_fn: `make_predict_fn(config)`'s result, for callers that evaluate repeatedly: each new
      one compiles again.

  Returns:
    The filled table: `metrics.ActionErrorTable` for frames; for clips, `video_evaluation`'s; for
    radar data, `radar_evaluation.RadarEvaluation` (per scene).
  """
  if datasets.layout(config) == "clips":
    from posediff_jax import video_evaluation  # pylint: disable=g-import-not-at-top
    return video_evaluation.evaluate(config, params, data, max_batches=max_batches,
                                     progress=progress, predict_fn=predict_fn)
  if datasets.layout(config) == "radar":
    from posediff_jax import radar_evaluation  # pylint: disable=g-import-not-at-top
    return radar_evaluation.evaluate(config, params, data, max_batches=max_batches,
                                     progress=progress, predict_fn=predict_fn)
  frames: h36m.FrameSet = data
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


def _as_json(value):
  return json.loads(json.dumps(value))


def check_checkpoint_matches(config, meta: dict[str, Any], path) -> None:
  """A clear error when a checkpoint was made for another family or other model sizes.

  Every size that differs is named at once, with the overrides that fit the checkpoint.
  """
  family = meta.get("family")
  if family and family != config.family:
    raise ValueError(f"checkpoint {path} holds a {family!r} model but the config is for "
                     f"{config.family!r}; use the matching configs/{family}_*.py")
  differing = []
  for section in ("model", "lifter", "phase1"):
    saved = meta.get(section) or {}
    for field, value in saved.items():
      # JSON turns tuples into lists; compare as JSON does.
      if field in config.get(section, {}) and _as_json(config[section][field]) != value:
        differing.append((f"{section}.{field}", value, config[section][field]))
  if differing:
    listed = ", ".join(f"{name}={value} (the config has {configured})"
                       for name, value, configured in differing)
    flags = " ".join(config_checks.override_flag(name, value) for name, value, _ in differing)
    raise ValueError(f"checkpoint {path} was made with other model sizes than the config: "
                     f"{listed}; pass {flags}")


def run(config, checkpoint_dir, output=None, *, progress=True, plots_dir=None) -> dict[str, Any]:
  """`evaluate.py`: load a checkpoint, evaluate on the test split, print and save the table.

  Returns (and writes to `output` as JSON) {'checkpoint', 'checkpoint_step', 'config', 'results':
  the per-action table, or {mode: table} for clip families, which also add 'mpjpe_by_hypotheses'
  and 'clip_evaluation' (every step and mode)}. `plots_dir` gets `plots.write_eval_plots`' charts.
  """
  if plots_dir:
    from posediff_jax import plots  # pylint: disable=g-import-not-at-top
    plots.check_matplotlib()  # before the (long) evaluation
  params, meta, step = checkpoint.load_model(checkpoint_dir, use_ema=config.eval.use_ema)
  check_checkpoint_matches(config, meta, checkpoint_dir)
  family = families.get(config.family)
  needed = family.eval_parts(config) if hasattr(family, "eval_parts") else family.STAGES
  missing = [part for part in needed if part not in params]
  if missing and datasets.layout(config) == "radar":
    raise ValueError(f"checkpoint {checkpoint_dir} has no {' or '.join(missing)} (it holds "
                     f"{', '.join(sorted(params))}); raw radar data (config.data.source='raw') "
                     "needs the phase-1 encoder too: convert_torch_weights.py --lifter "
                     "{mmBody,MetaFi}_mmDiff_phase1.pth, or evaluate on upstream's cache "
                     "(config.data.source='cache')")
  if missing:
    raise ValueError(f"checkpoint {checkpoint_dir} has no {' or '.join(missing)} (it holds "
                     f"{', '.join(sorted(params))}); a lifter-only conversion can start training "
                     "(--config.train.lifter_checkpoint) but cannot be evaluated")
  data = load_split(config, "test")
  is_main = jax.process_index() == 0  # in a multi-process job only process 0 prints and writes
  table = evaluate(config, params, data, progress=progress and is_main)
  if is_main:
    print(table.format_table())
    sys.stdout.flush()
  result = {"checkpoint": str(checkpoint_dir), "checkpoint_step": int(step),
            "config": json.loads(config.to_json_best_effort())}
  if datasets.layout(config) == "radar":
    result["results"] = table.to_dict()
  elif datasets.layout(config) == "clips":
    result["results"] = table.tables_by_mode()
    result["clip_evaluation"] = table.to_dict()
    if table.by_hypotheses:
      result["mpjpe_by_hypotheses"] = table.by_hypotheses
  else:
    result["results"] = table.to_dict()
  if output and is_main:
    pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(output).write_text(json.dumps(result, indent=2))
  if plots_dir and is_main:
    from posediff_jax import plots  # pylint: disable=g-import-not-at-top
    for path in plots.write_eval_plots(result, plots_dir):
      print(f"wrote {path}")
  return result
