"""Fixed-length clips of whole videos, for the video families (D3DP, FinePOSE, DSGDiffu).

These families lift a clip of F frames (243 upstream) at once, so the readers keep each video
whole (`videos.VideoSequence`, from `data.h36m.load_h36m_videos` or `data.mpi3dhp`) and this
module cuts it into clips the way upstream's generators do (spec §7.3):

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
"""

import math
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from posediff_jax.data import pipeline
from posediff_jax.data import videos


def _check_num_frames(num_frames) -> int:
  if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
    raise ValueError(f"num_frames (the clip length F) must be an integer >= 1, got {num_frames!r}")
  return int(num_frames)


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


def _check_joint_count(sequences: Sequence[videos.VideoSequence]) -> int:
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

  def __init__(self, sequences: Sequence[videos.VideoSequence], *, num_frames: int,
               flip_augment: bool, left: Sequence[int], right: Sequence[int]):
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


def train_dataset(sequences: Sequence[videos.VideoSequence], *, num_frames: int, batch_size: int,
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
  pipeline.check_train_shard(batch_size, shard_index, shard_count)
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


def eval_clips(sequence: videos.VideoSequence, num_frames: int) -> dict[str, np.ndarray]:
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


def eval_batches(sequences: Sequence[videos.VideoSequence], num_frames: int, batch_size: int,
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
  pipeline.check_shard_index(shard_index, shard_count)
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
