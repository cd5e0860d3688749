#!/usr/bin/env bash
# Rewrites constraints.txt: the versions a fresh virtual environment gets today for
# requirements-dev.txt (the package's dependencies, requirements.txt, plus pytest and jax[tpu]).
# Run it deliberately (after changing a requirement, or to move to newer releases), from any
# folder, with the Python the project supports (python3 or $PYTHON); then run the tests with the
# new pins (`pip install -c constraints.txt -r requirements-dev.txt` in a fresh .venv) and commit
# constraints.txt. Nothing else is changed; the temporary environment is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT
"$python" -m venv "$fresh/venv"
"$fresh/venv/bin/pip" install --quiet --disable-pip-version-check -r requirements-dev.txt
{
  echo "# The exact versions CI (.ci/run) and the README's set-up command install:"
  echo "#   pip install -c constraints.txt -r requirements-dev.txt"
  echo "# Written by tools/refresh_constraints.sh on $(date +%F) from a fresh virtual environment"
  echo "# ($("$fresh/venv/bin/python" -c 'import platform; print("Python", platform.python_version(), platform.system(), platform.machine())')):"
  echo "# the newest releases requirements.txt and requirements-dev.txt allowed then. Rerun that"
  echo "# script to move to newer ones; never edit by hand or copy another environment's pip freeze."
  "$fresh/venv/bin/pip" freeze --exclude-editable --disable-pip-version-check
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
