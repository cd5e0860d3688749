"""Evaluating part of a data set, reproducibly: action and subject filters, averages over the
evaluated actions, seed-only noise, replayed noise files, and the saved per-sample predictions."""

import jax
import numpy as np
import pytest

from posediff_jax import datasets
from posediff_jax import evaluation
from posediff_jax import families
from posediff_jax.data import h36m
from posediff_jax.data.synthetic import h36m as synthetic_h36m
from posediff_jax.data.synthetic import mpi3dhp as synthetic_3dhp
from posediff_jax.evaluation import predictions
from posediff_jax.families import d3dp
from tests import tiny_run

ACTIONS = ("Eating", "Walking")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  path = tmp_path_factory.mktemp("h36m")
  synthetic_h36m.ensure_synthetic_data(path, frames_per_sequence=12)
  return path


def _clip_config(root, **overrides):
  config = tiny_run.tiny_family_config("d3dp", root, {
      "data.test_subjects": ("S9",), "data.actions": ACTIONS, "sampling.num_hypotheses": 2,
      "sampling.num_steps": 2, "eval.batch_size": 2, **overrides})
  return config


@pytest.fixture(scope="module")
def clip_params(root):
  config = _clip_config(root)
  return d3dp.init_params(config, jax.random.key(0))


def test_action_filter_and_averages_over_the_evaluated_actions(root, clip_params):
  config = _clip_config(root)
  sequences = datasets.load_split(config, "test")
  assert {s.action.split(" ")[0] for s in sequences} == set(ACTIONS)
  assert {s.subject for s in sequences} == {"S9"}
  collector = predictions.Collector("clips", "d3dp")
  result = evaluation.evaluate(config, clip_params, sequences, progress=False,
                               collector=collector)
  saved = collector.arrays()
  for mode in config.eval.modes:
    table = result.tables[mode][-1].to_dict()
    assert list(table["actions"]) == list(ACTIONS)
    per_action = [table["actions"][a]["p1_mm"] for a in ACTIONS]
    # The Average, the per-step line and the hypotheses curve divide by the 2 actions, not 15.
    assert table["average"]["p1_mm"] == pytest.approx(np.mean(per_action))
    assert result.step_averages[mode][-1][0] == pytest.approx(np.mean(per_action))
    assert result.to_dict()["modes"][mode]["per_step"][-1]["p1_mm"] == pytest.approx(
        np.mean(per_action))
    assert result.by_hypotheses[mode][2] == pytest.approx(np.mean(per_action), rel=1e-5)
    # The saved per-frame errors are what the table averages.
    for action in ACTIONS:
      rows = saved["action"] == action
      assert table["actions"][action]["count"] == rows.sum()
      assert saved[f"mpjpe_mm_{mode}"][rows].mean() == pytest.approx(
          table["actions"][action]["p1_mm"], rel=1e-4)
    np.testing.assert_allclose(
        np.linalg.norm(saved[f"pred_{mode}"] - saved["target"], axis=-1).mean(-1) * 1000,
        saved[f"mpjpe_mm_{mode}"], rtol=1e-4, atol=1e-3)
  assert "Directions" not in result.format_table()
  h, f = config.sampling.num_hypotheses, config.model.num_frames
  assert saved["hypotheses"].shape == (len(saved["target"]), h, 17, 3)
  assert len(saved["target"]) % f == 0 and set(saved["subject"]) == {"S9"}
  p_agg = saved["hypotheses"].mean(axis=1)
  np.testing.assert_allclose(p_agg, saved["pred_P_Agg"], atol=1e-5)


def test_filters_are_checked(root):
  config = _clip_config(root, **{"data.actions": ("Walking", "Jogging")})
  with pytest.raises(ValueError, match=r"unknown action\(s\) \['Jogging'\]"):
    datasets.load_split(config, "test")
  from posediff_jax import config_checks  # pylint: disable=g-import-not-at-top
  assert any("Jogging" in p for p in config_checks.value_problems(config, "evaluate"))
  frames_config = tiny_run.tiny_config(root, {"data.actions": ("Sitting",),
                                              "data.test_subjects": ("S11",)})
  frames = datasets.load_split(frames_config, "test")
  # 'Sitting' is the class alone: SittingDown is not taken in (upstream's -a prefix-matches).
  assert set(np.unique(frames.action)) == {h36m.ACTIONS.index("Sitting")}
  assert {name.split("/")[0] for name in frames.sequence_names} == {"S11"}


def test_3dhp_test_subjects_pick_sequences(tmp_path):
  from configs import d3dp_3dhp  # pylint: disable=g-import-not-at-top
  synthetic_3dhp.ensure_synthetic_3dhp(tmp_path)
  config = d3dp_3dhp.get_config()
  config.data.root = str(tmp_path)
  config.data.test_subjects = ("TS2", "TS5")
  assert [s.subject for s in datasets.load_split(config, "test")] == ["TS2", "TS5"]
  config.data.test_subjects = ("TS9",)
  with pytest.raises(ValueError, match=r"no test sequence\(s\) \['TS9'\]"):
    datasets.load_split(config, "test")


