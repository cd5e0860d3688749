"""Evaluation over a test set: one entry (`evaluate`, `run`) for every data layout.

The data layout (`datasets.layout`) picks the module that does the work, each in upstream's batch
order with data-parallel jitted calls, every process filling the same table (only process 0
prints it):

- `frames`: the frame families (DiffPose, ICASSP'24), a per-action table;
- `clips`: the clip families (D3DP, FinePOSE, DSGDiffu), every hypothesis and DDIM step, the four
  aggregations, Human3.6M tables or the MPI-INF-3DHP metrics;
- `radar`: mmDiff on radar data, per scene, refined against coarse pose.

`run` is `evaluate.py`: a checkpoint in, the table printed and saved; with `save_predictions`
every scored sample too (`evaluation.predictions` lists the keys). The sampler's noise is a
function of `config.seed` alone, or replayed from `eval.noise_file` (`evaluation.noise`).
"""

import copy
import json
import pathlib
import sys
from typing import Any

import jax

from posediff_jax import checkpoint
from posediff_jax import config_checks
from posediff_jax import datasets
from posediff_jax import families
from posediff_jax.evaluation import clips
from posediff_jax.evaluation import frames
from posediff_jax.evaluation import predictions
from posediff_jax.evaluation import radar

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
  key) -> [B, 17, 3]` (`frames.make_predict_fn`); for clip and radar data `clips`' and `radar`'s.

  `mesh` is where results are laid out (clip and radar families); None = `config.mesh` over this
  process's devices. `posediff_jax.plan` passes a TPU topology's mesh.
  """
  if datasets.layout(config) == "clips":
    return clips.make_predict_fn(config, mesh=mesh)
  if datasets.layout(config) == "radar":
    return radar.make_predict_fn(config, mesh=mesh)
  return frames.make_predict_fn(config)


def evaluate(config, params, data, *, max_batches: int = 0, progress: bool = True,
             predict_fn=None, collector: predictions.Collector | None = None):
  """Runs the family's pipeline over the test split and accumulates the per-action errors.

  Args:
    config: experiment config.
    params: the model parameters ({'lifter': ..., 'denoiser': ...} for DiffPose).
    data: the test split from `datasets.load_split` (frames, or clip sequences).
    max_batches: > 0 stops after that many batches (quick checks during training).
    progress: show a progress bar on stderr.
    predict_fn: `make_predict_fn(config)`'s result, for callers that evaluate repeatedly: each new
      one compiles again.
    collector: a `predictions.Collector` that gets every scored sample.

  Returns:
    The filled table: `metrics.ActionErrorTable` for frames; for clips, `clips.ClipEvaluation`;
    for radar data, `radar.RadarEvaluation` (per scene).
  """
  module = {"clips": clips, "radar": radar}.get(datasets.layout(config), frames)
  return module.evaluate(config, params, data, max_batches=max_batches, progress=progress,
                         predict_fn=predict_fn, collector=collector)


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


def run(config, checkpoint_dir, output=None, *, progress=True, plots_dir=None,
        save_predictions=None) -> dict[str, Any]:
  """`evaluate.py`: load a checkpoint, evaluate on the test split, print and save the table.

  Returns (and writes to `output` as JSON) {'checkpoint', 'checkpoint_step', 'config', 'results':
  the per-action table, or {mode: table} for clip families, which also add 'mpjpe_by_hypotheses'
  and 'clip_evaluation' (every step and mode)}. `plots_dir` gets `plots.write_eval_plots`' charts,
  `save_predictions` (a `.npz` path) every scored sample (`evaluation.predictions`).
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
  collector = (predictions.Collector(datasets.layout(config), config.family)
               if save_predictions else None)
  table = evaluate(config, params, data, progress=progress and is_main, collector=collector)
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
  if collector is not None and is_main:
    print(f"wrote {collector.save(save_predictions)}")
  if plots_dir and is_main:
    from posediff_jax import plots  # pylint: disable=g-import-not-at-top
    for path in plots.write_eval_plots(result, plots_dir):
      print(f"wrote {path}")
  return result
