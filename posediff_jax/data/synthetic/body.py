"""The synthetic body: seven subjects' bone lengths and the forward kinematics that turn joint-angle
tracks into the 17 Human3.6M joints, and those into the 32-joint motion-capture layout.

Each subject is a 17-joint skeleton with its own bone lengths (Human3.6M's mean lengths times a
per-subject and per-bone scale). Poses live in the Human3.6M world frame (z up, metres); the root
is placed so that the lower ankle rests on the floor. `motion` drives it.
"""

from typing import Sequence

import numpy as np

from posediff_jax import skeleton

SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")

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

# ----------------------------------------------------------------------------------------------
# Random streams and names.


def rng(seed: int, *key: int) -> np.random.Generator:
  """An independent random stream per (subject, action, purpose): subsets reproduce the full set."""
  return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


def check_names(what: str, names: Sequence[str], known: Sequence[str]) -> None:
  if isinstance(names, str):
    raise ValueError(f"{what}s: expected a sequence of names, got the string {names!r}")
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown {what}(s) {unknown}; expected some of {list(known)}")


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
  check_names("subject", [subject], SUBJECTS)
  jitter = rng(seed, SUBJECTS.index(subject), 0, 0).uniform(0.97, 1.03, size=17)
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
