r"""Converts the authors' released PyTorch checkpoints into an orbax checkpoint directory.

  python convert_torch_weights.py --family diffpose \
      --checkpoint diffpose_uvxyz_cpn.pth --lifter gcn_xyz_cpn.pth --output checkpoints/diffpose_cpn
  python convert_torch_weights.py --family icassp \
      --checkpoint ckpt_cpn.pth --lifter gcn_xyz_cpn.pth --output checkpoints/icassp_cpn
  # Only the lifter, to train a DiffPose or ICASSP denoiser from scratch on top of it:
  python convert_torch_weights.py --family icassp --lifter gcn_xyz_cpn.pth \
      --output checkpoints/lifter_cpn
  # mmDiff: phase 2 (--checkpoint) and its phase-1 radar encoder (--lifter; needed on raw data):
  python convert_torch_weights.py --family mmdiff --checkpoint mmBody_mmDiff_phase2.pth \
      --lifter mmBody_mmDiff_phase1.pth --output checkpoints/mmdiff_mmbody

Installed with pip, the same is `posediff-convert --family diffpose ...`.
The files are read by posediff_jax.safe_load: tensors only, no torch, nothing from the file is
executed. Every size the weights determine (widths, depths, frame and joint counts, ...) is read
off them; what no weight shape shows (the attention head counts) comes from --config (default: the
family's Human3.6M config, configs/<family>_h36m.py; override as usual, --config.model.n_head=8),
and the output says which is which. All of them are recorded in the checkpoint, so evaluate.py and
predict need no size flags. A --config.* size flag that contradicts the weights is an error. Every
torch key must map onto a parameter, and every parameter must be filled; keys upstream itself
never uses are listed.
"""

import functools
import sys

from absl import flags
from ml_collections import config_flags

from posediff_jax import checkpoint
from posediff_jax import config_checks
from posediff_jax import families
from posediff_jax import model_sizes
from posediff_jax import runtime
from posediff_jax import safe_load
from posediff_jax.convert import common as convert_common
from posediff_jax.convert import diffpose as convert_diffpose
from posediff_jax.convert import mmdiff as convert_mmdiff


def default_config(argv: list[str]) -> str:
  """The shipped configs/<family>_h36m.py (or the family's first config) for the --family in
  `argv`, so that --config.* overrides are parsed against the right config."""
  family = runtime.config_argument(argv, "family") or "diffpose"
  shipped = runtime.shipped_configs_dir()
  candidates = [shipped / f"{family}_h36m.py", *sorted(shipped.glob(f"{family}_*.py"))]
  return str(next((c for c in candidates if c.is_file()), shipped / "diffpose_h36m.py"))


def define_flags(argv: list[str]) -> dict:
  """The tool's flags (absl's global registry), by name; `argv` picks the default config."""
  default = default_config(argv)
  if runtime.config_argument(argv, "config") is None:
    # ml_collections loads a default config, with the command line's overrides, as soon as the
    # flag is defined: check them now, or a misspelled --config.x would end in a traceback.
    runtime.check_config_file("config", default, argv)
  holders = {
      "family": flags.DEFINE_enum("family", None, list(families.FAMILIES),
                                  "Model family of the checkpoint."),
      "checkpoint": flags.DEFINE_string(
          "checkpoint", None, "The denoiser checkpoint (.pth / .bin; mmDiff: the phase-2 file); "
          "leave it out to convert a lifter (mmDiff: a phase-1 encoder) alone."),
      "lifter": flags.DEFINE_string(
          "lifter", None, "The lifter checkpoint (families with a separate lifter); for mmdiff "
          "the phase-1 radar encoder, {mmBody,MetaFi}_mmDiff_phase1.pth."),
      "clip": flags.DEFINE_string(
          "clip", None,
          "FinePOSE/DSGDiffu: OpenAI's ViT-B-32.pt, for a checkpoint without clip_text.*"),
      "output": flags.DEFINE_string("output", None, "New directory for the orbax checkpoint."),
      "config": config_flags.DEFINE_config_file(
          "config", default, "Config (configs/*.py[:variant], or a shipped config's name) giving "
          "what the weights do not show, e.g. the head counts; default: configs/<family>_h36m.py. "
          "The sizes the weights show are read off them.", lock_config=True),
  }
  flags.mark_flags_as_required(["family", "output"])
  return holders


