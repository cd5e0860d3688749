"""Up-front checks of a tool's config values, paths and output locations.

Every command-line tool calls its `check_*` function first thing in `main`, before it reads data,
loads a checkpoint, compiles anything or creates a directory, so a careless command line fails in
a second instead of after a minute of data loading (or after the whole evaluation ran) and leaves
nothing behind. All problems found are listed in one ValueError, on one line, which
`runtime.run` prints as `error: ...` with exit status 2:

- the config values the tool uses: positive batch sizes and model sizes, non-negative step and
  epoch counts, learning rates, fractions, and enum-like strings (compute dtypes, data layouts,
  schedules, ...), each only where the config has the field (`_RULES` says which tool reads what);
- what training needs before it starts: something to train, a lifter (or phase-1 encoder) to
  train or to load, batch sizes the gradient accumulation divides;
- the data the config points at (`config.data.root` and its files), unless they are to be
  generated, in which case the folder must be writable;
- the input files and checkpoint directories given on the command line, and for evaluation and
  prediction the checkpoint's family and model sizes (read from its small `meta` item; evaluate.py
  and predict first put the sizes it records into the config, `model_sizes.adopt_from_checkpoint`,
  so sizes differ here only for a caller that did not) and predict's prompt action;
- every place the tool will write: it must be creatable (or, if it exists, writable and of the
  right kind). Nothing is created to find out: a directory is probed with an anonymous temporary
  file in its nearest existing ancestor. Bucket URLs (`gs://...`) are left to the run itself.

The checks only mirror what the tools would refuse later; the tools keep their own checks.
"""

import dataclasses
import math
import os
import pathlib
import shlex
import tempfile

import numpy as np

TRAIN, EVALUATE, PREDICT, CONVERT = "train", "evaluate", "predict", "convert"
_ALL = frozenset((TRAIN, EVALUATE, PREDICT, CONVERT))
_RUN = frozenset((TRAIN, EVALUATE, PREDICT))  # tools that run the model
_DATA = frozenset((TRAIN, EVALUATE))  # tools that read the data set
_TRAINING = frozenset((TRAIN,))

# Values a config string may take (the modules that read them raise the same errors, but late).
COMPUTE_DTYPES_EVAL = ("float32", "bfloat16")  # families.diffpose.COMPUTE_DTYPES and the others
COMPUTE_DTYPES_TRAIN = ("float32", "bfloat16", "float16")  # any float jnp.dtype training casts to
BETA_SCHEDULES = ("linear", "cosine")
DATA_LAYOUTS = ("frames", "clips", "radar")  # datasets.LAYOUTS
DATASETS = ("h36m", "3dhp", "mmbody", "mmfi")
KERNELS = ("weighted", "first")  # data.h36m.KERNEL_CHOICES
RADAR_SOURCES = ("raw", "cache")  # data.radar.SOURCES
CACHE_LAYOUTS = ("head", "v1")
HISTORY_FALLBACKS = ("forward", "current")
AVERAGES = ("scenes", "frames")  # evaluation.radar.AVERAGES
TEXT_TILINGS = ("upstream", "per_clip")  # models.finepose.TEXT_TILINGS
GRAPHS = ("h36m", "3dhp")  # models.dsgdiffu.GRAPHS
ENCODERS = ("p4transformer", "point_transformer")  # families.mmdiff._ENCODERS
EVAL_MODES = ("P_Agg", "P_Best", "J_Best", "J_Agg")  # diffusion.aggregation.MODES
SHUFFLE_ORDERS = ("seeded", "upstream")  # data.pipeline.ORDERS


@dataclasses.dataclass(frozen=True)
class _Rule:
  """`path` (a dotted config field) must be of `kind`, for the tools in `tools`.

  Kinds: 'int>0', 'int>=0', 'float>0', 'float>=0', 'fraction' (a float in [0, 1)),
  'probability' ([0, 1]), 'choice' (one of `choices`), 'choices' (a tuple of them), 'mesh'
  (-1 = every device, or a positive count).
  """
  path: str
  kind: str
  tools: frozenset = _ALL
  choices: tuple = ()


def _rules(kind: str, tools: frozenset, *paths: str) -> list[_Rule]:
  return [_Rule(path, kind, tools) for path in paths]