def test_two_evaluations_print_the_same_table_and_the_seed_changes_it(root, clip_params):
  config = _clip_config(root, **{"data.actions": ("Walking",), "sampling.eta": 1.0})
  sequences = datasets.load_split(config, "test")
  first = evaluation.evaluate(config, clip_params, sequences, progress=False).format_table()
  second = evaluation.evaluate(config, clip_params, sequences, progress=False).format_table()
  assert first == second
  config.seed += 1
  assert evaluation.evaluate(config, clip_params, sequences, progress=False).format_table() != first


def test_replayed_noise_file_drives_the_clip_sampler(root, clip_params, tmp_path):
  config = _clip_config(root, **{"data.actions": ("Walking",), "sampling.eta": 1.0})
  sequences = datasets.load_split(config, "test")
  batches, count = evaluation.clips.clip_pipeline.eval_batches(
      sequences, config.model.num_frames, config.eval.batch_size)
  batches = list(batches)
  rng = np.random.default_rng(7)
  h, f, k = config.sampling.num_hypotheses, config.model.num_frames, config.sampling.num_steps
  recorded = {}
  for b in batches:
    real = int(b["clip_mask"].sum())
    recorded[f"noise_init_{b['batch_index']}"] = rng.normal(size=(real, h, f, 17, 3))
    recorded[f"noise_steps_{b['batch_index']}"] = rng.normal(size=(k - 1, real, h, f, 17, 3))
  path = tmp_path / "noise.npz"
  np.savez(path, **recorded)
  config.eval.noise_file = str(path)
  collector = predictions.Collector("clips", "d3dp")
  evaluation.evaluate(config, clip_params, sequences, progress=False, collector=collector)
  saved = collector.arrays()
  # Mini-batch 0 sampled by hand from the same noise gives the saved hypotheses.
  b = batches[0]
  real = int(b["clip_mask"].sum())
  preds = d3dp.sample(config, clip_params, np.asarray(b["input_2d"][:real]), None,
                      noise_init=recorded["noise_init_0"].astype(np.float32),
                      noise_steps=recorded["noise_steps_0"].astype(np.float32))
  expected = np.moveaxis(np.asarray(preds[:, -1]), 1, 2).reshape(real * f, h, 17, 3)
  expected[..., 0, :] = 0  # saved root-relative
  np.testing.assert_allclose(saved["hypotheses"][saved["batch"] == 0], expected, atol=1e-5)
  assert len(set(saved["batch"])) == count

  del recorded[f"noise_steps_{count - 1}"]
  np.savez(path, **recorded)
  with pytest.raises(ValueError, match=f"has no 'noise_steps_{count - 1}'"):
    evaluation.evaluate(config, clip_params, sequences, progress=False)


def test_frame_predictions_and_replayed_noise(root, tmp_path):
  config = tiny_run.tiny_config(root, {"data.actions": ("Walking", "Posing"),
                                       "data.test_subjects": ("S9",), "sampling.eta": 1.0,
                                       "eval.batch_size": 64})
  family = families.get(config.family)
  params = family.init_params(config, jax.random.key(1))
  frames = datasets.load_split(config, "test")
  steps, batch = len(family.sampler_timesteps(config)), config.eval.batch_size
  num_batches = -(-len(frames) // batch)
  rng = np.random.default_rng(3)
  recorded = {f"noise_{i}": rng.normal(size=(steps, min(batch, len(frames) - i * batch), 17, 5))
              for i in range(num_batches)}
  np.savez(tmp_path / "z.npz", **recorded)
  config.eval.noise_file = str(tmp_path / "z.npz")
  collector = predictions.Collector("frames", "diffpose")
  table = evaluation.evaluate(config, params, frames, progress=False, collector=collector)
  saved = collector.arrays()
  assert len(saved["pred"]) == len(frames)
  assert list(table.to_dict()["actions"]) == ["Posing", "Walking"]
  for action, row in table.to_dict()["actions"].items():
    assert saved["mpjpe_mm"][saved["action"] == action].mean() == pytest.approx(row["p1_mm"],
                                                                                 rel=1e-5)
  np.testing.assert_array_equal(saved["target"], frames.target_3d)
  assert set(saved["subject"]) == {"S9"} and set(saved["camera"]) == {0, 1, 2, 3}
  # The last, partly filled batch replayed by hand.
  last = num_batches - 1
  rows = np.arange(last * batch, len(frames))
  uv, _ = h36m.choose_kernel(frames.gmm_2d[rows])
  z = np.zeros((steps, batch, 17, 5), np.float32)
  z[:, :len(rows)] = recorded[f"noise_{last}"]
  padded = np.concatenate([uv, np.repeat(uv[-1:], batch - len(rows), axis=0)]).astype(np.float32)
  expected = family.predict(config, params, padded, None, noise=z)[:len(rows)]
  np.testing.assert_allclose(saved["pred"][rows], expected, atol=1e-5)
