r"""Trains a model family from a config.

  python train.py --config configs/demo.py --workdir runs/demo
  python train.py --config configs/diffpose_h36m.py:cpn --workdir runs/diffpose_cpn \
      --config.train.lifter_checkpoint=checkpoints/diffpose_cpn

Re-running the same command resumes from the newest checkpoint in WORKDIR/checkpoints.
A multi-process job (one process per host) adds --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I, or sets POSEDIFF_DISTRIBUTED=1 on TPU pods, Slurm and OpenMPI (README: Scaling).
SIGTERM (preemption) saves a checkpoint at the current step and exits with status 0.
"""

from absl import flags
from ml_collections import config_flags

from posediff_jax import config_checks
from posediff_jax import runtime
from posediff_jax import training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Every value, path and the workdir before any data is read or directory created.
  config_checks.check_train(_CONFIG.value, _WORKDIR.value)
  runtime.initialize()
  training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  runtime.run(main)
