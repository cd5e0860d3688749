"""Tests for the Human3.6M readers, the frame dataset and the grain / evaluation pipelines."""

import datetime

import numpy as np
import pytest

from posediff_jax import cameras
from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.data import frame_pipeline
from posediff_jax.data import h36m
from posediff_jax.data import pipeline

# (subject, action, 3D length, 2D length per camera)
_SEQUENCES = (
    ("S9", "Directions 1", 3, (3, 4, 3, 5)),
    ("S9", "Eating", 2, (2, 2, 3, 2)),
    ("S11", "Walking", 2, (2, 2, 2, 2)),
)


def _save_npz(path, **members):
  """Writes members the way VideoPose3D does: dicts become pickled 0-d object arrays."""
  np.savez(path, **members)
  return path


def _make_3d(seed=0):
  rng = np.random.default_rng(seed)
  data = {}
  for subject, action, length, _ in _SEQUENCES:
    world = rng.normal(scale=0.3, size=(length, 32, 3)) + [0.0, 0.0, 1.0]
    data.setdefault(subject, {})[action] = world.astype(np.float32)
  return data


def _make_plain_2d(seed=1):
  rng = np.random.default_rng(seed)
  data = {}
  for subject, action, _, lengths in _SEQUENCES:
    data.setdefault(subject, {})[action] = [
        rng.uniform(0, 1000, (n, 17, 2)).astype(np.float32) for n in lengths]
  return data


def _make_gmm_2d(seed=2, kernels=3):
  rng = np.random.default_rng(seed)
  data = {}
  for subject, action, _, lengths in _SEQUENCES:
    per_camera = []
    for n in lengths:
      gmm = np.zeros((n, 17, kernels, 5), np.float32)
      chosen = rng.integers(kernels, size=(n, 17))
      np.put_along_axis(gmm[..., 0], chosen[..., None], 1.0, axis=-1)
      gmm[..., 1:3] = rng.uniform(0, 1000, (n, 17, kernels, 2))
      gmm[..., 3:5] = rng.uniform(0, 0.05, (n, 17, kernels, 2))
      per_camera.append(gmm)
    data.setdefault(subject, {})[action] = per_camera
  return data


@pytest.fixture(name="files")
def _files(tmp_path):
  metadata = {"layout_name": "h36m", "num_joints": 17,
              "keypoints_symmetry": [list(skeleton.H36M_LEFT), list(skeleton.H36M_RIGHT)]}
  return {
      "3d": _save_npz(tmp_path / "data_3d_h36m.npz", positions_3d=_make_3d()),
      "plain": _save_npz(tmp_path / "data_2d_h36m_gt.npz", positions_2d=_make_plain_2d()),
      "plain_meta": _save_npz(tmp_path / "data_2d_h36m_cpn.npz", positions_2d=_make_plain_2d(),
                              metadata=metadata),
      "gmm": _save_npz(tmp_path / "data_2d_h36m_gt_gmm.npz", positions_2d=_make_gmm_2d()),
  }


def test_load_positions_3d_round_trip(files):
  loaded = h36m.load_positions_3d(files["3d"])
  expected = _make_3d()
  assert list(loaded) == list(expected)
  for subject in expected:
    assert list(loaded[subject]) == list(expected[subject])
    for action, array in expected[subject].items():
      assert loaded[subject][action].dtype == np.float32
      np.testing.assert_array_equal(loaded[subject][action], array)


@pytest.mark.parametrize("name", ["plain", "plain_meta"])
def test_plain_2d_is_promoted_to_one_kernel(files, name):
  loaded, metadata = h36m.load_positions_2d(files[name], plain_2d_var=0.02)
  assert (metadata is None) == (name == "plain")
  if metadata is not None:
    assert metadata["layout_name"] == "h36m"
  expected = _make_plain_2d()
  for subject, action, _, lengths in _SEQUENCES:
    for camera, length in enumerate(lengths):
      gmm = loaded[subject][action][camera]
      assert gmm.shape == (length, 17, 1, 5) and gmm.dtype == np.float32
      np.testing.assert_array_equal(gmm[..., 0, 0], 1.0)
      np.testing.assert_array_equal(gmm[..., 0, 1:3], expected[subject][action][camera])
      np.testing.assert_array_equal(gmm[..., 0, 3:5], np.float32(0.02))


