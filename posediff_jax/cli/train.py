r"""Trains a model family from a config.

  python train.py --config configs/demo.py --workdir runs/demo
  python train.py --config configs/diffpose_h36m.py:cpn --workdir runs/diffpose_cpn \
      --config.train.lifter_checkpoint=checkpoints/diffpose_cpn

Installed with pip, the same is `posediff-train --config demo --workdir runs/demo` (a config the
package ships is found by name where no such file exists).
Re-running the same command resumes from the newest checkpoint in WORKDIR/checkpoints.
A multi-process job (one process per host) adds --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I, or sets POSEDIFF_DISTRIBUTED=1 on TPU pods, Slurm and OpenMPI (README: Scaling).
SIGTERM (preemption) saves a checkpoint at the current step and exits with status 0.
"""

import functools

from absl import flags
from ml_collections import config_flags

from posediff_jax import config_checks
from posediff_jax import runtime
from posediff_jax import training


def define_flags() -> dict:
  """The tool's flags (absl's global registry), by name."""
  holders = {
      "config": config_flags.DEFINE_config_file(
          "config", None, "Config file (configs/*.py[:variant]) or a shipped config's name.",
          lock_config=True),
      "workdir": flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go."),
  }
  flags.mark_flags_as_required(["config", "workdir"])
  return holders


def main(argv, holders) -> None:
  del argv
  config, workdir = holders["config"].value, holders["workdir"].value
  # Every value, path and the workdir before any data is read or directory created.
  config_checks.check_train(config, workdir)
  runtime.initialize()
  training.train_and_evaluate(config, workdir)


def cli() -> None:
  """`python train.py` and `posediff-train`."""
  holders = define_flags()
  runtime.run(functools.partial(main, holders=holders), usage=__doc__, key_flags=holders)
