r"""Synthetic Human3.6M: `motion`'s procedural motion written in the exact layout of the real files.

The demo and most tests run on this set, so nothing has to be downloaded. The poses live in the
Human3.6M world frame (z up, metres) near the middle of the capture volume, where the real
calibrated cameras of each subject see them (`posediff_jax.cameras`).

Files written into `out_dir`:

- `data_3d_h36m.npz`: `positions_3d` = `{subject: {action: float32 [T, 32, 3]}}`, world metres, the
  32-joint motion-capture layout (the 15 joints VideoPose3D drops are filled with copies of their
  neighbours or short offsets from them: toes, hand sites, duplicated hip/thorax anchors).
- `data_2d_h36m_gt.npz`: `positions_2d` = `{subject: {action: [4 x float32 [T, 17, 2]]}}`, the 17
  kept joints projected to pixels with each camera's distortion model, and the VideoPose3D
  `metadata` dict.
- `data_2d_h36m_gt_gmm.npz`, `data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz`: `positions_2d` =
  `{subject: {action: [4 x float32 [T_cam, 17, 3, 5]]}}` with (weight, u_px, v_px, var_u, var_v) per
  kernel. The weights are (1, 0, 0), as reported for the real files, so kernel 0 is always chosen:
  the exact 2D in the GT file, and detector-like 2D (correlated jitter, occasional large errors and
  left/right swaps, worse for occluding actions such as sitting) in the CPN-like file. Kernels 1
  and 2 are perturbed copies. As in some real detection files, some CPN-like camera arrays are one
  or two frames longer than the 3D sequence; readers trim them to the 3D length.
- `data_2d_h36m_cpn_ft_h36m_dbb.npz`: the plain VideoPose3D layout of `data_2d_h36m_gt.npz`
  (`[T_cam, 17, 2]` pixels per camera, with `metadata`) holding kernel 0 of the CPN-like GMM file,
  so both CPN-like files carry the same detections (the video families read this one).

  python -m posediff_jax.data.synthetic --out data/synthetic [--frames 128] [--seed 0]

Generation is deterministic given the seed, and every sequence draws from its own random stream, so
a subset of subjects or actions reproduces the same arrays as the full set.
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

# Sequence names as the real files spell them: some trials carry a ' 1' / ' 2' suffix, and readers
# take the action label from the text before the first space.
SEQUENCE_NAMES = {
    "Directions": "Directions 1", "Discussion": "Discussion", "Eating": "Eating 2",
    "Greeting": "Greeting", "Phoning": "Phoning 1", "Photo": "Photo", "Posing": "Posing 1",
    "Purchases": "Purchases", "Sitting": "Sitting 2", "SittingDown": "SittingDown",
    "Smoking": "Smoking 1", "Waiting": "Waiting", "WalkDog": "WalkDog", "Walking": "Walking",
    "WalkTogether": "WalkTogether 1",
}

FILE_3D = "data_3d_h36m.npz"
FILE_2D_GT = "data_2d_h36m_gt.npz"
FILE_2D_GT_GMM = "data_2d_h36m_gt_gmm.npz"
FILE_2D_CPN_GMM = "data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz"
FILE_2D_CPN = "data_2d_h36m_cpn_ft_h36m_dbb.npz"
FILES = {"3d": FILE_3D, "2d_gt": FILE_2D_GT, "2d_gt_gmm": FILE_2D_GT_GMM,
         "2d_cpn_gmm": FILE_2D_CPN_GMM, "2d_cpn": FILE_2D_CPN}

# The VideoPose3D metadata of the 2D files.
METADATA = {"layout_name": "h36m", "num_joints": 17,
            "keypoints_symmetry": [list(skeleton.H36M_LEFT), list(skeleton.H36M_RIGHT)]}

DEFAULT_FRAMES = 128
NUM_KERNELS = 3

# Occlusion-prone actions get more detector noise, as the real CPN detections do.
_DETECTOR_DIFFICULTY = {
    "Directions": 1.0, "Discussion": 1.1, "Eating": 1.3, "Greeting": 1.1, "Phoning": 1.2,
    "Photo": 1.4, "Posing": 1.2, "Purchases": 1.3, "Sitting": 1.6, "SittingDown": 1.8,
    "Smoking": 1.2, "Waiting": 1.1, "WalkDog": 1.2, "Walking": 0.9, "WalkTogether": 1.0,
}
# Per-joint detector jitter in pixels: extremities are the hardest to localise.
_DETECTOR_SIGMA_PX = np.array(
    [3.0, 3.5, 3.5, 4.5, 3.5, 3.5, 4.5, 3.5, 3.0, 3.0, 3.5, 3.0, 4.0, 5.5, 3.0, 4.0, 5.5])


# ----------------------------------------------------------------------------------------------
# 2D: projection, detector-like noise and the GMM layout.


def project_sequence(positions_32: np.ndarray, subject: str) -> list[np.ndarray]:
  """The 17 kept joints in pixels for each of the subject's 4 cameras: `4 x float32 [T, 17, 2]`."""
  kept = positions_32[:, list(skeleton.H36M32_TO_17)]
  return [np.asarray(cameras.project_to_pixels(cameras.world_to_camera(kept, cam), cam),
                     dtype=np.float32)
          for cam in cameras.h36m_cameras(subject)]