def test_gmm_2d_round_trip(files):
  loaded, metadata = h36m.load_positions_2d(files["gmm"])
  assert metadata is None
  expected = _make_gmm_2d()
  assert list(loaded) == list(expected)
  for subject in expected:
    assert list(loaded[subject]) == list(expected[subject])
    for action in expected[subject]:
      for got, want in zip(loaded[subject][action], expected[subject][action], strict=True):
        np.testing.assert_array_equal(got, want)


def test_missing_key_is_a_clear_error(tmp_path, files):
  path = _save_npz(tmp_path / "wrong.npz", poses=_make_3d())
  with pytest.raises(ValueError, match=r"wrong\.npz.*'positions_3d'.*\['poses'\]"):
    h36m.load_positions_3d(path)
  with pytest.raises(ValueError, match="positions_2d"):
    h36m.load_positions_2d(files["3d"])
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    h36m.load_positions_3d(tmp_path / "nope.npz")


def test_wrong_joint_counts_are_clear_errors(tmp_path):
  data = _make_plain_2d()
  data["S11"]["Walking"][2] = data["S11"]["Walking"][2][:, :16]
  path = _save_npz(tmp_path / "bad2d.npz", positions_2d=data)
  with pytest.raises(ValueError, match=r"bad2d\.npz.*'S11'.*'Walking'.*camera 2.*\(2, 16, 2\)"):
    h36m.load_positions_2d(path)
  data3d = _make_3d()
  data3d["S9"]["Eating"] = data3d["S9"]["Eating"][:, :17]
  path = _save_npz(tmp_path / "bad3d.npz", positions_3d=data3d)
  with pytest.raises(ValueError, match=r"'S9'.*'Eating'.*\[T, 32, 3\].*\(2, 17, 3\)"):
    h36m.load_positions_3d(path)


def test_wrong_last_axis_is_a_clear_error(tmp_path):
  data = _make_gmm_2d()
  data["S9"]["Eating"][1] = data["S9"]["Eating"][1][..., :4]
  path = _save_npz(tmp_path / "bad.npz", positions_2d=data)
  with pytest.raises(ValueError, match=r"camera 1: expected \[T, 17, K, 5\].*\(2, 17, 3, 4\)"):
    h36m.load_positions_2d(path)


def test_nan_2d_is_a_clear_error(tmp_path):
  data = _make_plain_2d()
  data["S9"]["Directions 1"][3][4, 7, 1] = np.nan
  path = _save_npz(tmp_path / "nan.npz", positions_2d=data)
  with pytest.raises(ValueError, match=r"'Directions 1'.*camera 3.*non-finite.*\(4, 7, 1\)"):
    h36m.load_positions_2d(path)


def test_bad_gmm_weights_are_a_clear_error(tmp_path):
  data = _make_gmm_2d()
  data["S11"]["Walking"][0][1, 3, :, 0] = [0.5, 0.2, 0.0]
  path = _save_npz(tmp_path / "weights.npz", positions_2d=data)
  with pytest.raises(ValueError, match=r"camera 0.*sum to 1.*frame 1 joint 3"):
    h36m.load_positions_2d(path)


def test_other_keypoint_layouts_are_rejected(tmp_path):
  path = _save_npz(tmp_path / "coco.npz", positions_2d=_make_plain_2d(),
                   metadata={"layout_name": "coco", "num_joints": 17})
  with pytest.raises(ValueError, match="coco"):
    h36m.load_positions_2d(path)


def test_unsafe_pickles_are_refused(tmp_path):
  path = _save_npz(tmp_path / "evil.npz",
                   positions_3d={"S9": {"Eating": datetime.date(2020, 1, 1)}})
  with pytest.raises(safe_load.UnsafePickleError, match="datetime"):
    h36m.load_positions_3d(path)


def test_2d_shorter_than_3d_is_a_clear_error(tmp_path, files):
  data = _make_gmm_2d()
  data["S9"]["Directions 1"][2] = data["S9"]["Directions 1"][2][:2]
  path = _save_npz(tmp_path / "short.npz", positions_2d=data)
  with pytest.raises(ValueError, match=r"'Directions 1'.*camera 2 has 2 frames.*has 3"):
    h36m.load_frame_set(files["3d"], path, ["S9"])


