"""Tests for the clip data path of the video families (the Human3.6M and MPI-INF-3DHP video
readers, `posediff_jax.data.clip_pipeline`) and the synthetic 3DHP files it reads."""

import itertools
import zipfile

import numpy as np
import pytest

from posediff_jax import cameras
from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.data import clip_pipeline
from posediff_jax.data import h36m
from posediff_jax.data import mpi3dhp
from posediff_jax.data import npz
from posediff_jax.data import pipeline
from posediff_jax.data import videos
from posediff_jax.data.synthetic import h36m as synthetic_h36m
from posediff_jax.data.synthetic import mpi3dhp as synthetic_3dhp

from tests.conftest import parity_dir

H36M_FRAMES = 12
H36M_ACTIONS = ("Walking", "Sitting")


def _toy_sequence(length: int, joints: int = 5, valid=None, name: str = "toy"
                  ) -> videos.VideoSequence:
  """A video whose x coordinate of every joint is its frame number and y its joint number."""
  frames = np.arange(length, dtype=np.float32)[:, None, None]
  joint = np.arange(joints, dtype=np.float32)[None, :, None]
  input_2d = np.concatenate(np.broadcast_arrays(frames, joint), axis=-1).astype(np.float32)
  target_3d = np.concatenate([input_2d, np.full((length, joints, 1), 7, np.float32)], axis=-1)
  target_3d[:, 0] = 0
  return videos.VideoSequence(
      input_2d=input_2d, target_3d=target_3d, trajectory=np.ones((length, 1, 3), np.float32),
      intrinsic=np.zeros(9, np.float32), subject="S0", action=name, camera=0,
      image_size=(10, 10), valid=np.ones(length, bool) if valid is None else valid, root_joint=0)


# ----------------------------------------------------------------------------------------------
# Training chunks.


def test_chunk_grid_is_centred():
  # N=4, F=3: 2 chunks, offset (6 - 4) // 2 = 1; N=3: one exact chunk; N=1: offset (3 - 1) // 2.
  got = clip_pipeline.chunk_index([4, 3, 1], 3, flip_augment=True)
  np.testing.assert_array_equal(got, [[0, -1, 0], [0, 2, 0], [0, -1, 1], [0, 2, 1],
                                      [1, 0, 0], [1, 0, 1], [2, -1, 0], [2, -1, 1]])
  np.testing.assert_array_equal(clip_pipeline.chunk_index([7], 3, flip_augment=False),
                                [[0, -1, 0], [0, 2, 0], [0, 5, 0]])


def test_clip_source_edge_padding_and_flip():
  left, right = (1, 2), (3, 4)
  clips = clip_pipeline.ClipSource([_toy_sequence(4)], num_frames=3, flip_augment=True, left=left,
                                   right=right)
  assert len(clips) == 4
  # Chunk 0 covers frames -1..1 (frame 0 repeated), chunk 1 frames 2..4 (frame 3 repeated).
  np.testing.assert_array_equal(clips[0]["input_2d"][:, 0, 0], [0, 0, 1])
  np.testing.assert_array_equal(clips[1]["input_2d"][:, 0, 0], [2, 3, 3])
  np.testing.assert_array_equal(clips[1]["target_3d"][:, 2, 0], [2, 3, 3])
  flipped = clips[3]
  for key, plain in clips[1].items():
    assert flipped[key].dtype == np.float32 and flipped[key].shape == plain.shape
    # Joint 1 (left) now holds joint 3 (right) and vice versa, x negated; y, z unchanged.
    np.testing.assert_array_equal(flipped[key][:, 1, 0], -plain[:, 3, 0])
    np.testing.assert_array_equal(flipped[key][:, 3, 1:], plain[:, 1, 1:])
    np.testing.assert_array_equal(flipped[key][:, 0, 1:], plain[:, 0, 1:])
  batch = clips.gather(np.array([3, 0]))
  assert batch["input_2d"].shape == (2, 3, 5, 2) and batch["target_3d"].shape == (2, 3, 5, 3)
  np.testing.assert_array_equal(batch["input_2d"][0], flipped["input_2d"])
  np.testing.assert_array_equal(batch["sequence"], [0, 0])


