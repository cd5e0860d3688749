r"""Synthetic MPI-INF-3DHP: the synthetic Human3.6M motion in the layout of the `_ori` 3DHP files.

The D3DP-family 3DHP configs read P-STMO-style files built from the camera-space `annot3` (spec
§7.4). This module writes files with exactly that layout from `motion`'s procedural motion, so
the 3DHP path runs without the real data:

- `data_train_3dhp_ori.npz`: `data` = `{"S1 Seq1": [{camera: {'data_2d': float32 [N, 17, 2] px,
  'data_3d': float32 [N, 17, 3] mm}}, fps], ...}`, a few subjects x sequences x 2 cameras.
- `data_test_3dhp_ori.npz`: `data` = `{"TS1".."TS6": {'data_2d', 'data_3d', 'valid': float64
  [N] of 0/1}}`, sequences of different lengths, each with some invalid frames (a short run at
  the start, as when the actor walks in, and one in the middle).

Joints: the 17 "relevant" 3DHP joints come from the 17 Human3.6M joints (`H36M_TO_3DHP`):

  3DHP joint      from Human3.6M       3DHP joint      from Human3.6M
  0 head_top      10 Head              9 R-knee        2 RKnee
  1 neck          8 Thorax             10 R-ankle      3 RFoot
  2 R-shoulder    14 RShoulder         11 L-hip        4 LHip
  3 R-elbow       15 RElbow            12 L-knee       5 LKnee
  4 R-wrist       16 RWrist            13 L-ankle      6 LFoot
  5 L-shoulder    11 LShoulder         14 pelvis       0 Hip
  6 L-elbow       12 LElbow            15 spine        7 Spine
  7 L-wrist       13 LWrist            16 head         9 Neck/Nose
  8 R-hip         1 RHip

Human3.6M's 'Head' is the top of the head and its 'Neck/Nose' sits inside the head, so they play
3DHP's head_top and head; the thorax joint is at the base of the neck, 3DHP's neck. Left and right
map onto 3DHP's left and right, so mirroring commutes with the mapping.

Cameras: the camera frames are those of the Human3.6M cameras of the motion's subject (they frame
the capture volume); the 3D is written in camera-frame millimetres and projected with the pinhole
camera upstream uses for the 3DHP test sequences (`cameras.mpi3dhp_test_camera`): the TS1-4
camera (2048 x 2048) for training and TS1-4, the TS5/6 camera (1920 x 1080) for TS5/6.

  python -m posediff_jax.data.synthetic_3dhp --out data/3dhp [--frames 600] [--seed 0]
"""

import argparse
import pathlib
from typing import Sequence

import numpy as np

from posediff_jax import cameras
from posediff_jax import skeleton
from posediff_jax.data import npz
from posediff_jax.data.synthetic import body
from posediff_jax.data.synthetic import motion

FILE_TRAIN = "data_train_3dhp_ori.npz"
FILE_TEST = "data_test_3dhp_ori.npz"
FILES = {"train": FILE_TRAIN, "test": FILE_TEST}

# Index into the 17 Human3.6M joints of each of the 17 3DHP joints (table in the module docstring).
H36M_TO_3DHP = (10, 8, 14, 15, 16, 11, 12, 13, 1, 2, 3, 4, 5, 6, 0, 7, 9)

TRAIN_SUBJECTS = ("S1", "S2", "S3")
TRAIN_SEQUENCES = ("Seq1", "Seq2")
# Two of the eight cameras P-STMO selects ('0', '1', '2', '4', '5', '6', '7', '8').
TRAIN_CAMERAS = ("0", "2")
TEST_SEQUENCES = cameras.MPI3DHP_TEST_SEQUENCES
TRAIN_FPS = 25
DEFAULT_FRAMES = 600
DEFAULT_TEST_FRAMES = 400
_TEST_LENGTH_STEP = 23  # TS i has test_frames + 23 i frames, so the sequences differ in length
# Keeps these motions apart from the Human3.6M synthetic set generated with the same seed.
_SEED_OFFSET = 7919
_MM_PER_METRE = 1000.0


def to_3dhp_joints(poses: np.ndarray) -> np.ndarray:
  """Human3.6M-17 poses `[..., 17, C]` as 3DHP-17 poses `[..., 17, C]` (`H36M_TO_3DHP`)."""
  poses = np.asarray(poses)
  if poses.ndim < 2 or poses.shape[-2] != 17:
    raise ValueError(f"to_3dhp_joints: expected Human3.6M poses [..., 17, C], got {poses.shape}")
  return poses[..., list(H36M_TO_3DHP), :]


def _motion(index: int, frames: int, seed: int) -> tuple[np.ndarray, str]:
  """Synthetic motion number `index`: (Human3.6M-17 world metres `[T, 17, 3]`, its subject)."""
  # 7 subjects and 15 actions: the first 105 motions are distinct (subject, action) pairs.
  subject = body.SUBJECTS[index % len(body.SUBJECTS)]
  action = motion.ACTIONS[index % len(motion.ACTIONS)]
  moves = motion.synthesize_sequence(subject, action, frames, seed=seed + _SEED_OFFSET)
  return moves[:, list(skeleton.H36M32_TO_17)], subject