def _with_second_file(error: convert_common.ConversionError, config, family: str, second_path):
  """A denoiser's size error, with the sizes of the second file too (the lifter, or mmDiff's
  phase-1 encoder), which the conversion never reached: all the sizes in one error.

  Only sizes are added; any other problem of the second file is reported once the sizes fit.
  """
  if (not error.mismatches or not second_path or error.source is None
      or not all(m.field.startswith(("model.", "diffusion.")) for m in error.mismatches)):
    return error
  try:
    if family in ("diffpose", "icassp"):
      state_dict = convert_common.extract_state_dict(
          safe_load.load_torch_checkpoint(second_path), second_path)
      more = convert_diffpose.lifter_size_mismatches(state_dict, config.lifter)
    elif family == "mmdiff":
      more = convert_mmdiff.phase1_size_mismatches(
          convert_mmdiff.load_state_dict(second_path),
          families.get(family).encoder_module(config))
    else:
      return error
  except runtime.USER_ERRORS:
    return error
  if not more:
    return error
  return convert_common.size_error(error.source, error.mismatches,
                                   more=[(str(second_path), more)])


def _raise_head_problems(config, family: str) -> None:
  problems = model_sizes.head_problems(config, family)
  if problems:
    raise ValueError("; ".join(problems))


def convert_reading_sizes(config, family_name: str, checkpoint_path, lifter_path, clip_path=None,
                          explicit=()) -> tuple[dict, dict, dict]:
  """`family.convert`, with every size the weights determine read off them.

  The converters compare the sizes the weights show with the config's and name each that differs
  (`convert_common.SizeMismatch`). Each such size the checkpoint records (`checkpoint_meta`) is
  put into `config` and the conversion run again; one the command line set (`explicit`) is not
  changed but reported, with every other such conflict, in one error.

  Returns:
    (params, {part: unconverted torch keys}, {field: (read off the weights, the config's)}).

  Raises:
    ValueError: a size flag that contradicts the weights; a head count that does not divide the
      width it splits; any other conversion error (another kind of file, a size the weights fix
      only in part, ...).
  """
  family = families.get(family_name)
  extra = {"clip_path": clip_path} if clip_path else {}
  recordable = set(model_sizes.recorded(family.checkpoint_meta(config)))
  explicit = set(explicit)
  taken = {}
  _raise_head_problems(config, family_name)
  while True:
    try:
      params, report = family.convert(config, checkpoint_path, lifter_path, **extra)
      return params, report, taken
    except convert_common.ConversionError as e:
      error = _with_second_file(e, config, family_name, lifter_path)
      new = [m for m in error.mismatches
             if m.found is not None and m.field in recordable and m.field not in taken]
      if not new:
        if error is e:
          raise
        raise error from e
      conflicts = [m for m in new if m.field in explicit]
      if conflicts:
        files = [str(error.source or checkpoint_path)]
        if lifter_path and any(not m.field.startswith("model.") for m in conflicts):
          files.append(str(lifter_path))
        given = ", ".join(
            f"{config_checks.override_flag(m.field, m.configured)} but the weights have "
            f"{m.field}={m.found}" + (f" ({m.evidence})" if m.evidence else "")
            for m in conflicts)
        fits = " ".join(config_checks.override_flag(m.field, m.found) for m in conflicts)
        raise convert_common.ConversionError(
            f"{' and '.join(files)}: the command line sets other model sizes than the weights "
            f"show: {given}; leave these flags out to read the sizes off the weights, or pass "
            f"{fits}") from e
      for m in new:
        taken[m.field] = (m.found, m.configured)
        model_sizes.set_value(config, m.field, m.found)
      _raise_head_problems(config, family_name)


def main(argv, holders) -> None:
  del argv
  value = {name: holder.value for name, holder in holders.items()}
  config, family_name = value["config"], value["family"]
  # The files, the model sizes and the output directory before anything is read or written.
  config_checks.check_convert(config, family_name, value["checkpoint"], value["lifter"],
                              value["clip"], value["output"])
  runtime.initialize()
  params, report, taken = convert_reading_sizes(
      config, family_name, value["checkpoint"], value["lifter"], value["clip"],
      runtime.config_overrides("config"))
  meta = families.get(family_name).checkpoint_meta(config)
  meta["source"] = {"checkpoint": value["checkpoint"], "lifter": value["lifter"]}
  meta["unused_torch_keys"] = report
  path = checkpoint.save_model(value["output"], params, meta)
  for part, keys in report.items():
    if keys:
      print(f"{part}: {len(keys)} checkpoint tensors are not parameters here (unused upstream, or "
            "schedule buffers checked against ours) and were not converted: " + ", ".join(keys))
  if taken:
    print("model sizes read off the weights: "
          + ", ".join(f"{field}={found}" for field, (found, _) in taken.items())
          + " (the config had " + ", ".join(str(had) for _, had in taken.values()) + ")")
  unseen = model_sizes.unseen_line(config, family_name, params)
  if unseen:
    print(unseen)
  print(f"wrote {path}")


def cli() -> None:
  """`python convert_torch_weights.py` and `posediff-convert`."""
  holders = define_flags(sys.argv)
  runtime.run(functools.partial(main, holders=holders), usage=__doc__, key_flags=holders)