def test_flip_twice_is_identity_and_matches_h36m_flip():
  rng = np.random.default_rng(0)
  poses = rng.normal(size=(2, 6, 17, 3)).astype(np.float32)
  once = clip_pipeline.flip_poses(poses, skeleton.H36M_LEFT, skeleton.H36M_RIGHT)
  np.testing.assert_array_equal(once, skeleton.flip_pose(poses))
  np.testing.assert_array_equal(
      clip_pipeline.flip_poses(once, skeleton.H36M_LEFT, skeleton.H36M_RIGHT), poses)
  hp = clip_pipeline.flip_poses(poses, skeleton.MPI3DHP_LEFT, skeleton.MPI3DHP_RIGHT)
  np.testing.assert_array_equal(clip_pipeline.flip_poses(hp, skeleton.MPI3DHP_LEFT,
                                                         skeleton.MPI3DHP_RIGHT), poses)
  with pytest.raises(ValueError, match="disjoint"):
    clip_pipeline.mirror_permutation(17, (1, 2), (2, 3))
  with pytest.raises(ValueError, match="disjoint"):
    clip_pipeline.mirror_permutation(5, (1,), (7,))


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_train_stream_resumes_and_reshuffles():
  sequences = [_toy_sequence(n, name=str(n)) for n in (7, 5, 9)]
  kw = dict(num_frames=3, batch_size=2, seed=3, left=(1,), right=(3,), flip_augment=True)
  num_chunks = len(clip_pipeline.chunk_index([7, 5, 9], 3, True))
  assert num_chunks == 16
  stream = clip_pipeline.train_dataset(sequences, **kw)
  it = iter(stream)
  first = _take(it, 3)
  assert first[0]["input_2d"].shape == (2, 3, 5, 2) and first[0]["target_3d"].shape == (2, 3, 5, 3)
  state = it.get_state()
  after = _take(it, 10)  # 8 steps per epoch: crosses into the second epoch
  resumed = iter(clip_pipeline.train_dataset(sequences, **kw))
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 10), after)
  # A fresh permutation each epoch, and the epoch covers every chunk once.
  source = clip_pipeline.ShuffledClipBatches(
      clip_pipeline.ClipSource(sequences, num_frames=3, flip_augment=True, left=(1,), right=(3,)),
      batch_size=2, seed=3, shard_index=0, shard_count=1, num_epochs=None)
  epoch0 = np.concatenate([pipeline.ShuffledBatchIndices.__getitem__(source, i)
                           for i in range(8)])
  epoch1 = np.concatenate([pipeline.ShuffledBatchIndices.__getitem__(source, i)
                           for i in range(8, 16)])
  assert sorted(epoch0) == list(range(16)) and sorted(epoch1) == list(range(16))
  assert not np.array_equal(epoch0, epoch1)


def test_train_stream_worker_processes_give_the_same_batches():
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  sequences = [_toy_sequence(n, name=str(n)) for n in (7, 5, 9)]
  kw = dict(num_frames=3, batch_size=2, seed=3, left=(1,), right=(3,))
  local = _take(iter(clip_pipeline.train_dataset(sequences, **kw)), 5)
  workers = _take(iter(clip_pipeline.train_dataset(sequences, worker_count=1, **kw)), 5)
  _assert_batches_equal(workers, local)


def test_train_stream_shards_are_disjoint():
  sequences = [_toy_sequence(n, name=str(n)) for n in (7, 5, 9)]
  clips = clip_pipeline.ClipSource(sequences, num_frames=3, flip_augment=False, left=(1,),
                                   right=(3,))
  shards = [clip_pipeline.ShuffledClipBatches(clips, batch_size=2, seed=1, shard_index=s,
                                              shard_count=2, num_epochs=1) for s in range(2)]
  assert len(shards[0]) == len(shards[1]) == 2  # 8 chunks, global batch 4
  rows = [pipeline.ShuffledBatchIndices.__getitem__(shard, step)
          for step, shard in itertools.product(range(2), shards)]
  assert sorted(np.concatenate(rows)) == list(range(8))
  with pytest.raises(ValueError, match="cannot fill"):
    clip_pipeline.train_dataset(sequences, num_frames=3, batch_size=8, seed=0, left=(1,),
                                right=(3,), flip_augment=False, shard_count=2, shard_index=1)


# ----------------------------------------------------------------------------------------------
# Evaluation clips.


