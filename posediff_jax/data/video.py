"""Whole videos and their fixed-length clips, for the video families (D3DP, FinePOSE, DSGDiffu).

These families lift a clip of F frames (243 upstream) at once, so the data side keeps each video
whole (`VideoSequence`) and cuts it into clips the way upstream's generators do (spec §7.3):

- Training (`ChunkedGenerator_Seq`): every video becomes ceil(N / F) non-overlapping chunks on a
  grid centred on the video (`chunk_index`); chunk frames before the first or after the last
  frame repeat that frame. With flip augmentation every chunk also appears mirrored: x negated
  and left/right joints swapped, in the 2D and the 3D (`ClipSource`). `train_dataset` reshuffles
  the chunks every epoch and splits each global batch across processes
  (`pipeline.ShuffledBatchIndices`); a partial last global batch is dropped.
- Evaluation (`UnchunkedGenerator_Seq` + `eval_data_prepare`): clip i covers frames
  [F i, F i + F), except that the last clip is the last F frames, so it overlaps the one before;
  a video shorter than F is right-padded with its last frame (`eval_clips`). `eval_batches` runs
  one video at a time in mini-batches of up to `batch_size` clips, padded to a fixed shape.

Readers (all pickled `.npz` files go through `posediff_jax.safe_load`):

- Human3.6M, VideoPose3D files (`load_h36m_videos`): `data_3d_h36m.npz` (world metres, 32 joints)
  and a plain 2D file such as `data_2d_h36m_cpn_ft_h36m_dbb.npz` (`{subject: {action: [4 x
  [N', 17, 2]]}}` pixels). One sequence per (subject, action, camera).
- MPI-INF-3DHP, `data_train_3dhp_ori.npz` / `data_test_3dhp_ori.npz` (`load_3dhp_train`,
  `load_3dhp_test`; layouts in spec §7.4): camera-frame millimetres, converted to metres here.

Every array is numpy; the 2D is in normalised screen units (`cameras.normalize_screen_coordinates`)
and the 3D in camera-frame metres.
"""

import dataclasses
import math
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from posediff_jax import cameras
from posediff_jax import skeleton
from posediff_jax.data import h36m
from posediff_jax.data import pipeline

H36M_ROOT_JOINT = skeleton.ROOT_JOINT
MPI3DHP_ROOT_JOINT = skeleton.MPI3DHP_ROOT_JOINT
MPI3DHP_NUM_JOINTS = 17
# Upstream main_3dhp.py normalises all training 2D with 2048 x 2048, whatever the camera.
MPI3DHP_TRAIN_IMAGE_SIZE = (2048, 2048)
_MM_PER_METRE = np.float32(1000)


@dataclasses.dataclass(frozen=True, eq=False)
class VideoSequence:
  """One video seen by one camera: per-frame 2D input, 3D target and root trajectory.

  Attributes:
    input_2d: float32 `[N, J, 2]`, normalised screen coordinates.
    target_3d: float32 `[N, J, 3]`, camera-frame metres relative to the root joint, whose own
      entry is 0.
    trajectory: float32 `[N, 1, 3]`, the root joint's absolute camera-frame position, metres.
    intrinsic: float32 `[9]`, VideoPose3D's normalised `[fx, fy, cx, cy, k1, k2, k3, p1, p2]`
      (Human3.6M); float32 `[0]` for MPI-INF-3DHP, whose files hold no camera
      (`cameras.mpi3dhp_test_camera` gives the evaluator's pixel camera).
    subject: e.g. 'S9'; the sequence name for 3DHP test videos ('TS1').
    action: the full sequence key, e.g. 'Directions 1' ('Seq1' for 3DHP training, 'TS1' for test).
    camera: index into the subject's camera list (Human3.6M), camera name ('0'...'8') for 3DHP
      training, the sequence name ('TS1') for 3DHP test videos.
    image_size: `(w, h)` in pixels that the 2D was normalised with.
    valid: bool `[N]`; all True except the invalid frames of 3DHP test videos.
    root_joint: 0 (Human3.6M hip) or 14 (3DHP pelvis).
  """
  input_2d: np.ndarray
  target_3d: np.ndarray
  trajectory: np.ndarray
  intrinsic: np.ndarray
  subject: str
  action: str
  camera: int | str
  image_size: tuple[int, int]
  valid: np.ndarray
  root_joint: int

  def __post_init__(self):
    where = f"VideoSequence {self.subject}/{self.action} camera {self.camera!r}"
    x2d = self.input_2d
    if x2d.ndim != 3 or x2d.shape[-1] != 2 or len(x2d) < 1:
      raise ValueError(f"{where}: input_2d must be [N >= 1, J, 2], got {x2d.shape}")
    n, joints = x2d.shape[:2]
    expected = {"target_3d": (n, joints, 3), "trajectory": (n, 1, 3), "valid": (n,)}
    for name, shape in expected.items():
      found = getattr(self, name).shape
      if found != shape:
        raise ValueError(f"{where}: {name} must have shape {shape} (from input_2d {x2d.shape}), "
                         f"got {found}")
    if self.valid.dtype != np.bool_:
      raise ValueError(f"{where}: valid must be bool, got {self.valid.dtype}")
    if self.intrinsic.ndim != 1 or len(self.intrinsic) not in (0, 9):
      raise ValueError(f"{where}: intrinsic must be [9] or [0], got {self.intrinsic.shape}")
    if not 0 <= self.root_joint < joints:
      raise ValueError(f"{where}: root_joint {self.root_joint} is outside the {joints} joints")

  def __len__(self) -> int:
    return len(self.input_2d)

  @property
  def num_joints(self) -> int:
    return self.input_2d.shape[1]