def test_unknown_subjects_are_clear_errors(files):
  with pytest.raises(ValueError, match="'S1'"):
    h36m.load_frame_set(files["3d"], files["gmm"], ["S1"])
  with pytest.raises(ValueError, match="no subjects"):
    h36m.load_frame_set(files["3d"], files["gmm"], [])


def test_sequence_mismatch_between_files_is_a_clear_error(tmp_path, files):
  data = _make_gmm_2d()
  del data["S9"]["Eating"]
  path = _save_npz(tmp_path / "partial.npz", positions_2d=data)
  with pytest.raises(ValueError, match=r"'S9'.*no 2D.*\['Eating'\]"):
    h36m.load_frame_set(files["3d"], path, ["S9"])
  data = _make_gmm_2d()
  data["S9"]["Eating"] = data["S9"]["Eating"][:3]
  path = _save_npz(tmp_path / "cams.npz", positions_2d=data)
  with pytest.raises(ValueError, match="3 camera arrays, expected 4"):
    h36m.load_frame_set(files["3d"], path, ["S9"])


def test_action_class():
  assert h36m.action_class("Directions 1") == "Directions"
  assert h36m.action_class("SittingDown 2") == "SittingDown"
  assert h36m.action_class("TakingPhoto 1") == "Photo"
  assert h36m.action_class("WalkingDog") == "WalkDog"
  assert h36m.action_class("WalkTogether 1") == "WalkTogether"
  assert len(h36m.ACTIONS) == 15
  with pytest.raises(ValueError, match="Dancing"):
    h36m.action_class("Dancing 1")


