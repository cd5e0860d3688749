r"""Synthetic radar data in the mmBody and mm-Fi layouts, so the mmDiff demo and tests run offline.

A moving skeleton comes from `motion`'s procedural Human3.6M motion. It is placed in front of a
radar (x to the side, y = range, z up, metres; the radar at the origin, 1 m above the floor), and
each frame becomes a point cloud: points scattered along the bones with some flesh-like spread,
each with its radial velocity, an amplitude and an energy, plus clutter (room returns, ghosts
behind the person) and per-scene effects. The layouts are those upstream reads (spec §4):

mmBody (`--layout mmbody`; Arbe 4D imaging radar, 6 columns):

  root/train/sequence_<id>/radar/frame_<k>.npy        float32 [n, 6]: x, y, z, velocity * 1e-38,
                                                      amplitude / 10, energy * 100 (upstream's
                                                      preprocessing scales them back to m/s, ~1-6,
                                                      ~1-10)
  root/train/sequence_<id>/mesh/frame_<k>.npz         `joints` float32 [55, 3], SMPL-X order
  root/test/<scene>/sequence_<id>/{radar,mesh}/...     one sequence per test scene

  Only the 17 SMPL-X joints upstream selects (`mmbody.SMPLX_TO_H36M`) carry the skeleton; as in
  the real labels, slots 1-3 of the selected skeleton are the subject's left leg and 11-13 the left
  arm (H36M's order with left and right swapped). The other SMPL-X joints copy a neighbour.
  Scenes: lab1, lab2 and poor_lighting as the training sequences; furnished adds furniture
  returns; rain adds many moving clutter points and spreads the body points; smoke spreads them a
  little; occlusion removes the lower body behind a screen and adds the screen's returns.

mm-Fi (`--layout mmfi`; TI IWR6843, 5 columns):

  root/E0x/Sxx/Axx/mmwave/frame<NNN>.bin              float64 [n, 5]: x, y, z, doppler, intensity
  root/E0x/Sxx/Axx/ground_truth.npy                   float32 [T, 17, 3], Human3.6M order

  Environment E01 holds subjects S01-S10, E02 S11-S20 (`mmfi.environment`). A few protocol-1
  actions and one action outside protocol 1 (A01, which readers must skip) per subject; far fewer
  points per frame than mmBody.

  python -m posediff_jax.data.synthetic_radar --out data/mmbody_synthetic --layout mmbody \
      [--frames 48] [--seed 0]

Generation is deterministic given the seed, and every sequence has its own motion and random
stream, so a subset of scenes, subjects or actions reproduces the same files. A finished folder
holds `SYNTHETIC.json`;
`ensure_synthetic_radar` never touches a folder that already holds data.
"""

import argparse
import json
import os
import pathlib
import shutil
from typing import Sequence

import numpy as np

from posediff_jax import skeleton
from posediff_jax.data import mmbody
from posediff_jax.data import mmfi
from posediff_jax.data import radar
from posediff_jax.data.synthetic import body
from posediff_jax.data.synthetic import motion

LAYOUTS = ("mmbody", "mmfi")
MARKER = "SYNTHETIC.json"
DEFAULT_FRAMES = 48

NUM_SMPLX_JOINTS = 55
# The SMPL-X joints no label reads copy a nearby selected joint (spine1 the pelvis, the feet the
# ankles, the collars the shoulders, jaw and left eye the head, the hands the wrists).
_SMPLX_FILL = {3: 0, 9: 6, 10: 7, 11: 8, 13: 16, 14: 17, 22: 15, 23: 15,
               **{j: 20 for j in range(25, 40)}, **{j: 21 for j in range(40, 55)}}

MMBODY_TRAIN_SEQUENCES = 4
MMBODY_TEST_SCENES = radar.MMBODY_TEST_SCENES
MMFI_SUBJECTS = ("S01", "S02", "S05", "S10", "S11", "S15")
MMFI_ACTIONS = ("A01", "A02", "A03", "A13")

_RADAR_HEIGHT_M = 1.0
_MMBODY_RANGE_M = 3.0
_MMFI_RANGE_M = 2.5
# Raw-column scales the readers undo (mmBody's exporter stores velocity as ~1e-38 floats).
_VELOCITY_RAW = 1e-38
_AMPLITUDE_RAW = 0.1
_ENERGY_RAW = 100.0
_FRAME_RATE_HZ = 10.0  # mmBody and mm-Fi record at ~10 Hz
_SEED_OFFSET = 4057  # keeps these motions apart from the other synthetic sets with the same seed


