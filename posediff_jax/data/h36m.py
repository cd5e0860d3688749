"""Human3.6M: VideoPose3D / DiffPose `.npz` files, read as single frames or as whole videos.

Files (all `.npz` whose members are pickled dicts; read with the restricted unpickler of
`posediff_jax.safe_load`, never with `np.load(allow_pickle=True)`):

- 3D, VideoPose3D `data_3d_h36m.npz`: `positions_3d = {subject: {action: [T, 32, 3]}}`, world
  coordinates in metres.
- plain 2D, VideoPose3D `data_2d_h36m_<source>.npz`: `positions_2d = {subject: {action: [4 x
  [T, 17, 2]]}}` in pixels, one array per camera, plus an optional `metadata` dict.
- GMM 2D, DiffPose `data_2d_h36m_<source>_gmm.npz`: `positions_2d = {subject: {action: [4 x
  [T, 17, K, 5]]}}`, the last axis `(weight, u_px, v_px, var_u, var_v)` for each of K kernels.
  The var channels are read as they are: training uses them as the standard deviation of the
  noise on the normalised u, v (`load_positions_2d`'s `plain_2d_var`).
- prepared 2D, ICASSP'24 `data_2d_h36m_<source>_gmm_norm.npy` (upstream's `prepare_2d_poses.py`,
  reproduced by `prepare_first_kernel_2d`): a pickled `{subject: {action: [4, T, 17, 2]}}` holding
  kernel 0's (u, v), already normalised.

`load_frame_set` turns a 3D file and a 2D file into flat per-frame arrays exactly as DiffPose's
`Human36mDataset` + `read_3d_data_me` + `create_2d_data` + `fetch_me` + `PoseGenerator_gmm` do;
its `kernel` and `fixed_resolution` options give the ICASSP'24 variant of that path.
`load_h36m_videos` turns a 3D file and a plain 2D file into one `videos.VideoSequence` per
(subject, action, camera), as D3DP's main.py prepares them for the clip families.
"""

import dataclasses
import functools
from typing import Any, Iterator, Sequence

import numpy as np

from posediff_jax import cameras
from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.data import npz
from posediff_jax.data import videos

# The 15 action classes in the order of upstream's per-action tables.
ACTIONS = (
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
    "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether",
)
# Original Human3.6M spellings (S1 uses some) that VideoPose3D's converter renames.
_ACTION_ALIASES = {
    "TakingPhoto": "Photo", "WalkingDog": "WalkDog", "WalkingTogether": "WalkTogether"}

TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")

NUM_CAMERAS = 4
NUM_JOINTS_32 = 32
GMM_CHANNELS = 5  # (weight, u, v, var_u, var_v)
_WEIGHT_SUM_TOLERANCE = 1e-4
# How `load_frame_set` picks the 2D from a GMM file: "weighted" keeps every kernel and the pipeline
# chooses by weight (DiffPose); "first" keeps kernel 0 alone, whatever its weight (ICASSP'24).
KERNEL_CHOICES = ("weighted", "first")


def action_class(name: str) -> str:
  """The action class of a sequence name, e.g. 'Directions 1' -> 'Directions'.

  Upstream DiffPose takes `name.split(' ')[0]`; on top of that the original Human3.6M spellings
  'TakingPhoto', 'WalkingDog' and 'WalkingTogether' map to their VideoPose3D names (only training
  subjects use them, so the evaluation labels are the same as upstream's).

  Args:
    name: a sequence name from a data file.

  Returns:
    One of `ACTIONS`.

  Raises:
    ValueError: the name is not a Human3.6M action.
  """
  base = str(name).split(" ")[0]
  base = _ACTION_ALIASES.get(base, base)
  if base not in ACTIONS:
    raise ValueError(f"unknown Human3.6M action {name!r} (class {base!r}); expected a name "
                     f"starting with one of {', '.join(ACTIONS)}")
  return base