@pytest.mark.parametrize("fixed_resolution", [None, (1000, 1000)])
def test_frame_set_matches_brute_force(files, fixed_resolution):
  frames = h36m.load_frame_set(files["3d"], files["gmm"], ["S11", "S9"],
                               fixed_resolution=fixed_resolution)
  world, gmm2d = _make_3d(), _make_gmm_2d()
  order = [(s, a) for s in ("S11", "S9") for a in gmm2d[s]]
  rows = []
  for sequence_index, (subject, action) in enumerate(order):
    length = world[subject][action].shape[0]
    for camera, cam in enumerate(cameras.h36m_cameras(subject)):
      w, h = fixed_resolution or (cam.res_w, cam.res_h)
      for frame in range(length):
        rows.append((subject, action, sequence_index, camera, cam, frame, w, h))
  assert len(frames) == len(rows)
  assert frames.subjects == ("S11", "S9")
  assert frames.sequence_names == tuple(f"{s}/{a}" for s, a in order)
  for i, (subject, action, sequence_index, camera, cam, frame, w, h) in enumerate(rows):
    gmm = gmm2d[subject][action][camera][frame].astype(np.float64)
    np.testing.assert_array_equal(frames.gmm_2d[i][..., [0, 3, 4]], gmm[..., [0, 3, 4]])
    np.testing.assert_allclose(frames.gmm_2d[i][..., 1], gmm[..., 1] / w * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(frames.gmm_2d[i][..., 2], gmm[..., 2] / w * 2 - h / w, atol=1e-6)
    pose = world[subject][action][frame][list(skeleton.H36M32_TO_17)].astype(np.float64)
    rotation_t = np.linalg.inv(_rotation(cam.orientation))
    camera_pose = (pose - cam.translation) @ rotation_t.T
    np.testing.assert_allclose(frames.target_3d[i], camera_pose - camera_pose[:1], atol=2e-6)
    assert h36m.ACTIONS[frames.action[i]] == action.split(" ")[0]
    np.testing.assert_array_equal(frames.camera_params[i], cameras.normalized_intrinsics(cam))
    assert (frames.subjects[frames.subject[i]], frames.camera[i], frames.sequence[i],
            frames.frame[i]) == (subject, camera, sequence_index, frame)
  for name in ("gmm_2d", "target_3d", "camera_params"):
    assert getattr(frames, name).dtype == np.float32
  for name in ("action", "subject", "camera", "sequence", "frame"):
    assert getattr(frames, name).dtype == np.int32


def _rotation(q):
  w, x, y, z = q
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_plain_2d_frame_set_has_one_kernel(files):
  frames = h36m.load_frame_set(files["3d"], files["plain_meta"], h36m.TEST_SUBJECTS,
                               plain_2d_var=0.03)
  assert frames.num_kernels == 1
  uv, var = h36m.choose_kernel(frames.gmm_2d)
  np.testing.assert_array_equal(uv, frames.gmm_2d[..., 0, 1:3])
  np.testing.assert_array_equal(var, np.float32(0.03))


def test_choose_kernel_deterministic_and_sampled():
  rng = np.random.default_rng(0)
  gmm = np.zeros((4000, 17, 3, 5), np.float32)
  gmm[..., 1] = np.arange(3)  # u encodes the kernel index
  gmm[..., 3] = np.arange(3) + 10
  gmm[..., 0] = [0.2, 0.5, 0.3]
  uv, var = h36m.choose_kernel(gmm)
  np.testing.assert_array_equal(uv[..., 0], 1)
  np.testing.assert_array_equal(var[..., 0], 11)
  uv, var = h36m.choose_kernel(gmm, rng)
  counts = np.bincount(uv[..., 0].astype(int).ravel(), minlength=3) / uv[..., 0].size
  np.testing.assert_allclose(counts, [0.2, 0.5, 0.3], atol=0.01)
  np.testing.assert_array_equal(var[..., 0], uv[..., 0] + 10)
  one_hot = np.zeros((50, 17, 3, 5), np.float32)
  one_hot[..., 2, 0] = 1
  one_hot[..., 1] = np.arange(3)
  np.testing.assert_array_equal(h36m.choose_kernel(one_hot, rng)[0][..., 0], 2)
  np.testing.assert_array_equal(h36m.choose_kernel(one_hot)[0][..., 0], 2)
  with pytest.raises(ValueError, match="17"):
    h36m.choose_kernel(np.zeros((2, 16, 3, 5)))


def _indexed_frames(num_frames=103, kernels=3, seed=0):
  """A FrameSet whose row i is recognisable: target_3d[i, 1, 0] == i."""
  rng = np.random.default_rng(seed)
  gmm = rng.normal(size=(num_frames, 17, kernels, 5)).astype(np.float32)
  gmm[..., 0] = rng.dirichlet(np.ones(kernels), size=(num_frames, 17))
  target = rng.normal(size=(num_frames, 17, 3)).astype(np.float32)
  target[:, 1, 0] = np.arange(num_frames)
  zeros = np.zeros(num_frames, np.int32)
  return h36m.FrameSet(
      gmm_2d=gmm, target_3d=target, action=(np.arange(num_frames) % 15).astype(np.int32),
      camera_params=np.zeros((num_frames, 4), np.float32), subject=zeros, camera=zeros,
      sequence=zeros, frame=np.arange(num_frames, dtype=np.int32), subjects=("S1",),
      sequence_names=("S1/Directions",))


def _take(iterator, n):
  batches = [next(iterator) for _ in range(n)]
  iterator.close()
  return batches


def _rows(batch):
  return batch["target_3d"][:, 1, 0].astype(int)


def test_train_batches_shapes_and_determinism():
  frames = _indexed_frames()
  batches = _take(iter(frame_pipeline.train_dataset(frames, batch_size=8, seed=1)), 30)
  for batch in batches:
    assert set(batch) == {"input_2d", "input_2d_var", "target_3d", "action"}
    assert batch["input_2d"].shape == (8, 17, 2) and batch["input_2d"].dtype == np.float32
    assert batch["input_2d_var"].shape == (8, 17, 2) and batch["input_2d_var"].dtype == np.float32
    assert batch["target_3d"].shape == (8, 17, 3) and batch["target_3d"].dtype == np.float32
    assert batch["action"].shape == (8,) and batch["action"].dtype == np.int32
    rows = _rows(batch)
    np.testing.assert_array_equal(batch["target_3d"], frames.target_3d[rows])
    np.testing.assert_array_equal(batch["action"], frames.action[rows])
    # Each sample's input is one of its own kernels, with that kernel's variance.
    gmm = frames.gmm_2d[rows]
    match = (gmm[..., 1:3] == batch["input_2d"][:, :, None]).all(-1)
    assert (match.sum(-1) >= 1).all()
    kernel = match.argmax(-1)
    np.testing.assert_array_equal(
        np.take_along_axis(gmm[..., 3:5], kernel[..., None, None], axis=2)[:, :, 0],
        batch["input_2d_var"])
  again = _take(iter(frame_pipeline.train_dataset(frames, batch_size=8, seed=1)), 30)
  other = _take(iter(frame_pipeline.train_dataset(frames, batch_size=8, seed=2)), 30)
  for a, b in zip(batches, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(_rows(a), _rows(c)) for a, c in zip(batches, other))


def test_train_epochs_cover_each_frame_once_and_reshuffle():
  frames = _indexed_frames(num_frames=100)
  batches = list(frame_pipeline.train_dataset(frames, batch_size=8, seed=0, num_epochs=2))
  assert len(batches) == 2 * pipeline.epoch_steps(100, 8) == 24
  first, second = (np.concatenate([_rows(b) for b in batches[i:i + 12]]) for i in (0, 12))
  for epoch in (first, second):
    assert len(np.unique(epoch)) == 96
  assert not np.array_equal(first, second)


def test_train_iterator_resumes_from_state():
  frames = _indexed_frames()
  iterator = iter(frame_pipeline.train_dataset(frames, batch_size=8, seed=3))
  _ = [next(iterator) for _ in range(17)]  # crosses an epoch boundary (12 steps per epoch)
  state = iterator.get_state()
  expected = _take(iterator, 10)
  resumed = iter(frame_pipeline.train_dataset(frames, batch_size=8, seed=3))
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 10)):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_train_shards_are_disjoint():
  frames = _indexed_frames()
  shards = [_take(iter(frame_pipeline.train_dataset(frames, batch_size=4, seed=5, shard_index=k,
                                                    shard_count=3)), 8) for k in range(3)]
  for step in range(8):
    rows = np.concatenate([_rows(shard[step]) for shard in shards])
    assert len(np.unique(rows)) == 12
  steps_per_epoch = pipeline.epoch_steps(len(frames), 12)
  epoch = np.concatenate([_rows(shard[s]) for shard in shards for s in range(steps_per_epoch)])
  assert len(np.unique(epoch)) == steps_per_epoch * 12
  with pytest.raises(ValueError, match="shard_index"):
    frame_pipeline.train_dataset(frames, batch_size=4, seed=0, shard_index=3, shard_count=3)
  with pytest.raises(ValueError, match="cannot fill"):
    frame_pipeline.train_dataset(frames, batch_size=60, seed=0, shard_count=2)


