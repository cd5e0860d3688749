r"""Evaluates a checkpoint on the config's test split and prints the per-action table.

  python evaluate.py --config configs/diffpose_h36m.py:cpn --checkpoint checkpoints/diffpose_cpn \
      --output results/diffpose_cpn.json [--plots results/diffpose_cpn_plots] \
      [--save_predictions results/diffpose_cpn_predictions.npz]

Installed with pip, the same is `posediff-evaluate --config diffpose_h36m.py:cpn ...`.
CHECKPOINT is a directory written by convert_torch_weights.py or a train.py workdir. Its model
sizes come from the checkpoint itself (a line says which differ from the config's); a
--config.model.* (or lifter.*, phase1.*) flag that contradicts them is an error.
A multi-process job (one process per host) adds --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I, or sets POSEDIFF_DISTRIBUTED=1 on TPU pods, Slurm and OpenMPI (README: Scaling).
"""

import functools

from absl import flags
import jax
from ml_collections import config_flags

from posediff_jax import config_checks
from posediff_jax import evaluation
from posediff_jax import model_sizes
from posediff_jax import runtime


def define_flags() -> dict:
  """The tool's flags (absl's global registry), by name."""
  holders = {
      "config": config_flags.DEFINE_config_file(
          "config", None, "Config file (configs/*.py[:variant]) or a shipped config's name; the "
          "model sizes come from the checkpoint.", lock_config=True),
      "checkpoint": flags.DEFINE_string("checkpoint", None,
                                        "Converted or trained checkpoint directory."),
      "output": flags.DEFINE_string("output", None, "Write the results (and config) as JSON here."),
      "plots": flags.DEFINE_string(
          "plots", None, "Save charts here: error per action, and for multi-hypothesis families "
          "error vs number of hypotheses (PNG)."),
      "save_predictions": flags.DEFINE_string(
          "save_predictions", None, "Write every scored sample's prediction, target, labels and "
          "errors to this .npz (keys: posediff_jax/evaluation/predictions.py)."),
  }
  flags.mark_flags_as_required(["config", "checkpoint"])
  return holders


def main(argv, holders) -> None:
  del argv
  value = {name: holder.value for name, holder in holders.items()}
  config = value["config"]
  # The checkpoint's model sizes replace the config's (except those set on the command line).
  adopted = model_sizes.adopt_from_checkpoint(config, value["checkpoint"],
                                              runtime.config_overrides("config"))
  # Every value and path (the output and plot folder too) before the evaluation runs.
  config_checks.check_evaluate(config, value["checkpoint"], value["output"], value["plots"],
                               value["save_predictions"])
  runtime.initialize()
  if adopted is not None and jax.process_index() == 0:
    print(adopted.line(), flush=True)
  evaluation.run(config, value["checkpoint"], value["output"], plots_dir=value["plots"],
                 save_predictions=value["save_predictions"])


def cli() -> None:
  """`python evaluate.py` and `posediff-evaluate`."""
  holders = define_flags()
  runtime.run(functools.partial(main, holders=holders), usage=__doc__, key_flags=holders)
