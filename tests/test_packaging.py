"""The package as researchers install it: pyproject.toml, the pins, the console scripts, the
configs shipped as `posediff_jax.configs`, and the tools run from outside the repository.

Building and installing a wheel into a fresh environment downloads every dependency, so that is
not repeated here; README 'Installing' says how it was checked. These tests check what the build
reads and what the installed commands run.
"""

import importlib
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from posediff_jax import runtime
from tests import tiny_run
from tests.conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _requirement_names(path: pathlib.Path) -> list[str]:
  """The package names a requirements file asks for (`-r` / `-e` lines left out)."""
  names = []
  for line in path.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line and not line.startswith("-"):
      names.append(re.match(r"[A-Za-z0-9._-]+", line).group(0))
  return names


def _normalized(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def test_console_scripts_run_the_tools_main_functions():
  scripts = PYPROJECT["project"]["scripts"]
  assert set(scripts) == {"posediff-train", "posediff-evaluate", "posediff-convert",
                          "posediff-predict", "posediff-plan"}
  for target in scripts.values():
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function)), target
  # The repository's scripts run the same functions.
  for script, module in (("train.py", "posediff_jax.cli.train"),
                         ("evaluate.py", "posediff_jax.cli.evaluate"),
                         ("convert_torch_weights.py", "posediff_jax.cli.convert")):
    text = (REPO_ROOT / script).read_text()
    package, name = module.rsplit(".", 1)
    assert f"from {package} import {name}" in text and f"{name}.cli()" in text, script


def test_dependencies_are_requirements_txt_and_every_one_is_pinned():
  assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {
      "file": ["requirements.txt"]}
  pins = {}
  for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
    if line and not line.startswith("#"):
      name, version = line.split("==")
      pins[_normalized(name)] = version
  wanted = _requirement_names(REPO_ROOT / "requirements.txt") + _requirement_names(
      REPO_ROOT / "requirements-dev.txt")
  assert wanted and all(_normalized(n) in pins for n in wanted), (wanted, sorted(pins))
  assert "posediff-jax" not in pins  # the package itself is installed from the checkout
  # libtpu comes with jax[tpu] (requirements-dev.txt) and is pinned like the rest.
  assert "libtpu" in pins and pins["jax"] == pins["jaxlib"]
  dev = (REPO_ROOT / "requirements-dev.txt").read_text().splitlines()
  assert "-e ." in dev  # the README's first command installs the package, editable


def test_the_readme_and_ci_install_the_same_pinned_way():
  command = "pip install -c constraints.txt -r requirements-dev.txt"
  assert command in (REPO_ROOT / "README.md").read_text()
  assert "-c constraints.txt -r requirements-dev.txt" in (REPO_ROOT / ".ci" / "run").read_text()


def test_the_configs_ship_as_posediff_jax_configs():
  import posediff_jax.configs  # pylint: disable=g-import-not-at-top
  shipped = pathlib.Path(posediff_jax.configs.__file__).parent
  assert sorted(p.name for p in shipped.glob("*.py")) == sorted(
      p.name for p in (REPO_ROOT / "configs").glob("*.py"))
  assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["posediff_jax*"]
  from posediff_jax.configs import demo  # pylint: disable=g-import-not-at-top
  assert demo.get_config().variant == "demo"


@pytest.mark.parametrize("spec, shipped", [
    ("demo", "demo.py"), ("demo.py", "demo.py"), ("configs/d3dp_h36m.py:gt", "d3dp_h36m.py:gt"),
    ("d3dp_h36m:gt", "d3dp_h36m.py:gt"), ("elsewhere/demo.py", None), ("no_such", None),
    ("__init__", None)])
def test_a_config_that_names_no_file_is_found_among_the_shipped_ones(spec, shipped, tmp_path,
                                                                     monkeypatch):
  monkeypatch.chdir(tmp_path)  # outside the checkout: no configs/ here
  expected = spec if shipped is None else str(runtime.shipped_configs_dir() / shipped)
  assert runtime.shipped_config(spec) == expected
  (tmp_path / "demo.py").write_text("def get_config():\n  return None\n")
  assert runtime.shipped_config("demo.py") == "demo.py"  # an existing file is taken as it is


def _outside(args, folder, cache) -> subprocess.CompletedProcess:
  """`python ARGS` with `folder` as the working directory (tiny_run runs in the repository)."""
  code = (f"import os, subprocess, sys; os.chdir({str(folder)!r}); "
          f"sys.exit(subprocess.run([sys.executable, *{args!r}]).returncode)")
  return tiny_run.python(["-c", code], cache_dir=cache, check=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tiny_run.session_dir(tmp_path_factory, "xla_cache")


def test_the_tools_run_from_another_folder_with_shipped_config_names(tmp_path, cache):
  proc = _outside([str(REPO_ROOT / "train.py"), "--help"], tmp_path, cache)
  assert proc.returncode == 0, proc.stderr
  assert "posediff-train --config demo" in proc.stdout and "--workdir" in proc.stdout
  proc = tiny_run.python(["-m", "posediff_jax.predict", "--help"], cache_dir=cache)
  assert "--action" in proc.stdout and "finepose, dsgdiffu --action=NAME" in proc.stdout
  assert "mmdiff             not here" in proc.stdout
  # `--config demo` and `configs/demo.py` (no such folder here) are the shipped demo config:
  # the run gets as far as the checkpoint, which is missing.
  for spec in ("demo", "configs/demo.py"):
    proc = _outside([str(REPO_ROOT / "evaluate.py"), "--config", spec, "--checkpoint",
                     str(tmp_path / "none")], tmp_path, cache)
    assert proc.returncode == 2 and "checkpoint directory not found" in proc.stderr, proc.stderr
  proc = _outside([str(REPO_ROOT / "evaluate.py"), "--config=dmeo", "--checkpoint",
                   str(tmp_path / "none")], tmp_path, cache)
  assert proc.returncode == 2 and "did you mean the shipped config demo?" in proc.stderr