_RULES = [
    _Rule("family", "choice", _ALL,
          ("diffpose", "icassp", "d3dp", "finepose", "dsgdiffu", "mmdiff")),
    # Model sizes: every tool builds the model (the converter to map the weights onto it).
    *_rules("int>0", _ALL, *(f"model.{f}" for f in (
        "hid_dim", "num_layers", "n_head", "coords_dim", "embed_dim", "depth", "num_heads",
        "num_frames", "num_joints", "feature_size", "past_frames", "radar_channels",
        "local_points", "local_attn_layers", "limb_hidden", "text_width", "text_layers",
        "text_ff_dim"))),
    *_rules("int>0", _ALL, "lifter.hid_dim", "lifter.num_layers", "lifter.n_head"),
    *_rules("int>0", _ALL, *(f"phase1.{f}" for f in (
        "num_samples", "spatial_stride", "temporal_kernel_size", "temporal_stride", "dim",
        "depth", "heads", "dim_head", "mlp_dim", "feature_size", "input_dim", "num_blocks",
        "num_neighbours", "model_dim"))),
    _Rule("phase1.point_feature_channels", "int>=0"),
    _Rule("phase1.radius", "float>0"),
    _Rule("phase1.encoder", "choice", _ALL, ENCODERS),
    _Rule("model.mlp_ratio", "float>0"),
    *_rules("fraction", _ALL, "model.dropout", "lifter.dropout", "model.drop_path_rate",
            "model.inner_dropout", "lifter.inner_dropout"),
    _Rule("model.text_tiling", "choice", _ALL, TEXT_TILINGS),
    _Rule("model.graph", "choice", _ALL, GRAPHS),
    # The diffusion schedule (the converter checks D3DP's buffers against it).
    _Rule("diffusion.num_steps", "int>0"),
    _Rule("diffusion.beta_schedule", "choice", _ALL, BETA_SCHEDULES),
    *_rules("float>0", _ALL, "diffusion.beta_start", "diffusion.beta_end", "diffusion.scale",
            "diffusion.clip"),
    # Sampling and evaluation: the tools that run the model.
    *_rules("int>0", _RUN, "sampling.num_steps", "sampling.num_hypotheses",
            "sampling.hypotheses", "sampling.timestep_range", "eval.batch_size",
            "eval.encoder_batch_size"),
    _Rule("sampling.eta", "float>=0", _RUN),
    _Rule("eval.cpu_chunk_size", "int>=0", _RUN),
    _Rule("eval.compute_dtype", "choice", _RUN, COMPUTE_DTYPES_EVAL),
    _Rule("eval.average", "choice", _DATA, AVERAGES),
    _Rule("eval.modes", "choices", _DATA, EVAL_MODES),
    _Rule("mesh.data", "mesh", _DATA),
    _Rule("mesh.model", "int>0", _DATA),
    # The data set: the tools that read it.
    _Rule("data.layout", "choice", _DATA, DATA_LAYOUTS),
    _Rule("data.dataset", "choice", _DATA, DATASETS),
    _Rule("data.kernel", "choice", _DATA, KERNELS),
    _Rule("data.source", "choice", _DATA, RADAR_SOURCES),
    _Rule("data.cache_layout", "choice", _DATA, CACHE_LAYOUTS),
    _Rule("data.history_fallback", "choice", _DATA, HISTORY_FALLBACKS),
    *_rules("int>=0", _DATA, "data.worker_count", "data.radar_train_chunks"),
    *_rules("int>0", _DATA, "data.points_per_frame", "data.radar_channels",
            "data.synthetic_frames"),
    _Rule("data.plain_2d_var", "float>0", _DATA),
    # Training.
    *_rules("int>0", _TRAINING, "train.batch_size", "train.log_every", "train.keep_checkpoints",
            "train.grad_accum_steps", "train.lr_decay_epochs", "train.eval_num_hypotheses",
            "train.eval_num_steps"),
    *_rules("int>=0", _TRAINING, "train.steps", "train.epochs", "train.lifter_steps",
            "train.lifter_epochs", "train.encoder_steps", "train.encoder_epochs",
            "train.eval_every", "train.checkpoint_every", "train.eval_max_batches",
            "train.encoder_batch_size"),  # encoder_batch_size 0: use train.batch_size
    *_rules("float>0", _TRAINING, "train.lr", "train.lifter_lr", "train.encoder_lr",
            "train.adam_eps", "train.lr_gamma", "train.lr_decay"),
    *_rules("float>=0", _TRAINING, "train.weight_decay", "train.encoder_weight_decay",
            "train.grad_clip", "train.limb_loss_weight"),
    _Rule("train.ema_rate", "fraction", _TRAINING),
    _Rule("train.flip_probability", "probability", _TRAINING),
    _Rule("train.compute_dtype", "choice", _TRAINING, COMPUTE_DTYPES_TRAIN),
    _Rule("train.shuffle", "choice", _TRAINING, SHUFFLE_ORDERS),
    _Rule("train.upstream_shuffle_seed", "int>=0", _TRAINING),
]

