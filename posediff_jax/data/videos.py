"""`VideoSequence`: one video seen by one camera, the unit of the clip families' data.

The clip readers (`data.h36m.load_h36m_videos`, `data.mpi3dhp`) give a list of them; the clip
pipeline (`data.clip_pipeline`) cuts them into fixed-length clips for training and evaluation.
The 2D is in normalised screen units (`cameras.normalize_screen_coordinates`), the 3D in
camera-frame metres.
"""

import dataclasses

import numpy as np


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
