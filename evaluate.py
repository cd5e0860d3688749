r"""Evaluates a checkpoint on the config's test split and prints the per-action table.

  python evaluate.py --config configs/diffpose_h36m.py:cpn --checkpoint checkpoints/diffpose_cpn \
      --output results/diffpose_cpn.json [--plots results/diffpose_cpn_plots] \
      [--save_predictions results/diffpose_cpn_predictions.npz]

CHECKPOINT is a directory written by convert_torch_weights.py or a train.py workdir.
A multi-process job (one process per host) adds --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I, or sets POSEDIFF_DISTRIBUTED=1 on TPU pods, Slurm and OpenMPI (README: Scaling).
"""

from absl import flags
from ml_collections import config_flags

from posediff_jax import config_checks
from posediff_jax import evaluation
from posediff_jax import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Converted or trained checkpoint directory.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the results (and config) as JSON here.")
_PLOTS = flags.DEFINE_string("plots", None, "Save charts here: error per action, and for "
                             "multi-hypothesis families error vs number of hypotheses (PNG).")
_SAVE_PREDICTIONS = flags.DEFINE_string(
    "save_predictions", None, "Write every scored sample's prediction, target, labels and errors "
    "to this .npz (keys: posediff_jax/evaluation/predictions.py).")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv):
  del argv
  # Every value and path (the output and plot folder too) before the evaluation runs.
  config_checks.check_evaluate(_CONFIG.value, _CHECKPOINT.value, _OUTPUT.value, _PLOTS.value,
                               _SAVE_PREDICTIONS.value)
  runtime.initialize()
  evaluation.run(_CONFIG.value, _CHECKPOINT.value, _OUTPUT.value, plots_dir=_PLOTS.value,
                 save_predictions=_SAVE_PREDICTIONS.value)


if __name__ == "__main__":
  runtime.run(main)
