"""Radar data: the synthetic layouts, upstream's preprocessing and windows, the cache reader, the
training stream and the evaluation batches, and the errors bad frames give.

Sizes come from the generator's own constants and the configs; nothing here needs JAX.
"""

import numpy as np
import pytest

from configs import mmdiff_mmbody
from configs import mmdiff_mmfi
from posediff_jax import datasets
from posediff_jax import skeleton
from posediff_jax.data import radar
from posediff_jax.data import radar_pipeline
from posediff_jax.data.synthetic import radar as synthetic_radar

FRAMES = 7  # frames per synthetic sequence: enough for a 4-frame window reaching 4 frames back


@pytest.fixture(scope="module")
def mmbody_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("mmbody")
  return synthetic_radar.generate(root, layout="mmbody", frames_per_sequence=FRAMES)


@pytest.fixture(scope="module")
def mmfi_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("mmfi")
  return synthetic_radar.generate(root, layout="mmfi", frames_per_sequence=FRAMES)


def _mmbody_config(root, **data):
  config = mmdiff_mmbody.get_config()
  config.data.update(source="raw", root=str(root), points_per_frame=96, **data)
  return config


def _mmfi_config(root):
  config = mmdiff_mmfi.get_config()
  config.data.update(source="raw", root=str(root), points_per_frame=64,
                     test_subjects=("S05", "S10", "S15"))
  return config


# --- the synthetic sets ---------------------------------------------------------------------------


def test_synthetic_mmbody_has_upstreams_layout(mmbody_root):
  train = sorted(p.name for p in (mmbody_root / "train").iterdir())
  sequences = synthetic_radar.MMBODY_TRAIN_SEQUENCES
  assert train == [f"sequence_{i}" for i in range(sequences)]
  assert sorted(p.name for p in (mmbody_root / "test").iterdir()) == sorted(
      synthetic_radar.MMBODY_TEST_SCENES)
  sequence = mmbody_root / "train" / "sequence_0"
  frame = np.load(sequence / "radar" / "frame_0.npy")
  assert frame.dtype == np.float32 and frame.ndim == 2 and frame.shape[1] == 6
  # The raw columns carry the exporter's scales; upstream's factors bring them to ~1-10.
  assert np.abs(frame[:, 3]).max() < 1e-36 and frame[:, 5].max() > 50
  joints = np.load(sequence / "mesh" / "frame_0.npz")["joints"]
  assert joints.shape == (synthetic_radar.NUM_SMPLX_JOINTS, 3)
  assert len(list((sequence / "radar").iterdir())) == FRAMES


def test_synthetic_labels_are_the_skeleton_with_the_left_side_first(mmbody_root):
  config = _mmbody_config(mmbody_root)
  split = datasets.load_split(config, "train")
  pose = synthetic_radar.skeleton_motion(0, FRAMES, 0, 3.0)  # train sequence 0, seed 0
  expected = pose[:, list(skeleton.H36M_MIRROR)]
  np.testing.assert_allclose(split.target_3d[:FRAMES], expected - expected[:, :1], atol=1e-5)


def test_generation_is_deterministic_and_never_overwrites(tmp_path, mmbody_root):
  again = synthetic_radar.generate(tmp_path / "again", layout="mmbody", frames_per_sequence=FRAMES,
                                   test_scenes=("rain",), train_sequences=1)
  name = "test/rain/sequence_103/radar/frame_2.npy"
  np.testing.assert_array_equal(np.load(again / name), np.load(mmbody_root / name))
  with pytest.raises(FileExistsError, match="already holds a data set"):
    synthetic_radar.generate(again, layout="mmbody", frames_per_sequence=FRAMES)
  before = (again / "train" / "sequence_0" / "radar" / "frame_0.npy").stat().st_mtime_ns
  synthetic_radar.ensure_synthetic_radar(again, "mmbody")
  assert (again / "train" / "sequence_0" / "radar" / "frame_0.npy").stat().st_mtime_ns == before