def load_positions_3d(path) -> dict[str, dict[str, np.ndarray]]:
  """Reads a VideoPose3D `data_3d_h36m.npz`.

  Args:
    path: the `.npz` file.

  Returns:
    `{subject: {action: float32 [T, 32, 3]}}`, world coordinates in metres, in file order.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file lacks `positions_3d`, or an array has the wrong shape or non-finite values.
  """
  value, _ = npz.load_member(path, "positions_3d")
  npz.check_nested_dict(value, path, "positions_3d")
  out = {}
  for subject, actions in value.items():
    out[subject] = {}
    for action, positions in actions.items():
      where = f"{path}: positions_3d[{subject!r}][{action!r}]"
      positions = npz.float_array(positions, where)
      if positions.ndim != 3 or positions.shape[1:] != (NUM_JOINTS_32, 3):
        raise ValueError(f"{where}: expected [T, {NUM_JOINTS_32}, 3] (the 32-joint Human3.6M "
                         f"skeleton), found shape {positions.shape}")
      npz.check_finite(positions, where)
      out[subject][action] = positions.astype(np.float32, copy=False)
  return out


def _check_metadata(metadata, path) -> None:
  """Rejects 2D files whose joints are not in the Human3.6M-17 order."""
  if metadata is None:
    return
  if not isinstance(metadata, dict):
    raise ValueError(f"{path}: 'metadata' must be a dict, found {type(metadata).__name__}")
  layout = metadata.get("layout_name")
  if layout is not None and layout != "h36m":
    raise ValueError(f"{path}: metadata layout_name is {layout!r}; only the 'h36m' joint layout is "
                     "supported (convert the keypoints to the Human3.6M-17 order first)")
  num_joints = metadata.get("num_joints")
  if num_joints is not None and int(num_joints) != skeleton.NUM_JOINTS:
    raise ValueError(f"{path}: metadata num_joints is {num_joints}, expected {skeleton.NUM_JOINTS}")
  symmetry = metadata.get("keypoints_symmetry")
  if symmetry is not None:
    found = tuple(tuple(int(j) for j in side) for side in symmetry)
    if found != (skeleton.H36M_LEFT, skeleton.H36M_RIGHT):
      raise ValueError(f"{path}: metadata keypoints_symmetry is {found}, expected "
                       f"{(skeleton.H36M_LEFT, skeleton.H36M_RIGHT)} (Human3.6M-17 order)")


def _read_camera_2d(array, where: str, plain_2d_var: float) -> np.ndarray:
  """One camera's 2D as a GMM `[T, 17, K, 5]` (plain `[T, 17, 2]` becomes one kernel)."""
  array = npz.float_array(array, where)
  if array.ndim == 3 and array.shape[-1] == 2:
    layout = "plain"
  elif array.ndim == 4 and array.shape[-1] == GMM_CHANNELS:
    layout = "gmm"
  else:
    raise ValueError(f"{where}: expected [T, 17, K, 5] (GMM: weight, u, v, var_u, var_v) or "
                     f"[T, 17, 2] (plain 2D), found shape {array.shape}")
  if array.shape[1] != skeleton.NUM_JOINTS:
    raise ValueError(f"{where}: expected {skeleton.NUM_JOINTS} joints on axis 1, found shape "
                     f"{array.shape}")
  if layout == "gmm" and array.shape[2] < 1:
    raise ValueError(f"{where}: the GMM has no kernels, shape {array.shape}")
  npz.check_finite(array, where)
  if layout == "plain":
    gmm = np.empty(array.shape[:2] + (1, GMM_CHANNELS), dtype=array.dtype)
    gmm[..., 0, 0] = 1
    gmm[..., 0, 1:3] = array
    gmm[..., 0, 3:5] = plain_2d_var
    return gmm
  weights = array[..., 0]
  sums = weights.sum(axis=-1, dtype=np.float64)
  bad = (weights < 0).any(axis=-1) | (np.abs(sums - 1) > _WEIGHT_SUM_TOLERANCE)
  if bad.any():
    frame, joint = (int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{where}: GMM weights must be >= 0 and sum to 1; frame {frame} joint {joint} "
                     f"has weights {weights[frame, joint].tolist()}")
  return array


