"""Shared test fixtures: where the upstream parity fixtures live, and how they are compared."""

import json
import os
import pathlib

# The tests are CPU tests. libtpu (requirements-dev.txt, for posediff_jax.plan) would otherwise have
# JAX probe for a TPU first; planning for a TPU needs no TPU backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from posediff_jax import safe_load
from posediff_jax.convert import common

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


def with_overrides(config, *overrides: dict):
  """`config` with each `"section.field": value` of `overrides` set, as `--config.section.field`
  flags set it (a later dict wins); returns `config`."""
  for dotted, value in {k: v for changes in overrides for k, v in changes.items()}.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


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
  return safe_load.load_pickled_npz(root / "io.npz")


@pytest.fixture(scope="module")
def fixture_json(root):
  return json.loads((root / "config.json").read_text())


# --- reader tests: a pickle that must never be unpickled -----------------------------------------


class RunsCode:
  """Unpickling this would run a shell command that creates `marker`; readers must refuse it."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


# --- converter tests: checkpoints, the spec's key lists, the size checks -------------------------


def load_state_dict(path, **kwargs) -> dict[str, np.ndarray]:
  """The state dict of a torch checkpoint, read without running its code.

  Args:
    path: the `.pth` / `.bin` file.
    **kwargs: for `common.extract_state_dict` (e.g. `dict_key="model_pos"`, `list_index=4`).
  """
  return common.extract_state_dict(safe_load.load_torch_checkpoint(path), path, **kwargs)


def spec_key_path(name: str) -> pathlib.Path:
  """`specs/keys/<name>` beside the parity fixtures, or a skip saying it is absent."""
  path = parity_root().parent / "specs" / "keys" / name
  if not path.is_file():
    pytest.skip(f"spec key list {path} not found")
  return path


def _zero_tensor(line: str) -> tuple[str, np.ndarray]:
  """(key, zeros) of a `key<TAB>shape<TAB>dtype` line; the shape a JSON list or a tuple."""
  key, shape, dtype = line.split("\t")[:3]
  shape = shape.replace("(", "[").replace(",)", "]").replace(")", "]")
  return key, np.zeros(json.loads(shape), dtype)


def spec_key_list(name: str, exclude: str | None = None) -> dict[str, np.ndarray]:
  """A zero state dict of every key in a spec key list (but those containing `exclude`)."""
  out = {}
  for line in spec_key_path(name).read_text().splitlines():
    if line and not line.startswith("#"):
      key, zeros = _zero_tensor(line)
      if exclude is None or exclude not in key:
        out[key] = zeros
  return out


def spec_key_sections(name: str) -> list[tuple[str, dict[str, np.ndarray]]]:
  """The `## ` sections of a spec key list, in file order: (title line, zero state dict) each."""
  sections = []
  for line in spec_key_path(name).read_text().splitlines():
    if line.startswith("## "):
      sections.append((line, {}))
    elif line and not line.startswith("#") and sections:
      key, zeros = _zero_tensor(line)
      sections[-1][1][key] = zeros
  return sections


def assert_wrong_sizes_are_named(convert_fn, model_config, deltas) -> None:
  """Each size changed in turn makes the converter fail naming the flag that fits the file.

  Args:
    convert_fn: (model config dict) -> anything, converting a checkpoint that fits
      `model_config`.
    model_config: the model config the checkpoint was made with.
    deltas: (field, delta) pairs; `model_config[field] + delta` must not fit.
  """
  for field, delta in deltas:
    wrong = dict(model_config, **{field: model_config[field] + delta})
    with pytest.raises(common.ConversionError,
                       match=rf"--config\.model\.{field}={model_config[field]}\b"):
      convert_fn(wrong)


def set_d3dp_fixture_settings(c, up) -> None:
  """Copies a D3DP-style fixture's backbone, diffusion and sampler settings into a config.

  The D3DP, FinePOSE and DSGDiffu fixtures name them alike; the frame and joint counts are left to
  the caller.

  Args:
    c: the config to change.
    up: the fixture's config.json.
  """
  c.model.embed_dim = up["cs(embed_dim)"]
  c.model.depth = up["dep"]
  c.model.num_heads = up["num_heads"]
  c.model.mlp_ratio = up["mlp_ratio"]
  c.diffusion.num_steps = up["timestep(T)"]
  c.diffusion.scale = up["scale"]
  c.sampling.num_hypotheses = up["num_proposals(H)"]
  c.sampling.num_steps = up["sampling_timesteps(K)"]
  c.sampling.eta = up["ddim_eta"]
  c.sampling.flip = up["test_time_augmentation(flip)"]


# --- CI: a skipped test is a failure unless it is allowed here ---------------------------------
# .ci/run sets POSEDIFF_CI=1. A test that skips there (missing fixtures, a missing binary, ...)
# would silently stop being tested, so the session fails and names it, unless its node id matches
# a pattern below (fnmatch syntax), each with the reason it may skip in CI.
CI_ALLOWED_SKIPS: dict[str, str] = {
    # None: CI has the parity fixtures, the spec key lists and the CMU motion capture in
    # ../shared, and requirements.txt brings ffmpeg (imageio-ffmpeg).
}
_ci_skipped: list[tuple[str, str]] = []


def _in_ci() -> bool:
  return os.environ.get("POSEDIFF_CI") == "1"


def ci_disallowed_skips(skipped, allowed=None) -> list[tuple[str, str]]:
  """The (node id, reason) pairs of `skipped` that match no pattern of `allowed`."""
  import fnmatch  # pylint: disable=g-import-not-at-top
  allowed = CI_ALLOWED_SKIPS if allowed is None else allowed
  return [(node, reason) for node, reason in skipped
          if not any(fnmatch.fnmatchcase(node, pattern) for pattern in allowed)]


def pytest_runtest_logreport(report):
  if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    _ci_skipped.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  if _in_ci() and ci_disallowed_skips(_ci_skipped):
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
  if not _in_ci():
    return
  disallowed = ci_disallowed_skips(_ci_skipped)
  if disallowed:
    terminalreporter.section("skipped in CI (POSEDIFF_CI=1) and not in CI_ALLOWED_SKIPS",
                             red=True)
    for node, reason in disallowed:
      terminalreporter.line(f"{node}: {reason}")
    terminalreporter.line(f"{len(disallowed)} test(s) skipped in CI: make them run, or add them "
                          "with a reason to CI_ALLOWED_SKIPS in tests/conftest.py")
