"""Shared test fixtures: where the upstream parity fixtures live, and how they are compared."""

import json
import os
import pathlib

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def parity_root() -> pathlib.Path:
  """The folder of upstream parity fixtures (`POSEDIFF_PARITY_DIR`, default `../shared/parity`)."""
  env = os.environ.get("POSEDIFF_PARITY_DIR")
  return pathlib.Path(env) if env else (REPO_ROOT.parent / "shared" / "parity")


def parity_dir(family: str) -> pathlib.Path:
  """The fixture folder of one family, or a skip saying why it is absent."""
  path = parity_root() / family
  if not path.is_dir():
    pytest.skip(f"parity fixtures for {family!r} not found at {path} "
                "(set POSEDIFF_PARITY_DIR; a user's clone has no ../shared)")
  return path


# --- what every test_parity_<family>.py shares: set `PARITY_FAMILY = "<family>"` in the module ---

RTOL = 1e-5


def assert_close(actual, expected, rtol=RTOL, what=""):
  """Max abs error relative to the largest reference magnitude (the fixtures' tolerance)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
  scale = max(np.max(np.abs(expected)), 1e-12)
  err = np.max(np.abs(actual - expected)) / scale
  assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


@pytest.fixture(scope="module")
def root(request):
  """The fixture folder of the module's `PARITY_FAMILY`."""
  return parity_dir(request.module.PARITY_FAMILY)


@pytest.fixture(scope="module")
def io(root):
  """The fixture's io.npz arrays (read without running pickled code)."""
  from posediff_jax import safe_load  # pylint: disable=g-import-not-at-top
  return safe_load.load_pickled_npz(root / "io.npz")


@pytest.fixture(scope="module")
def fixture_json(root):
  return json.loads((root / "config.json").read_text())