def test_train_worker_processes_give_the_same_batches():
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  frames = _indexed_frames(num_frames=40)
  local = _take(iter(frame_pipeline.train_dataset(frames, batch_size=4, seed=7)), 5)
  workers = _take(iter(frame_pipeline.train_dataset(frames, batch_size=4, seed=7,
                                                    worker_count=1)), 5)
  for want, got in zip(local, workers):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_eval_batches_order_padding_and_valid():
  frames = _indexed_frames(num_frames=23)
  batches, num_batches = frame_pipeline.eval_batches(frames, 10)
  batches = list(batches)
  assert num_batches == len(batches) == 3
  rows = np.concatenate([_rows(b) for b in batches])
  np.testing.assert_array_equal(rows, list(range(23)) + [22] * 7)
  valid = np.concatenate([b["valid"] for b in batches])
  np.testing.assert_array_equal(valid, np.arange(30) < 23)
  for batch in batches:
    assert batch["input_2d"].shape == (10, 17, 2) and batch["valid"].dtype == bool
    uv, var = h36m.choose_kernel(frames.gmm_2d[batch["index"]])
    np.testing.assert_array_equal(batch["input_2d"], uv)
    np.testing.assert_array_equal(batch["input_2d_var"], var)
    np.testing.assert_array_equal(batch["action"], frames.action[batch["index"]])


def test_eval_shards_concatenate_to_the_global_batches():
  frames = _indexed_frames(num_frames=23)
  whole = list(frame_pipeline.eval_batches(frames, 10)[0])
  shards = [list(frame_pipeline.eval_batches(frames, 10, shard_index=k, shard_count=2)[0])
            for k in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(whole)
  for i, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][i][key], shards[1][i][key]]), batch[key])
  with pytest.raises(ValueError, match="divisible"):
    frame_pipeline.eval_batches(frames, 10, shard_count=3)
