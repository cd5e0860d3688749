"""Shared test fixtures: where the upstream parity fixtures live."""

import os
import pathlib

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