MISSING = object()  # what `get_value` gives for a field the config lacks


def _literal(value) -> str:
  """`value` as the config override parsers read it (tuples for lists, as ml_collections does)."""
  if isinstance(value, (list, tuple)):
    items = ", ".join(_literal(v) if isinstance(v, (list, tuple)) else repr(v) for v in value)
    return f"({items}{',' if len(value) == 1 else ''})"
  return str(value)


def override_flag(field: str, value) -> str:
  """`--config.<field>=<value>`, quoted for a POSIX shell when it needs to be."""
  return shlex.quote(f"--config.{field}={_literal(value)}")


def get_value(config, path: str):
  """The value at dotted `path`, or `MISSING` when the config has no such field."""
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return MISSING
    node = node[part]
  return node


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
  return ((_is_int(value) or isinstance(value, (float, np.floating)))
          and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))


def _rule_problem(rule: _Rule, value) -> str | None:
  """What is wrong with `value` under `rule`, or None."""
  kind, shown = rule.kind, f"config.{rule.path}={value!r}"
  if kind in ("int>0", "int>=0"):
    low = 1 if kind == "int>0" else 0
    if not _is_int(value) or value < low:
      return f"{shown} must be a whole number >= {low}"
  elif kind in ("float>0", "float>=0"):
    if not _is_number(value) or value < 0 or (kind == "float>0" and value == 0):
      return f"{shown} must be a number {'>' if kind == 'float>0' else '>='} 0"
  elif kind in ("fraction", "probability"):
    upper_ok = kind == "probability"
    if not _is_number(value) or value < 0 or value > 1 or (value == 1 and not upper_ok):
      return f"{shown} must be a number in [0, 1{']' if upper_ok else ')'}"
  elif kind == "choice":
    if value not in rule.choices:
      return f"{shown} must be one of {', '.join(map(repr, rule.choices))}"
  elif kind == "choices":
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    unknown = [v for v in values if v not in rule.choices]
    if unknown or not values:
      return f"{shown} must list some of {', '.join(map(repr, rule.choices))}"
  elif kind == "mesh":
    if not _is_int(value) or not (value == -1 or value >= 1):
      return f"{shown} must be -1 (every device) or a whole number >= 1"
  else:
    raise ValueError(f"unknown rule kind {kind!r}")
  return None


def value_problems(config, tool: str) -> list[str]:
  """What is wrong with the config values `tool` uses (fields the config lacks are skipped)."""
  if tool not in _ALL:
    raise ValueError(f"unknown tool {tool!r}; expected one of {', '.join(sorted(_ALL))}")
  problems = []
  for rule in _RULES:
    if tool in rule.tools:
      value = get_value(config, rule.path)
      if value is not MISSING and value is not None:
        problem = _rule_problem(rule, value)
        if problem:
          problems.append(problem)
  sampling = config.get("sampling")
  if tool in _RUN and sampling is not None:
    steps, span = sampling.get("num_steps"), sampling.get("timestep_range")
    if _is_int(steps) and _is_int(span) and steps >= 1 and span < steps:
      problems.append(f"config.sampling.timestep_range={span} must be >= "
                      f"config.sampling.num_steps={steps}")
  data = config.get("data")
  if tool in _DATA and data is not None and data.get("actions"):
    from posediff_jax.data import h36m  # pylint: disable=g-import-not-at-top
    try:
      h36m.check_actions(data.actions)
    except ValueError as e:
      problems.append(str(e))
  evaluation = config.get("eval")
  if tool in _DATA and evaluation is not None and evaluation.get("noise_file"):
    problems.append(_input_file_problem(evaluation.noise_file, "config.eval.noise_file"))
  diffusion = config.get("diffusion")
  if diffusion is not None and "beta_start" in diffusion and "beta_end" in diffusion:
    start, end = diffusion.beta_start, diffusion.beta_end
    if _is_number(start) and _is_number(end) and start > end:
      problems.append(f"config.diffusion.beta_start={start} must be <= "
                      f"config.diffusion.beta_end={end}")
  return [p for p in problems if p]