def _check_num_frames(num_frames) -> int:
  if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
    raise ValueError(f"num_frames (the clip length F) must be an integer >= 1, got {num_frames!r}")
  return int(num_frames)


# ----------------------------------------------------------------------------------------------
# Human3.6M (VideoPose3D files).


def h36m_intrinsic(cam: cameras.Camera) -> np.ndarray:
  """VideoPose3D's normalised intrinsic vector of one Human3.6M camera (`cam['intrinsic']`).

  Args:
    cam: a camera from `cameras.h36m_cameras`.

  Returns:
    float32 `[9]`: focal / w * 2, the normalised centre, k1..k3, p1, p2; float32 arithmetic as
    upstream's, so equal to its values bit for bit.
  """
  focal = np.asarray(cam.focal_length, np.float32) / cam.res_w * 2
  centre = cameras.normalize_screen_coordinates(np.asarray(cam.center, np.float32), cam.res_w,
                                                cam.res_h)
  return np.concatenate([focal, centre, np.asarray(cam.radial_distortion, np.float32),
                         np.asarray(cam.tangential_distortion, np.float32)]).astype(np.float32)


def _load_plain_2d(path) -> dict[str, dict[str, list[np.ndarray]]]:
  """`{subject: {action: [one [N', 17, 2] pixel array per camera]}}` from a VideoPose3D 2D file."""
  # The checks are the frame readers' (h36m); only the per-camera layout differs.
  value, members = h36m._load_member(path, "positions_2d")  # pylint: disable=protected-access
  h36m._check_metadata(members.get("metadata"), path)  # pylint: disable=protected-access
  h36m._check_nested_dict(value, path, "positions_2d")  # pylint: disable=protected-access
  out = {}
  for subject, actions in value.items():
    out[subject] = {}
    for action, per_camera in actions.items():
      where = f"{path}: positions_2d[{subject!r}][{action!r}]"
      if not isinstance(per_camera, (list, tuple)):
        raise ValueError(f"{where}: expected a list with one array per camera, found "
                         f"{type(per_camera).__name__}")
      arrays = []
      for index, array in enumerate(per_camera):
        camera_where = f"{where} camera {index}"
        array = h36m._float_array(array, camera_where)  # pylint: disable=protected-access
        if array.ndim != 3 or array.shape[1:] != (skeleton.NUM_JOINTS, 2):
          raise ValueError(f"{camera_where}: expected plain 2D [N, {skeleton.NUM_JOINTS}, 2] "
                           f"(pixels; a GMM file is not a video-family input), found shape "
                           f"{array.shape}")
        h36m._check_finite(array, camera_where)  # pylint: disable=protected-access
        arrays.append(array)
      out[subject][action] = arrays
  return out