def skeleton_motion(index: int, frames: int, seed: int, range_m: float) -> np.ndarray:
  """Synthetic motion number `index` in the radar frame: float64 `[T, 17, 3]`, Human3.6M order.

  The motion's mean pelvis is put `range_m` in front of the radar (y) at x = 0; z is height
  relative to the radar.
  """
  subject = body.SUBJECTS[index % len(body.SUBJECTS)]
  action = motion.ACTIONS[(7 * index + 3) % len(motion.ACTIONS)]
  moves = motion.synthesize_sequence(subject, action, frames, seed=seed + _SEED_OFFSET,
                                     frame_rate_hz=_FRAME_RATE_HZ)
  pose = moves[:, list(skeleton.H36M32_TO_17)].astype(np.float64)
  centre = pose[:, 0, :2].mean(axis=0)
  pose[..., 0] -= centre[0]
  pose[..., 1] += range_m - centre[1]
  pose[..., 2] -= _RADAR_HEIGHT_M
  return pose


def _body_points(pose: np.ndarray, velocity: np.ndarray, count: int, spread: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """`count` points along the bones (and across the torso): (xyz [n, 3], velocity [n, 3])."""
  # The torso is a surface: two diagonals across it get points too.
  segments = list(skeleton.H36M_EDGES) + [(1, 14), (4, 11), (1, 11), (4, 14)]
  starts = np.array([a for a, _ in segments])
  ends = np.array([b for _, b in segments])
  lengths = np.linalg.norm(pose[ends] - pose[starts], axis=-1) + 1e-3
  choice = rng.choice(len(segments), size=count, p=lengths / lengths.sum())
  t = rng.uniform(size=(count, 1))
  xyz = pose[starts[choice]] + t * (pose[ends[choice]] - pose[starts[choice]])
  vel = velocity[starts[choice]] + t * (velocity[ends[choice]] - velocity[starts[choice]])
  torso = choice >= len(skeleton.H36M_EDGES)
  scale = np.where(torso, 2.0 * spread, spread)[:, None]
  return xyz + scale * rng.normal(size=xyz.shape), vel


def _columns(xyz: np.ndarray, vel: np.ndarray, rng: np.random.Generator,
             strength: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(radial velocity m/s, amplitude ~1-6, energy ~1-10) per point; returns fade with range."""
  distance = np.linalg.norm(xyz, axis=-1) + 1e-6
  radial = np.sum(vel * xyz, axis=-1) / distance
  amplitude = strength * rng.uniform(1.0, 6.0, size=len(xyz)) * (3.0 / np.maximum(distance, 1.0))
  energy = strength * rng.uniform(1.0, 10.0, size=len(xyz)) * (3.0 / np.maximum(distance, 1.0))
  return radial, amplitude, energy


def _clutter(count: int, rng: np.random.Generator) -> np.ndarray:
  """Room returns anywhere in a 6 x 6 x 3 m box in front of the radar: xyz [n, 3]."""
  low, high = np.array([-3.0, 0.5, -_RADAR_HEIGHT_M]), np.array([3.0, 6.5, 2.0])
  return rng.uniform(low, high, size=(count, 3))


def radar_frame(pose: np.ndarray, velocity: np.ndarray, rng: np.random.Generator, *,
                body_points: float, clutter_points: float, scene: str = "lab1") -> np.ndarray:
  """One frame's point cloud around a pose: float64 `[n, 6]` (x, y, z, radial velocity m/s,
  amplitude, energy), before the per-layout raw scaling.

  Args:
    pose: `[17, 3]` joints in the radar frame (metres).
    velocity: `[17, 3]` joint velocities (m/s).
    rng: random stream.
    body_points: mean number of points on the body (Poisson).
    clutter_points: mean number of clutter points (Poisson).
    scene: one of the mmBody test scenes (or 'train'); changes noise, clutter and occlusion.
  """
  spread = {"rain": 0.07, "smoke": 0.05}.get(scene, 0.035)
  xyz, vel = _body_points(pose, velocity, int(rng.poisson(body_points)), spread, rng)
  if scene == "occlusion":
    # A screen 0.8 m in front of the person hides everything below the hips.
    hidden = xyz[:, 2] < pose[0, 2] + 0.05
    xyz, vel = xyz[~hidden], vel[~hidden]
  radial, amplitude, energy = _columns(xyz, vel, rng, 1.0)
  parts = [np.column_stack([xyz, radial, amplitude, energy])]
  # Multipath ghosts: a few body points seen again 1-2 m further away, weaker.
  ghosts = xyz[rng.uniform(size=len(xyz)) < 0.05]
  if len(ghosts):
    ghosts = ghosts * (1.0 + rng.uniform(0.3, 0.6, size=(len(ghosts), 1)))
    parts.append(np.column_stack([ghosts, np.zeros(len(ghosts)),
                                  *_columns(ghosts, np.zeros_like(ghosts), rng, 0.3)[1:]]))
  clutter = _clutter(int(rng.poisson(clutter_points)), rng)
  clutter_velocity = np.zeros(len(clutter))
  if scene == "rain":
    drops = _clutter(int(rng.poisson(3 * clutter_points)), rng)
    clutter = np.concatenate([clutter, drops])
    clutter_velocity = np.concatenate([clutter_velocity, rng.normal(0, 2.0, size=len(drops))])
  if scene == "furnished":
    # Two pieces of furniture beside the person, inside the cropped box around the pelvis.
    for centre in (pose[0] + [1.0, 0.3, -0.4], pose[0] + [-1.1, -0.2, -0.2]):
      piece = centre + rng.uniform(-0.3, 0.3, size=(int(rng.poisson(25)), 3))
      clutter = np.concatenate([clutter, piece])
      clutter_velocity = np.concatenate([clutter_velocity, np.zeros(len(piece))])
  if scene == "occlusion":
    screen = pose[0] + np.column_stack([rng.uniform(-0.6, 0.6, 40), np.full(40, -0.8),
                                        rng.uniform(-1.0, 0.0, 40)])
    clutter = np.concatenate([clutter, screen])
    clutter_velocity = np.concatenate([clutter_velocity, np.zeros(len(screen))])
  _, amplitude, energy = _columns(clutter, np.zeros_like(clutter), rng, 0.5)
  parts.append(np.column_stack([clutter, clutter_velocity, amplitude, energy]))
  points = np.concatenate(parts)
  return points[rng.permutation(len(points))]


def _velocities(pose: np.ndarray) -> np.ndarray:
  """Joint velocities (m/s) of a `[T, 17, 3]` motion by central differences."""
  return np.gradient(pose, axis=0) * _FRAME_RATE_HZ


def smplx_joints(pose: np.ndarray) -> np.ndarray:
  """The 55 SMPL-X joints of a Human3.6M-order pose `[..., 17, 3]` (module docstring)."""
  mirrored = pose[..., list(skeleton.H36M_MIRROR), :]  # the real labels list the left side first
  out = np.zeros(pose.shape[:-2] + (NUM_SMPLX_JOINTS, 3), pose.dtype)
  out[..., list(mmbody.SMPLX_TO_H36M), :] = mirrored
  for joint, source in _SMPLX_FILL.items():
    out[..., joint, :] = out[..., source, :]
  return out


def _write_npy(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  np.save(path, array)


def _mmbody_sequence(folder: pathlib.Path, pose: np.ndarray, scene: str,
                     rng: np.random.Generator) -> None:
  velocity = _velocities(pose)
  scale = np.array([1, 1, 1, _VELOCITY_RAW, _AMPLITUDE_RAW, _ENERGY_RAW])
  for k in range(len(pose)):
    points = radar_frame(pose[k], velocity[k], rng, body_points=380, clutter_points=160,
                         scene=scene)
    _write_npy(folder / "radar" / f"frame_{k}.npy", (points * scale).astype(np.float32))
    mesh = folder / "mesh" / f"frame_{k}.npz"
    mesh.parent.mkdir(parents=True, exist_ok=True)
    np.savez(mesh, joints=smplx_joints(pose[k]).astype(np.float32))


def _mmfi_sequence(folder: pathlib.Path, pose: np.ndarray, rng: np.random.Generator) -> None:
  velocity = _velocities(pose)
  for k in range(len(pose)):
    points = radar_frame(pose[k], velocity[k], rng, body_points=60, clutter_points=12)
    # TI's intensity is one number per point (dB-like, ~5-30); the energy column is dropped.
    intensity = 5.0 * points[:, 4] + rng.uniform(0, 3, len(points))
    frame = np.column_stack([points[:, :4], intensity]).astype(np.float64)
    path = folder / "mmwave" / f"frame{k + 1:03d}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame.tobytes())
  _write_npy(folder / "ground_truth.npy", pose.astype(np.float32))


def generate(out_dir, *, layout: str = "mmbody", frames_per_sequence: int = DEFAULT_FRAMES,
             seed: int = 0, train_sequences: int = MMBODY_TRAIN_SEQUENCES,
             test_scenes: Sequence[str] = MMBODY_TEST_SCENES,
             subjects: Sequence[str] = MMFI_SUBJECTS,
             actions: Sequence[str] = MMFI_ACTIONS) -> pathlib.Path:
  """Writes a synthetic radar data set into `out_dir` (created; must hold no data yet).

  Args:
    out_dir: destination folder.
    layout: 'mmbody' or 'mmfi' (module docstring).
    frames_per_sequence: frames of every sequence.
    seed: generator seed; equal arguments give identical files.
    train_sequences: mmBody training sequences.
    test_scenes: mmBody test scenes, one sequence each.
    subjects: mm-Fi subjects ('S01'...'S40').
    actions: mm-Fi actions ('A01'...'A27') of every subject.

  Returns:
    `out_dir`.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  if int(frames_per_sequence) != frames_per_sequence or frames_per_sequence < 2:
    raise ValueError(f"frames_per_sequence must be an integer >= 2, got {frames_per_sequence!r}")
  frames = int(frames_per_sequence)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if _holds_data(out_dir):
    raise FileExistsError(f"{out_dir} already holds a data set; choose an empty folder")
  # Written beside the final folders and moved in at the end, so a reader never sees half a set.
  staging = out_dir / f".synthetic-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  if layout == "mmbody":
    unknown = [s for s in test_scenes if s not in MMBODY_TEST_SCENES]
    if unknown:
      raise ValueError(f"unknown mmBody test scene(s) {unknown}; expected some of "
                       f"{list(MMBODY_TEST_SCENES)}")
    for sequence in range(train_sequences):
      pose = skeleton_motion(sequence, frames, seed, _MMBODY_RANGE_M)
      _mmbody_sequence(staging / "train" / f"sequence_{sequence}", pose,
                       ("lab1", "lab2")[sequence % 2], body.rng(seed, 0, sequence))
    for scene in test_scenes:
      # Numbered by the scene, so a subset of scenes reproduces the full set's sequences.
      number = 100 + MMBODY_TEST_SCENES.index(scene)
      pose = skeleton_motion(number, frames, seed, _MMBODY_RANGE_M)
      _mmbody_sequence(staging / "test" / scene / f"sequence_{number}", pose, scene,
                       body.rng(seed, 1, number))
  else:
    for subject in subjects:
      if not (len(subject) == 3 and subject[0] == "S" and 1 <= int(subject[1:]) <= 40):
        raise ValueError(f"mm-Fi subjects are S01..S40, got {subject!r}")
      for action in actions:
        if not (len(action) == 3 and action[0] == "A" and 1 <= int(action[1:]) <= 27):
          raise ValueError(f"mm-Fi actions are A01..A27, got {action!r}")
        i, j = int(subject[1:]), int(action[1:])
        pose = skeleton_motion(27 * i + j, frames, seed, _MMFI_RANGE_M)
        _mmfi_sequence(staging / mmfi.environment(subject) / subject / action, pose,
                       body.rng(seed, 2, i, j))
  info = {"layout": layout, "frames_per_sequence": frames, "seed": seed}
  (staging / MARKER).write_text(json.dumps(info, indent=2) + "\n")
  for entry in sorted(staging.iterdir(), key=lambda p: p.name == MARKER):
    target = out_dir / entry.name
    try:
      os.rename(entry, target)
    except OSError:
      if not target.exists():
        raise
  shutil.rmtree(staging, ignore_errors=True)
  return out_dir


def _holds_data(root: pathlib.Path) -> bool:
  return any(p.name in ("train", "test") or (p.name.startswith("E") and p.is_dir())
             for p in root.iterdir())


def ensure_synthetic_radar(root, layout: str, **kwargs) -> pathlib.Path:
  """Generates the synthetic set into `root` unless it already holds one, or real data.

  Args:
    root: data folder.
    layout: 'mmbody' or 'mmfi'.
    **kwargs: passed to `generate`.

  Returns:
    `root`.
  """
  root = pathlib.Path(root)
  if (root / MARKER).is_file() or (root.is_dir() and _holds_data(root)):
    return root
  return generate(root, layout=layout, **kwargs)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m posediff_jax.data.synthetic_radar",
      description="Write a synthetic radar data set in the mmBody or mm-Fi layout.")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--layout", choices=LAYOUTS, default="mmbody")
  parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                      help=f"frames per sequence (default {DEFAULT_FRAMES})")
  parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  args = parser.parse_args(argv)
  out = generate(args.out, layout=args.layout, frames_per_sequence=args.frames, seed=args.seed)
  files = [p for p in out.rglob("*") if p.is_file()]
  size = sum(p.stat().st_size for p in files)
  print(f"{out}: {len(files)} files ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
  main()
