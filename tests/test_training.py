"""Training: the stage plan, the lr staircase, and resuming that reproduces an uninterrupted run.

The runs train the tiny model of `tests/tiny_run.py` (lifter stage, then denoiser stage) in one
fresh interpreter that shares the session's compilation cache; this process reads their checkpoints.
"""

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from posediff_jax import checkpoint
from posediff_jax import training
from tests import tiny_run

LIFTER_STEPS = 3
DENOISER_STEPS = 3
TOTAL = LIFTER_STEPS + DENOISER_STEPS


def test_stage_plan_orders_stages_and_drops_empty_ones():
  config = demo.get_config()
  config.train.update(lifter_steps=0, lifter_epochs=2, steps=7, epochs=5)
  assert training.stage_plan(config, steps_per_epoch=10) == [("lifter", 20), ("denoiser", 7)]
  config.train.update(lifter_epochs=0, steps=0)
  assert training.stage_plan(config, steps_per_epoch=10) == [("denoiser", 50)]
  config.train.update(epochs=0)
  assert training.stage_plan(config, steps_per_epoch=10) == []


def test_learning_rate_is_upstreams_staircase():
  config = demo.get_config()
  config.train.update(lr=1e-3, lr_gamma=0.9, lr_decay_epochs=60)
  steps_per_epoch = 7
  schedule = training.learning_rate(config, "denoiser", steps_per_epoch)
  counts = np.arange(0, 200 * steps_per_epoch, steps_per_epoch // 2)
  got = np.asarray(jax.vmap(schedule)(counts))
  # Upstream (spec §A.8): after finishing epoch e with e % 60 == 0, lr = lr0 * 0.9 ** (e / 60).
  lr, expected = 1e-3, {}
  for epoch in range(200):
    expected[epoch] = lr
    if epoch % 60 == 0:
      lr = 1e-3 * 0.9 ** (epoch // 60)
  np.testing.assert_allclose(got, [expected[c // steps_per_epoch] for c in counts], rtol=1e-6)
  lifter = training.learning_rate(config, "lifter", steps_per_epoch)
  assert float(lifter(0)) == pytest.approx(config.train.lifter_lr)


def _steps(workdir) -> list[int]:
  mngr = checkpoint.manager(pathlib.Path(workdir) / "checkpoints", create=False)
  steps = sorted(mngr.all_steps())
  mngr.close()
  return steps


def _state(workdir, step: int) -> dict:
  """The whole training state of one checkpoint step, as numpy arrays."""
  mngr = checkpoint.manager(pathlib.Path(workdir) / "checkpoints", create=False)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return jax.tree.map(np.asarray, restored["state"])


def _data_state(workdir, step: int) -> dict:
  """The grain iterator state saved with a checkpoint step."""
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "data" / "process_0-of-1.json"
  return json.loads(path.read_text())


def _losses(workdir) -> list[tuple[int, float]]:
  """[(step, training loss)] in the order metrics.jsonl logged them (log_every is 1)."""
  losses = []
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    losses += [(record["step"], value) for key, value in record.items()
               if key.startswith("train/") and key.endswith("_loss")]
  return losses


def _assert_states_equal(got: dict, expected: dict, what: str) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(expected), what
  paths_got = jax.tree_util.tree_flatten_with_path(got)[0]
  for (path, a), b in zip(paths_got, jax.tree.leaves(expected)):
    name = f"{what}: {jax.tree_util.keystr(path)}"
    assert a.shape == b.shape and a.dtype == b.dtype, name
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Trains the same 6 steps straight through and in three pieces; the workdirs and the stdout.

  Straight: lifter 3 steps, denoiser 3 steps, checkpoints at 2, 4 and 6. Pieces: stop at step 2
  (inside the lifter stage), resume and stop at step 4 (crossing into the denoiser stage), resume
  to the end (inside the denoiser stage). Finally the straight run's command is repeated.
  """
  data = tiny_run.tiny_data(tmp_path_factory)
  root = tmp_path_factory.mktemp("resume")
  straight, pieces = root / "straight", root / "pieces"
  full = {"train.lifter_steps": LIFTER_STEPS, "train.steps": DENOISER_STEPS}
  jobs = [
      {"workdir": str(straight), "overrides": full},
      # demo.py has epochs = 0, so steps = 0 leaves the denoiser stage out of the plan.
      {"workdir": str(pieces), "overrides": {"train.lifter_steps": 2, "train.steps": 0}},
      {"workdir": str(pieces), "overrides": {"train.lifter_steps": LIFTER_STEPS, "train.steps": 1}},
      {"workdir": str(pieces), "overrides": full},
      {"workdir": str(straight), "overrides": full},
  ]
  proc = tiny_run.python(["-m", "tests.tiny_run", str(data), json.dumps(jobs)],
                         cache_dir=tiny_run.session_dir(tmp_path_factory, "xla_cache"))
  return {"straight": straight, "pieces": pieces, "stdout": proc.stdout}


def test_runs_write_the_expected_checkpoints(runs):
  assert _steps(runs["straight"]) == [2, 4, 6]
  assert _steps(runs["pieces"]) == [2, 4, 6]
  state = _state(runs["straight"], TOTAL)
  assert int(state["step"]) == TOTAL
  assert set(state) == {"step", "rng", "params", "opt_state", "ema_params"}
  for part in ("params", "opt_state", "ema_params"):
    assert set(state[part]) == {"lifter", "denoiser"}, part


@pytest.mark.parametrize("step", [2, 4, 6])
def test_resumed_run_matches_uninterrupted_run(runs, step):
  """Step 4 was reached by resuming across the lifter -> denoiser boundary, step 6 inside it."""
  _assert_states_equal(_state(runs["pieces"], step), _state(runs["straight"], step),
                       f"state at step {step}")
  assert _data_state(runs["pieces"], step) == _data_state(runs["straight"], step)


def test_resumed_run_logs_the_same_losses(runs):
  straight, pieces = _losses(runs["straight"]), _losses(runs["pieces"])
  assert [step for step, _ in straight] == list(range(1, TOTAL + 1))
  assert [step for step, _ in pieces] == list(range(1, TOTAL + 1))
  np.testing.assert_allclose([loss for _, loss in pieces], [loss for _, loss in straight],
                             rtol=1e-6)


def test_resume_is_not_vacuous(runs):
  """Training moved the stage it trained, left the other alone, and the data stream advanced."""
  states = {s: _state(runs["straight"], s) for s in (2, 4, 6)}

  def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  # In the lifter stage the denoiser's EMA copy never moves away from its parameters.
  assert same(states[2]["ema_params"]["denoiser"], states[2]["params"]["denoiser"])
  assert not same(states[2]["ema_params"]["lifter"], states[2]["params"]["lifter"])
  # In the denoiser stage the lifter is frozen and the denoiser keeps changing.
  for part in ("params", "opt_state", "ema_params"):
    assert same(states[4][part]["lifter"], states[6][part]["lifter"]), part
  assert not same(states[4]["params"]["denoiser"], states[6]["params"]["denoiser"])
  assert _data_state(runs["straight"], 2) != _data_state(runs["straight"], 4)


def test_each_resume_says_where_it_starts(runs):
  resumed = [line for line in runs["stdout"].splitlines() if line.startswith("resumed from")]
  assert resumed == [f"resumed from {runs['pieces'] / 'checkpoints'} step 2",
                     f"resumed from {runs['pieces'] / 'checkpoints'} step 4"]


def test_rerunning_a_finished_run_says_it_is_complete_and_changes_nothing(runs):
  # The repeated command found step 6 of 6 and its results: no training, no new evaluation.
  results = runs["straight"] / "eval_results.json"
  assert (f"{runs['straight']}: training is complete (step {TOTAL} of {TOTAL}); results in "
          f"{results}") in runs["stdout"].splitlines()
  assert _steps(runs["straight"]) == [2, 4, 6]
  assert [step for step, _ in _losses(runs["straight"])] == list(range(1, TOTAL + 1))
  straight = json.loads((runs["straight"] / "eval_results.json").read_text())
  pieces = json.loads((runs["pieces"] / "eval_results.json").read_text())
  assert straight["step"] == pieces["step"] == TOTAL
  assert straight["results"]["mode"] == pieces["results"]["mode"]
  numbers = lambda r: jax.tree.leaves({k: v for k, v in r["results"].items() if k != "mode"})
  np.testing.assert_allclose(numbers(straight), numbers(pieces), rtol=1e-5)