# ---------------------------------------------------------------------------------------------
# Paths.


def _is_url(path) -> bool:
  return "://" in str(path)


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
  path = path.absolute()
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def _cannot_write_in(directory: pathlib.Path) -> str | None:
  """Why no file can be created in `directory` (None if one can).

  os.access alone is not enough (root may write anywhere but on a read-only file system), so an
  anonymous temporary file is made and removed: nothing is left behind.
  """
  if not os.access(directory, os.W_OK | os.X_OK):
    return "permission denied"
  try:
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    return e.strerror or str(e)
  return None


def writable_problem(path, what: str, *, directory: bool) -> str | None:
  """Why the tool could not write `path` (a directory it creates, or a file), or None.

  Args:
    path: where the tool will write.
    what: how the command line names it (e.g. '--output'), for the message.
    directory: `path` is a directory (created with its parents) rather than a file.
  """
  if _is_url(path):
    return None  # a bucket: only the run itself can tell
  path = pathlib.Path(path)
  if path.exists():
    if directory:
      if not path.is_dir():
        return f"{what} {path} exists and is not a directory"
      why = _cannot_write_in(path)
      return f"{what} {path} is not writable ({why})" if why else None
    if path.is_dir():
      return f"{what} {path} is a directory; give a file name"
    try:
      with open(path, "ab"):  # opens for writing without changing the file
        pass
    except OSError as e:
      return f"{what} {path} is not writable ({e.strerror or e})"
    return None
  ancestor = _nearest_existing(path)
  if not ancestor.is_dir():
    return f"{what} {path} cannot be created: {ancestor} is a file"
  why = _cannot_write_in(ancestor)
  if why:
    return f"{what} {path} cannot be created: {ancestor} is not writable ({why})"
  return None


def _checkpoint_problem(path, what: str) -> str | None:
  """A checkpoint directory given on the command line (or in the config) that is not one."""
  if not path or _is_url(path):
    return None
  path = pathlib.Path(path)
  if path.is_file():
    return (f"{what} {path} is a file, not a checkpoint directory (convert a torch file with "
            "convert_torch_weights.py first)")
  if not path.is_dir():
    return f"{what} {path}: checkpoint directory not found"
  return None


def _checkpoint_meta_problem(config, path) -> str | None:
  """What is wrong with the checkpoint for `config` (another family, other model sizes, an
  unreadable step), judged from its small `meta` item only; None if nothing is."""
  if not path or _is_url(path) or _checkpoint_problem(path, "--checkpoint"):
    return None
  from posediff_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from posediff_jax import evaluation  # pylint: disable=g-import-not-at-top
  try:
    meta, _ = checkpoint.load_meta(path)
    evaluation.check_checkpoint_matches(config, meta, path)
  except (ValueError, FileNotFoundError) as e:
    return str(e)
  return None


def _input_file_problem(path, what: str) -> str | None:
  if not path:
    return None
  path = pathlib.Path(path)
  if path.is_dir():
    return f"{what} {path} is a directory, not a file"
  if not path.is_file():
    return f"{what} {path}: file not found"
  return None


