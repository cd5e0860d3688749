"""The Human3.6M 17-joint skeleton: joint order, bones, left/right pairs and pose helpers.

The 17 joints are the ones VideoPose3D keeps after dropping the 15 static joints of the 32-joint
Human3.6M motion-capture skeleton. Every pose array in this project is `[..., 17, C]` in this order.
"""

import numpy as np

H36M_JOINT_NAMES = (
    "Hip", "RHip", "RKnee", "RFoot", "LHip", "LKnee", "LFoot", "Spine", "Thorax", "Neck/Nose",
    "Head", "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist",
)
NUM_JOINTS = len(H36M_JOINT_NAMES)
ROOT_JOINT = 0

# The 16 bones (parent, child), in the order the graph code builds its adjacency from.
H36M_EDGES = (
    (0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (0, 7), (7, 8), (8, 9), (9, 10), (8, 11),
    (11, 12), (12, 13), (8, 14), (14, 15), (15, 16),
)
# Parent of each of the 17 joints (-1 for the root); the shoulders hang off the thorax.
H36M_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)

# Left joints and their right counterparts, pairwise: H36M_LEFT[i] mirrors H36M_RIGHT[i].
H36M_LEFT = (4, 5, 6, 11, 12, 13)
H36M_RIGHT = (1, 2, 3, 14, 15, 16)

# Which of the 32 motion-capture joints are the 17 above, and the 32-joint parents (before the
# static joints are removed and the shoulders rewired to the thorax).
H36M32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
H36M32_PARENTS = (
    -1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 12, 16, 17, 18, 19, 20, 19, 22, 12, 24,
    25, 26, 27, 28, 27, 30,
)


def _mirror_permutation() -> tuple[int, ...]:
  perm = list(range(NUM_JOINTS))
  for left, right in zip(H36M_LEFT, H36M_RIGHT):
    perm[left], perm[right] = right, left
  return tuple(perm)


# flipped[..., j, :] = pose[..., H36M_MIRROR[j], :]; the permutation is its own inverse.
H36M_MIRROR = _mirror_permutation()


def _check_joints(x, what: str) -> None:
  if x.ndim < 2 or x.shape[-2] != NUM_JOINTS:
    raise ValueError(f"{what}: expected a pose array [..., {NUM_JOINTS}, C], got shape {x.shape}")


def root_relative(x):
  """Poses relative to the hip joint, out of place.

  Args:
    x: numpy or jax array `[..., 17, C]`.

  Returns:
    `x - x[..., :1, :]`, same shape and type; the root joint becomes zero.
  """
  _check_joints(x, "root_relative")
  return x - x[..., ROOT_JOINT:ROOT_JOINT + 1, :]


def flip_pose(x, *, x_channel: int = 0):
  """Mirrors poses horizontally: negates one coordinate and swaps left and right joints.

  Applying it twice gives back the input.

  Args:
    x: numpy or jax array `[..., 17, C]` (e.g. 2D `(u, v)` or 3D `(x, y, z)`).
    x_channel: index of the horizontal coordinate in the last axis.

  Returns:
    The mirrored poses, same shape, dtype and array type as `x`.
  """
  _check_joints(x, "flip_pose")
  channels = x.shape[-1]
  if not 0 <= x_channel < channels:
    raise ValueError(f"flip_pose: x_channel={x_channel} is outside the last axis of shape "
                     f"{x.shape}")
  sign = np.ones(channels, dtype=x.dtype)
  sign[x_channel] = -1
  return x[..., np.asarray(H36M_MIRROR), :] * sign

# MPI-INF-3DHP's 17 "relevant" joints (head_top, neck, R/L arm, R/L leg, pelvis, spine, head): the
# pelvis is the root, and MPI3DHP_LEFT[i] mirrors MPI3DHP_RIGHT[i].
MPI3DHP_ROOT_JOINT = 14
MPI3DHP_LEFT = (5, 6, 7, 11, 12, 13)
MPI3DHP_RIGHT = (2, 3, 4, 8, 9, 10)