def test_eval_clips_last_clip_overlaps_and_short_video_is_padded():
  valid = np.ones(7, bool)
  valid[4] = False
  clips = clip_pipeline.eval_clips(_toy_sequence(7, valid=valid), 3)
  np.testing.assert_array_equal(clips["frame_index"], [[0, 1, 2], [3, 4, 5], [4, 5, 6]])
  np.testing.assert_array_equal(clips["input_2d"][..., 0, 0], clips["frame_index"])
  assert clips["target_3d"].shape == (3, 3, 5, 3) and clips["trajectory"].shape == (3, 3, 1, 3)
  assert clips["real_frame"].all()
  np.testing.assert_array_equal(clips["frame_mask"], [[1, 1, 1], [1, 0, 1], [0, 1, 1]])
  exact = clip_pipeline.eval_clips(_toy_sequence(6), 3)
  np.testing.assert_array_equal(exact["frame_index"], [[0, 1, 2], [3, 4, 5]])
  short = clip_pipeline.eval_clips(_toy_sequence(2), 3)
  np.testing.assert_array_equal(short["frame_index"], [[0, 1, 1]])
  np.testing.assert_array_equal(short["input_2d"][0, :, 0, 0], [0, 1, 1])
  np.testing.assert_array_equal(short["real_frame"], [[True, True, False]])
  np.testing.assert_array_equal(short["frame_mask"], [[True, True, False]])


def _all_batches(sequences, shard_index=0, shard_count=1):
  iterator, count = clip_pipeline.eval_batches(sequences, 3, 2, shard_index=shard_index,
                                               shard_count=shard_count)
  batches = list(iterator)
  assert len(batches) == count
  return batches


def test_eval_batches_pad_to_a_fixed_shape():
  sequences = [_toy_sequence(7, name="a"), _toy_sequence(2, name="b"), _toy_sequence(12, name="c")]
  batches = _all_batches(sequences)
  # Clips per video: 3, 1, 4 -> mini-batches of 2 clips: 2 + 1 + 2.
  assert [(b["action"], b["clip_index"].tolist()) for b in batches] == [
      ("a", [0, 1]), ("a", [2, -1]), ("b", [0, -1]), ("c", [0, 1]), ("c", [2, 3])]
  assert [b["batch_index"] for b in batches] == [0, 1, 2, 3, 4]
  for b in batches:
    assert b["input_2d"].shape == (2, 3, 5, 2) and b["target_3d"].shape == (2, 3, 5, 3)
    assert b["trajectory"].shape == (2, 3, 1, 3) and b["frame_mask"].shape == (2, 3)
    assert b["root_joint"] == 0 and b["intrinsic"].shape == (9,) and b["subject"] == "S0"
  np.testing.assert_array_equal(batches[1]["clip_mask"], [True, False])
  np.testing.assert_array_equal(batches[1]["frame_mask"], [[1, 1, 1], [0, 0, 0]])
  np.testing.assert_array_equal(batches[2]["frame_mask"], [[1, 1, 0], [0, 0, 0]])
  # The real clips of each video are its eval_clips, in order.
  for index, sequence in enumerate(sequences):
    mine = [b for b in batches if b["sequence"] == index]
    stacked = np.concatenate([b["input_2d"][b["clip_mask"]] for b in mine])
    np.testing.assert_array_equal(stacked, clip_pipeline.eval_clips(sequence, 3)["input_2d"])


def test_eval_batches_shards_cover_every_batch_once():
  sequences = [_toy_sequence(7, name="a"), _toy_sequence(2, name="b"), _toy_sequence(12, name="c")]
  everything = {b["batch_index"]: b for b in _all_batches(sequences)}
  seen = []
  for shard in range(3):
    batches = _all_batches(sequences, shard, 3)
    assert len(batches) == 2  # ceil(5 / 3) on every shard
    for b in batches:
      if b["batch_index"] < 0:
        assert not b["clip_mask"].any() and not b["frame_mask"].any()
        continue
      assert b["batch_index"] % 3 == shard
      seen.append(b["batch_index"])
      _assert_batches_equal([b], [everything[b["batch_index"]]])
  assert sorted(seen) == sorted(everything)