def load_positions_2d(path, *, plain_2d_var: float = 0.01
                      ) -> tuple[dict[str, dict[str, list[np.ndarray]]], dict[str, Any] | None]:
  """Reads a 2D keypoint file: DiffPose GMM or VideoPose3D plain 2D.

  Args:
    path: the `.npz` file.
    plain_2d_var: the value both var channels get when a plain 2D file is promoted to a
      one-kernel GMM. Like a GMM file's var channels it is used as it is, not converted: DiffPose's
      training multiplies unit noise on the normalised u, v by it, so it is a standard deviation
      in normalised screen units (2 / res_w per pixel: 0.01 = 5 px on the 1000-pixel-wide
      Human3.6M cameras), not a variance in pixels² (`prepare_h36m gmm` converts one).

  Returns:
    `({subject: {action: [one array per camera, [T_cam, 17, K, 5]]}}, metadata or None)`, in file
    order. The last axis is `(weight, u_px, v_px, var_u, var_v)`; plain files give K = 1 with
    weight 1. Arrays keep the file's float dtype.

  Raises:
    FileNotFoundError: no such file.
    ValueError: no `positions_2d`, a non-Human3.6M layout, a wrong shape, NaNs or bad GMM weights;
      the message names the file, subject, action and camera.
  """
  if not np.isfinite(plain_2d_var) or plain_2d_var < 0:
    raise ValueError(f"plain_2d_var must be a finite value >= 0, got {plain_2d_var}")
  return _read_positions_2d(path, functools.partial(_read_camera_2d, plain_2d_var=plain_2d_var))


def _read_positions_2d(path, read_camera) -> tuple[dict[str, dict[str, list[np.ndarray]]], Any]:
  """A 2D file's `positions_2d`, each camera's array passed through `read_camera(array, where)`,
  and its metadata (checked to be the Human3.6M-17 layout, or None)."""
  value, members = npz.load_member(path, "positions_2d")
  metadata = members.get("metadata")
  _check_metadata(metadata, path)
  npz.check_nested_dict(value, path, "positions_2d")
  out = {}
  for subject, actions in value.items():
    out[subject] = {}
    for action, per_camera in actions.items():
      where = f"{path}: positions_2d[{subject!r}][{action!r}]"
      if not isinstance(per_camera, (list, tuple)):
        raise ValueError(f"{where}: expected a list with one array per camera, found "
                         f"{type(per_camera).__name__}")
      out[subject][action] = [read_camera(array, f"{where} camera {cam}")
                              for cam, array in enumerate(per_camera)]
  return out, metadata


def is_prepared_2d(path) -> bool:
  """Whether `path` names a prepared (already normalised) ICASSP'24 2D file: a `.npy`."""
  return str(path).endswith(".npy")


def load_prepared_2d(path) -> dict[str, dict[str, list[np.ndarray]]]:
  """Reads an ICASSP'24 prepared 2D file, `data_2d_h36m_<source>_gmm_norm.npy`.

  Args:
    path: the `.npy` file (a pickled dict, read with the restricted unpickler).

  Returns:
    `{subject: {action: [one array per camera, [T, 17, 2]]}}` in file order: normalised (u, v) in
    the file's dtype (upstream stores float64).

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a dict of dicts, or an array that is not `[4, T, 17, 2]` or has NaNs; the
      message names the file, subject and action.
  """
  value = safe_load.load_pickled_npy(path)
  npz.check_nested_dict(value, path, "the prepared 2D")
  out = {}
  for subject, actions in value.items():
    out[subject] = {}
    for action, array in actions.items():
      where = f"{path}: [{subject!r}][{action!r}]"
      array = npz.float_array(array, where)
      if array.ndim != 4 or array.shape[0] != NUM_CAMERAS or array.shape[2:] != (
          skeleton.NUM_JOINTS, 2):
        raise ValueError(f"{where}: expected [{NUM_CAMERAS}, T, {skeleton.NUM_JOINTS}, 2] "
                         f"(cameras, frames, joints, normalised u v), found shape {array.shape}")
      npz.check_finite(array, where)
      out[subject][action] = list(array)
  return out