def test_synthetic_mmfi_has_upstreams_layout(mmfi_root):
  action = mmfi_root / "E01" / "S01" / "A02"
  gt = np.load(action / "ground_truth.npy")
  assert gt.shape == (FRAMES, 17, 3)
  raw = (action / "mmwave" / "frame001.bin").read_bytes()
  assert len(raw) % (8 * 5) == 0
  assert sorted(p.name for p in mmfi_root.iterdir() if p.is_dir()) == ["E01", "E02"]


# --- preprocessing and windows --------------------------------------------------------------------


def test_preprocessing_centres_scales_crops_and_pads_in_upstreams_order():
  prep = radar.Preprocessing(points=4, channels=6, centre_on_pelvis=True,
                             feature_scale=(1e38, 10.0, 0.01),
                             crop=((-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0)))
  points = np.array([[1.0, 2.0, 3.0, 2e-38, 0.5, 300.0],   # centred: (0, 1, 2): z cropped
                     [2.0, 3.0, 2.0, 1e-38, 0.1, 100.0],   # (1, 2, 1): y cropped
                     [1.5, 1.0, 1.0, -1e-38, 0.2, 200.0],  # (0.5, 0, 0): kept
                     [0.0, 0.0, 0.0, 0.0, 0.3, 50.0]])     # (-1, -1, -1): on the box, kept
  out = radar.preprocess_frame(points, prep, centre=np.array([1.0, 1.0, 1.0]))
  assert out.dtype == np.float32 and out.shape == (4, 6)
  np.testing.assert_allclose(out[0], [0.5, 0.0, 0.0, -1.0, 2.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(out[1], [-1.0, -1.0, -1.0, 0.0, 3.0, 0.5], rtol=1e-6)
  np.testing.assert_array_equal(out[2:], 0)  # zero padding
  truncated = radar.preprocess_frame(points[:, :5], radar.Preprocessing(points=2, channels=5))
  np.testing.assert_array_equal(truncated, points[:2, :5].astype(np.float32))  # first rows


def test_window_rows_follow_upstreams_sliding_window():
  sequence = np.array([0] * 6 + [1] * 3)
  position = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2])
  rows = radar.window_rows(sequence, position, (0, -4, -3, -2), (0, 0, 1, 2))
  # Frame t, then t-4, t-3, t-2; a missing frame is frame t + 0, t + 1, t + 2 of the sequence.
  assert rows[0].tolist() == [0, 0, 1, 2]
  assert rows[3].tolist() == [3, 3, 0, 1]
  assert rows[5].tolist() == [5, 1, 2, 3]
  assert rows[6].tolist() == [6, 6, 7, 8]  # never into the previous sequence
  assert rows[8].tolist() == [8, 8, 8, 6]  # t + 1, t + 2 do not exist either: the frame itself
  gaps = radar.window_rows(np.zeros(3), np.array([0, 5, 6]), (0, -1), (0, 1))
  assert gaps[1].tolist() == [1, 2]  # frame 4 is missing: frame 5 + 1 instead


def test_history_rows_head_and_v1_rules():
  split = radar.RadarSplit("toy", np.zeros((7, 17, 3), np.float32),
                           np.array([0, 0, 0, 0, 1, 1, 1]), np.zeros(7, np.int32), ("s",), None)
  head = radar.history_rows(split, 3, respect_sequences=False, fallback="forward")
  # HEAD: rows before the start become i + k; sequence boundaries are ignored.
  assert head[0].tolist() == [0, 1, 2] and head[1].tolist() == [1, 2, 0]
  assert head[4].tolist() == [1, 2, 3]
  v1 = radar.history_rows(split, 3, respect_sequences=True, fallback="current")
  assert v1[1].tolist() == [1, 1, 0] and v1[4].tolist() == [4, 4, 4]
  assert v1[6].tolist() == [6, 4, 5]


# --- the raw readers ------------------------------------------------------------------------------