def test_clip_length_errors():
  for bad in (0, -3, 2.5):
    with pytest.raises(ValueError, match="num_frames"):
      clip_pipeline.chunk_index([10], bad, True)
    with pytest.raises(ValueError, match="num_frames"):
      clip_pipeline.eval_clips(_toy_sequence(4), bad)
  with pytest.raises(ValueError, match="num_frames"):
    clip_pipeline.eval_batches([_toy_sequence(4)], 0, 2)
  with pytest.raises(ValueError, match="num_frames"):
    clip_pipeline.ClipSource([_toy_sequence(4)], num_frames=0, flip_augment=False, left=(),
                             right=())
  with pytest.raises(ValueError, match="trajectory"):
    videos.VideoSequence(input_2d=np.zeros((3, 5, 2), np.float32),
                         target_3d=np.zeros((3, 5, 3), np.float32),
                         trajectory=np.zeros((2, 1, 3), np.float32),
                         intrinsic=np.zeros(9, np.float32), subject="S0", action="a", camera=0,
                         image_size=(1, 1), valid=np.ones(3, bool), root_joint=0)


# ----------------------------------------------------------------------------------------------
# Human3.6M on the synthetic set.


@pytest.fixture(scope="module")
def h36m_files(tmp_path_factory):
  return synthetic_h36m.generate(tmp_path_factory.mktemp("h36m"), frames_per_sequence=H36M_FRAMES,
                            subjects=["S9", "S11"], actions=list(H36M_ACTIONS))


def test_h36m_videos_from_synthetic_files(h36m_files):
  sequences = h36m.load_h36m_videos(h36m_files["3d"], h36m_files["2d_gt"], ("S11", "S9"))
  assert [(s.subject, s.action, s.camera) for s in sequences[:5]] == [
      ("S11", "Sitting 2", 0), ("S11", "Sitting 2", 1), ("S11", "Sitting 2", 2),
      ("S11", "Sitting 2", 3), ("S11", "Walking", 0)]
  assert len(sequences) == 2 * 2 * 4
  world = safe_load.load_pickled_npz(h36m_files["3d"])["positions_3d"]
  pixels = safe_load.load_pickled_npz(h36m_files["2d_gt"])["positions_2d"]
  for s in sequences:
    cam = cameras.h36m_cameras(s.subject)[s.camera]
    assert len(s) == H36M_FRAMES and s.root_joint == 0 and s.valid.all()
    assert s.image_size == (cam.res_w, cam.res_h)
    for array in (s.input_2d, s.target_3d, s.trajectory, s.intrinsic):
      assert array.dtype == np.float32
    np.testing.assert_array_equal(s.target_3d[:, 0], 0)
    expected = cameras.world_to_camera(world[s.subject][s.action][:, skeleton.H36M32_TO_17], cam)
    np.testing.assert_allclose(s.target_3d + s.trajectory, expected, atol=1e-6)
    np.testing.assert_array_equal(s.input_2d, cameras.normalize_screen_coordinates(
        pixels[s.subject][s.action][s.camera], cam.res_w, cam.res_h))
    # The GT 2D is the distorted projection of the 3D: the intrinsic vector reproduces it.
    reprojected = cameras.project_to_2d(s.target_3d + s.trajectory, s.intrinsic)
    np.testing.assert_allclose(reprojected, s.input_2d, atol=2e-5)


def test_h36m_cpn_file_is_kernel_zero_and_trimmed(h36m_files):
  plain = safe_load.load_pickled_npz(h36m_files["2d_cpn"])
  gmm = safe_load.load_pickled_npz(h36m_files["2d_cpn_gmm"])["positions_2d"]
  assert plain["metadata"] == synthetic_h36m.METADATA
  for subject, actions in plain["positions_2d"].items():
    for action, per_camera in actions.items():
      for array, kernels in zip(per_camera, gmm[subject][action]):
        assert array.dtype == np.float32 and array.shape == (len(kernels), 17, 2)
        np.testing.assert_array_equal(array, kernels[:, :, 0, 1:3])
  sequences = h36m.load_h36m_videos(h36m_files["3d"], h36m_files["2d_cpn"], ["S9"])
  assert {len(s) for s in sequences} == {H36M_FRAMES}  # longer CPN arrays cut to the 3D length


def test_h36m_intrinsic_matches_upstream():
  fixture = parity_dir("d3dp") / "io.npz"
  expected = np.load(fixture)["camera_intrinsic"]
  np.testing.assert_array_equal(h36m.h36m_intrinsic(cameras.h36m_cameras("S9")[0]), expected)