def prepare_first_kernel_2d(positions_2d, *, resolution: tuple[int, int] = (1000, 1000),
                            reference=None) -> dict[str, dict[str, np.ndarray]]:
  """Upstream ICASSP'24 `prepare_2d_poses.py`: kernel 0's (u, v) of every sequence, normalised.

  The GT file is prepared without `reference`; its cameras must have equal lengths. The CPN file is
  prepared against the prepared GT (spec §B.3): a sequence whose cameras differ in length is first
  cut to its shortest camera, then one longer than the GT sequence is cut to the GT length.

  Args:
    positions_2d: GMM 2D as `load_positions_2d` returns it (`[T_cam, 17, K, 5]` per camera).
    resolution: `(w, h)` every camera is normalised with; upstream uses (1000, 1000) for all.
    reference: None, or the prepared GT `{subject: {action: [4, T, 17, 2]}}` to trim against.

  Returns:
    `{subject: {action: float32 [4, T, 17, 2]}}`. Upstream saves float64 and its loader casts to
    float32; the values after that cast are these, bit for bit.

  Raises:
    ValueError: unequal camera lengths without `reference`, a sequence missing from `reference`,
      or one shorter than its reference (upstream asserts the GT is shorter).
  """
  w, h = resolution
  out = {}
  for subject, actions in positions_2d.items():
    out[subject] = {}
    for action, per_camera in actions.items():
      where = f"positions_2d[{subject!r}][{action!r}]"
      lengths = [len(array) for array in per_camera]
      if reference is None and len(set(lengths)) > 1:
        raise ValueError(f"{where}: cameras have different lengths {lengths}; only a file prepared "
                         "against a reference (the CPN file against the GT) is cut to its shortest")
      length = min(lengths)
      if reference is not None:
        if subject not in reference or action not in reference[subject]:
          raise ValueError(f"{where}: the reference has no such sequence")
        ref_length = len(reference[subject][action][0])
        if ref_length > length:
          raise ValueError(f"{where}: {length} frames (shortest camera), fewer than the "
                           f"{ref_length} of the reference; it must be at least as long")
        length = ref_length
      uv = np.stack([array[:length, :, 0, 1:3] for array in per_camera])
      out[subject][action] = cameras.normalize_screen_coordinates(uv, w, h)
  return out


def _first_kernel(gmm: np.ndarray) -> np.ndarray:
  """`[T, 17, K, 5]` -> `[T, 17, 1, 5]`: kernel 0 alone, its weight set to 1."""
  first = gmm[..., :1, :].copy()
  first[..., 0] = 1
  return first


def _prepared_as_gmm(uv: np.ndarray, variance: float) -> np.ndarray:
  """Prepared `[T, 17, 2]` -> a one-kernel GMM `[T, 17, 1, 5]` (weight 1, the given variance)."""
  gmm = np.empty(uv.shape[:2] + (1, GMM_CHANNELS), dtype=np.float32)
  gmm[..., 0, 0] = 1
  gmm[..., 0, 1:3] = uv
  gmm[..., 0, 3:5] = variance
  return gmm


@dataclasses.dataclass(frozen=True, eq=False)
class FrameSet:
  """Flat per-frame arrays of one split, in upstream order (subject, action, camera, frame).

  Attributes:
    gmm_2d: float32 `[N, 17, K, 5]`: per joint K kernels of `(weight, u, v, var_u, var_v)`, with
      u, v in normalised screen units and the variances as in the file.
    target_3d: float32 `[N, 17, 3]`: camera-frame metres, root-relative.
    action: int32 `[N]`: index into `ACTIONS`.
    camera_params: float32 `[N, 4]`: DiffPose's `[fx, fy, cx, cy]` of the frame's camera.
    subject: int32 `[N]`: index into `subjects`.
    camera: int32 `[N]`: camera index 0..3.
    sequence: int32 `[N]`: index into `sequence_names`.
    frame: int32 `[N]`: frame number within the sequence.
    subjects: the subjects, in the order they were requested.
    sequence_names: 'subject/action name' of each sequence, e.g. 'S9/Directions 1'.
  """
  gmm_2d: np.ndarray
  target_3d: np.ndarray
  action: np.ndarray
  camera_params: np.ndarray
  subject: np.ndarray
  camera: np.ndarray
  sequence: np.ndarray
  frame: np.ndarray
  subjects: tuple[str, ...]
  sequence_names: tuple[str, ...]

  def __post_init__(self):
    n = len(self.target_3d)
    expected = {"gmm_2d": (n, skeleton.NUM_JOINTS, None, GMM_CHANNELS),
                "target_3d": (n, skeleton.NUM_JOINTS, 3), "action": (n,),
                "camera_params": (n, 4), "subject": (n,), "camera": (n,), "sequence": (n,),
                "frame": (n,)}
    for name, shape in expected.items():
      found = getattr(self, name).shape
      if len(found) != len(shape) or any(e is not None and e != f for e, f in zip(shape, found)):
        raise ValueError(f"FrameSet.{name}: expected shape {shape} (None = any), found {found}")

  def __len__(self) -> int:
    return len(self.target_3d)

  @property
  def num_kernels(self) -> int:
    return self.gmm_2d.shape[2]


