"""The clip evaluator's bookkeeping: clip weighting, the overlapping last clip, 3DHP stitching.

The sampler is replaced by one that predicts the zero pose for every hypothesis and step, so every
mode's error is the mean length of the root-relative ground-truth joints, which the tests compute
directly from the sequences the way upstream counts frames.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import d3dp_3dhp
from configs import d3dp_h36m
from posediff_jax import datasets
from posediff_jax import evaluation
from posediff_jax import metrics
from posediff_jax.data import clip_pipeline
from posediff_jax.data.synthetic import h36m as synthetic_h36m
from posediff_jax.data.synthetic import mpi3dhp as synthetic_3dhp
from posediff_jax.families import d3dp

NUM_FRAMES = 9


def _zero_sampler(config, params, input_2d, key=None, **kwargs):
  del params, key, kwargs
  b, f, j, _ = input_2d.shape
  k, h = config.sampling.num_steps, config.sampling.num_hypotheses
  return jnp.zeros((b, k, h, f, j, 3), input_2d.dtype)


def _tiny(config, root):
  config.data.root = str(root)
  config.model.update(num_frames=NUM_FRAMES, embed_dim=16, depth=1, num_heads=2)
  config.sampling.update(num_hypotheses=2, num_steps=2)
  return config


@pytest.fixture(autouse=True)
def zero_sampler(monkeypatch):
  monkeypatch.setattr(d3dp, "sample", _zero_sampler)


def test_human36m_tables_weight_every_clip_frame_once_overlaps_twice(tmp_path):
  synthetic_h36m.ensure_synthetic_data(tmp_path, frames_per_sequence=20)
  config = _tiny(d3dp_h36m.get_config("cpn"), tmp_path)
  config.data.test_subjects = ("S9",)
  sequences = datasets.load_split(config, "test")
  result = evaluation.evaluate(config, {}, sequences, progress=False)

  sums, counts = {}, {}
  for seq in sequences:
    clips = clip_pipeline.eval_clips(seq, NUM_FRAMES)
    # 20 frames in clips of 9: frames 0-8, 9-17 and 11-19 (the last clip overlaps the second).
    assert clips["frame_index"][:, 0].tolist() == [0, 9, 11]
    norms = np.linalg.norm(clips["target_3d"], axis=-1).mean(-1)  # [clips, F]
    group = seq.action.split(" ")[0]
    sums[group] = sums.get(group, 0.0) + norms.sum()
    counts[group] = counts.get(group, 0) + norms.size
  expected = {a: 1000 * sums[a] / counts[a] for a in sums}
  for mode in config.eval.modes:
    table = result.tables[mode][-1].to_dict()["actions"]
    for action, value in expected.items():
      assert table[action]["p1_mm"] == pytest.approx(value, rel=1e-5), (mode, action)
      assert table[action]["count"] == counts[action]
  p1, _ = result.averages()
  assert p1 == pytest.approx(sum(expected.values()) / len(expected), rel=1e-5)
  assert "== J_Agg (H=2, K=2" in result.format_table()
  assert set(result.to_dict()["modes"]) == set(config.eval.modes)


def test_3dhp_predictions_are_stitched_per_sequence_and_scored_on_valid_frames(tmp_path):
  synthetic_3dhp.ensure_synthetic_3dhp(tmp_path)
  config = _tiny(d3dp_3dhp.get_config(), tmp_path)
  sequences = datasets.load_split(config, "test")
  result = evaluation.evaluate(config, {}, sequences, progress=False)
  for mode in config.eval.modes:
    r = result.sequences[mode]
    assert list(r.sequence_names) == [s.subject for s in sequences]
    for i, seq in enumerate(sequences):
      valid = np.asarray(seq.valid, bool)
      assert r.frame_counts[i] == valid.sum()
      norms = 1000 * np.linalg.norm(seq.target_3d[valid], axis=-1)  # root joint: 0
      assert r.seq_mpjpe[i, -1] == pytest.approx(norms.mean(), rel=1e-6)
  assert result.averages()[0] == pytest.approx(result.sequences["J_Agg"].paper_mpjpe)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["d3dp", "finepose", "dsgdiffu"])
def test_train_cli_trains_and_evaluates_a_tiny_clip_model(tmp_path, monkeypatch, family):
  import json  # pylint: disable=g-import-not-at-top

  from tests import tiny_run  # pylint: disable=g-import-not-at-top

  monkeypatch.undo()  # the real sampler, in a fresh interpreter
  synthetic_h36m.ensure_synthetic_data(tmp_path / "data", frames_per_sequence=12)
  overrides = {**tiny_run.FAMILY_OVERRIDES[family], "data.root": tmp_path / "data",
               "data.test_subjects": "('S9',)", "train.steps": 3, "train.eval_every": 2,
               "train.eval_max_batches": 2, "sampling.num_hypotheses": 2,
               "sampling.num_steps": 2}
  # Prompt families train on a batch of clips from mixed actions: each gets its own prompt row.
  proc = tiny_run.python([
      "train.py", f"--config=configs/{family}_h36m.py:gt", f"--workdir={tmp_path / 'run'}",
      *[f"--config.{k}={v}" for k, v in overrides.items()]], cache_dir=tmp_path / "cache")
  assert "step 2: eval MPJPE" in proc.stdout and "== J_Agg (H=2, K=2" in proc.stdout
  result = json.loads((tmp_path / "run" / "eval_results.json").read_text())
  assert result["step"] == 3 and "J_Agg" in result["results"]["modes"]


@pytest.mark.slow
def test_training_starts_from_a_checkpoints_text_cache(tmp_path, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top

  from configs import finepose_h36m  # pylint: disable=g-import-not-at-top
  from posediff_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from posediff_jax import families  # pylint: disable=g-import-not-at-top
  from posediff_jax import training  # pylint: disable=g-import-not-at-top
  from tests import tiny_run  # pylint: disable=g-import-not-at-top

  monkeypatch.undo()
  synthetic_h36m.ensure_synthetic_data(tmp_path / "data", frames_per_sequence=12)
  config = finepose_h36m.get_config("gt")
  for dotted, value in {**tiny_run.FAMILY_OVERRIDES["finepose"],
                        "data.root": str(tmp_path / "data"), "train.steps": 1,
                        "train.final_eval": False}.items():
    section, field = dotted.split(".")
    config[section][field] = value
  family = families.get("finepose")
  source = family.init_params(config, jax.random.key(5))  # stands in for a converted checkpoint
  checkpoint.save_model(tmp_path / "ckpt", source, family.checkpoint_meta(config))
  config.train.init_checkpoint = str(tmp_path / "ckpt")
  training.train_and_evaluate(config, tmp_path / "run")
  trained, _, _ = checkpoint.load_model(tmp_path / "run")
  np.testing.assert_array_equal(trained["text_cache"]["clip_features"],
                                source["text_cache"]["clip_features"])
