"""Process start-up shared by the command-line tools: logging, multi-process jobs, user errors."""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax

# Errors that mean "the input is wrong": the CLIs print their message, not a traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, FloatingPointError)

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a multi-process job (GPU clusters without Slurm/OpenMPI). "
    "TPU pods, Slurm and OpenMPI jobs are detected without it.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (one per host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index in [0, num_processes).")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins a multi-process job when launched as one; a single process needs nothing.

  The job is described by the arguments, else by the `--coordinator_address`, `--num_processes`
  and `--process_id` flags, else by JAX's own environment (`JAX_COORDINATOR_ADDRESS`, or
  `POSEDIFF_DISTRIBUTED=1` to let `jax.distributed.initialize()` detect a TPU pod, Slurm or
  OpenMPI job). Plain `jax.distributed.initialize()` fails on one host outside such a job, hence
  the opt-in. CPU-only jobs use gloo for cross-process collectives (the CPU default has none).
  Library INFO logs (orbax, XLA backend probing) are silenced so the console shows progress and
  results.
  """
  logging.set_verbosity(logging.WARNING)
  if flags.FLAGS.is_parsed():
    coordinator_address = coordinator_address or _COORDINATOR.value
    num_processes = num_processes if num_processes is not None else _NUM_PROCESSES.value
    process_id = process_id if process_id is not None else _PROCESS_ID.value
  explicit = coordinator_address is not None or num_processes is not None
  if not (explicit or os.environ.get("JAX_COORDINATOR_ADDRESS")
          or os.environ.get("POSEDIFF_DISTRIBUTED") == "1"):
    return
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise ValueError("a multi-process job needs all of --coordinator_address, --num_processes and "
                     f"--process_id (got {coordinator_address!r}, {num_processes!r}, "
                     f"{process_id!r})")
  platforms = (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "").lower()
  if platforms == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def run(main) -> None:
  """`absl.app.run(main)`, printing user errors as `error: ...` with exit status 2.

  Set POSEDIFF_TRACEBACK=1 to see the full traceback instead.
  """

  def guarded(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if os.environ.get("POSEDIFF_TRACEBACK") == "1":
        raise
      message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
      print(f"error: {message}", file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
