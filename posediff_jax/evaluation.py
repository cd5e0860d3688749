"""Evaluation over a test set: batches in upstream order, one jitted call per batch, per-action table."""

import functools
import json
import pathlib
import sys
from typing import Any

import jax
import numpy as np

from posediff_jax import checkpoint
from posediff_jax import families
from posediff_jax import metrics
from posediff_jax import summary
from posediff_jax.data import h36m
from posediff_jax.data import pipeline
from posediff_jax.data import synthetic


def data_paths(config) -> dict[str, pathlib.Path]:
  """The 3D / train 2D / test 2D files of `config.data`, generating the synthetic set if asked."""
  root = pathlib.Path(config.data.root)
  if config.data.get("generate_synthetic", False):
    synthetic.ensure_synthetic_data(root)
  paths = {"3d": root / config.data.file_3d, "train_2d": root / config.data.train_2d,
           "test_2d": root / config.data.test_2d}
  for name, path in paths.items():
    if not path.is_file():
      raise FileNotFoundError(
          f"data file {path} (config.data.root + config.data.{'file_3d' if name == '3d' else name}) "
          "not found; see README 'Data' for where to get it, or use configs/demo.py")
  return paths


def load_split(config, split: str) -> h36m.FrameSet:
  """The train or test frames of `config.data`, read with the family's data options.

  `config.data.kernel` ("weighted" when absent) and `config.data.fixed_resolution` (each camera's
  own resolution when absent or None) are passed on to `h36m.load_frame_set`.
  """
  paths = data_paths(config)
  subjects = config.data.train_subjects if split == "train" else config.data.test_subjects
  resolution = config.data.get("fixed_resolution")
  return h36m.load_frame_set(paths["3d"], paths[f"{split}_2d"], tuple(subjects),
                             plain_2d_var=config.data.plain_2d_var,
                             fixed_resolution=tuple(resolution) if resolution else None,
                             kernel=config.data.get("kernel", "weighted"))


def make_predict_fn(config):
  """A jitted `(params, input_2d [B, 17, 2], key) -> [B, 17, 3]` for `config.family`."""
  family = families.get(config.family)
  return jax.jit(functools.partial(family.predict, config))


@jax.jit
def _errors(pred, target):
  return metrics.mpjpe(pred, target), metrics.p_mpjpe(pred, target)


def evaluate(config, params, frames: h36m.FrameSet, *, max_batches: int = 0,
             progress: bool = True, predict_fn=None) -> metrics.ActionErrorTable:
  """Runs the family's pipeline over `frames` and accumulates the per-action errors.

  Args:
    config: experiment config.
    params: the model parameters ({'lifter': ..., 'denoiser': ...} for DiffPose).
    frames: the test set.
    max_batches: > 0 stops after that many batches (quick checks during training).
    progress: show a progress bar on stderr.
    predict_fn: `make_predict_fn(config)`'s result, for callers that evaluate repeatedly: each new
      one compiles again.

  Returns:
    The filled `ActionErrorTable`.
  """
  predict = predict_fn or make_predict_fn(config)
  table = metrics.ActionErrorTable(upstream_p2_batch_mean=config.eval.upstream_p2_batch_mean)
  batches, num_batches = pipeline.eval_batches(frames, config.eval.batch_size)
  if max_batches > 0:
    num_batches = min(num_batches, max_batches)
  bar = summary.ProgressBar(num_batches, "evaluate", enabled=progress)
  key = jax.random.key(config.seed)
  for i, batch in enumerate(batches):
    if i >= num_batches:
      break
    pred = predict(params, batch["input_2d"], jax.random.fold_in(key, i))
    p1, p2 = _errors(pred, batch["target_3d"])
    table.update(np.asarray(p1), np.asarray(p2), batch["action"], batch["valid"])
    bar.update(1)
  bar.close()
  return table


def check_checkpoint_matches(config, meta: dict[str, Any], path) -> None:
  """A clear error when a checkpoint was made for another family or other model sizes."""
  family = meta.get("family")
  if family and family != config.family:
    raise ValueError(f"checkpoint {path} holds a {family!r} model but the config is for "
                     f"{config.family!r}; use the matching configs/{family}_*.py")
  for section in ("model", "lifter"):
    saved = meta.get(section) or {}
    for field, value in saved.items():
      if field in config.get(section, {}) and config[section][field] != value:
        raise ValueError(
            f"checkpoint {path} has {section}.{field}={value} but the config says "
            f"{config[section][field]}; pass --config.{section}.{field}={value}")


def run(config, checkpoint_dir, output=None, *, progress=True) -> dict[str, Any]:
  """`evaluate.py`: load a checkpoint, evaluate on the test split, print and save the table."""
  params, meta, step = checkpoint.load_model(checkpoint_dir, use_ema=config.eval.use_ema)
  check_checkpoint_matches(config, meta, checkpoint_dir)
  frames = load_split(config, "test")
  is_main = jax.process_index() == 0  # in a multi-process job only process 0 prints and writes
  table = evaluate(config, params, frames, progress=progress and is_main)
  if is_main:
    print(table.format_table())
    sys.stdout.flush()
  result = {"checkpoint": str(checkpoint_dir), "checkpoint_step": int(step),
            "results": table.to_dict(), "config": json.loads(config.to_json_best_effort())}
  if output and is_main:
    pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(output).write_text(json.dumps(result, indent=2))
  return result