def load_h36m_videos(path_3d, path_2d, subjects: Sequence[str]) -> list[VideoSequence]:
  """Reads Human3.6M videos from VideoPose3D files, as D3DP's main.py prepares them.

  The 3D is reduced to 17 joints, moved into each camera's frame, and split into the root
  trajectory and root-relative joints. The 2D is cut to the 3D length (some detection files run
  longer) and normalised with that camera's resolution.

  Args:
    path_3d: `data_3d_h36m.npz`.
    path_2d: a plain 2D file, e.g. `data_2d_h36m_cpn_ft_h36m_dbb.npz` or `data_2d_h36m_gt.npz`.
    subjects: e.g. ('S9', 'S11').

  Returns:
    One `VideoSequence` per (subject, action, camera), in that nesting order: subjects as given,
    actions in the 2D file's order (upstream's `fetch`), the 4 cameras in order.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: a subject or action missing from either file, a 2D array that is not
      `[N', 17, 2]` or is shorter than its 3D, a camera count other than 4, non-finite values;
      the message names the file, subject, action and camera.
  """
  if isinstance(subjects, str):
    raise ValueError(f"subjects must be a sequence of names, got the string {subjects!r}")
  subjects = tuple(subjects)
  if not subjects:
    raise ValueError("load_h36m_videos: no subjects given")
  positions_3d = h36m.load_positions_3d(path_3d)
  positions_2d = _load_plain_2d(path_2d)
  sequences = []
  for subject, action, index, cam, world, pixels in h36m.camera_sequences(
      path_3d, positions_3d, path_2d, positions_2d, subjects):
    input_2d = cameras.normalize_screen_coordinates(pixels[:len(world)], cam.res_w, cam.res_h)
    positions = np.asarray(cameras.world_to_camera(world, cam), np.float32)
    sequences.append(VideoSequence(
        input_2d=input_2d.astype(np.float32, copy=False),
        target_3d=skeleton.root_relative(positions), trajectory=positions[:, :1].copy(),
        intrinsic=h36m_intrinsic(cam), subject=subject, action=action, camera=index,
        image_size=(cam.res_w, cam.res_h), valid=np.ones(len(world), bool),
        root_joint=H36M_ROOT_JOINT))
  return sequences


# ----------------------------------------------------------------------------------------------
# MPI-INF-3DHP (P-STMO-style `_ori` files).


def _load_3dhp_data(path) -> dict:
  value, _ = h36m._load_member(path, "data")  # pylint: disable=protected-access
  if not isinstance(value, dict) or not value:
    raise ValueError(f"{path}: 'data' must be a non-empty pickled dict, found "
                     f"{type(value).__name__} {value if isinstance(value, dict) else ''}")
  return value


def _3dhp_array(anim: dict, key: str, channels: int, where: str) -> np.ndarray:
  if key not in anim:
    raise ValueError(f"{where}: no {key!r} entry; found {sorted(anim)}")
  array = h36m._float_array(anim[key], f"{where}[{key!r}]")  # pylint: disable=protected-access
  if array.ndim != 3 or array.shape[1:] != (MPI3DHP_NUM_JOINTS, channels) or len(array) < 1:
    raise ValueError(f"{where}[{key!r}]: expected [N >= 1, {MPI3DHP_NUM_JOINTS}, {channels}] (the "
                     f"17 relevant 3DHP joints), found shape {array.shape}")
  h36m._check_finite(array, f"{where}[{key!r}]")  # pylint: disable=protected-access
  return array


def _3dhp_sequence(anim, where: str, *, subject: str, action: str, camera: str,
                   image_size: tuple[int, int], with_valid: bool) -> VideoSequence:
  """One 3DHP video from `{'data_2d': [N,17,2] px, 'data_3d': [N,17,3] mm[, 'valid': [N]]}`."""
  if not isinstance(anim, dict):
    raise ValueError(f"{where}: expected a dict with 'data_2d' and 'data_3d', found "
                     f"{type(anim).__name__}")
  pixels = _3dhp_array(anim, "data_2d", 2, where)
  mm = _3dhp_array(anim, "data_3d", 3, where)
  if len(pixels) != len(mm):
    raise ValueError(f"{where}: data_2d has {len(pixels)} frames but data_3d has {len(mm)}")
  if with_valid:
    if "valid" not in anim:
      raise ValueError(f"{where}: no 'valid' entry; found {sorted(anim)}")
    valid = np.asarray(anim["valid"])
    if valid.shape != (len(mm),) or not np.isin(valid, (0, 1)).all():
      raise ValueError(f"{where}['valid']: expected [{len(mm)}] of 0/1 (or bool), found shape "
                       f"{valid.shape} with values {np.unique(valid)[:5].tolist()}")
    valid = valid.astype(bool)
  else:
    valid = np.ones(len(mm), bool)
  root = mm[:, MPI3DHP_ROOT_JOINT:MPI3DHP_ROOT_JOINT + 1]
  # Upstream subtracts the root in the file's mm; its model divides by 1000 in float32.
  relative = (mm - root).astype(np.float32) / _MM_PER_METRE
  w, h = image_size
  return VideoSequence(
      input_2d=cameras.normalize_screen_coordinates(pixels, w, h).astype(np.float32, copy=False),
      target_3d=relative, trajectory=root.astype(np.float32) / _MM_PER_METRE,
      intrinsic=np.zeros(0, np.float32), subject=subject, action=action, camera=camera,
      image_size=(w, h), valid=valid, root_joint=MPI3DHP_ROOT_JOINT)