def test_mmbody_reader_builds_windows_centred_on_the_current_pelvis(mmbody_root):
  config = _mmbody_config(mmbody_root)
  train, test = datasets.load_split(config, "train"), datasets.load_split(config, "test")
  assert len(train) == synthetic_radar.MMBODY_TRAIN_SEQUENCES * FRAMES
  assert test.scene_names == tuple(config.data.test_scenes)
  assert np.bincount(test.scene).tolist() == [FRAMES] * len(config.data.test_scenes)
  assert np.all(train.target_3d[:, 0] == 0) and not train.has_phase1
  settings = radar.settings_from_config(config)
  window = train.radar([5])[0]
  assert window.shape == (len(config.data.radar_window_offsets), settings.preprocessing.points, 6)
  # Row 5 = frame 5 of sequence 0: frames 5, 1, 2, 3, all centred on frame 5's pelvis.
  sequence = mmbody_root / "train" / "sequence_0"
  pelvis = np.load(sequence / "mesh" / "frame_5.npz")["joints"][0]
  for slot, frame in enumerate((5, 1, 2, 3)):
    raw = np.load(sequence / "radar" / f"frame_{frame}.npy")
    expected = radar.preprocess_frame(raw, settings.preprocessing, centre=pelvis)
    np.testing.assert_array_equal(window[slot], expected)


def test_mmfi_reader_splits_subjects_and_skips_other_protocols(mmfi_root):
  config = _mmfi_config(mmfi_root)
  train, test = datasets.load_split(config, "train"), datasets.load_split(config, "test")
  actions = [a for a in synthetic_radar.MMFI_ACTIONS if a in config.data.protocol_actions]
  subjects = synthetic_radar.MMFI_SUBJECTS
  test_subjects = [s for s in subjects if s in config.data.test_subjects]
  assert len(test) == len(test_subjects) * len(actions) * FRAMES
  assert len(train) == (len(subjects) - len(test_subjects)) * len(actions) * FRAMES
  assert test.scene_names == ("E01", "E02")
  window = test.radar([3])[0]
  # HEAD reads the current frame for every slot of its 5-frame window; no centring.
  assert window.shape == (len(config.data.radar_window_offsets), 64, 5)
  assert all(np.array_equal(window[0], w) for w in window)
  raw = np.frombuffer((mmfi_root / "E01" / "S05" / "A02" / "mmwave" / "frame004.bin")
                      .read_bytes(), np.float64).reshape(-1, 5)
  count = min(len(raw), 64)
  np.testing.assert_allclose(window[0][:count], raw[:count], rtol=1e-6)


def test_missing_folders_and_files_are_named(tmp_path, mmbody_root):
  with pytest.raises(FileNotFoundError, match="config.data.root"):
    datasets.load_split(_mmbody_config(tmp_path / "nowhere"), "train")
  config = _mmbody_config(mmbody_root, test_scenes=("lab1", "attic"))
  with pytest.raises(FileNotFoundError, match=r"test/attic not found"):
    datasets.load_split(config, "test")


def _copy_sequence(src, dst):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(src / "train" / "sequence_0", dst / "train" / "sequence_0")
  return dst


def test_a_frame_with_nan_or_no_points_gives_a_clear_error(tmp_path, mmbody_root):
  root = _copy_sequence(mmbody_root, tmp_path)
  frame = root / "train" / "sequence_0" / "radar" / "frame_2.npy"
  points = np.load(frame)
  points[7, 4] = np.nan
  np.save(frame, points)
  split = datasets.load_split(_mmbody_config(root), "train")
  with pytest.raises(ValueError, match=r"frame_2\.npy: 1 non-finite values.*point 7, column 4"):
    split.radar([2])
  np.save(frame, np.zeros((0, 6), np.float32))
  with pytest.raises(ValueError, match=r"frame_2\.npy holds no points .*allow_empty_frames"):
    split.radar([2])
  empty_ok = datasets.load_split(_mmbody_config(root, allow_empty_frames=True), "train")
  assert np.all(empty_ok.radar([2])[0, 0] == 0)
  np.save(frame, np.zeros((5, 4), np.float32))
  with pytest.raises(ValueError, match=r"frame_2\.npy: expected points \[n, 6\], got shape"):
    split.radar([2])


def test_a_mesh_without_joints_is_named(tmp_path, mmbody_root):
  root = _copy_sequence(mmbody_root, tmp_path)
  np.savez(root / "train" / "sequence_0" / "mesh" / "frame_1.npz", vertices=np.zeros((3, 3)))
  with pytest.raises(ValueError, match=r"frame_1\.npz has no 'joints' \(has vertices\)"):
    datasets.load_split(_mmbody_config(root), "train")