def data_problems(config) -> list[str]:
  """The data files `config.data` points at that are missing (or could not be generated)."""
  data = config.get("data")
  if data is None or "root" not in data:
    return []
  root = pathlib.Path(data.root)
  generate = bool(data.get("generate_synthetic", False))
  layout, dataset = data.get("layout", "frames"), data.get("dataset", "h36m")
  if layout not in DATA_LAYOUTS or dataset not in DATASETS:
    return []  # reported by value_problems
  if layout == "radar":
    if generate:
      if data.get("source", "cache") != "raw":
        return ["config.data.generate_synthetic writes the raw layout: set "
                "config.data.source='raw'"]
      if root.is_dir():
        return []  # generation only adds a set that is absent; it writes into root
      problem = writable_problem(root, "config.data.root", directory=True)
      return [problem + " (to generate the synthetic set)"] if problem else []
    if not root.is_dir():
      return [f"config.data.root={str(root)!r}: radar data folder not found (README 'mmDiff' "
              "shows the layouts; configs/mmdiff_mmbody.py:demo generates a synthetic set)"]
    return []
  if dataset == "3dhp":
    fields = ("file_train", "file_test")
    from posediff_jax.data.synthetic import mpi3dhp  # pylint: disable=g-import-not-at-top
    generated = set(mpi3dhp.FILES.values())
  else:
    fields = (("file_3d", "file_2d") if layout == "clips" else ("file_3d", "train_2d", "test_2d"))
    from posediff_jax.data.synthetic import h36m  # pylint: disable=g-import-not-at-top
    generated = set(h36m.FILES.values())
  problems, missing, to_generate = [], {}, False
  for field in fields:
    if field not in data:
      continue
    path = root / str(data[field])
    if path.is_file():
      continue
    if generate and path.name in generated:
      to_generate = True
      continue
    missing.setdefault(path, []).append(f"config.data.{field}")
  if missing:
    missing = [f"{path} (config.data.root + {' and '.join(names)})"
               for path, names in missing.items()]
    problems.append(f"data file{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}; "
                    "README 'Data' says where to get them (configs/demo.py generates a "
                    "synthetic set)")
  if to_generate:
    problem = writable_problem(root, "config.data.root", directory=True)
    if problem:
      problems.append(problem + " (to generate the synthetic data set)")
  return problems


def _raise(problems: list[str]) -> None:
  if problems:
    count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
    raise ValueError(f"{count} found before starting: " + "; ".join(problems))


def _family_stages(config) -> tuple[tuple[str, ...], object] | tuple[None, None]:
  """(STAGES, family module) of `config.family`, or (None, None) for an unknown family."""
  from posediff_jax import families  # pylint: disable=g-import-not-at-top
  if config.get("family") not in families.FAMILIES:
    return None, None
  family = families.get(config.family)
  return tuple(family.STAGES), family


def _count(value) -> int:
  return int(value) if _is_int(value) else 0


def training_problems(config) -> list[str]:
  """What `training.train_and_evaluate` would refuse after loading the data, found now."""
  train = config.get("train")
  stages, family = _family_stages(config)
  if train is None or stages is None:
    return []
  problems = []
  counts = {"lifter": ("lifter_steps", "lifter_epochs"),
            "encoder": ("encoder_steps", "encoder_epochs"), "denoiser": ("steps", "epochs")}
  trained = {stage for stage in stages
             if any(_count(train.get(field, 0)) > 0 for field in counts[stage])}
  if not trained:
    fields = " / ".join(f"config.train.{counts[s][0]} or {counts[s][1]}" for s in stages)
    problems.append(f"nothing to train: set {fields} above 0")
  if ("lifter" in stages and not train.get("lifter_checkpoint") and trained
      and "lifter" not in trained):
    problems.append(f"{config.family} needs a lifter: pass "
                    "--config.train.lifter_checkpoint=DIR (e.g. the converted gcn_xyz_cpn.pth) "
                    "or train one with --config.train.lifter_steps=N")
  eval_parts = getattr(family, "eval_parts", None)
  if (eval_parts is not None and "encoder" in stages and "encoder" in eval_parts(config)
      and not train.get("encoder_checkpoint") and trained and "encoder" not in trained):
    problems.append(f"{config.family} on raw radar data needs a phase-1 encoder: pass "
                    "--config.train.encoder_checkpoint=DIR or train one with "
                    "--config.train.encoder_epochs=N (or encoder_steps)")
  accum = train.get("grad_accum_steps", 1)
  if _is_int(accum) and accum > 1:
    fields = ["batch_size"] + [f"{s}_batch_size" for s in stages
                               if _count(train.get(f"{s}_batch_size", 0)) > 0]
    for field in fields:
      size = train.get(field)
      if _is_int(size) and size > 0 and size % accum:
        problems.append(f"config.train.{field}={size} must be divisible by "
                        f"config.train.grad_accum_steps={accum}")
  for field in ("lifter_checkpoint", "init_checkpoint", "encoder_checkpoint"):
    path = train.get(field)
    problem = _checkpoint_problem(path, f"config.train.{field}")
    if problem:
      problems.append(problem)
    elif path and not _is_url(path):
      problem = _start_checkpoint_problem(config, family, field, path)
      if problem:
        problems.append(problem)
  return problems