def _temporal_noise(rng: np.random.Generator, shape: tuple[int, ...], width: int) -> np.ndarray:
  """Gaussian noise of unit std, smoothed along axis 0 over about `width` frames."""
  taps = np.exp(-0.5 * (np.arange(-2 * width, 2 * width + 1) / width) ** 2)
  taps /= np.sqrt((taps ** 2).sum())
  white = rng.normal(size=(shape[0] + len(taps) - 1,) + shape[1:])
  out = np.zeros(shape)
  for i, w in enumerate(taps):
    out += w * white[i:i + shape[0]]
  return out


def detector_noise(pixels: np.ndarray, action: str, rng: np.random.Generator) -> np.ndarray:
  """Detector-like 2D from exact 2D: jitter, occasional large errors and left/right swaps.

  Args:
    pixels: `[T, 17, 2]` exact pixel coordinates.
    action: base action name; occluding actions get more noise.
    rng: random stream.

  Returns:
    float64 `[T, 17, 2]`.
  """
  t = pixels.shape[0]
  difficulty = _DETECTOR_DIFFICULTY[action]
  sigma = (_DETECTOR_SIGMA_PX * difficulty)[None, :, None]
  out = pixels.astype(np.float64) + sigma * (0.8 * _temporal_noise(rng, (t, 17, 2), 3)
                                             + 0.5 * rng.normal(size=(t, 17, 2)))
  # Gross errors: a joint snaps to a wrong place for a few frames.
  starts = np.argwhere(rng.uniform(size=(t, 17)) < 0.003 * difficulty)
  for frame, joint in starts:
    length = rng.integers(1, 7)
    angle = rng.uniform(0, 2 * np.pi)
    out[frame:frame + length, joint] += rng.uniform(15, 45) * np.array([np.cos(angle),
                                                                        np.sin(angle)])
  # Left/right confusions of a whole limb.
  left, right = np.array(skeleton.H36M_LEFT), np.array(skeleton.H36M_RIGHT)
  for frame in np.flatnonzero(rng.uniform(size=t) < 0.002 * difficulty):
    limb = slice(0, 3) if rng.uniform() < 0.5 else slice(3, 6)
    frames = slice(frame, frame + rng.integers(2, 7))
    l, r = left[limb], right[limb]
    out[frames, np.concatenate([l, r])] = out[frames, np.concatenate([r, l])]
  return out


def gmm_from_2d(mean_px: np.ndarray, rng: np.random.Generator,
                error_px: np.ndarray | None = None) -> np.ndarray:
  """The 3-kernel GMM layout around given 2D: kernel 0 = `mean_px` with weight 1.

  Args:
    mean_px: `[T, 17, 2]` kernel-0 pixel coordinates.
    rng: random stream.
    error_px: `[T, 17, 2]` known error of `mean_px` (detector-like input), which makes kernel 0's
      variances larger where the 2D is worse; None for exact 2D.

  Returns:
    float32 `[T, 17, 3, 5]`: (weight, u_px, v_px, var_u, var_v) per kernel.
  """
  t = mean_px.shape[0]
  out = np.zeros((t, 17, NUM_KERNELS, 5))
  out[:, :, 0, 0] = 1.0
  out[:, :, 0, 1:3] = mean_px
  # The variances and the weight-0 kernels are rounded: that costs nothing (only kernel 0 is ever
  # chosen, and the variances only scale training noise) and makes the files compress 2x better.
  if error_px is None:
    var = rng.uniform(0.005, 0.012, size=(t, 17, 2))
  else:
    var = 0.005 + 0.015 * (1 - np.exp(-np.abs(error_px) / 8.0))
  out[:, :, 0, 3:5] = np.round(var, 4)
  for k in range(1, NUM_KERNELS):
    out[:, :, k, 1:3] = np.round(8 * (mean_px + rng.normal(scale=4.0 * k, size=(t, 17, 2)))) / 8
    out[:, :, k, 3:5] = np.round(rng.uniform(0.01, 0.02, size=(t, 17, 2)), 3)
  out = out.astype(np.float32)
  out[:, :, 0, 1:3] = mean_px  # exact, even where float64 -> float32 would round differently
  return out


# ----------------------------------------------------------------------------------------------
# Files.


