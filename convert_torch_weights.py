r"""Converts the authors' released PyTorch checkpoints into an orbax checkpoint directory.

  python convert_torch_weights.py --family diffpose \
      --checkpoint diffpose_uvxyz_cpn.pth --lifter gcn_xyz_cpn.pth --output checkpoints/diffpose_cpn
  python convert_torch_weights.py --family icassp \
      --checkpoint ckpt_cpn.pth --lifter gcn_xyz_cpn.pth --output checkpoints/icassp_cpn
  # Only the lifter, to train a DiffPose or ICASSP denoiser from scratch on top of it:
  python convert_torch_weights.py --family icassp --lifter gcn_xyz_cpn.pth \
      --output checkpoints/lifter_cpn

The files are read by posediff_jax.safe_load: tensors only, no torch, nothing from the file is executed.
Model sizes come from --config (default: the family's Human3.6M config, configs/<family>_h36m.py)
and can be overridden as usual (--config.model.hid_dim=64). Every torch key must map onto a
parameter, and every parameter must be filled; keys upstream itself never uses are listed.
"""

import importlib
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from posediff_jax import checkpoint
from posediff_jax import families
from posediff_jax import runtime

_FAMILY = flags.DEFINE_enum("family", None, list(families.FAMILIES), "Model family of the checkpoint.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "The denoiser checkpoint (.pth / .bin); leave it out to convert a lifter alone.")
_LIFTER = flags.DEFINE_string("lifter", None, "The lifter checkpoint (families with a separate lifter).")
_OUTPUT = flags.DEFINE_string("output", None, "New directory for the orbax checkpoint.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parent / "configs" / "diffpose_h36m.py"),
    "Config giving the model sizes (configs/*.py[:variant]); default: configs/<family>_h36m.py.",
    lock_config=True)
flags.mark_flags_as_required(["family", "output"])


def _family_config(family: str):
  """--config, or without it configs/<family>_h36m.py with the same --config.* overrides."""
  config = _CONFIG.value
  if config.family == family:
    return config
  if flags.FLAGS["config"].present:
    raise app.UsageError(f"--family {family} but --config is for {config.family!r}")
  # The flag's default is the DiffPose config; the overrides were parsed against it.
  default = importlib.import_module(f"configs.{family}_h36m").get_config()
  for path, value in config_flags.get_override_values(flags.FLAGS["config"]).items():
    *sections, field = path.split(".")
    node = default
    for section in sections:
      node = node[section]
    node[field] = value
  return default


def main(argv):
  del argv
  runtime.initialize()
  if not _CHECKPOINT.value and not _LIFTER.value:
    raise app.UsageError("give --checkpoint (and --lifter for DiffPose/ICASSP), or --lifter alone")
  config = _family_config(_FAMILY.value)
  family = families.get(_FAMILY.value)
  params, report = family.convert(config, _CHECKPOINT.value, _LIFTER.value)
  meta = family.checkpoint_meta(config)
  meta["source"] = {"checkpoint": _CHECKPOINT.value, "lifter": _LIFTER.value}
  meta["unused_torch_keys"] = report
  path = checkpoint.save_model(_OUTPUT.value, params, meta)
  for part, keys in report.items():
    if keys:
      print(f"{part}: {len(keys)} checkpoint tensors are unused upstream too and were not converted: "
            + ", ".join(keys))
  print(f"wrote {path}")


if __name__ == "__main__":
  runtime.run(main)