# --- upstream's phase-2 cache ---------------------------------------------------------------------


def _write_cache(root, parts: dict[str, int], *, v1: bool, points: int = 8, feature: int = 4,
                 chunks: int = 2, seed: int = 0):
  """Cache files for `parts` {suffix: frames}; returns {suffix: arrays} as written."""
  rng = np.random.default_rng(seed)
  written = {}
  for suffix, n in parts.items():
    arrays = {"joint_gt_array": rng.normal(size=(n, 17, 3)),
              "joint_pred_array": rng.normal(size=(n, 17, 3)),
              "radar_feat_array": rng.normal(size=(n, 17, feature)),
              "radar": rng.normal(size=(n, points, 6))}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    if v1:
      arrays["sequence_array"] = np.repeat(np.arange(2), [n // 2, n - n // 2])
    for name, value in arrays.items():
      if name != "radar":
        np.save(root / f"{name}_{suffix}.npy", value)
    if suffix == "train":
      for i, piece in enumerate(np.array_split(arrays["radar"], chunks)):
        np.save(root / f"radar_input_array_train{i}.npy", piece)
    else:
      np.save(root / f"radar_input_array_{suffix}.npy", arrays["radar"])
    written[suffix] = arrays
  return written


def _cache_config(root, variant):
  config = mmdiff_mmbody.get_config(variant)
  config.data.update(root=str(root), test_scenes=("lab1", "rain"), radar_train_chunks=2)
  return config


def test_head_cache_gives_upstreams_phase2_batches(tmp_path):
  written = _write_cache(tmp_path, {"train": 9, "test": 5}, v1=False)
  config = _cache_config(tmp_path, "head")
  settings = radar.settings_from_config(config)
  split = datasets.load_split(config, "train")
  assert split.has_phase1 and split.scene_names == ("train",)
  gt, pred = written["train"]["joint_gt_array"], written["train"]["joint_pred_array"]
  np.testing.assert_allclose(split.target_3d, gt - gt[:, :1], rtol=1e-6)
  history = radar.history_rows(split, settings.past_frames, respect_sequences=False,
                               fallback="forward")
  batch = radar_pipeline.denoiser_batch(split, np.array([1, 8]), history, with_radar=True)
  past = config.model.past_frames
  assert batch["x_history"].shape == (2, 17, 3 * (past + 1))
  coarse = pred - pred[:, :1]
  # Row 1: rows 1-6 .. 0 exist only for k = past - 1; the others fall back to rows 1 + k.
  expected_rows = [1 + k if 1 - past + k < 0 else 1 - past + k for k in range(past)] + [1]
  for slot, row in enumerate(expected_rows):
    np.testing.assert_allclose(batch["x_history"][0, :, 3 * slot:3 * slot + 3], coarse[row],
                               rtol=1e-6)
  # The radar window of row 8: rows 8, 4, 5, 6 of the chunked cache.
  cached = written["train"]["radar"]
  np.testing.assert_array_equal(batch["radar"][1], cached[[8, 4, 5, 6]])
  test = datasets.load_split(config, "test")
  assert test.scene_names == ("test",) and len(test) == 5


def test_v1_cache_is_per_scene_and_stays_within_sequences(tmp_path):
  written = _write_cache(tmp_path, {"train": 8, "test_lab1": 6, "test_rain": 4}, v1=True)
  config = _cache_config(tmp_path, "v1")
  test = datasets.load_split(config, "test")
  assert test.scene_names == ("lab1", "rain") and test.scene.tolist() == [0] * 6 + [1] * 4
  np.testing.assert_array_equal(test.sequence, np.concatenate(
      [written["test_lab1"]["sequence_array"], written["test_rain"]["sequence_array"]]))
  # Row 3 starts sequence 1 of lab1: its window falls back to rows 3 + 0, 3 + 1, 3 + 2.
  np.testing.assert_array_equal(test.radar([3])[0],
                                written["test_lab1"]["radar"][[3, 3, 4, 5]])


def test_cache_errors_name_the_file(tmp_path):
  _write_cache(tmp_path, {"train": 6}, v1=False)
  config = _cache_config(tmp_path, "head")
  with pytest.raises(FileNotFoundError, match=r"joint_gt_array_test\.npy not found"):
    datasets.load_split(config, "test")
  np.save(tmp_path / "radar_feat_array_train.npy", np.zeros((5, 17, 4), np.float32))
  with pytest.raises(ValueError, match=r"radar_feat_array_train\.npy: expected phase-1 features"):
    datasets.load_split(config, "train")
  _write_cache(tmp_path, {"train": 6}, v1=False)
  cached = np.load(tmp_path / "radar_input_array_train1.npy")
  cached[1, 2, 0] = np.inf
  np.save(tmp_path / "radar_input_array_train1.npy", cached)
  split = datasets.load_split(config, "train")
  with pytest.raises(ValueError, match=r"radar_input_array_train1\.npy row 1: non-finite"):
    split.radar([4])
  with pytest.raises(ValueError, match=r"encoder trains on raw radar frames"):
    radar_pipeline.train_dataset(split, radar.settings_from_config(config), stage="encoder",
                                 batch_size=2, seed=0)


# --- batches --------------------------------------------------------------------------------------


def _with_fake_phase1(split, feature=4):
  rng = np.random.default_rng(1)
  return split.with_phase1(rng.normal(size=(len(split), 17, 3)),
                           rng.normal(size=(len(split), 17, feature)))


def test_training_stream_is_split_across_processes_and_resumable(mmbody_root):
  config = _mmbody_config(mmbody_root)
  settings = radar.settings_from_config(config)
  split = _with_fake_phase1(datasets.load_split(config, "train"))
  shards = [radar_pipeline.train_dataset(split, settings, stage="denoiser", batch_size=3, seed=5,
                                         shard_index=i, shard_count=2) for i in range(2)]
  iterators = [iter(s) for s in shards]
  first = [next(it) for it in iterators]
  assert first[0]["x_history"].shape == (3, 17, 3 * (config.model.past_frames + 1))
  assert first[0]["radar"].shape[0] == 3
  # The shards take disjoint frames of the same global batch.
  rows = [set(map(tuple, b["target_3d"][:, 1].round(6).tolist())) for b in first]
  assert not rows[0] & rows[1]
  state = iterators[0].get_state()
  expected = next(iterators[0])
  resumed = iter(shards[0])
  resumed.set_state(state)
  again = next(resumed)
  for key, value in expected.items():
    np.testing.assert_array_equal(again[key], value)
  encoder = next(iter(radar_pipeline.train_dataset(split, settings, stage="encoder", batch_size=2,
                                                   seed=5)))
  assert sorted(encoder) == ["radar", "target_3d"]
  with pytest.raises(ValueError, match="no phase-1 outputs"):
    radar_pipeline.train_dataset(datasets.load_split(config, "train"), settings, stage="denoiser",
                                    batch_size=2, seed=0)


def test_eval_batches_pad_the_last_batch_and_split_rows_over_processes(mmbody_root):
  config = _mmbody_config(mmbody_root)
  settings = radar.settings_from_config(config)
  split = _with_fake_phase1(datasets.load_split(config, "test"))
  batch_size = 8
  whole, count = radar_pipeline.eval_batches(split, batch_size, stage="denoiser", settings=settings)
  whole = list(whole)
  assert count == len(whole) == -(-len(split) // batch_size)
  assert int(sum(b["valid"].sum() for b in whole)) == len(split)
  assert not whole[-1]["valid"][-1] and whole[-1]["index"][-1] == len(split) - 1
  np.testing.assert_array_equal(np.concatenate([b["scene"][b["valid"]] for b in whole]),
                                split.scene)
  halves = [list(radar_pipeline.eval_batches(split, batch_size, stage="denoiser", settings=settings,
                                             shard_index=i, shard_count=2)[0]) for i in range(2)]
  for b, first, second in zip(whole, *halves):
    for key in b["arrays"]:
      np.testing.assert_array_equal(
          np.concatenate([first["arrays"][key], second["arrays"][key]]), b["arrays"][key])
