"""Process start-up shared by the command-line tools."""

import os
import sys

from absl import app
from absl import logging
import jax

# Errors that mean "the input is wrong": the CLIs print their message, not a traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, FloatingPointError)


def initialize() -> None:
  """Joins a multi-process job when launched as one (JAX's cluster environment variables or TPU pods).

  A single process on one host needs nothing; `jax.distributed.initialize()` would fail there.
  Library INFO logs (orbax, XLA backend probing) are silenced so the console shows progress and results.
  """
  logging.set_verbosity(logging.WARNING)
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("POSEDIFF_DISTRIBUTED") == "1":
    jax.distributed.initialize()


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