def _start_checkpoint_problem(config, family, field: str, path) -> str | None:
  """The checks training makes of a checkpoint it starts from, on its `meta` alone."""
  from posediff_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from posediff_jax import evaluation  # pylint: disable=g-import-not-at-top
  try:
    meta, _ = checkpoint.load_meta(path)
    found = meta.get("family")
    if field == "lifter_checkpoint":
      allowed = getattr(family, "LIFTER_FAMILIES", (config.family,))
      if found and found not in allowed:
        return (f"lifter checkpoint {path} holds a {found!r} model; a lifter comes from one of: "
                f"{', '.join(allowed)}")
      evaluation.check_checkpoint_matches(config, {"lifter": meta.get("lifter")}, path)
    elif field == "encoder_checkpoint":
      if found and found != config.family:
        return f"encoder checkpoint {path} holds a {found!r} model, not {config.family!r}"
      evaluation.check_checkpoint_matches(config, {"phase1": meta.get("phase1")}, path)
    else:
      evaluation.check_checkpoint_matches(config, meta, path)
  except (ValueError, FileNotFoundError) as e:
    return str(e)
  return None


def check_train(config, workdir) -> None:
  """train.py: the config, the data and the workdir (creatable, or a writable directory).

  Raises:
    ValueError: every problem found, in one line.
  """
  problems = value_problems(config, TRAIN) + training_problems(config) + data_problems(config)
  if not str(workdir):
    problems.append("--workdir is empty")
  else:
    problems.append(writable_problem(workdir, "--workdir", directory=True))
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    if not _is_url(workdir) and checkpoints.exists():
      problems.append(writable_problem(checkpoints, "--workdir's checkpoints", directory=True))
  _raise([p for p in problems if p])


def check_evaluate(config, checkpoint_dir, output=None, plots_dir=None,
                   save_predictions=None) -> None:
  """evaluate.py: the config, the data, the checkpoint and the output files and plot folder.

  Raises:
    ValueError: every problem found, in one line.
  """
  problems = value_problems(config, EVALUATE) + data_problems(config)
  problems.append(_checkpoint_problem(checkpoint_dir, "--checkpoint"))
  problems.append(_checkpoint_meta_problem(config, checkpoint_dir))
  if output:
    problems.append(writable_problem(output, "--output", directory=False))
  if plots_dir:
    problems.append(writable_problem(plots_dir, "--plots", directory=True))
  if save_predictions:
    problems.append(writable_problem(save_predictions, "--save_predictions", directory=False))
  _raise([p for p in problems if p])


def _keypoint_problems(keypoints, layout, image_size, normalized, min_confidence) -> list[str]:
  """What reading and preparing the keypoint file would refuse (it is small: read it now)."""
  from posediff_jax import keypoints as keypoints_lib  # pylint: disable=g-import-not-at-top
  from posediff_jax import predict  # pylint: disable=g-import-not-at-top
  try:
    size = predict.parse_image_size(image_size)
    sequence = keypoints_lib.load_keypoints(keypoints, layout)
    keypoints_lib.prepare_keypoints(sequence, image_size=size, min_confidence=min_confidence,
                                    normalized_input=normalized)
  except (ValueError, FileNotFoundError) as e:
    return [str(e)]
  return []