def _view(world: np.ndarray, subject: str, camera_index: int, test_camera: str
          ) -> dict[str, np.ndarray]:
  """One camera's `{'data_2d': px, 'data_3d': mm}` of a Human3.6M-17 world-metre motion."""
  cam = cameras.h36m_cameras(subject)[camera_index % 4]
  mm = to_3dhp_joints(np.asarray(cameras.world_to_camera(world.astype(np.float64), cam))
                      * _MM_PER_METRE)
  pixels = cameras.mpi3dhp_test_camera(test_camera).project(mm)
  return {"data_2d": np.asarray(pixels, np.float32), "data_3d": mm.astype(np.float32)}


def _invalid_runs(rng: np.random.Generator, length: int) -> np.ndarray:
  """float64 `[length]` 0/1: a few invalid frames at the start and one run in the middle."""
  valid = np.ones(length)
  valid[:int(rng.integers(1, 4))] = 0
  run = int(rng.integers(2, 6))
  start = int(rng.integers(length // 3, max(length // 3 + 1, length - run)))
  valid[start:start + run] = 0
  return valid


def _check_names(what: str, names: Sequence[str], pattern: str) -> tuple[str, ...]:
  if isinstance(names, str) or not names:
    raise ValueError(f"{what}: expected a non-empty sequence of names like {pattern!r}, got "
                     f"{names!r}")
  return tuple(str(n) for n in names)


def generate(out_dir, *, frames: int = DEFAULT_FRAMES, test_frames: int = DEFAULT_TEST_FRAMES,
             seed: int = 0, subjects: Sequence[str] = TRAIN_SUBJECTS,
             sequences: Sequence[str] = TRAIN_SEQUENCES,
             train_cameras: Sequence[str] = TRAIN_CAMERAS,
             test_sequences: Sequence[str] = TEST_SEQUENCES,
             only_missing: bool = False) -> dict[str, pathlib.Path]:
  """Writes the two synthetic 3DHP files into `out_dir` (created if needed).

  Args:
    out_dir: destination folder.
    frames: frames of every training video.
    test_frames: frames of TS1; TS i has `test_frames + 23 (i - 1)`.
    seed: generator seed; equal arguments give identical files.
    subjects: training subjects ('S1'...'S8').
    sequences: training sequences per subject ('Seq1', 'Seq2').
    train_cameras: camera names of each training sequence.
    test_sequences: subset of 'TS1'...'TS6'.
    only_missing: leave files that already exist in `out_dir` untouched.

  Returns:
    {'train', 'test'} -> path of each file.
  """
  for name, value in (("frames", frames), ("test_frames", test_frames)):
    if int(value) != value or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  subjects = _check_names("subjects", subjects, "S1")
  sequences = _check_names("sequences", sequences, "Seq1")
  train_cameras = _check_names("train_cameras", train_cameras, "0")
  test_sequences = _check_names("test_sequences", test_sequences, "TS1")
  for ts in test_sequences:
    cameras.mpi3dhp_test_camera(ts)  # raises for an unknown name
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {key: out_dir / name for key, name in FILES.items()}

  if not (only_missing and paths["train"].is_file()):
    train = {}
    for s, subject in enumerate(subjects):
      for q, sequence in enumerate(sequences):
        world, h36m_subject = _motion(len(sequences) * s + q, int(frames), seed)
        views = {camera: _view(world, h36m_subject, c, TEST_SEQUENCES[0])
                 for c, camera in enumerate(train_cameras)}
        train[f"{subject} {sequence}"] = [views, TRAIN_FPS]
    npz.save_npz(paths["train"], data=train)

  if not (only_missing and paths["test"].is_file()):
    test = {}
    for ts in test_sequences:
      index = TEST_SEQUENCES.index(ts)
      length = int(test_frames) + _TEST_LENGTH_STEP * index
      # Test motions are numbered after the largest possible training set (8 subjects x 2).
      world, h36m_subject = _motion(16 + index, length, seed)
      view = _view(world, h36m_subject, index, ts)
      test[ts] = {**view, "valid": _invalid_runs(body.rng(seed, index), length)}
    npz.save_npz(paths["test"], data=test)
  return paths


def ensure_synthetic_3dhp(root, **kwargs) -> dict[str, pathlib.Path]:
  """Generates the synthetic 3DHP files missing from `root`; existing files are never touched.

  Args:
    root: data folder.
    **kwargs: passed to `generate` for the missing files.

  Returns:
    {'train', 'test'} -> path.
  """
  root = pathlib.Path(root)
  paths = {key: root / name for key, name in FILES.items()}
  if all(p.is_file() for p in paths.values()):
    return paths
  return generate(root, **kwargs, only_missing=True)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m posediff_jax.data.synthetic_3dhp",
      description="Write synthetic MPI-INF-3DHP files in the layout of data_*_3dhp_ori.npz.")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                      help=f"frames per training video (default {DEFAULT_FRAMES})")
  parser.add_argument("--test-frames", type=int, default=DEFAULT_TEST_FRAMES,
                      help=f"frames of TS1; later sequences are longer (default "
                           f"{DEFAULT_TEST_FRAMES})")
  parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  args = parser.parse_args(argv)
  paths = generate(args.out, frames=args.frames, test_frames=args.test_frames, seed=args.seed)
  for path in paths.values():
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
  main()
