"""Process start-up shared by the command-line tools."""

import os

from absl import logging
import jax


def initialize() -> None:
  """Joins a multi-process job when launched as one (JAX's cluster environment variables or TPU pods).

  A single process on one host needs nothing; `jax.distributed.initialize()` would fail there.
  Library INFO logs (orbax, XLA backend probing) are silenced so the console shows progress and results.
  """
  logging.set_verbosity(logging.WARNING)
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("POSEDIFF_DISTRIBUTED") == "1":
    jax.distributed.initialize()
