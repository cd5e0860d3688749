"""Faults: a run killed with SIGKILL, preempted with SIGTERM, or left with a damaged checkpoint.

Each case restarts the run with the same command and must end with exactly the parameters of a run
that was never interrupted. The tiny runs of `tests/tiny_run.py` (3 lifter + 3 denoiser steps,
checkpoints every 2 steps) run in fresh interpreters that share the session's compilation cache.
The faults are raised by the training process itself at a chosen batch, so where they land does not
depend on timing: SIGKILL while fetching the 6th batch (checkpoints 2 and 4 exist, step 5 is lost),
SIGTERM while fetching the 3rd batch (the run must save step 3 and exit with status 0).
"""

import json
import shutil
import signal

import jax
import numpy as np
import pytest

from tests import tiny_run
from tests.test_training import _losses, _state, _steps

OVERRIDES = {"train.lifter_steps": 3, "train.steps": 3}
TOTAL = 6

# Trains one tiny run, sending itself `signum` when the training loop asks for batch `at_batch`.
_FAULTY_RUN = """
import json, os, sys
from posediff_jax import training
from tests import tiny_run
data_root, workdir, signum, at_batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
global_batch, calls = training._global_batch, []
def faulty(*args):
  calls.append(1)
  if len(calls) == at_batch:
    os.kill(os.getpid(), signum)
  return global_batch(*args)
training._global_batch = faulty
result = training.train_and_evaluate(
    tiny_run.tiny_config(data_root, json.loads(sys.argv[5])), workdir)
print("result", json.dumps({"step": result["step"], "preempted": result.get("preempted", False)}))
"""


def _assert_equal(got: dict, expected: dict, what: str) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(expected), what
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b, err_msg=f"{what}: {jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs and outputs: straight, and killed, preempted, damaged, each resumed to the end."""
  data = tiny_run.tiny_data(tmp_path_factory)
  cache = tiny_run.session_dir(tmp_path_factory, "xla_cache")
  root = tmp_path_factory.mktemp("faults")
  dirs = {name: root / name for name in ("straight", "killed", "preempted", "damaged")}

  def faulty(workdir, signum, at_batch):
    return tiny_run.python(["-c", _FAULTY_RUN, str(data), str(workdir), str(int(signum)),
                            str(at_batch), json.dumps(OVERRIDES)], cache_dir=cache, check=False)

  out = {"killed_proc": faulty(dirs["killed"], signal.SIGKILL, 6)}
  out["killed_steps"] = _steps(dirs["killed"])
  out["preempted_proc"] = faulty(dirs["preempted"], signal.SIGTERM, 3)
  out["preempted_steps"] = _steps(dirs["preempted"])
  # The damaged run is the killed one with its newest checkpoint's array files cut in half.
  shutil.copytree(dirs["killed"], dirs["damaged"])
  newest = dirs["damaged"] / "checkpoints" / str(max(out["killed_steps"]))
  for path in (newest / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and path.name != "_CHECKPOINT_METADATA":
      path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  jobs = [{"workdir": str(dirs[name]), "overrides": OVERRIDES}
          for name in ("straight", "killed", "preempted", "damaged")]
  proc = tiny_run.python(["-m", "tests.tiny_run", str(data), json.dumps(jobs)], cache_dir=cache)
  out.update(dirs, resume_stdout=proc.stdout, resume_stderr=proc.stderr)
  return out


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(runs):
  assert runs["killed_proc"].returncode == -signal.SIGKILL, runs["killed_proc"].stderr
  assert runs["killed_steps"] == [2, 4]
  assert f"resumed from {runs['killed'] / 'checkpoints'} step 4" in runs["resume_stdout"]
  _assert_equal(_state(runs["killed"], TOTAL), _state(runs["straight"], TOTAL), "killed")


def test_sigterm_saves_the_current_step_and_exits_cleanly(runs):
  proc = runs["preempted_proc"]
  assert proc.returncode == 0, proc.stderr
  assert 'result {"step": 3, "preempted": true}' in proc.stdout
  assert runs["preempted_steps"] == [2, 3]
  assert f"resumed from {runs['preempted'] / 'checkpoints'} step 3" in runs["resume_stdout"]
  _assert_equal(_state(runs["preempted"], TOTAL), _state(runs["straight"], TOTAL), "preempted")


def test_damaged_newest_checkpoint_is_skipped_with_a_warning(runs):
  assert "checkpoint step 4" in runs["resume_stderr"]
  assert "unreadable" in runs["resume_stderr"]
  assert f"resumed from {runs['damaged'] / 'checkpoints'} step 2" in runs["resume_stdout"]
  assert (runs["damaged"] / "checkpoints" / "damaged_4").is_dir()
  _assert_equal(_state(runs["damaged"], TOTAL), _state(runs["straight"], TOTAL), "damaged")


@pytest.mark.parametrize("name", ["killed", "preempted", "damaged"])
def test_resumed_runs_log_every_step_once(runs, name):
  # The killed run had logged step 5 before dying; resumed from step 4 (the damaged one from 2),
  # it logs those steps again, and the log keeps only the resumed run's lines.
  straight = [(s, v) for s, v in _losses(runs["straight"])]
  resumed = _losses(runs[name])
  assert [step for step, _ in resumed] == list(range(1, TOTAL + 1))
  np.testing.assert_allclose([v for _, v in resumed], [v for _, v in straight], rtol=1e-6)