def check_actions(actions: Sequence[str]) -> tuple[str, ...]:
  """`data.actions` checked: () (all) or distinct names from `ACTIONS`."""
  if isinstance(actions, str):
    raise ValueError(f"config.data.actions must be a list of action names, got the string "
                     f"{actions!r} (write --config.data.actions=\"('{actions}',)\")")
  actions = tuple(str(a) for a in actions)
  unknown = [a for a in actions if a not in ACTIONS]
  if unknown:
    raise ValueError(f"config.data.actions: unknown action(s) {unknown}; expected names from "
                     f"{', '.join(ACTIONS)} (or none for all)")
  return actions


def camera_sequences(path_3d, positions_3d: dict, path_2d, positions_2d: dict,
                     subjects: Sequence[str], actions: Sequence[str] = ()) -> Iterator[tuple]:
  """Every (subject, action, camera) of the 2D file in upstream order, checked against the 3D.

  Yields `(subject, action, camera index, Camera, world 3D [T, 17, 3], 2D array [T' >= T, ...])`:
  subjects as given, actions in the 2D file's order, the 4 cameras in order. With `actions`
  (names from `ACTIONS`; empty = all) only sequences of those classes are yielded ('Sitting'
  does not take in 'SittingDown', unlike upstream's prefix match of `-a`). Errors name the file,
  subject, action and camera: a subject or sequence missing from either file, a camera count other
  than 4, a 2D sequence shorter than its 3D one, or an action none of the subjects has.
  """
  wanted = set(check_actions(actions))
  seen = set()
  for subject in subjects:
    for path, data in ((path_3d, positions_3d), (path_2d, positions_2d)):
      if subject not in data:
        raise ValueError(f"{path}: no data for subject {subject!r}; the file has {list(data)}")
    subject_cameras = cameras.h36m_cameras(subject)
    missing = [a for a in positions_3d[subject] if a not in positions_2d[subject]]
    if missing:
      raise ValueError(f"{path_2d}: subject {subject!r} has no 2D for the 3D sequence(s) {missing}")
    for action, per_camera in positions_2d[subject].items():
      if wanted and action_class(action) not in wanted:
        continue
      seen.add(action_class(action))
      if action not in positions_3d[subject]:
        raise ValueError(f"{path_3d}: subject {subject!r} has no 3D sequence {action!r}, which the "
                         f"2D file {path_2d} has")
      if len(per_camera) != NUM_CAMERAS:
        raise ValueError(f"{path_2d}: positions_2d[{subject!r}][{action!r}] has {len(per_camera)} "
                         f"camera arrays, expected {NUM_CAMERAS}")
      world = positions_3d[subject][action][:, skeleton.H36M32_TO_17]
      for camera_index, (cam, array) in enumerate(zip(subject_cameras, per_camera)):
        if len(array) < len(world):
          raise ValueError(
              f"{path_2d}: positions_2d[{subject!r}][{action!r}] camera {camera_index} has "
              f"{len(array)} frames but the 3D sequence in {path_3d} has {len(world)}; the 2D must "
              "be at least as long")
        yield subject, action, camera_index, cam, world, array
  if wanted - seen:
    raise ValueError(f"{path_2d}: no sequence of action(s) {sorted(wanted - seen)} "
                     f"(config.data.actions) for subjects {', '.join(subjects)}")