def _action_problem(config, path, action) -> str | None:
  """What is wrong with `--action` for the checkpoint's prompt actions (`predict.action_row`)."""
  if not path or _is_url(path) or _checkpoint_problem(path, "--checkpoint"):
    return None
  from posediff_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from posediff_jax import predict  # pylint: disable=g-import-not-at-top
  try:
    meta, _ = checkpoint.load_meta(path)
    if meta.get("family", config.get("family")) == config.get("family"):
      predict.action_row(config, meta, action, path)
  except (ValueError, FileNotFoundError) as e:
    return str(e)
  return None


def check_predict(config, checkpoint_dir, keypoints, output, render=None, fps: float = 25.0, *,
                  layout: str = "auto", image_size: str | None = None, normalized: bool = False,
                  min_confidence: float | None = None, action: str | None = None) -> None:
  """`python -m posediff_jax.predict`: the config, the checkpoint, the keypoint file (read and
  checked as `predict.run` will), the prompt action, and the output and picture paths.

  Args:
    config: the experiment config.
    checkpoint_dir, keypoints, output, render, fps, action: the flags of the same names.
    layout, image_size, normalized, min_confidence: `--format`, `--image_size` (the flag's text),
      `--normalized`, `--min_confidence` (None: the default).

  Raises:
    ValueError: mmDiff, which predict cannot run (alone: nothing else matters then); every other
      problem found, in one line.
  """
  from posediff_jax import predict  # pylint: disable=g-import-not-at-top
  refusal = predict.mmdiff_refusal(config)
  if refusal:
    raise ValueError(refusal)
  problems = value_problems(config, PREDICT)
  dataset = config.get("data", {}).get("dataset", "h36m")
  if dataset != "h36m":
    problems.append(f"predict feeds Human3.6M-17 keypoints, but the config's model is for "
                    f"data.dataset={dataset!r}; use a Human3.6M config")
  problem = _input_file_problem(keypoints, "--keypoints")
  if problem:
    problems.append(problem)
  else:
    from posediff_jax import keypoints as keypoints_lib  # pylint: disable=g-import-not-at-top
    confidence = (keypoints_lib.DEFAULT_MIN_CONFIDENCE if min_confidence is None
                  else min_confidence)
    problems += _keypoint_problems(keypoints, layout, image_size, normalized, confidence)
  problems.append(_checkpoint_problem(checkpoint_dir, "--checkpoint"))
  meta_problem = _checkpoint_meta_problem(config, checkpoint_dir)
  problems.append(meta_problem)
  if not meta_problem:
    problems.append(_action_problem(config, checkpoint_dir, action))
  if output:
    if pathlib.Path(output).suffix != ".npz":
      problems.append(f"--output must be a .npz file, got {output}")
    problems.append(writable_problem(output, "--output", directory=False))
  if render:
    from posediff_jax import plots  # pylint: disable=g-import-not-at-top
    try:
      suffix = plots.check_render_path(render, 1)
    except (ValueError, FileNotFoundError) as e:
      problems.append(f"--render: {e}")
    else:
      if suffix != ".png" and not (_is_number(fps) and fps > 0):
        problems.append(f"--fps={fps!r} must be a positive number")
    problems.append(writable_problem(render, "--render", directory=False))
  _raise([p for p in problems if p])


def check_convert(config, family: str, checkpoint_path, lifter_path, clip_path, output) -> None:
  """convert_torch_weights.py: the config, the torch files and the output directory (new or
  empty).

  Raises:
    ValueError: every problem found, in one line.
  """
  problems = value_problems(config, CONVERT)
  if config.get("family") != family:
    problems.append(f"--family {family} but --config is for {config.get('family')!r} (pass a "
                    f"configs/{family}_*.py)")
  if not checkpoint_path and not lifter_path:
    problems.append("give --checkpoint (and --lifter for DiffPose/ICASSP, or mmDiff's phase 1), "
                    "or --lifter alone")
  for path, flag in ((checkpoint_path, "--checkpoint"), (lifter_path, "--lifter"),
                     (clip_path, "--clip")):
    problems.append(_input_file_problem(path, flag))
  if not output:
    problems.append("--output is empty")
  else:
    out = pathlib.Path(output)
    if out.is_dir() and any(out.iterdir()):
      problems.append(f"--output {out} exists and is not empty; choose a new directory")
    else:
      problems.append(writable_problem(out, "--output", directory=True))
  _raise([p for p in problems if p])