def test_h36m_errors(h36m_files, tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.npz"):
    h36m.load_h36m_videos(tmp_path / "nowhere.npz", h36m_files["2d_gt"], ["S9"])
  with pytest.raises(ValueError, match="subject 'S1'"):
    h36m.load_h36m_videos(h36m_files["3d"], h36m_files["2d_gt"], ["S1"])
  data = safe_load.load_pickled_npz(h36m_files["2d_gt"])["positions_2d"]
  data["S9"]["Walking"][2] = data["S9"]["Walking"][2][:, :16]
  bad = tmp_path / "data_2d_h36m_bad.npz"
  npz.save_npz(bad, positions_2d=data)
  with pytest.raises(ValueError, match=r"data_2d_h36m_bad.npz.*'S9'.*'Walking'.*camera 2.*"
                     r"\(12, 16, 2\)"):
    h36m.load_h36m_videos(h36m_files["3d"], bad, ["S9"])
  with pytest.raises(ValueError, match="plain 2D"):
    h36m.load_h36m_videos(h36m_files["3d"], h36m_files["2d_gt_gmm"], ["S9"])
  data = safe_load.load_pickled_npz(h36m_files["2d_gt"])["positions_2d"]
  data["S9"]["Sitting 2"][1] = data["S9"]["Sitting 2"][1][:-1]
  npz.save_npz(bad, positions_2d=data)
  with pytest.raises(ValueError, match="'Sitting 2'.* camera 1 has 11 frames.*at least as long"):
    h36m.load_h36m_videos(h36m_files["3d"], bad, ["S9"])


# ----------------------------------------------------------------------------------------------
# MPI-INF-3DHP on the synthetic set.


@pytest.fixture(scope="module")
def mpi_files(tmp_path_factory):
  return synthetic_3dhp.generate(tmp_path_factory.mktemp("3dhp"), frames=20, test_frames=10,
                                 subjects=("S1", "S2"), sequences=("Seq1",))


def test_3dhp_joint_mapping_commutes_with_mirroring():
  poses = np.random.default_rng(1).normal(size=(4, 17, 3))
  np.testing.assert_array_equal(
      synthetic_3dhp.to_3dhp_joints(skeleton.flip_pose(poses)),
      clip_pipeline.flip_poses(synthetic_3dhp.to_3dhp_joints(poses), skeleton.MPI3DHP_LEFT,
                               skeleton.MPI3DHP_RIGHT))
  assert synthetic_3dhp.H36M_TO_3DHP[mpi3dhp.ROOT_JOINT] == skeleton.ROOT_JOINT


def test_3dhp_train_from_synthetic_files(mpi_files):
  raw = safe_load.load_pickled_npz(mpi_files["train"])["data"]
  assert list(raw) == ["S1 Seq1", "S2 Seq1"]
  assert list(raw["S1 Seq1"][0]) == list(synthetic_3dhp.TRAIN_CAMERAS)
  assert raw["S1 Seq1"][1] == synthetic_3dhp.TRAIN_FPS
  sequences = mpi3dhp.load_train(mpi_files["train"])
  assert [(s.subject, s.action, s.camera) for s in sequences] == [
      ("S1", "Seq1", "0"), ("S1", "Seq1", "2"), ("S2", "Seq1", "0"), ("S2", "Seq1", "2")]
  for s in sequences:
    anim = raw[f"{s.subject} {s.action}"][0][s.camera]
    assert len(s) == 20 and s.root_joint == 14 and s.valid.all() and s.image_size == (2048, 2048)
    assert s.intrinsic.shape == (0,)
    np.testing.assert_array_equal(s.target_3d[:, 14], 0)
    np.testing.assert_allclose((s.target_3d + s.trajectory) * 1000, anim["data_3d"], atol=1e-3)
    np.testing.assert_array_equal(
        s.input_2d, cameras.normalize_screen_coordinates(anim["data_2d"], 2048, 2048))


def test_3dhp_test_from_synthetic_files(mpi_files):
  raw = safe_load.load_pickled_npz(mpi_files["test"])["data"]
  sequences = mpi3dhp.load_test(mpi_files["test"])
  assert [s.action for s in sequences] == ["TS1", "TS2", "TS3", "TS4", "TS5", "TS6"]
  assert len({len(s) for s in sequences}) == 6
  for s in sequences:
    anim = raw[s.action]
    camera = cameras.mpi3dhp_test_camera(s.action)
    assert s.image_size == ((1920, 1080) if s.action in ("TS5", "TS6") else (2048, 2048))
    assert 0 < s.valid.sum() < len(s)
    np.testing.assert_array_equal(s.valid, anim["valid"] == 1)
    np.testing.assert_array_equal(s.target_3d[:, 14], 0)
    # The 2D is the projection of the 3D with the sequence's test camera.
    w, h = s.image_size
    np.testing.assert_allclose(camera.project((s.target_3d + s.trajectory) * 1000),
                               cameras.image_coordinates(s.input_2d, w, h), atol=0.05)
  batches, count = clip_pipeline.eval_batches(sequences, 8, 2)
  masks = [b["frame_mask"] for b in batches]
  assert len(masks) == count and not all(m.all() for m in masks)


def test_3dhp_errors(mpi_files, tmp_path):
  data = safe_load.load_pickled_npz(mpi_files["test"])["data"]
  cases = {
      "TS7": (dict(data, TS7=data["TS1"]), "TS7"),
      "joints": ({"TS1": {**data["TS1"], "data_3d": data["TS1"]["data_3d"][:, :16]}},
                 r"data_3d.*\(10, 16, 3\)"),
      "valid": ({"TS1": {**data["TS1"], "valid": data["TS1"]["valid"] * 2}}, "0/1"),
      "length": ({"TS1": {**data["TS1"], "data_2d": data["TS1"]["data_2d"][:-1]}}, "9 frames"),
  }
  for name, (content, message) in cases.items():
    path = tmp_path / f"{name}.npz"
    npz.save_npz(path, data=content)
    with pytest.raises(ValueError, match=message):
      mpi3dhp.load_test(path)
  train = safe_load.load_pickled_npz(mpi_files["train"])["data"]
  path = tmp_path / "train_key.npz"
  npz.save_npz(path, data={"S1Seq1": train["S1 Seq1"]})
  with pytest.raises(ValueError, match="S1Seq1"):
    mpi3dhp.load_train(path)
  with pytest.raises(FileNotFoundError):
    mpi3dhp.load_train(tmp_path / "data_train_3dhp_ori.npz")


# ----------------------------------------------------------------------------------------------
# Synthetic file writers.


def test_synthetic_3dhp_deterministic_and_ensure(tmp_path):
  kw = dict(frames=6, test_frames=5, subjects=("S1",), sequences=("Seq2",), train_cameras=("0",),
            test_sequences=("TS1", "TS5"))
  a = synthetic_3dhp.generate(tmp_path / "a", **kw)
  b = synthetic_3dhp.ensure_synthetic_3dhp(tmp_path / "b", **kw)
  for key in a:
    assert a[key].read_bytes() == b[key].read_bytes(), key
    with zipfile.ZipFile(a[key]) as archive:
      assert archive.namelist() == ["data.npy"]
  stamp = b["train"].stat().st_mtime_ns
  b["test"].unlink()
  synthetic_3dhp.ensure_synthetic_3dhp(tmp_path / "b", **kw)
  assert b["test"].is_file() and b["train"].stat().st_mtime_ns == stamp
  with pytest.raises(ValueError, match="TS9"):
    synthetic_3dhp.generate(tmp_path / "c", test_sequences=("TS9",))


def test_ensure_synthetic_data_only_writes_missing_files(tmp_path):
  kw = dict(frames_per_sequence=3, subjects=["S1"], actions=["Posing"])
  paths = synthetic_h36m.ensure_synthetic_data(tmp_path, **kw)
  assert paths["2d_cpn"].name == "data_2d_h36m_cpn_ft_h36m_dbb.npz"
  stamps = {k: p.stat().st_mtime_ns for k, p in paths.items() if k != "2d_cpn"}
  paths["2d_cpn"].unlink()
  synthetic_h36m.ensure_synthetic_data(tmp_path, **kw)
  assert paths["2d_cpn"].is_file()
  assert {k: p.stat().st_mtime_ns for k, p in paths.items() if k != "2d_cpn"} == stamps