def generate(out_dir, *, frames_per_sequence: int = DEFAULT_FRAMES, seed: int = 0,
             subjects: Sequence[str] = body.SUBJECTS, actions: Sequence[str] = motion.ACTIONS,
             frame_rate_hz: float = motion.DEFAULT_FRAME_RATE_HZ,
             only_missing: bool = False) -> dict[str, pathlib.Path]:
  """Writes the five synthetic Human3.6M files into `out_dir` (created if needed).

  Args:
    out_dir: destination folder.
    frames_per_sequence: frames T of every 3D sequence (one sequence per subject and action).
    seed: generator seed; equal arguments give identical files.
    subjects: subset of `body.SUBJECTS`.
    actions: subset of `motion.ACTIONS` (base names, e.g. 'Walking').
    frame_rate_hz: frames per second of the motion.
    only_missing: leave files that already exist in `out_dir` untouched.

  Returns:
    {'3d', '2d_gt', '2d_gt_gmm', '2d_cpn_gmm', '2d_cpn'} -> path of each file.
  """
  if int(frames_per_sequence) != frames_per_sequence or frames_per_sequence < 1:
    raise ValueError(f"frames_per_sequence must be a positive integer, got {frames_per_sequence!r}")
  if not frame_rate_hz > 0:
    raise ValueError(f"frame_rate_hz must be positive, got {frame_rate_hz!r}")
  body.check_names("subject", subjects, body.SUBJECTS)
  body.check_names("action", actions, motion.ACTIONS)
  frames = int(frames_per_sequence)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  positions_3d, gt_2d, gt_gmm, cpn_gmm = {}, {}, {}, {}
  for subject in [s for s in body.SUBJECTS if s in subjects]:
    si = body.SUBJECTS.index(subject)
    for d in (positions_3d, gt_2d, gt_gmm, cpn_gmm):
      d[subject] = {}
    for action in [a for a in motion.ACTIONS if a in actions]:
      ai = motion.ACTIONS.index(action)
      name = SEQUENCE_NAMES[action]
      # Two spare frames for the CPN-like arrays, which may run past the 3D like the real ones.
      moves = motion.synthesize_sequence(subject, action, frames + 2, seed=seed,
                                         frame_rate_hz=frame_rate_hz)
      pixels = project_sequence(moves, subject)
      positions_3d[subject][name] = moves[:frames]
      gt_2d[subject][name] = [px[:frames] for px in pixels]
      gt_gmm[subject][name], cpn_gmm[subject][name] = [], []
      for c, px in enumerate(pixels):
        gt_gmm[subject][name].append(gmm_from_2d(px[:frames], body.rng(seed, si, ai, 2, c)))
        rng = body.rng(seed, si, ai, 3, c)
        detected = detector_noise(px, action, rng)
        # Upstream quirk (spec §A.4): some 2D sequences are longer than the 3D; readers trim them.
        length = frames + int(rng.integers(0, 3))
        cpn_gmm[subject][name].append(
            gmm_from_2d(detected[:length], rng, error_px=(detected - px)[:length]))

  cpn_2d = {subject: {name: [gmm[:, :, 0, 1:3].copy() for gmm in per_camera]
                      for name, per_camera in actions.items()}
            for subject, actions in cpn_gmm.items()}

  paths = {key: out_dir / name for key, name in FILES.items()}
  members = {"3d": dict(positions_3d=positions_3d),
             "2d_gt": dict(positions_2d=gt_2d, metadata=METADATA),
             "2d_gt_gmm": dict(positions_2d=gt_gmm), "2d_cpn_gmm": dict(positions_2d=cpn_gmm),
             "2d_cpn": dict(positions_2d=cpn_2d, metadata=METADATA)}
  for key, path in paths.items():
    if not (only_missing and path.is_file()):
      npz.save_npz(path, **members[key])
  return paths


def ensure_synthetic_data(out_dir, **kwargs) -> dict[str, pathlib.Path]:
  """Generates the synthetic files missing from `out_dir`.

  Existing files are never checked or overwritten, so real Human3.6M files placed there are kept.
  A missing file is generated with `kwargs`; they should match those of the files already there.

  Args:
    out_dir: data folder.
    **kwargs: passed to `generate` when the files are missing.

  Returns:
    {'3d', '2d_gt', '2d_gt_gmm', '2d_cpn_gmm', '2d_cpn'} -> path.
  """
  out_dir = pathlib.Path(out_dir)
  paths = {key: out_dir / name for key, name in FILES.items()}
  if all(p.is_file() for p in paths.values()):
    return paths
  return generate(out_dir, **kwargs, only_missing=True)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m posediff_jax.data.synthetic",
      description="Write the synthetic Human3.6M-layout data files.")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                      help=f"frames per sequence (default {DEFAULT_FRAMES})")
  parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  args = parser.parse_args(argv)
  paths = generate(args.out, frames_per_sequence=args.frames, seed=args.seed)
  for path in paths.values():
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
  main()