def load_3dhp_train(path) -> list[VideoSequence]:
  """Reads `data_train_3dhp_ori.npz`: `{"S1 Seq1": [{camera: {data_2d, data_3d}}, fps], ...}`.

  Args:
    path: the `.npz` file.

  Returns:
    One `VideoSequence` per (sequence, camera) in file order; subject 'S1', action 'Seq1',
    camera the file's camera name. 2D normalised with 2048 x 2048 as upstream does for every
    training camera; 3D root-relative at the pelvis (joint 14), in metres.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a key that is not 'S<i> Seq<j>', an entry that is not `[dict, fps]`, or an array
      of the wrong shape; the message names the file, sequence and camera.
  """
  data = _load_3dhp_data(path)
  sequences = []
  for key, entry in data.items():
    where = f"{path}: data[{key!r}]"
    parts = str(key).split(" ")
    if len(parts) != 2:
      raise ValueError(f"{where}: expected a key 'S<subject> Seq<sequence>', e.g. 'S1 Seq1'")
    if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], dict):
      raise ValueError(f"{where}: expected [{{camera: {{'data_2d', 'data_3d'}}}}, fps], found "
                       f"{type(entry).__name__}")
    for camera, anim in entry[0].items():
      sequences.append(_3dhp_sequence(
          anim, f"{where}[0][{camera!r}]", subject=parts[0], action=parts[1], camera=str(camera),
          image_size=MPI3DHP_TRAIN_IMAGE_SIZE, with_valid=False))
  return sequences


def load_3dhp_test(path) -> list[VideoSequence]:
  """Reads `data_test_3dhp_ori.npz`: `{"TS1": {data_2d, data_3d, valid}, ..., "TS6": ...}`.

  Args:
    path: the `.npz` file.

  Returns:
    One `VideoSequence` per test sequence in file order; subject, action and camera are all the
    sequence name. 2D normalised with 2048 x 2048 (TS1-4) or 1920 x 1080 (TS5/6); `valid` from
    the file.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unknown sequence name, a missing entry, a wrong shape, or `valid` not 0/1.
  """
  data = _load_3dhp_data(path)
  sequences = []
  for key, anim in data.items():
    where = f"{path}: data[{key!r}]"
    try:
      image_size = cameras.mpi3dhp_test_camera(str(key)).image_size
    except ValueError as error:
      raise ValueError(f"{where}: {error}") from None
    sequences.append(_3dhp_sequence(anim, where, subject=str(key), action=str(key),
                                    camera=str(key), image_size=image_size, with_valid=True))
  return sequences


# ----------------------------------------------------------------------------------------------
# Training clips.