def load_frame_set(path_3d, path_2d, subjects: Sequence[str], *, plain_2d_var: float = 0.01,
                   fixed_resolution: tuple[int, int] | None = None,
                   kernel: str = "weighted", actions: Sequence[str] = ()) -> FrameSet:
  """Builds the per-frame dataset of some subjects as DiffPose's data pipeline does.

  For each subject (in the given order), each action of the 2D file (in file order) and each of
  the 4 cameras: the 17 joints are kept, the world poses go to that camera's frame, the 2D is cut
  to the 3D length and its u, v are normalised with the camera's resolution; the targets are made
  root-relative.

  ICASSP'24 reads upstream's prepared `.npy` (see `prepare_first_kernel_2d`); the same frames come
  from its source GMM file with `kernel="first"` and `fixed_resolution=(1000, 1000)`, because
  upstream then asserts that every prepared sequence has exactly the 3D length.

  Args:
    path_3d: VideoPose3D `data_3d_h36m.npz`.
    path_2d: a GMM or plain 2D `.npz` (see `load_positions_2d`), or a prepared `.npy` (see
      `load_prepared_2d`), which is already normalised and gives one kernel with variance
      `plain_2d_var`.
    subjects: e.g. `TEST_SUBJECTS`.
    plain_2d_var: the var channels a plain or prepared 2D file gets (see `load_positions_2d`).
    fixed_resolution: `(w, h)` to normalise every camera of an `.npz` with, instead of each
      camera's own resolution; the ICASSP'24 pipeline uses `(1000, 1000)`.
    kernel: one of `KERNEL_CHOICES`: "weighted" keeps all GMM kernels (the pipeline picks by
      weight), "first" keeps kernel 0 alone with weight 1.
    actions: only sequences of these action classes (`camera_sequences`); empty = all.

  Returns:
    The `FrameSet`.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: a subject or sequence is missing from a file, a camera list does not have 4
      entries, a 2D sequence is shorter than its 3D sequence, or a file is malformed.
  """
  subjects = tuple(subjects)
  if not subjects:
    raise ValueError("load_frame_set: no subjects given")
  if fixed_resolution is not None and (len(fixed_resolution) != 2 or min(fixed_resolution) <= 0):
    raise ValueError(f"fixed_resolution must be (w, h) > 0, got {fixed_resolution}")
  if kernel not in KERNEL_CHOICES:
    raise ValueError(f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
  positions_3d = load_positions_3d(path_3d)
  prepared = is_prepared_2d(path_2d)
  if prepared:
    positions_2d = {subject: {action: [_prepared_as_gmm(uv, plain_2d_var) for uv in per_camera]
                              for action, per_camera in actions.items()}
                    for subject, actions in load_prepared_2d(path_2d).items()}
  else:
    positions_2d, _ = load_positions_2d(path_2d, plain_2d_var=plain_2d_var)
    if kernel == "first":
      positions_2d = {subject: {action: [_first_kernel(gmm) for gmm in per_camera]
                                for action, per_camera in actions.items()}
                      for subject, actions in positions_2d.items()}
  kernels = {array.shape[2] for actions in positions_2d.values()
             for arrays in actions.values() for array in arrays}
  if len(kernels) > 1:
    raise ValueError(f"{path_2d}: the sequences have different kernel counts K {sorted(kernels)}")

  # First pass: check everything and list the (sequence, camera) blocks in upstream order.
  blocks = []  # (subject index, sequence index, camera index, camera, label, world [T, 17, 3], 2D)
  sequence_names = []
  for subject, action, camera_index, cam, world, gmm in camera_sequences(
      path_3d, positions_3d, path_2d, positions_2d, subjects, actions):
    if camera_index == 0:
      sequence_names.append(f"{subject}/{action}")
    blocks.append((subjects.index(subject), len(sequence_names) - 1, camera_index, cam,
                   ACTIONS.index(action_class(action)), world, gmm))

  # Second pass: fill preallocated arrays (the real training set's GMMs take ~1.6 GB).
  num = sum(len(world) for *_, world, _ in blocks)
  if not num:
    raise ValueError(f"{path_2d}: no frames for subjects {subjects}")
  arrays = {
      "gmm_2d": np.empty((num, skeleton.NUM_JOINTS, kernels.pop(), GMM_CHANNELS), np.float32),
      "target_3d": np.empty((num, skeleton.NUM_JOINTS, 3), np.float32),
      "camera_params": np.empty((num, 4), np.float32),
      **{name: np.empty(num, np.int32)
         for name in ("action", "subject", "camera", "sequence", "frame")}}
  start = 0
  for subject_index, sequence_index, camera_index, cam, label, world, gmm in blocks:
    rows = slice(start, start + len(world))
    # Longer 2D sequences are cut to the 3D length, as upstream does.
    gmm = gmm[:len(world)]
    arrays["gmm_2d"][rows] = gmm
    if not prepared:
      w, h = fixed_resolution or (cam.res_w, cam.res_h)
      arrays["gmm_2d"][rows, ..., 1:3] = cameras.normalize_screen_coordinates(gmm[..., 1:3], w, h)
    arrays["target_3d"][rows] = skeleton.root_relative(cameras.world_to_camera(world, cam))
    arrays["camera_params"][rows] = cameras.normalized_intrinsics(cam)
    arrays["action"][rows] = label
    arrays["subject"][rows] = subject_index
    arrays["camera"][rows] = camera_index
    arrays["sequence"][rows] = sequence_index
    arrays["frame"][rows] = np.arange(len(world))
    start = rows.stop
  return FrameSet(**arrays, subjects=subjects, sequence_names=tuple(sequence_names))


def choose_kernel(gmm_2d, rng: np.random.Generator | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Picks one GMM kernel per joint: its mean as the 2D input and its variance as noise scale.

  Args:
    gmm_2d: `[..., 17, K, 5]` kernels `(weight, u, v, var_u, var_v)`.
    rng: None for the deterministic choice, the kernel with the largest weight (the first one on
      ties). That equals upstream's `np.random.choice(K, p=weights)` whenever the weights are
      one-hot, as in the released DiffPose files (always kernel 0) and the parity fixture. With a
      generator, one kernel per joint is drawn with probability proportional to its weight, as
      upstream does in training.

  Returns:
    `(uv [..., 17, 2], var [..., 17, 2])` in the input's dtype.
  """
  gmm = np.asarray(gmm_2d)
  if gmm.ndim < 3 or gmm.shape[-1] != GMM_CHANNELS or gmm.shape[-3] != skeleton.NUM_JOINTS:
    raise ValueError(f"choose_kernel: expected [..., {skeleton.NUM_JOINTS}, K, {GMM_CHANNELS}], "
                     f"got shape {gmm.shape}")
  weights = gmm[..., 0]
  if rng is None:
    index = np.argmax(weights, axis=-1)
  else:
    cdf = np.cumsum(weights, axis=-1, dtype=np.float64)
    draw = rng.random(weights.shape[:-1] + (1,)) * cdf[..., -1:]
    index = np.minimum((draw >= cdf).sum(axis=-1), weights.shape[-1] - 1)
  chosen = np.take_along_axis(gmm, index[..., None, None], axis=-2)[..., 0, :]
  return chosen[..., 1:3], chosen[..., 3:5]


# ----------------------------------------------------------------------------------------------
# Whole videos, for the clip families (D3DP, FinePOSE, DSGDiffu).


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


def _read_plain_camera_2d(array, where: str) -> np.ndarray:
  """One camera's plain 2D `[N', 17, 2]` in pixels, as the video families read it."""
  array = npz.float_array(array, where)
  if array.ndim != 3 or array.shape[1:] != (skeleton.NUM_JOINTS, 2):
    raise ValueError(f"{where}: expected plain 2D [N, {skeleton.NUM_JOINTS}, 2] "
                     f"(pixels; a GMM file is not a video-family input), found shape "
                     f"{array.shape}")
  npz.check_finite(array, where)
  return array


def load_h36m_videos(path_3d, path_2d, subjects: Sequence[str],
                     actions: Sequence[str] = ()) -> list[videos.VideoSequence]:
  """Reads Human3.6M videos from VideoPose3D files, as D3DP's main.py prepares them.

  The 3D is reduced to 17 joints, moved into each camera's frame, and split into the root
  trajectory and root-relative joints. The 2D is cut to the 3D length (some detection files run
  longer) and normalised with that camera's resolution.

  Args:
    path_3d: `data_3d_h36m.npz`.
    path_2d: a plain 2D file, e.g. `data_2d_h36m_cpn_ft_h36m_dbb.npz` or `data_2d_h36m_gt.npz`.
    subjects: e.g. ('S9', 'S11').
    actions: only sequences of these action classes (`camera_sequences`); empty = all.

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
  positions_3d = load_positions_3d(path_3d)
  positions_2d, _ = _read_positions_2d(path_2d, _read_plain_camera_2d)
  sequences = []
  for subject, action, index, cam, world, pixels in camera_sequences(
      path_3d, positions_3d, path_2d, positions_2d, subjects, actions):
    input_2d = cameras.normalize_screen_coordinates(pixels[:len(world)], cam.res_w, cam.res_h)
    positions = np.asarray(cameras.world_to_camera(world, cam), np.float32)
    sequences.append(videos.VideoSequence(
        input_2d=input_2d.astype(np.float32, copy=False),
        target_3d=skeleton.root_relative(positions), trajectory=positions[:, :1].copy(),
        intrinsic=h36m_intrinsic(cam), subject=subject, action=action, camera=index,
        image_size=(cam.res_w, cam.res_h), valid=np.ones(len(world), bool),
        root_joint=skeleton.ROOT_JOINT))
  return sequences
