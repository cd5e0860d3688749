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

The files are read by posediff_jax.safe_load: tensors only, no torch, nothing from the file is
executed. Model sizes come from --config (default: the family's Human3.6M config,
configs/<family>_h36m.py) and can be overridden as usual (--config.model.hid_dim=64). Every torch
key must map onto a parameter, and every parameter must be filled; keys upstream itself never uses
are listed.
"""

import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from posediff_jax import checkpoint
from posediff_jax import config_checks
from posediff_jax import families
from posediff_jax import runtime
from posediff_jax import safe_load
from posediff_jax.convert import common as convert_common
from posediff_jax.convert import diffpose as convert_diffpose
from posediff_jax.convert import mmdiff as convert_mmdiff

_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def _default_config() -> str:
  """configs/<family>_h36m.py (or the family's first config) for the --family on the command line,
  so that --config.* overrides are parsed against the right config."""
  family = "diffpose"
  for i, arg in enumerate(sys.argv):
    if arg.startswith("--family="):
      family = arg.split("=", 1)[1]
    elif arg == "--family" and i + 1 < len(sys.argv):
      family = sys.argv[i + 1]
  candidates = [_CONFIGS / f"{family}_h36m.py", *sorted(_CONFIGS.glob(f"{family}_*.py"))]
  return str(next((c for c in candidates if c.is_file()), _CONFIGS / "diffpose_h36m.py"))


_FAMILY = flags.DEFINE_enum("family", None, list(families.FAMILIES),
                            "Model family of the checkpoint.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "The denoiser checkpoint (.pth / .bin; mmDiff: the phase-2 file); leave it "
    "out to convert a lifter (mmDiff: a phase-1 encoder) alone.")
_LIFTER = flags.DEFINE_string(
    "lifter", None, "The lifter checkpoint (families with a separate lifter); for mmdiff the "
    "phase-1 radar encoder, {mmBody,MetaFi}_mmDiff_phase1.pth.")
_CLIP = flags.DEFINE_string(
    "clip", None, "FinePOSE/DSGDiffu: OpenAI's ViT-B-32.pt, for a checkpoint without clip_text.*")
_OUTPUT = flags.DEFINE_string("output", None, "New directory for the orbax checkpoint.")
_DEFAULT_CONFIG = _default_config()
if __name__ == "__main__" and runtime.config_argument(sys.argv, "config") is None:
  # ml_collections loads a default config, with the command line's overrides, as soon as the flag
  # is defined: check them now, or a misspelled --config.x would end in a traceback.
  runtime.check_config_file("config", _DEFAULT_CONFIG, sys.argv)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG,
    "Config giving the model sizes (configs/*.py[:variant]); default: configs/<family>_h36m.py.",
    lock_config=True)
flags.mark_flags_as_required(["family", "output"])


def _with_second_file(error: convert_common.ConversionError, config, family: str, second_path):
  """A denoiser's size error, with the sizes of the second file too (the lifter, or mmDiff's
  phase-1 encoder), which the conversion never reached: all the overrides in one message.

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


def main(argv):
  del argv
  config = _CONFIG.value
  # The files, the model sizes and the output directory before anything is read or written.
  config_checks.check_convert(config, _FAMILY.value, _CHECKPOINT.value, _LIFTER.value,
                              _CLIP.value, _OUTPUT.value)
  runtime.initialize()
  family = families.get(_FAMILY.value)
  extra = {"clip_path": _CLIP.value} if _CLIP.value else {}
  try:
    params, report = family.convert(config, _CHECKPOINT.value, _LIFTER.value, **extra)
  except convert_common.ConversionError as e:
    combined = _with_second_file(e, config, _FAMILY.value, _LIFTER.value)
    if combined is e:
      raise
    raise combined from e
  meta = family.checkpoint_meta(config)
  meta["source"] = {"checkpoint": _CHECKPOINT.value, "lifter": _LIFTER.value}
  meta["unused_torch_keys"] = report
  path = checkpoint.save_model(_OUTPUT.value, params, meta)
  for part, keys in report.items():
    if keys:
      print(f"{part}: {len(keys)} checkpoint tensors are not parameters here (unused upstream, or "
            "schedule buffers checked against ours) and were not converted: " + ", ".join(keys))
  print(f"wrote {path}")


if __name__ == "__main__":
  runtime.run(main)