def chunk_index(lengths: Sequence[int], num_frames: int, flip_augment: bool) -> np.ndarray:
  """Upstream `ChunkedGenerator_Seq`'s list of training chunks.

  A video of N frames gives n = ceil(N / F) chunks of F frames on a grid centred on the video:
  chunk k starts at `k F - (n F - N) // 2`, so the grid overhangs both ends by up to F - 1 frames
  in total (the left overhang is the smaller one).

  Args:
    lengths: frames N of each video (each >= 1).
    num_frames: F.
    flip_augment: also list every chunk mirrored.

  Returns:
    int64 `[n_chunks, 3]` rows `(video index, start frame (may be < 0), flipped 0/1)`, in
    upstream's order: video by video, each video's unflipped chunks, then its flipped ones.
  """
  num_frames = _check_num_frames(num_frames)
  rows = []
  for video, length in enumerate(lengths):
    if int(length) != length or length < 1:
      raise ValueError(f"chunk_index: video {video} has length {length!r}; expected >= 1 frames")
    count = -(-int(length) // num_frames)
    starts = np.arange(count) * num_frames - (count * num_frames - int(length)) // 2
    for flip in ((0, 1) if flip_augment else (0,)):
      rows.append(np.stack([np.full(count, video), starts, np.full(count, flip)], axis=1))
  if not rows:
    return np.zeros((0, 3), np.int64)
  return np.concatenate(rows).astype(np.int64)


def mirror_permutation(num_joints: int, left: Sequence[int], right: Sequence[int]) -> np.ndarray:
  """The joint permutation that swaps `left[i]` with `right[i]`: int `[num_joints]`, an involution.

  Raises:
    ValueError: `left` and `right` differ in length, overlap, repeat a joint or leave the range.
  """
  left, right = tuple(int(j) for j in left), tuple(int(j) for j in right)
  both = left + right
  if (len(left) != len(right) or len(set(both)) != len(both)
      or any(not 0 <= j < num_joints for j in both)):
    raise ValueError(f"left {left} and right {right} must be equally long, disjoint lists of "
                     f"distinct joints in [0, {num_joints})")
  perm = np.arange(num_joints)
  perm[list(left)], perm[list(right)] = right, left
  return perm


def flip_poses(poses: np.ndarray, left: Sequence[int], right: Sequence[int]) -> np.ndarray:
  """Mirrors poses: x (channel 0) negated and left/right joints swapped, as upstream's flip.

  Args:
    poses: `[..., J, C]` 2D or 3D poses.
    left: left joints; `left[i]` mirrors `right[i]`.
    right: right joints.

  Returns:
    `[..., J, C]` in the input's dtype; flipping twice gives the input back.
  """
  poses = np.asarray(poses)
  if poses.ndim < 2:
    raise ValueError(f"flip_poses: expected poses [..., J, C], got shape {poses.shape}")
  sign = np.ones(poses.shape[-1], poses.dtype)
  sign[0] = -1
  return poses[..., mirror_permutation(poses.shape[-2], left, right), :] * sign


def _check_joint_count(sequences: Sequence[VideoSequence]) -> int:
  if not sequences:
    raise ValueError("no video sequences given")
  counts = {s.num_joints for s in sequences}
  if len(counts) > 1:
    raise ValueError(f"the sequences have different joint counts {sorted(counts)}")
  return counts.pop()


class ClipSource:
  """Random access to the training chunks of a list of videos (a grain data source).

  Element i is chunk `chunks[i]` (see `chunk_index`): `{"input_2d": float32 [F, J, 2],
  "target_3d": float32 [F, J, 3]}`, edge-padded outside the video, mirrored when flipped.
  """

  def __init__(self, sequences: Sequence[VideoSequence], *, num_frames: int, flip_augment: bool,
               left: Sequence[int], right: Sequence[int]):
    self._sequences = tuple(sequences)
    self._num_frames = _check_num_frames(num_frames)
    self._left, self._right = tuple(left), tuple(right)
    mirror_permutation(_check_joint_count(self._sequences), left, right)  # validates left/right
    self.chunks = chunk_index([len(s) for s in self._sequences], num_frames, flip_augment)

  def __len__(self) -> int:
    return len(self.chunks)

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    video, start, flip = self.chunks[int(index)]
    sequence = self._sequences[video]
    # Clamping the frame indices is upstream's np.pad(..., 'edge').
    frames = np.clip(np.arange(start, start + self._num_frames), 0, len(sequence) - 1)
    clip = {"input_2d": sequence.input_2d[frames], "target_3d": sequence.target_3d[frames]}
    if flip:
      clip = {key: flip_poses(poses, self._left, self._right) for key, poses in clip.items()}
    return clip

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Chunks `indices` stacked: `input_2d [B, F, J, 2]`, `target_3d [B, F, J, 3]`, `sequence [B]`.

    `sequence` (int32) is each chunk's video index, to look up per-video data such as the action.
    """
    clips = [self[i] for i in indices]
    return {"input_2d": np.stack([c["input_2d"] for c in clips]),
            "target_3d": np.stack([c["target_3d"] for c in clips]),
            "sequence": self.chunks[np.asarray(indices, np.int64), 0].astype(np.int32)}

  def __repr__(self) -> str:
    return f"ClipSource({len(self._sequences)} videos, {len(self)} chunks of {self._num_frames})"


class ShuffledClipBatches(pipeline.ShuffledBatchIndices):
  """`pipeline.ShuffledBatchIndices` over the chunks of a `ClipSource`: element i is a batch."""

  def __init__(self, clips: ClipSource, *, batch_size: int, seed: int, shard_index: int,
               shard_count: int, num_epochs: int | None, order: str = "seeded"):
    super().__init__(len(clips), batch_size=batch_size, seed=seed, shard_index=shard_index,
                     shard_count=shard_count, num_epochs=num_epochs, order=order)
    self._clips = clips

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    return self._clips.gather(super().__getitem__(index))


def train_dataset(sequences: Sequence[VideoSequence], *, num_frames: int, batch_size: int,
                  seed: int, left: Sequence[int], right: Sequence[int], shard_index: int = 0,
                  shard_count: int = 1, flip_augment: bool = True, worker_count: int = 0,
                  num_epochs: int | None = None, order: str = "seeded") -> grain.IterDataset:
  """The training stream of clip batches, reshuffled every epoch and split across processes.

  Batches are `{"input_2d": float32 [batch_size, F, J, 2], "target_3d": float32 [batch_size, F,
  J, 3], "sequence": int32 [batch_size]}` (the video each chunk comes from). Each epoch is a fresh
  permutation of all chunks (from `seed` and the epoch); global batch i is the next
  `batch_size * shard_count` chunks and process `shard_index` keeps every `shard_count`-th one.
  Upstream shuffles with one `RandomState(1234)`; `order="upstream"` does the same with
  `RandomState(seed)`. Upstream keeps a partial last batch; here a partial last global batch is
  dropped so every batch has one shape. Iterators from `iter(...)` support `get_state()` /
  `set_state()`.

  Args:
    sequences: the training videos (all with the same joint count).
    num_frames: clip length F.
    batch_size: chunks per batch on this process.
    seed: seeds the shuffles.
    left: left joints (mirrored with `right` in flipped chunks).
    right: right joints.
    shard_index: this process's index (`jax.process_index()`).
    shard_count: the number of processes.
    flip_augment: also train on every chunk mirrored (upstream's default).
    worker_count: > 0 assembles batches in that many worker processes.
    num_epochs: None repeats forever; otherwise the stream ends after that many epochs.
    order: "seeded" (a permutation from (seed, epoch)) or "upstream" (successive permutations of
      one RandomState(seed), upstream's `ChunkedGenerator` order).

  Returns:
    A checkpointable `grain.IterDataset`.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs must be None or > 0, got {num_epochs}")
  clips = ClipSource(sequences, num_frames=num_frames, flip_augment=flip_augment, left=left,
                     right=right)
  if len(clips) < batch_size * shard_count:
    raise ValueError(f"{len(clips)} training chunks of {num_frames} frames cannot fill one batch "
                     f"of {batch_size} on each of {shard_count} process(es)")
  source = ShuffledClipBatches(clips, batch_size=batch_size, seed=seed, shard_index=shard_index,
                               shard_count=shard_count, num_epochs=num_epochs, order=order)
  return pipeline.training_stream(grain.MapDataset.source(source), worker_count)


# ----------------------------------------------------------------------------------------------
# Evaluation clips.


def num_eval_clips(length: int, num_frames: int) -> int:
  """Clips of one video at evaluation: ceil(N / F), at least 1."""
  return max(1, -(-int(length) // _check_num_frames(num_frames)))


def _eval_frames(length: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """(frame index int32 `[n_clips, F]` clamped into the video, real-frame mask `[n_clips, F]`)."""
  count = num_eval_clips(length, num_frames)
  starts = np.arange(count) * num_frames
  # Upstream quirk (spec §7.3): the last clip is the last F frames and overlaps the one before.
  starts[-1] = max(length - num_frames, 0)
  frames = starts[:, None] + np.arange(num_frames)
  return np.minimum(frames, length - 1).astype(np.int32), frames < length


def eval_clips(sequence: VideoSequence, num_frames: int) -> dict[str, np.ndarray]:
  """A whole video as upstream's evaluation clips (`eval_data_prepare`).

  Clip i covers frames [F i, F i + F) except the last, which is the last F frames; frames in the
  overlap appear in two clips, and upstream's metrics count them twice. A video shorter than F
  gives one clip right-padded with its last frame.

  Args:
    sequence: the video.
    num_frames: clip length F.

  Returns:
    `input_2d [n, F, J, 2]`, `target_3d [n, F, J, 3]`, `trajectory [n, F, 1, 3]`, `frame_index`
    int32 `[n, F]` (the video frame each entry shows; padding repeats the last), `real_frame`
    bool `[n, F]` (False on padding) and `frame_mask` bool `[n, F]` (real and valid).
  """
  frames, real = _eval_frames(len(sequence), num_frames)
  return {"input_2d": sequence.input_2d[frames], "target_3d": sequence.target_3d[frames],
          "trajectory": sequence.trajectory[frames], "frame_index": frames, "real_frame": real,
          "frame_mask": real & sequence.valid[frames]}


def eval_batches(sequences: Sequence[VideoSequence], num_frames: int, batch_size: int,
                 shard_index: int = 0, shard_count: int = 1
                 ) -> tuple[Iterator[dict[str, Any]], int]:
  """Evaluation mini-batches: up to `batch_size` clips of one video, padded to a fixed shape.

  The global mini-batches follow upstream's loop: video by video in the given order, each video's
  `eval_clips` in slices of `batch_size`. A slice with fewer clips is padded by repeating its last
  clip, with `clip_mask` False on the padding, so one compiled function serves every batch.

  Data parallel: process `shard_index` gets global mini-batches `shard_index`, `shard_index +
  shard_count`, ...; every process yields the same number of batches, the ones past the end
  being all padding (`clip_mask` all False, `batch_index` -1), so collectives stay in step.

  Args:
    sequences: the test videos.
    num_frames: clip length F.
    batch_size: clips per mini-batch (upstream `-b`: 4 on Human3.6M, 2 on 3DHP).
    shard_index: this process's index.
    shard_count: the number of processes.

  Returns:
    `(iterator, number of batches on this process)`. Each batch holds the `eval_clips` arrays
    with a leading `[batch_size]` axis (`input_2d [B, F, J, 2]`, `target_3d [B, F, J, 3]`,
    `trajectory [B, F, 1, 3]`, `frame_index`, `real_frame`, `frame_mask [B, F]`; the masks are
    False on padding clips), `clip_mask` bool `[B]`, `clip_index` int32 `[B]` (clip number within
    the video, -1 on padding), and the video's `sequence` (index into `sequences`), `subject`,
    `action`, `camera`, `intrinsic`, `image_size`, `root_joint`, plus `batch_index` (the global
    mini-batch number, -1 for the filler batches).
  """
  num_frames = _check_num_frames(num_frames)
  if batch_size <= 0:
    raise ValueError(f"eval batch_size must be > 0, got {batch_size}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  sequences = tuple(sequences)
  _check_joint_count(sequences)
  plan = [(video, first) for video, sequence in enumerate(sequences)
          for first in range(0, num_eval_clips(len(sequence), num_frames), batch_size)]
  per_shard = math.ceil(len(plan) / shard_count)

  def batch(global_index: int) -> dict[str, Any]:
    video, first = plan[min(global_index, len(plan) - 1)]
    sequence = sequences[video]
    frames, real = _eval_frames(len(sequence), num_frames)
    clip_index = np.arange(first, first + batch_size)
    clip_mask = (clip_index < len(frames)) & (global_index < len(plan))
    rows = np.minimum(clip_index, len(frames) - 1)
    frames, real = frames[rows], real[rows] & clip_mask[:, None]
    return {
        "input_2d": sequence.input_2d[frames], "target_3d": sequence.target_3d[frames],
        "trajectory": sequence.trajectory[frames], "frame_index": frames, "real_frame": real,
        "frame_mask": real & sequence.valid[frames], "clip_mask": clip_mask,
        "clip_index": np.where(clip_mask, clip_index, -1).astype(np.int32), "sequence": video,
        "subject": sequence.subject, "action": sequence.action, "camera": sequence.camera,
        "intrinsic": sequence.intrinsic, "image_size": sequence.image_size,
        "root_joint": sequence.root_joint,
        "batch_index": global_index if global_index < len(plan) else -1}

  def generate():
    for local in range(per_shard):
      yield batch(shard_index + local * shard_count)

  return generate(), per_shard
