r"""Synthetic Human3.6M: procedural motion written in the exact layout of the real data files.

The demo and most tests run on this set, so nothing has to be downloaded. Each subject is a
17-joint skeleton with its own bone lengths (Human3.6M's mean lengths times a per-subject and
per-bone scale). Each action is a distinct family of motion built by forward kinematics: walking
gaits along a path, pointing and waving, hand-to-mouth cycles, sitting on a chair or the floor,
bending, posing. The poses live in the Human3.6M world frame (z up, metres) near the middle of the
capture volume, where the real calibrated cameras of each subject see them (`posediff_jax.cameras`).

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
import os
import pathlib
import zipfile
from typing import Callable, Sequence

import numpy as np

from posediff_jax import cameras
from posediff_jax import skeleton

SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")
# The 15 Human3.6M actions, in the order of the upstream per-action table.
ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing",
           "Purchases", "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking",
           "WalkTogether")
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
DEFAULT_FRAME_RATE_HZ = 25.0  # half of Human3.6M's 50 Hz: fewer, more varied frames per second
NUM_KERNELS = 3

# Approximate Human3.6M mean bone lengths in metres, indexed by the child joint of each bone.
MEAN_BONE_LENGTHS = np.array([
    0.0,                   # 0 Hip (root)
    0.133, 0.454, 0.445,   # RHip, RKnee, RFoot
    0.133, 0.454, 0.445,   # LHip, LKnee, LFoot
    0.234, 0.252,          # Spine, Thorax
    0.115, 0.115,          # Neck/Nose, Head
    0.150, 0.281, 0.249,   # LShoulder, LElbow, LWrist
    0.150, 0.281, 0.249,   # RShoulder, RElbow, RWrist
])
# Overall body scale per subject (S1 and S5 are the two smallest actors).
_SUBJECT_SCALE = {"S1": 0.95, "S5": 0.94, "S6": 1.04, "S7": 0.97, "S8": 1.02, "S9": 1.03,
                  "S11": 1.00}
_ANKLE_HEIGHT = 0.09  # metres from the floor to the ankle joint of a standing foot

# Bone directions in the rest pose, body frame: x forward, y to the subject's left, z up.
_REST_DIRECTIONS = np.array([
    [0, 0, 0],
    [0, -1, 0], [0, 0, -1], [0, 0, -1],
    [0, 1, 0], [0, 0, -1], [0, 0, -1],
    [0.03, 0, 1], [0.05, 0, 1],
    [0.35, 0, 0.94], [-0.30, 0, 0.95],
    [0, 0.97, -0.24], [0, 0, -1], [0, 0, -1],
    [0, -0.97, -0.24], [0, 0, -1], [0, 0, -1],
], dtype=np.float64)

# How the 15 joints VideoPose3D drops are filled: a copy of a joint (its index in the 32-joint
# layout) or a short offset from a kept joint (named in `expand_to_32`).
_DROPPED_JOINTS = {
    4: "r_toe", 5: "r_toe", 9: "l_toe", 10: "l_toe",   # toe base and its end site
    11: 0,                                              # lower spine at the hip
    16: 13, 24: 13,                                     # shoulder anchors at the thorax
    20: "l_thumb", 21: "l_thumb", 22: "l_hand", 23: "l_hand",
    28: "r_thumb", 29: "r_thumb", 30: "r_hand", 31: "r_hand",
}

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
# Rotations and forward kinematics.


def _rot(axis: int, degrees) -> np.ndarray:
  """Rotation matrices `[T, 3, 3]` about a coordinate axis (0 = x, 1 = y, 2 = z)."""
  a = np.deg2rad(np.asarray(degrees, dtype=np.float64))
  c, s = np.cos(a), np.sin(a)
  one, zero = np.ones_like(a), np.zeros_like(a)
  if axis == 0:
    rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
  elif axis == 1:
    rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
  else:
    rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
  return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def _chain(*mats: np.ndarray) -> np.ndarray:
  out = mats[0]
  for m in mats[1:]:
    out = out @ m
  return out


def subject_bone_lengths(subject: str, seed: int = 0) -> np.ndarray:
  """One subject's bone lengths: the Human3.6M means times a body scale and a small per-bone factor.

  Left and right bones get the same length.

  Args:
    subject: one of `SUBJECTS`.
    seed: the generator seed.

  Returns:
    float64 `[17]`, metres, indexed by each bone's child joint (entry 0 is 0).
  """
  _check_names("subject", [subject], SUBJECTS)
  rng = _rng(seed, SUBJECTS.index(subject), 0, 0)
  jitter = rng.uniform(0.97, 1.03, size=17)
  for left, right in zip(skeleton.H36M_LEFT, skeleton.H36M_RIGHT):
    jitter[right] = jitter[left]
  return MEAN_BONE_LENGTHS * _SUBJECT_SCALE[subject] * jitter


def _local_rotations(p: dict[str, np.ndarray]) -> np.ndarray:
  """Per-joint rotations `[T, 17, 3, 3]` from the joint-angle tracks (degrees) of `p`."""
  t = len(p["yaw"])
  eye = np.broadcast_to(np.eye(3), (t, 3, 3))
  local = np.empty((t, 17, 3, 3))
  tilt = p["pelvis_tilt"]
  local[:, 0] = _chain(_rot(2, p["yaw"]), _rot(1, p["pitch"] + tilt), _rot(0, p["roll"]))
  for side, sign, hip, knee, foot in (("l", 1, 4, 5, 6), ("r", -1, 1, 2, 3)):
    local[:, hip] = eye
    # Flexion swings the thigh forward; the pelvis tilt is undone so the legs stay where they are.
    local[:, knee] = _chain(_rot(1, -(p[f"hip_flex_{side}"] + tilt)),
                            _rot(0, sign * p[f"hip_abd_{side}"]))
    local[:, foot] = _rot(1, p[f"knee_{side}"])
  local[:, 7] = _chain(_rot(2, p["spine_twist"]), _rot(1, p["spine_bend"]),
                       _rot(0, p["spine_side"]))
  local[:, 8] = _chain(_rot(2, p["chest_twist"]), _rot(1, p["chest_bend"]),
                       _rot(0, p["chest_side"]))
  local[:, 9] = _chain(_rot(2, p["neck_turn"]), _rot(1, p["neck_bend"]), _rot(0, p["neck_side"]))
  local[:, 10] = eye
  for side, sign, shoulder, elbow, wrist in (("l", 1, 11, 12, 13), ("r", -1, 14, 15, 16)):
    local[:, shoulder] = eye
    # Flexion moves the arm in the sagittal plane, abduction out of it, rotation twists the arm
    # about its own axis (which turns the plane the elbow bends in).
    local[:, elbow] = _chain(_rot(1, -p[f"sh_flex_{side}"]), _rot(0, sign * p[f"sh_abd_{side}"]),
                             _rot(2, sign * p[f"sh_rot_{side}"]))
    local[:, wrist] = _rot(1, -p[f"elbow_{side}"])
  return local


def forward_kinematics(p: dict[str, np.ndarray], bone_lengths: np.ndarray):
  """Joint positions of the 17-joint skeleton from joint-angle tracks.

  The root is placed at `(p['x'], p['y'])` and at the height that puts the lower ankle
  `_ANKLE_HEIGHT` above the floor, so the subject always stands, sits or lies on the floor.

  Args:
    p: joint-angle tracks (degrees) and root position (metres), each `[T]`; see `_neutral`.
    bone_lengths: `[17]` metres, indexed by child joint.

  Returns:
    (positions `[T, 17, 3]` world metres, global joint rotations `[T, 17, 3, 3]`).
  """
  norms = np.maximum(np.linalg.norm(_REST_DIRECTIONS, axis=1, keepdims=True), 1e-12)
  offsets = _REST_DIRECTIONS / norms * bone_lengths[:, None]
  local = _local_rotations(p)
  t = local.shape[0]
  glob = np.empty_like(local)
  pos = np.zeros((t, 17, 3))
  glob[:, 0] = local[:, 0]
  for j, parent in enumerate(skeleton.H36M_PARENTS):
    if parent < 0:
      continue
    glob[:, j] = glob[:, parent] @ local[:, j]
    pos[:, j] = pos[:, parent] + glob[:, j] @ offsets[j]
  lowest_ankle = np.minimum(pos[:, 3, 2], pos[:, 6, 2])
  pos[:, :, 2] += (_ANKLE_HEIGHT - lowest_ankle)[:, None]
  pos[:, :, 0] += p["x"][:, None]
  pos[:, :, 1] += p["y"][:, None]
  return pos, glob


def expand_to_32(pos17: np.ndarray, glob: np.ndarray, bone_lengths: np.ndarray) -> np.ndarray:
  """The 32-joint motion-capture layout from 17 joints, filling the joints VideoPose3D drops.

  Args:
    pos17: `[T, 17, 3]` positions.
    glob: `[T, 17, 3, 3]` global rotations from `forward_kinematics`.
    bone_lengths: `[17]`, used to scale the toe and hand offsets.

  Returns:
    `[T, 32, 3]`; `out[:, skeleton.H36M32_TO_17] == pos17`.
  """
  t = pos17.shape[0]
  out = np.zeros((t, 32, 3))
  out[:, list(skeleton.H36M32_TO_17)] = pos17
  scale = bone_lengths[2] / MEAN_BONE_LENGTHS[2]
  # Offsets in the frame of the bone ending at the anchor joint (x forward, bone along -z).
  extras = {
      "r_toe": (3, [0.13, 0.0, -0.06]), "l_toe": (6, [0.13, 0.0, -0.06]),
      "l_thumb": (13, [0.03, 0.02, -0.05]), "l_hand": (13, [0.0, 0.0, -0.09]),
      "r_thumb": (16, [0.03, -0.02, -0.05]), "r_hand": (16, [0.0, 0.0, -0.09]),
  }
  for j32, source in _DROPPED_JOINTS.items():
    if isinstance(source, int):
      out[:, j32] = out[:, source]
    else:
      anchor, offset = extras[source]
      out[:, j32] = pos17[:, anchor] + glob[:, anchor] @ (np.array(offset) * scale)
  return out


# ----------------------------------------------------------------------------------------------
# Motion building blocks. Angles are in degrees, positions in metres, `t` in seconds.


_ANGLE_TRACKS = (
    "yaw", "pitch", "roll", "pelvis_tilt",
    "hip_flex_l", "hip_abd_l", "knee_l", "hip_flex_r", "hip_abd_r", "knee_r",
    "spine_bend", "spine_side", "spine_twist", "chest_bend", "chest_side", "chest_twist",
    "neck_bend", "neck_side", "neck_turn",
    "sh_flex_l", "sh_abd_l", "sh_rot_l", "elbow_l", "sh_flex_r", "sh_abd_r", "sh_rot_r", "elbow_r",
)


def _neutral(t: np.ndarray) -> dict[str, np.ndarray]:
  """A relaxed standing pose at the origin facing +x: every track `[T]`."""
  p = {name: np.zeros_like(t) for name in _ANGLE_TRACKS + ("x", "y")}
  for side in "lr":
    p[f"hip_flex_{side}"] += 2.0
    p[f"hip_abd_{side}"] += 3.0
    p[f"knee_{side}"] += 4.0
    p[f"sh_abd_{side}"] += 8.0
    p[f"elbow_{side}"] += 12.0
  p["neck_bend"] += 5.0
  return p


def _smooth(rng: np.random.Generator, t: np.ndarray, period_s: float, n: int = 3) -> np.ndarray:
  """A smooth random signal of unit RMS whose components have periods around `period_s`."""
  freqs = rng.uniform(0.6, 1.6, n) / period_s
  phases = rng.uniform(0, 2 * np.pi, n)
  amps = rng.normal(size=n)
  x = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
  return x / np.sqrt(0.5 * (amps ** 2).sum() + 1e-12)


def _smoothstep(x: np.ndarray) -> np.ndarray:
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def _keyframes(rng: np.random.Generator, t: np.ndarray, hold_s: float, move_s: float,
               sample: Callable[[np.random.Generator], dict[str, float]]) -> dict[str, np.ndarray]:
  """Tracks that hold a sequence of random key poses and blend smoothly between them.

  Args:
    rng: random stream.
    t: `[T]` times.
    hold_s: mean time each key is held.
    move_s: mean time of a transition.
    sample: draws one key as {track: value}; every key must name the same tracks.

  Returns:
    {track: `[T]`}.
  """
  starts, keys, now = [], [sample(rng)], t[0] - rng.uniform(0, hold_s)
  while now <= t[-1]:
    now += hold_s * rng.uniform(0.6, 1.4)
    move = move_s * rng.uniform(0.7, 1.3)
    starts.append((now, move))
    keys.append(sample(rng))
    now += move
  out = {name: np.full_like(t, value) for name, value in keys[0].items()}
  for (start, move), key, previous in zip(starts, keys[1:], keys[:-1]):
    w = _smoothstep((t - start) / move)
    for name in out:
      out[name] += w * (key[name] - previous[name])
  return out


def _add(p: dict[str, np.ndarray], tracks: dict[str, np.ndarray], weight=1.0) -> None:
  for name, value in tracks.items():
    p[name] = p[name] + weight * value


def _spot(rng: np.random.Generator, radius: float = 0.6) -> tuple[float, float, float]:
  """A random standing place near the middle of the capture volume and a facing direction."""
  return (rng.uniform(-radius, radius), rng.uniform(-radius, radius), rng.uniform(-180, 180))


def _loop_path(rng: np.random.Generator, rx: float, ry: float):
  """An ellipse through the capture volume, as `distance -> (x, y, heading_deg)`."""
  cx, cy = rng.uniform(-0.2, 0.2, 2)
  angle = rng.uniform(0, np.pi)
  direction = rng.choice([-1.0, 1.0])
  s = np.linspace(0, 2 * np.pi, 721)
  ex, ey = rx * np.cos(direction * s), ry * np.sin(direction * s)
  px = cx + ex * np.cos(angle) - ey * np.sin(angle)
  py = cy + ex * np.sin(angle) + ey * np.cos(angle)
  arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(px), np.diff(py)))])
  start = rng.uniform(0, arc[-1])

  def at(distance: np.ndarray):
    d = (start + distance) % arc[-1]
    x, y = np.interp(d, arc, px), np.interp(d, arc, py)
    dx = np.interp(d, arc, np.gradient(px)) + 1e-12
    dy = np.interp(d, arc, np.gradient(py))
    return x, y, np.rad2deg(np.arctan2(dy, dx))

  return at


def _walk(p: dict[str, np.ndarray], rng: np.random.Generator, t: np.ndarray, speed: np.ndarray,
          path, arm_swing: float = 1.0) -> np.ndarray:
  """Adds a walking gait along `path` at `speed` m/s `[T]`; returns the gait amplitude `[T]`.

  The stride frequency grows with speed, the legs swing in antiphase with the knee flexing during
  swing, and each arm swings with the opposite leg while the pelvis and chest counter-rotate.
  """
  dt = np.diff(t, prepend=t[0])
  distance = np.cumsum(speed * dt)
  x, y, heading = path(distance)
  amp = np.clip(speed / 1.3, 0.0, 1.4)
  cadence_hz = 0.95 * np.sqrt(np.clip(speed / 1.3, 0.05, 2.0))
  phase = 2 * np.pi * np.cumsum(cadence_hz * dt) + rng.uniform(0, 2 * np.pi)
  p["x"], p["y"] = p["x"] + x, p["y"] + y
  p["yaw"] = p["yaw"] + heading + 5 * amp * np.sin(phase)
  p["chest_twist"] = p["chest_twist"] - 9 * amp * np.sin(phase)
  p["roll"] = p["roll"] + 3 * amp * np.sin(phase)
  p["spine_bend"] = p["spine_bend"] + 4 * amp
  for side, offset in (("l", 0.0), ("r", np.pi)):
    ph = phase + offset
    p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + amp * (24 * np.sin(ph) + 4)
    swing = np.maximum(0.0, np.cos(ph + 0.4)) ** 2
    stance = np.maximum(0.0, -np.cos(ph + 0.4)) * np.maximum(0.0, np.sin(ph))
    p[f"knee_{side}"] = p[f"knee_{side}"] + amp * (58 * swing + 12 * stance)
    # The arm swings forward with the opposite leg.
    p[f"sh_flex_{side}"] = p[f"sh_flex_{side}"] - arm_swing * amp * (20 * np.sin(ph) - 3)
    p[f"elbow_{side}"] = p[f"elbow_{side}"] + arm_swing * amp * (12 - 8 * np.sin(ph))
  return amp


def _stand_in_place(p, rng, t, drift_m=0.15, turn_deg=25.0):
  x0, y0, yaw0 = _spot(rng)
  # A slow drift (about 0.1 m/s at most), so shuffling in place without steps still looks natural.
  p["x"] = p["x"] + x0 + drift_m * _smooth(rng, t, 25.0)
  p["y"] = p["y"] + y0 + drift_m * _smooth(rng, t, 25.0)
  p["yaw"] = p["yaw"] + yaw0 + turn_deg * _smooth(rng, t, 6.0)


def _weight_shift(p, rng, t, amount_deg=4.0, period_s=5.0):
  """Shifts weight between the legs: the pelvis rolls and one knee relaxes."""
  shift = _smooth(rng, t, period_s)
  p["roll"] = p["roll"] + amount_deg * shift
  p["hip_abd_l"] = p["hip_abd_l"] - amount_deg * shift
  p["hip_abd_r"] = p["hip_abd_r"] + amount_deg * shift
  p["knee_l"] = p["knee_l"] + 3 * amount_deg * np.maximum(0, shift)
  p["knee_r"] = p["knee_r"] + 3 * amount_deg * np.maximum(0, -shift)
  p["chest_side"] = p["chest_side"] - 0.5 * amount_deg * shift


def _look_around(p, rng, t, turn_deg=25.0, nod_deg=8.0):
  p["neck_turn"] = p["neck_turn"] + turn_deg * _smooth(rng, t, 4.0)
  p["neck_bend"] = p["neck_bend"] + nod_deg * _smooth(rng, t, 3.0)


def _sit(p, rng, t, seat_lean_deg=0.0):
  """A seated pose: thighs near horizontal, shins near vertical, feet on the floor."""
  for side in "lr":
    p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + 86 + rng.uniform(-5, 5) + 3 * _smooth(rng, t, 6)
    p[f"knee_{side}"] = p[f"knee_{side}"] + 84 + rng.uniform(-8, 8) + 4 * _smooth(rng, t, 6)
    p[f"hip_abd_{side}"] = p[f"hip_abd_{side}"] + rng.uniform(0, 10)
  p["spine_bend"] = p["spine_bend"] + seat_lean_deg + 5 * _smooth(rng, t, 7)


def _hand_to_mouth(rng, t, period_s, side):
  """One arm bringing the hand to the face and back, periodically: {track: [T]}."""
  phase = 2 * np.pi * t / period_s + rng.uniform(0, 2 * np.pi)
  lift = _smoothstep(0.5 + 0.9 * np.sin(phase))  # holds at the mouth and at rest for a while
  return {f"sh_flex_{side}": 10 + 30 * lift, f"sh_abd_{side}": 5 + 12 * lift,
          f"sh_rot_{side}": -10 * lift, f"elbow_{side}": 25 + 115 * lift}


def _arm_key(side, flex=(0, 20), abd=(5, 20), rot=(-10, 10), elbow=(5, 40)):
  def sample(rng):
    return {f"sh_flex_{side}": rng.uniform(*flex), f"sh_abd_{side}": rng.uniform(*abd),
            f"sh_rot_{side}": rng.uniform(*rot), f"elbow_{side}": rng.uniform(*elbow)}
  return sample


def _merge(*samplers):
  def sample(rng):
    out = {}
    for s in samplers:
      out.update(s(rng))
    return out
  return sample


def _set_arms(p, tracks):
  """Replaces the arm tracks named in `tracks` (the neutral arm pose is part of the keys)."""
  for name, value in tracks.items():
    p[name] = value


# ----------------------------------------------------------------------------------------------
# The 15 actions.


def _directions(p, rng, t):
  """Standing, turning and pointing with one arm at a time, head following the arm."""
  _stand_in_place(p, rng, t, drift_m=0.3, turn_deg=40)
  _weight_shift(p, rng, t)

  def key(rng):
    side = rng.choice(["l", "r", "none"])
    out = {}
    for s in "lr":
      point = s == side
      out.update({f"sh_flex_{s}": rng.uniform(60, 110) if point else rng.uniform(0, 15),
                  f"sh_abd_{s}": rng.uniform(0, 60) if point else rng.uniform(5, 15),
                  f"sh_rot_{s}": 0.0, f"elbow_{s}": rng.uniform(0, 20) if point else 15.0})
    out["neck_turn"] = {"l": 30.0, "r": -30.0, "none": 0.0}[side] * rng.uniform(0.5, 1.2)
    return out

  keys = _keyframes(rng, t, 2.0, 0.8, key)
  p["neck_turn"] = p["neck_turn"] + keys.pop("neck_turn")
  _set_arms(p, keys)


def _discussion(p, rng, t):
  """Standing and talking: both forearms gesture, the torso twists, the weight shifts."""
  _stand_in_place(p, rng, t, drift_m=0.2, turn_deg=30)
  _weight_shift(p, rng, t, 5.0, 4.0)
  _look_around(p, rng, t, 20, 10)
  p["chest_twist"] = p["chest_twist"] + 12 * _smooth(rng, t, 3.0)
  for side in "lr":
    p[f"sh_flex_{side}"] = p[f"sh_flex_{side}"] + 25 + 15 * _smooth(rng, t, 1.5)
    p[f"sh_abd_{side}"] = p[f"sh_abd_{side}"] + 10 + 8 * _smooth(rng, t, 2.0)
    p[f"elbow_{side}"] = p[f"elbow_{side}"] + 65 + 25 * _smooth(rng, t, 1.2)
    p[f"sh_rot_{side}"] = p[f"sh_rot_{side}"] + 15 * _smooth(rng, t, 2.0)


def _eating(p, rng, t):
  """Sitting at a table: one hand goes to the mouth again and again, the other rests on it."""
  _stand_in_place(p, rng, t, drift_m=0.0, turn_deg=3)
  _sit(p, rng, t, seat_lean_deg=15)
  _look_around(p, rng, t, 10, 6)
  eat, rest = ("r", "l") if rng.uniform() < 0.7 else ("l", "r")
  _set_arms(p, _hand_to_mouth(rng, t, rng.uniform(3.0, 4.5), eat))
  p[f"sh_flex_{rest}"] = 40 + 6 * _smooth(rng, t, 5)
  p[f"elbow_{rest}"] = 75 + 10 * _smooth(rng, t, 5)
  p["neck_bend"] = p["neck_bend"] + 12


def _greeting(p, rng, t):
  """Walking in, stopping and waving with a raised hand (or a short bow)."""
  v = np.interp(t, [t[0], t[0] + 0.4 * (t[-1] - t[0]), t[0] + 0.55 * (t[-1] - t[0]), t[-1]],
                [1.1, 1.1, 0.0, 0.0])
  amp = _walk(p, rng, t, v * rng.uniform(0.8, 1.1), _loop_path(rng, 1.1, 0.7))
  still = 1.0 - np.clip(amp / 0.8, 0, 1)
  side = rng.choice(["l", "r"])
  wave = 2 * np.pi * rng.uniform(1.5, 2.2) * t
  _add(p, {f"sh_flex_{side}": 30.0 + 0 * t, f"sh_abd_{side}": 75 + 15 * np.sin(0.5 * wave),
           f"sh_rot_{side}": 85.0 + 0 * t, f"elbow_{side}": 45 + 30 * np.sin(wave)}, still)
  p["spine_bend"] = p["spine_bend"] + still * 15 * np.maximum(0, _smooth(rng, t, 4))
  p["neck_bend"] = p["neck_bend"] - 8 * still


def _phoning(p, rng, t):
  """Strolling slowly with a phone at one ear; the free arm gestures, the head tilts."""
  v = 0.45 * np.clip(0.5 + _smooth(rng, t, 6), 0, 1)
  _walk(p, rng, t, v, _loop_path(rng, 0.7, 0.5), arm_swing=0.5)
  side = rng.choice(["l", "r"])
  free = "l" if side == "r" else "r"
  _set_arms(p, {f"sh_flex_{side}": 35 + 5 * _smooth(rng, t, 5),
                f"sh_abd_{side}": 35 + 5 * _smooth(rng, t, 5),
                f"sh_rot_{side}": 60.0 + 0 * t, f"elbow_{side}": 150 + 5 * _smooth(rng, t, 4)})
  p[f"sh_flex_{free}"] = p[f"sh_flex_{free}"] + 20 + 15 * _smooth(rng, t, 2)
  p[f"elbow_{free}"] = p[f"elbow_{free}"] + 40 + 30 * _smooth(rng, t, 2)
  p["neck_side"] = p["neck_side"] + (10 if side == "r" else -10)
  _look_around(p, rng, t, 15, 8)


def _photo(p, rng, t):
  """Holding a camera to the face with both hands, crouching and leaning to frame shots."""
  _stand_in_place(p, rng, t, drift_m=0.25, turn_deg=45)
  crouch = np.clip(_smooth(rng, t, 5), 0, 1)
  for side in "lr":
    p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + 45 * crouch
    p[f"knee_{side}"] = p[f"knee_{side}"] + 75 * crouch
    _set_arms(p, {f"sh_flex_{side}": 65 + 10 * _smooth(rng, t, 4), f"sh_abd_{side}": 25 + 0 * t,
                  f"sh_rot_{side}": -20 + 0 * t, f"elbow_{side}": 125 + 10 * _smooth(rng, t, 4)})
  p["spine_bend"] = p["spine_bend"] + 10 + 12 * _smooth(rng, t, 4) + 20 * crouch
  p["neck_bend"] = p["neck_bend"] - 5 * crouch
  p["chest_twist"] = p["chest_twist"] + 10 * _smooth(rng, t, 5)


def _posing(p, rng, t):
  """Holding a series of showy poses: arms high or wide, one leg out, the torso leaning."""
  _stand_in_place(p, rng, t, drift_m=0.1, turn_deg=20)
  pose = _merge(
      _arm_key("l", (-30, 170), (0, 100), (-40, 90), (0, 130)),
      _arm_key("r", (-30, 170), (0, 100), (-40, 90), (0, 130)),
      lambda r: {"hip_abd_l": r.uniform(0, 22), "hip_abd_r": r.uniform(0, 22),
                 "knee_l": r.uniform(0, 35), "knee_r": r.uniform(0, 35),
                 "hip_flex_l": r.uniform(-10, 30), "hip_flex_r": r.uniform(-10, 30),
                 "chest_side": r.uniform(-20, 20), "spine_bend": r.uniform(-15, 25),
                 "chest_twist": r.uniform(-25, 25), "neck_side": r.uniform(-15, 15)})
  _set_arms(p, _keyframes(rng, t, 1.8, 0.7, pose))


def _purchases(p, rng, t):
  """Walking slowly with the hands in front, stopping to bend down and pick things up."""
  v = 0.7 * np.clip(0.4 + 1.2 * _smooth(rng, t, 8), 0, 1)
  amp = _walk(p, rng, t, v, _loop_path(rng, 1.0, 0.8), arm_swing=0.4)
  stopped = 1.0 - np.clip(amp / 0.3, 0, 1)
  bend = stopped * np.clip(_smooth(rng, t, 3) + 0.3, 0, 1.2)
  p["pelvis_tilt"] = p["pelvis_tilt"] + 35 * bend
  p["spine_bend"] = p["spine_bend"] + 30 * bend
  for side in "lr":
    # Hips back, knees over the feet: the legs lean forward while the trunk bends.
    p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + 20 * bend
    p[f"knee_{side}"] = p[f"knee_{side}"] + 25 * bend
    p[f"sh_flex_{side}"] = p[f"sh_flex_{side}"] + 30 * (1 - bend) + 50 * bend
    p[f"elbow_{side}"] = p[f"elbow_{side}"] + 70 * (1 - bend)
  p["neck_bend"] = p["neck_bend"] + 15 + 10 * bend


def _sitting(p, rng, t):
  """Sitting on a chair, leaning back and forth, crossing the legs, hands on the lap or waving."""
  _stand_in_place(p, rng, t, drift_m=0.0, turn_deg=5)
  _sit(p, rng, t, seat_lean_deg=-5)
  cross = _smoothstep(1.5 * _smooth(rng, t, 10))  # one leg over the other for a while
  side = rng.choice(["l", "r"])
  p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + 15 * cross
  p[f"hip_abd_{side}"] = p[f"hip_abd_{side}"] - 18 * cross
  p[f"knee_{side}"] = p[f"knee_{side}"] - 10 * cross
  p["spine_bend"] = p["spine_bend"] + 15 * _smooth(rng, t, 6)
  for s in "lr":
    p[f"sh_flex_{s}"] = p[f"sh_flex_{s}"] + 35 + 15 * np.maximum(0, _smooth(rng, t, 3))
    p[f"elbow_{s}"] = p[f"elbow_{s}"] + 50 + 30 * np.maximum(0, _smooth(rng, t, 2.5))
  _look_around(p, rng, t, 30, 10)


def _sitting_down(p, rng, t):
  """Going from standing into a deep squat and to sitting on the floor (leaning back) and back."""
  _stand_in_place(p, rng, t, drift_m=0.05, turn_deg=10)
  states = (
      dict(hip=2.0, knee=4.0, spine=0.0, arm_flex=5.0, elbow=12.0),      # standing
      dict(hip=105.0, knee=125.0, spine=35.0, arm_flex=45.0, elbow=30.0),  # deep squat
      dict(hip=80.0, knee=15.0, spine=-20.0, arm_flex=-40.0, elbow=5.0),   # on the floor
  )
  order = [0, 1, 2, 2, 1] if rng.uniform() < 0.5 else [2, 1, 0, 1, 2]
  counter = iter(range(10**6))

  def key(rng):
    s = dict(states[order[next(counter) % len(order)]])
    return {k: v + rng.uniform(-5, 5) for k, v in s.items()}

  k = _keyframes(rng, t, 1.6, 1.4, key)
  for side in "lr":
    p[f"hip_flex_{side}"] = k["hip"] + 3 * _smooth(rng, t, 4)
    p[f"knee_{side}"] = k["knee"] + 3 * _smooth(rng, t, 4)
    p[f"sh_flex_{side}"] = k["arm_flex"]
    p[f"elbow_{side}"] = k["elbow"]
    p[f"sh_abd_{side}"] = p[f"sh_abd_{side}"] + 10
  p["spine_bend"] = p["spine_bend"] + k["spine"]


def _smoking(p, rng, t):
  """Standing with one hand bringing a cigarette to the mouth, the other arm across the waist."""
  _stand_in_place(p, rng, t, drift_m=0.15, turn_deg=20)
  _weight_shift(p, rng, t, 5.0, 6.0)
  _look_around(p, rng, t, 25, 8)
  smoke = rng.choice(["l", "r"])
  other = "l" if smoke == "r" else "r"
  _set_arms(p, _hand_to_mouth(rng, t, rng.uniform(4.0, 6.0), smoke))
  _set_arms(p, {f"sh_flex_{other}": 20 + 0 * t, f"sh_abd_{other}": 5 + 0 * t,
                f"sh_rot_{other}": -55 + 0 * t, f"elbow_{other}": 95 + 5 * _smooth(rng, t, 5)})


def _waiting(p, rng, t):
  """Standing around: swaying, arms crossed, behind the back or hanging, looking about."""
  _stand_in_place(p, rng, t, drift_m=0.25, turn_deg=35)
  _weight_shift(p, rng, t, 6.0, 5.0)
  _look_around(p, rng, t, 40, 10)
  arms = rng.choice(["crossed", "behind", "hanging"], size=3)

  def key(rng):
    style = arms[rng.integers(0, 3)]
    out = {}
    for s in "lr":
      if style == "crossed":
        out.update({f"sh_flex_{s}": 25.0, f"sh_abd_{s}": 5.0, f"sh_rot_{s}": -70.0,
                    f"elbow_{s}": 110.0})
      elif style == "behind":
        out.update({f"sh_flex_{s}": -30.0, f"sh_abd_{s}": 15.0, f"sh_rot_{s}": 40.0,
                    f"elbow_{s}": 60.0})
      else:
        out.update({f"sh_flex_{s}": 0.0, f"sh_abd_{s}": 8.0, f"sh_rot_{s}": 0.0,
                    f"elbow_{s}": 12.0})
    return {k: v + rng.uniform(-5, 5) for k, v in out.items()}

  _set_arms(p, _keyframes(rng, t, 3.0, 1.0, key))
  p["spine_bend"] = p["spine_bend"] + 5 * _smooth(rng, t, 6)


def _walk_dog(p, rng, t):
  """Walking with stops and tugs, one arm held forward on the leash, the body leaning forward."""
  v = 1.1 * np.clip(0.6 + 0.8 * _smooth(rng, t, 5), 0, 1.3)
  _walk(p, rng, t, v, _loop_path(rng, 1.2, 0.9), arm_swing=0.6)
  side = rng.choice(["l", "r"])
  tug = np.clip(_smooth(rng, t, 1.5), 0, 1)
  _set_arms(p, {f"sh_flex_{side}": 35 + 15 * tug, f"sh_abd_{side}": 10 + 0 * t,
                f"sh_rot_{side}": 0 * t, f"elbow_{side}": 25 - 15 * tug})
  p["spine_bend"] = p["spine_bend"] + 8 + 6 * tug
  p["neck_bend"] = p["neck_bend"] + 12
  p["chest_twist"] = p["chest_twist"] + (8 if side == "l" else -8)


def _walking(p, rng, t):
  """A steady walk around the room on an elliptical path with a normal arm swing."""
  _walk(p, rng, t, np.full_like(t, rng.uniform(1.1, 1.4)), _loop_path(rng, 1.3, 0.9))
  _look_around(p, rng, t, 8, 4)


def _walk_together(p, rng, t):
  """A slower walk on an elongated loop, head and chest turned towards a companion."""
  v = np.full_like(t, rng.uniform(0.8, 1.0))
  _walk(p, rng, t, v, _loop_path(rng, 1.5, 0.35), arm_swing=0.5)
  companion = rng.choice([-1.0, 1.0])
  p["neck_turn"] = p["neck_turn"] + companion * (25 + 10 * _smooth(rng, t, 3))
  p["chest_twist"] = p["chest_twist"] + companion * 8
  side = "l" if companion > 0 else "r"
  p[f"elbow_{side}"] = p[f"elbow_{side}"] + 30 * np.maximum(0, _smooth(rng, t, 2))


_MOTIONS = {
    "Directions": _directions, "Discussion": _discussion, "Eating": _eating,
    "Greeting": _greeting, "Phoning": _phoning, "Photo": _photo, "Posing": _posing,
    "Purchases": _purchases, "Sitting": _sitting, "SittingDown": _sitting_down,
    "Smoking": _smoking, "Waiting": _waiting, "WalkDog": _walk_dog, "Walking": _walking,
    "WalkTogether": _walk_together,
}


def _rng(seed: int, *key: int) -> np.random.Generator:
  """An independent random stream per (subject, action, purpose): subsets reproduce the full set."""
  return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


def synthesize_sequence(subject: str, action: str, frames: int, *, seed: int = 0,
                        frame_rate_hz: float = DEFAULT_FRAME_RATE_HZ) -> np.ndarray:
  """The 3D motion of one (subject, action) sequence.

  Args:
    subject: one of `SUBJECTS`.
    action: one of `ACTIONS` (the base name, e.g. 'Walking').
    frames: number of frames T.
    seed: generator seed.
    frame_rate_hz: frames per second of the motion.

  Returns:
    float32 `[T, 32, 3]`, world metres.
  """
  _check_names("subject", [subject], SUBJECTS)
  _check_names("action", [action], ACTIONS)
  rng = _rng(seed, SUBJECTS.index(subject), ACTIONS.index(action), 1)
  t = np.arange(frames, dtype=np.float64) / frame_rate_hz
  p = _neutral(t)
  _MOTIONS[action](p, rng, t)
  # A little individual tremor on every angle, so no two frames are exactly alike.
  for name in _ANGLE_TRACKS:
    p[name] = p[name] + 1.5 * _smooth(rng, t, 1.0)
  # Hinge joints stay within their anatomical range whatever the motion above asked for.
  for side in "lr":
    p[f"knee_{side}"] = np.clip(p[f"knee_{side}"], 0.0, 150.0)
    p[f"elbow_{side}"] = np.clip(p[f"elbow_{side}"], 0.0, 155.0)
  bones = subject_bone_lengths(subject, seed)
  pos17, glob = forward_kinematics(p, bones)
  return expand_to_32(pos17, glob, bones).astype(np.float32)


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


def _check_names(what: str, names: Sequence[str], known: Sequence[str]) -> None:
  if isinstance(names, str):
    raise ValueError(f"{what}s: expected a sequence of names, got the string {names!r}")
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown {what}(s) {unknown}; expected some of {list(known)}")


def save_npz(path: pathlib.Path, **members) -> None:
  """`np.savez_compressed` at the fastest deflate level (numpy's default level takes 4x longer).

  The file is written under a temporary name and renamed, so an interrupted run (or several
  processes generating at once) never leaves a truncated file under the final name.
  """
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
    for key, value in members.items():
      with archive.open(f"{key}.npy", "w", force_zip64=True) as fp:
        # A dict becomes a 0-d object array holding it, as np.savez stores it.
        array = np.empty((), dtype=object) if isinstance(value, dict) else np.asanyarray(value)
        if isinstance(value, dict):
          array[()] = value
        np.lib.format.write_array(fp, array, allow_pickle=True)
  os.replace(tmp, path)


def generate(out_dir, *, frames_per_sequence: int = DEFAULT_FRAMES, seed: int = 0,
             subjects: Sequence[str] = SUBJECTS, actions: Sequence[str] = ACTIONS,
             frame_rate_hz: float = DEFAULT_FRAME_RATE_HZ,
             only_missing: bool = False) -> dict[str, pathlib.Path]:
  """Writes the five synthetic Human3.6M files into `out_dir` (created if needed).

  Args:
    out_dir: destination folder.
    frames_per_sequence: frames T of every 3D sequence (one sequence per subject and action).
    seed: generator seed; equal arguments give identical files.
    subjects: subset of `SUBJECTS`.
    actions: subset of `ACTIONS` (base names, e.g. 'Walking').
    frame_rate_hz: frames per second of the motion.
    only_missing: leave files that already exist in `out_dir` untouched.

  Returns:
    {'3d', '2d_gt', '2d_gt_gmm', '2d_cpn_gmm', '2d_cpn'} -> path of each file.
  """
  if int(frames_per_sequence) != frames_per_sequence or frames_per_sequence < 1:
    raise ValueError(f"frames_per_sequence must be a positive integer, got {frames_per_sequence!r}")
  if not frame_rate_hz > 0:
    raise ValueError(f"frame_rate_hz must be positive, got {frame_rate_hz!r}")
  _check_names("subject", subjects, SUBJECTS)
  _check_names("action", actions, ACTIONS)
  frames = int(frames_per_sequence)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  positions_3d, gt_2d, gt_gmm, cpn_gmm = {}, {}, {}, {}
  for subject in [s for s in SUBJECTS if s in subjects]:
    si = SUBJECTS.index(subject)
    for d in (positions_3d, gt_2d, gt_gmm, cpn_gmm):
      d[subject] = {}
    for action in [a for a in ACTIONS if a in actions]:
      ai = ACTIONS.index(action)
      name = SEQUENCE_NAMES[action]
      # Two spare frames for the CPN-like arrays, which may run past the 3D like the real ones.
      motion = synthesize_sequence(subject, action, frames + 2, seed=seed,
                                   frame_rate_hz=frame_rate_hz)
      pixels = project_sequence(motion, subject)
      positions_3d[subject][name] = motion[:frames]
      gt_2d[subject][name] = [px[:frames] for px in pixels]
      gt_gmm[subject][name], cpn_gmm[subject][name] = [], []
      for c, px in enumerate(pixels):
        gt_gmm[subject][name].append(gmm_from_2d(px[:frames], _rng(seed, si, ai, 2, c)))
        rng = _rng(seed, si, ai, 3, c)
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
      save_npz(path, **members[key])
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
