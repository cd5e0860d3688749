"""A user's own 2D keypoints: reading them, COCO-17 -> Human3.6M-17, filling gaps, normalising.

The models take Human3.6M-17 keypoints in normalised screen coordinates (`[N, 17, 2]`, see
`cameras.normalize_screen_coordinates`). This module turns what a 2D detector writes into that:

1. `load_keypoints` reads one file into a `KeypointSequence` (`[N, 17, 2]` pixels, optional
   confidences `[N, 17]`, the joint layout):
   - `.npz`: `keypoints` `[N, 17, 2 | 3]` (the third channel is the confidence), optional `scores`
     `[N, 17]`, optional `layout` ('coco' or 'h36m');
   - `.npy`: `[N, 17, 2 | 3]`;
   - COCO-style `.json` (COCO results, AlphaPose): a list of annotations, or
     `{"annotations": [...]}` (optionally with `"images"`), each with a flat `keypoints` list of
     51 values (x, y, confidence per joint). Annotations are grouped into frames by `image_id`
     (in natural order: 2 before 10, 'frame2.jpg' before 'frame10.jpg'), else each annotation is
     a frame in list order; of several people in a frame the one with the highest `score` (else
     mean keypoint confidence) is kept. With an `"images"` list every listed image is a frame,
     and a frame without a person counts as all joints missing.
   A single pose `[17, C]` in `.npz` / `.npy` is read as one frame.
2. `prepare_keypoints` marks joints as missing (confidence below `min_confidence`, zero confidence,
   or non-finite coordinates), checks that the observed keypoints can be what the caller says they
   are (`check_plausible`), fills the missing ones by linear interpolation over time (the nearest
   observed value before the first / after the last observation), maps COCO-17 to Human3.6M-17
   and normalises by the image size.

`check_plausible` refuses input that would otherwise give confident garbage: pixel keypoints read
as normalised (`--normalized`: 78 m legs), keypoints far outside the image size given, or one joint
layout read as the other. It looks at the observed joints of every frame and refuses when more
than `MAX_OUTLIER_FRACTION` of the frames are out of range (a few wild detections are reported as
warnings instead), or when most frames look like the other layout: COCO's joints 0-4 (nose, eyes,
ears) sit within a head's size of each other, while Human3.6M's joints 0-4 (pelvis, right hip,
knee, foot, left hip) span hip to foot, with the pelvis midway between the hips. On synthetic
walking, sitting and other Human3.6M actions seen by all four cameras the spread of joints 0-4 is
at least 0.34 of the pose's size (bounding-box diagonal) for Human3.6M and at most 0.18 for COCO;
the pelvis sits within 0.03 hip widths of the hips' midpoint, COCO's nose at least 0.85 of the
eye-to-ear distance from theirs.

COCO-17 -> Human3.6M-17 (`coco_to_h36m`), as MotionBERT's `coco2h36m` does it:

  Hip = mid-point of the two COCO hips;  RHip/RKnee/RFoot = right hip/knee/ankle;
  LHip/LKnee/LFoot = left hip/knee/ankle;  Thorax = mid-point of the shoulders;
  Spine = mid-point of Hip and Thorax;  Neck/Nose = nose;  Head = mid-point of the eyes;
  shoulders, elbows, wrists = their COCO namesakes.  The ears are not used.

A derived joint is as trustworthy as the least confident joint it is made of.
"""

import dataclasses
import json
import math
import pathlib
import re
from typing import Sequence
import zipfile
import zlib

import numpy as np

from posediff_jax import cameras
from posediff_jax import skeleton

COCO_JOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_JOINTS = 17
LAYOUTS = ("coco", "h36m")
FORMATS = ("auto",) + LAYOUTS
# Confidence below which a joint counts as missing unless the caller says otherwise.
DEFAULT_MIN_CONFIDENCE = 0.3

# Plausibility (`check_plausible`). Normalised screen coordinates span [-1, 1] in x and [-H/W, H/W]
# in y (portrait images go beyond 1); pixel keypoints may lie a little outside the image.
NORMALIZED_LIMITS = (1.5, 2.0)  # largest |x|, |y| accepted as normalised
PIXEL_MARGIN = 0.25  # accepted beyond each image edge, as a fraction of the width / height
MAX_OUTLIER_FRACTION = 0.1  # more frames than this out of range: refused; fewer: warnings
# Layout cues (module docstring): spread of joints 0-4 over the pose's size, and the distance of
# joint 0 from the midpoint of joints 1 and 4 over their distance.
FACE_SPREAD_SPLIT = 0.25
PELVIS_OFFSET_SPLIT = 0.25

# Each Human3.6M joint as a weighted mean of COCO joints: {h36m index: {coco index: weight}}.
_COCO_TO_H36M = {
    0: {11: 0.5, 12: 0.5},  # Hip
    1: {12: 1.0}, 2: {14: 1.0}, 3: {16: 1.0},  # RHip, RKnee, RFoot
    4: {11: 1.0}, 5: {13: 1.0}, 6: {15: 1.0},  # LHip, LKnee, LFoot
    7: {5: 0.25, 6: 0.25, 11: 0.25, 12: 0.25},  # Spine: mid-point of Hip and Thorax
    8: {5: 0.5, 6: 0.5},  # Thorax
    9: {0: 1.0},  # Neck/Nose
    10: {1: 0.5, 2: 0.5},  # Head
    11: {5: 1.0}, 12: {7: 1.0}, 13: {9: 1.0},  # LShoulder, LElbow, LWrist
    14: {6: 1.0}, 15: {8: 1.0}, 16: {10: 1.0},  # RShoulder, RElbow, RWrist
}


def _mapping_matrix() -> np.ndarray:
  weights = np.zeros((NUM_JOINTS, NUM_JOINTS), np.float64)
  for h36m_joint, sources in _COCO_TO_H36M.items():
    for coco_joint, weight in sources.items():
      weights[h36m_joint, coco_joint] = weight
  return weights


# h36m[..., i, :] = sum_j COCO_TO_H36M_WEIGHTS[i, j] * coco[..., j, :]; every row sums to 1.
COCO_TO_H36M_WEIGHTS = _mapping_matrix()
# The COCO joints the mapping reads (all but the ears).
COCO_JOINTS_USED = tuple(int(j) for j in np.flatnonzero(COCO_TO_H36M_WEIGHTS.any(axis=0)))


@dataclasses.dataclass(frozen=True)
class KeypointSequence:
  """2D keypoints as read from a file, before any processing.

  Attributes:
    keypoints: float64 `[N, 17, 2]` coordinates (pixels, or normalised screen units), NaN where a
      file has no value.
    scores: float64 `[N, 17]` per-joint confidences, or None when the file has none.
    layout: 'coco' or 'h36m'.
    source: the file it came from (for error messages).
  """
  keypoints: np.ndarray
  scores: np.ndarray | None
  layout: str
  source: str

  @property
  def num_frames(self) -> int:
    return int(self.keypoints.shape[0])


@dataclasses.dataclass(frozen=True)
class PreparedKeypoints:
  """Model input made from a `KeypointSequence`.

  Attributes:
    normalized: float32 `[N, 17, 2]` Human3.6M-17 keypoints in normalised screen coordinates.
    pixels: float32 `[N, 17, 2]` the same in pixels, or None when the input was already normalised.
    interpolated: bool `[N, 17]` Human3.6M joints filled in (wholly or partly) by interpolation.
    image_size: `(width, height)` in pixels, or None.
    warnings: what `check_plausible` found odd in a few frames but did not refuse.
  """
  normalized: np.ndarray
  pixels: np.ndarray | None
  interpolated: np.ndarray
  image_size: tuple[int, int] | None
  warnings: tuple[str, ...] = ()


def joint_names(layout: str) -> tuple[str, ...]:
  """The 17 joint names of 'coco' or 'h36m'."""
  _check_layout(layout)
  return COCO_JOINT_NAMES if layout == "coco" else skeleton.H36M_JOINT_NAMES


def _check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f"unknown keypoint layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


# ---------------------------------------------------------------------------------------------
# Reading files.


def load_keypoints(path, layout: str = "auto") -> KeypointSequence:
  """Reads 2D keypoints from a `.npz`, `.npy` or COCO-style `.json` file.

  Args:
    path: the file (formats in the module docstring).
    layout: 'coco', 'h36m', or 'auto': COCO for `.json`, else the `.npz`'s `layout` entry.

  Returns:
    The sequence, coordinates as the file has them.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unknown extension or layout, a malformed file, a joint count other than 17,
      or 'auto' on a file that does not say its layout.
  """
  path = pathlib.Path(path)
  if layout not in FORMATS:
    raise ValueError(f"unknown keypoint format {layout!r}; expected one of {', '.join(FORMATS)}")
  if not path.is_file():
    raise FileNotFoundError(f"keypoint file not found: {path}")
  if path.stat().st_size == 0:
    raise ValueError(f"{path} is empty (0 bytes); was it written completely?")
  suffix = path.suffix.lower()
  file_layout = None
  if suffix == ".json":
    keypoints, scores = _read_coco_json(path)
    file_layout = "coco"
  elif suffix == ".npz":
    keypoints, scores, file_layout = _read_npz(path)
  elif suffix == ".npy":
    keypoints, scores = _read_npy(path)
  else:
    raise ValueError(f"{path}: unknown keypoint file type {suffix!r}; expected .npz, .npy or .json")
  if layout == "auto":
    if file_layout is None:
      raise ValueError(
          f"{path}: cannot tell COCO-17 from Human3.6M-17 keypoints (both have 17 joints); pass "
          "--format coco or --format h36m, or store a 'layout' entry in the .npz")
    layout = file_layout
  elif file_layout is not None and suffix == ".npz" and file_layout != layout:
    raise ValueError(f"{path}: the file says its layout is {file_layout!r} but {layout!r} was "
                     "asked for")
  return KeypointSequence(keypoints=keypoints, scores=scores, layout=layout, source=str(path))


def _split_channels(array: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
  """`[N, 17, 2 | 3]` (or one pose `[17, 2 | 3]`) -> (xy `[N, 17, 2]`, confidences or None)."""
  if array.dtype.kind not in "iuf":
    raise ValueError(f"{what}: expected numbers, got dtype {array.dtype}")
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3 or array.shape[-1] not in (2, 3):
    raise ValueError(f"{what}: expected keypoints [frames, {NUM_JOINTS}, 2 or 3], got shape "
                     f"{array.shape}")
  if array.shape[1] != NUM_JOINTS:
    raise ValueError(f"{what}: expected {NUM_JOINTS} joints (COCO-17 or Human3.6M-17), got "
                     f"{array.shape[1]} (shape {array.shape})")
  if array.shape[0] == 0:
    raise ValueError(f"{what}: holds no frames (shape {array.shape})")
  array = array.astype(np.float64)
  scores = array[..., 2] if array.shape[-1] == 3 else None
  return array[..., :2], scores


# What numpy raises for a truncated or damaged .npy / .npz (a zip archive) file.
_UNREADABLE = (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error)


def _unreadable(path: pathlib.Path, kind: str, error: Exception) -> ValueError:
  reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return ValueError(f"{path}: not a readable plain numeric {kind} file ({reason}); is it "
                    f"truncated or damaged ({path.stat().st_size} bytes)?")


def _read_npy(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray | None]:
  try:
    array = np.load(path, allow_pickle=False)
  except _UNREADABLE as e:
    raise _unreadable(path, ".npy", e) from e
  return _split_channels(array, str(path))


def _read_npz(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray | None, str | None]:
  try:
    with np.load(path, allow_pickle=False) as npz:
      members = {name: npz[name] for name in npz.files}
  except _UNREADABLE as e:
    raise _unreadable(path, ".npz", e) from e
  if "keypoints" not in members:
    found = ", ".join(sorted(members)) or "none"
    raise ValueError(f"{path}: no 'keypoints' array (found: {found})")
  keypoints, scores = _split_channels(members["keypoints"], f"{path} 'keypoints'")
  if "scores" in members:
    if scores is not None:
      raise ValueError(f"{path}: confidences given twice, as the third channel of 'keypoints' and "
                       "as 'scores'; keep one")
    scores = np.asarray(members["scores"])
    if scores.ndim == 1 and members["keypoints"].ndim == 2:
      scores = scores[None]
    if scores.dtype.kind not in "iuf" or scores.shape != keypoints.shape[:2]:
      raise ValueError(f"{path}: 'scores' must be numbers of shape {keypoints.shape[:2]} (frames, "
                       f"joints) like 'keypoints', got {scores.dtype} {scores.shape}")
    scores = scores.astype(np.float64)
  layout = None
  if "layout" in members:
    layout = str(members["layout"])
    if members["layout"].ndim != 0 or layout not in LAYOUTS:
      raise ValueError(f"{path}: 'layout' must be one of {', '.join(LAYOUTS)}, got {layout!r}")
  return keypoints, scores, layout


def _natural_key(image_id) -> tuple:
  """Sort key putting 'frame2' before 'frame10' and 2 before 10."""
  parts = re.split(r"(\d+)", str(image_id))
  return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_coco_json(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  try:
    content = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a JSON file ({e})") from e
  images = None
  if isinstance(content, dict):
    if "annotations" not in content:
      raise ValueError(f"{path}: a COCO-style JSON object needs an 'annotations' list (found keys: "
                       f"{', '.join(sorted(content)) or 'none'})")
    annotations, images = content["annotations"], content.get("images")
  else:
    annotations = content
  if not isinstance(annotations, list):
    raise ValueError(f"{path}: expected a list of annotations, got {type(annotations).__name__}")

  poses, rank, frame_ids = [], [], []
  for i, ann in enumerate(annotations):
    where = f"{path} annotation {i}"
    if not isinstance(ann, dict) or "keypoints" not in ann:
      raise ValueError(f"{where}: expected an object with a 'keypoints' list")
    flat = ann["keypoints"]
    if not isinstance(flat, list) or len(flat) != 3 * NUM_JOINTS:
      count = len(flat) if isinstance(flat, list) else type(flat).__name__
      raise ValueError(f"{where}: 'keypoints' must be {3 * NUM_JOINTS} numbers ({NUM_JOINTS} "
                       f"joints x (x, y, confidence), COCO-17), got {count}")
    if not all(_is_number(v) for v in flat):
      raise ValueError(f"{where}: 'keypoints' holds something other than numbers")
    if "score" in ann and not _is_number(ann["score"]):
      raise ValueError(f"{where}: 'score' must be a number, got {ann['score']!r}")
    pose = np.asarray(flat, np.float64).reshape(NUM_JOINTS, 3)
    poses.append(pose)
    rank.append(float(ann["score"]) if "score" in ann else float(np.mean(pose[:, 2])))
    frame_ids.append(ann.get("image_id"))
  with_ids = [f is not None for f in frame_ids]
  if any(with_ids) and not all(with_ids):
    raise ValueError(f"{path}: some annotations have an 'image_id' and some do not "
                     f"(annotation {with_ids.index(False)} has none); frames cannot be ordered")

  if images is not None:
    if not isinstance(images, list) or not all(isinstance(m, dict) and "id" in m for m in images):
      raise ValueError(f"{path}: 'images' must be a list of objects with an 'id'")
    if annotations and not all(with_ids):
      raise ValueError(f"{path}: with an 'images' list every annotation needs an 'image_id'")
    order = sorted({m["id"] for m in images}, key=_natural_key)
    unknown = sorted(set(frame_ids) - set(order), key=_natural_key)
    if unknown:
      raise ValueError(f"{path}: annotations refer to image ids not in 'images': {unknown[:5]}")
  elif all(with_ids) and annotations:
    order = sorted(set(frame_ids), key=_natural_key)
  else:
    order = list(range(len(annotations)))
    frame_ids = order
  if not order:
    raise ValueError(f"{path}: holds no annotations, so no frames")

  best = {}
  for pose, score, frame in zip(poses, rank, frame_ids):
    if frame not in best or score > best[frame][0]:
      best[frame] = (score, pose)
  stacked = np.full((len(order), NUM_JOINTS, 3), np.nan)
  stacked[..., 2] = 0.0
  for f, frame in enumerate(order):
    if frame in best:
      stacked[f] = best[frame][1]
  return stacked[..., :2], stacked[..., 2]


# ---------------------------------------------------------------------------------------------
# Processing.


def coco_to_h36m(keypoints: np.ndarray) -> np.ndarray:
  """Maps COCO-17 joints to Human3.6M-17 (the mapping in the module docstring).

  Args:
    keypoints: `[..., 17, C]` COCO-17 coordinates.

  Returns:
    `[..., 17, C]` Human3.6M-17 coordinates, in the input's float dtype.
  """
  keypoints = np.asarray(keypoints)
  if keypoints.ndim < 2 or keypoints.shape[-2] != NUM_JOINTS:
    raise ValueError(f"coco_to_h36m: expected [..., {NUM_JOINTS}, C], got shape {keypoints.shape}")
  dtype = keypoints.dtype if np.issubdtype(keypoints.dtype, np.floating) else np.float64
  # Only the joints a row reads enter its sum, so an unused joint (the ears) may hold NaN.
  out = np.zeros(keypoints.shape, np.float64)
  for h36m_joint, sources in _COCO_TO_H36M.items():
    for coco_joint, weight in sources.items():
      out[..., h36m_joint, :] += weight * keypoints[..., coco_joint, :]
  return out.astype(dtype)


def coco_to_h36m_scores(scores: np.ndarray) -> np.ndarray:
  """Confidences `[..., 17]` COCO -> Human3.6M: a derived joint takes its weakest source's."""
  scores = np.asarray(scores)
  if scores.ndim < 1 or scores.shape[-1] != NUM_JOINTS:
    raise ValueError(f"coco_to_h36m_scores: expected [..., {NUM_JOINTS}], got shape {scores.shape}")
  return np.stack([np.min(scores[..., list(_COCO_TO_H36M[j])], axis=-1)
                   for j in range(NUM_JOINTS)], axis=-1)


def missing_joints(keypoints: np.ndarray, scores: np.ndarray | None,
                   min_confidence: float) -> np.ndarray:
  """bool `[N, J]`: coordinates not finite, or confidence zero or below `min_confidence`."""
  missing = ~np.all(np.isfinite(keypoints), axis=-1)
  if scores is not None:
    missing |= ~np.isfinite(scores) | (scores <= 0) | (scores < min_confidence)
  return missing


def interpolate_missing(keypoints: np.ndarray, missing: np.ndarray, *,
                        names: Sequence[str], required: Sequence[int] | None = None,
                        source: str = "keypoints") -> np.ndarray:
  """Fills missing joints by linear interpolation over time, joint by joint.

  Before a joint's first and after its last observation the nearest observed value is held.

  Args:
    keypoints: `[N, J, 2]` coordinates.
    missing: bool `[N, J]`.
    names: the J joint names (for errors).
    required: joints that must be observed in at least one frame (default: all). A joint not
      required and never observed is set to 0.
    source: what the keypoints came from (for errors).

  Returns:
    float64 `[N, J, 2]` with every missing value filled.

  Raises:
    ValueError: a required joint is missing in every frame.
  """
  keypoints = np.array(keypoints, np.float64)
  missing = np.asarray(missing, bool)
  if missing.shape != keypoints.shape[:2]:
    raise ValueError(f"interpolate_missing: mask {missing.shape} does not match keypoints "
                     f"{keypoints.shape}")
  required = set(range(keypoints.shape[1]) if required is None else required)
  frames = np.arange(keypoints.shape[0])
  never_seen = [j for j in sorted(required) if missing[:, j].all()]
  if never_seen:
    listed = ", ".join(f"{names[j]} (joint {j})" for j in never_seen)
    raise ValueError(
        f"{source}: {listed} missing or below the confidence threshold in all "
        f"{keypoints.shape[0]} frames; nothing to interpolate from (lower --min_confidence, or "
        "check the file)")
  for j in range(keypoints.shape[1]):
    gaps = missing[:, j]
    if not gaps.any():
      continue
    if gaps.all():
      keypoints[:, j] = 0.0
      continue
    for c in range(keypoints.shape[2]):
      keypoints[gaps, j, c] = np.interp(frames[gaps], frames[~gaps], keypoints[~gaps, j, c])
  return keypoints


def check_image_size(image_size) -> tuple[int, int]:
  """`(width, height)` as two positive integers, or a ValueError saying what is wrong."""
  try:
    width, height = image_size
  except (TypeError, ValueError):
    raise ValueError(f"image size must be (width, height), got {image_size!r}") from None
  for name, value in (("width", width), ("height", height)):
    if (not isinstance(value, (int, np.integer, float)) or isinstance(value, bool)
        or not math.isfinite(value) or value != int(value) or value <= 0):
      raise ValueError(f"image {name} must be a positive whole number of pixels, got {value!r}")
  return int(width), int(height)


def _frame_list(frames: np.ndarray, total: int) -> str:
  """'3 of 11 frames (0, 4, 7)', at most 5 frame numbers shown."""
  shown = ", ".join(str(int(f)) for f in frames[:5]) + (", ..." if len(frames) > 5 else "")
  return f"{len(frames)} of {total} frame{'s' if total > 1 else ''} ({shown})"


def _range_check(keypoints, observed, low, high, names) -> tuple[np.ndarray, str]:
  """(frames with an observed joint outside [low, high] per axis, the first such joint shown)."""
  outside = observed & np.any((keypoints < low) | (keypoints > high), axis=-1)  # [N, J]
  frames = np.flatnonzero(outside.any(axis=1))
  if not frames.size:
    return frames, ""
  f = frames[0]
  j = int(np.flatnonzero(outside[f])[0])
  x, y = keypoints[f, j]
  return frames, f"frame {f}, {names[j]} at ({x:.1f}, {y:.1f})"


def _layout_cues(keypoints, observed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per frame: (usable, spread of joints 0-4 / pose size, |j0 - mid(j1, j4)| / |j1 - j4|).

  A frame is usable when joints 0-4 and at least 10 joints in all are observed; the offset is NaN
  where joints 1 and 4 nearly coincide (a side view), which says nothing about the layout.
  """
  def diagonal(points, mask):  # bounding-box diagonal of the observed points (0 if none)
    inside = mask[..., None]
    extent = (np.where(inside, points, -np.inf).max(axis=-2)
              - np.where(inside, points, np.inf).min(axis=-2))
    return np.linalg.norm(np.where(np.isfinite(extent), extent, 0.0), axis=-1)

  size = diagonal(keypoints, observed)
  usable = observed[:, :5].all(axis=1) & (observed.sum(axis=1) >= 10) & (size > 0)
  safe = np.where(usable, size, 1.0)
  spread = np.where(usable, diagonal(keypoints[:, :5], observed[:, :5]) / safe, np.nan)
  width = np.linalg.norm(keypoints[:, 1] - keypoints[:, 4], axis=-1)
  offset = np.linalg.norm(keypoints[:, 0] - (keypoints[:, 1] + keypoints[:, 4]) / 2, axis=-1)
  measurable = usable & (width > 0.02 * safe)
  offset = np.where(measurable, offset / np.where(measurable, width, 1.0), np.nan)
  return usable, spread, offset


def check_plausible(sequence: KeypointSequence, missing: np.ndarray, *, image_size=None,
                    normalized_input: bool = False) -> tuple[str, ...]:
  """Refuses keypoints that cannot be what the caller says (module docstring: the cues).

  Only observed joints count (`missing` False; for COCO the ears are ignored, as by the mapping).

  Args:
    sequence: the keypoints as read (`[N, 17, 2]` in the file's layout).
    missing: bool `[N, 17]`, `missing_joints`' mask.
    image_size: `(width, height)` of pixel keypoints (checked against it), or None.
    normalized_input: the keypoints are said to be normalised screen coordinates.

  Returns:
    Warnings about a few out-of-range frames (at most `MAX_OUTLIER_FRACTION` of them).

  Raises:
    ValueError: more frames than that out of range, or most usable frames in the other layout;
      the message gives the frames, a joint and its value, the expected range and the flag that
      fixes it.
  """
  points, source = sequence.keypoints, sequence.source
  present = ~np.asarray(missing, bool)
  # The value ranges only matter for the joints the model sees (not COCO's ears); the layout cues
  # need joints 0-4 whatever the layout.
  observed = present.copy()
  if sequence.layout == "coco":
    observed[:, [j for j in range(NUM_JOINTS) if j not in COCO_JOINTS_USED]] = False
  names = joint_names(sequence.layout)
  total = int(observed.any(axis=1).sum())
  warnings = []
  if total:
    largest = float(np.max(np.abs(points[observed])))
    if normalized_input:
      lx, ly = NORMALIZED_LIMITS
      frames, example = _range_check(points, observed, (-lx, -ly), (lx, ly), names)
      expected = (f"normalised coordinates lie within about [-1, 1] (accepted: |x| <= {lx:g}, "
                  f"|y| <= {ly:g})")
      fix = ("they look like pixels: drop --normalized and pass --image_size=W,H"
             if largest > 10 else "check the file, or pass pixel keypoints with --image_size=W,H")
    else:
      width, height = image_size
      low = (-PIXEL_MARGIN * width, -PIXEL_MARGIN * height)
      high = ((1 + PIXEL_MARGIN) * width, (1 + PIXEL_MARGIN) * height)
      frames, example = _range_check(points, observed, low, high, names)
      expected = (f"keypoints of a {width}x{height} image (--image_size) lie within x in "
                  f"[{low[0]:g}, {high[0]:g}], y in [{low[1]:g}, {high[1]:g}] (the image and a "
                  f"{PIXEL_MARGIN:.0%} margin)")
      fix = "pass the size of the images the keypoints were detected in (--image_size=W,H)"
      if largest <= max(NORMALIZED_LIMITS):
        # No real pose spans a few pixels: these are normalised coordinates.
        raise ValueError(
            f"{source}: every keypoint lies within {largest:.3g} of 0, which as pixels of a "
            f"{width}x{height} image (--image_size) would be a person a few pixels tall; they "
            "look normalised already: pass --normalized instead of --image_size")
    if frames.size > MAX_OUTLIER_FRACTION * total:
      raise ValueError(f"{source}: {_frame_list(frames, total)} have keypoints out of range, e.g. "
                       f"{example} (largest |value| {largest:.4g}); {expected}; {fix}")
    if frames.size:
      warnings.append(f"{source}: {_frame_list(frames, total)} have keypoints out of range, e.g. "
                      f"{example}; {expected}; these joints are used as they are")
  usable, spread, offset = _layout_cues(points, present)
  count = int(usable.sum())
  if count:
    with np.errstate(invalid="ignore"):
      like_coco = usable & (spread < FACE_SPREAD_SPLIT) & ~(offset < PELVIS_OFFSET_SPLIT)
      like_h36m = usable & (spread > FACE_SPREAD_SPLIT) & (offset < PELVIS_OFFSET_SPLIT)
    other = like_coco if sequence.layout == "h36m" else like_h36m
    if other.sum() > count / 2:
      frames = np.flatnonzero(other)
      median = float(np.median(spread[frames]))
      hint = (" (or correct the file's 'layout' entry)"
              if sequence.source.lower().endswith(".npz") else "")
      if sequence.layout == "h36m":
        raise ValueError(
            f"{source}: read as Human3.6M-17, but in {_frame_list(frames, count)} joints 0-4 lie "
            f"within {median:.0%} of the pose's size of each other (median), as COCO-17's nose, "
            "eyes and ears do; Human3.6M's joints 0-4 (pelvis, right hip, knee, foot, left hip) "
            f"span hip to foot (over {FACE_SPREAD_SPLIT:.0%}); pass --format coco{hint}")
      raise ValueError(
          f"{source}: read as COCO-17, but in {_frame_list(frames, count)} joints 0-4 spread over "
          f"{median:.0%} of the pose's size (median) and joint 0 sits midway between joints 1 "
          "and 4, as Human3.6M-17's pelvis between its hips does; COCO's joints 0-4 (nose, eyes, "
          f"ears) lie within a head's size (under {FACE_SPREAD_SPLIT:.0%}); pass --format "
          f"h36m{hint}")
  return tuple(warnings)


def prepare_keypoints(sequence: KeypointSequence, *, image_size=None,
                      min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                      normalized_input: bool = False) -> PreparedKeypoints:
  """Confidence handling, gap filling, COCO -> Human3.6M and normalisation.

  Args:
    sequence: what `load_keypoints` read.
    image_size: `(width, height)` in pixels; required unless `normalized_input`.
    min_confidence: joints below this confidence count as missing (zero confidence always does).
    normalized_input: the coordinates are already normalised screen units (as the models take).

  Returns:
    The model input and what was interpolated.

  Raises:
    ValueError: no or a non-positive image size, all confidences zero, no joint above the
      threshold, a joint never observed, or keypoints `check_plausible` refuses.
  """
  source = sequence.source
  if normalized_input:
    if image_size is not None:
      raise ValueError("give either an image size (pixel keypoints) or normalised input, not both")
  else:
    if image_size is None:
      raise ValueError(f"{source}: pixel keypoints need the image size (--image_size=W,H) to be "
                       "normalised; pass --normalized if they already are")
    image_size = check_image_size(image_size)
  if not (math.isfinite(min_confidence) and min_confidence >= 0):
    raise ValueError(f"min_confidence must be a number >= 0, got {min_confidence!r}")
  scores = sequence.scores
  if scores is not None:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0 or np.all(finite == 0):
      raise ValueError(f"{source}: all keypoint confidences are 0, so no joint is usable")
    if np.all(finite < min_confidence):
      raise ValueError(f"{source}: no keypoint reaches the confidence threshold {min_confidence} "
                       f"(highest: {finite.max():.3g}); lower --min_confidence")
  missing = missing_joints(sequence.keypoints, scores, min_confidence)
  warnings = check_plausible(sequence, missing, image_size=image_size,
                             normalized_input=normalized_input)
  names = joint_names(sequence.layout)
  required = COCO_JOINTS_USED if sequence.layout == "coco" else None
  filled = interpolate_missing(sequence.keypoints, missing, names=names, required=required,
                               source=source)
  if sequence.layout == "coco":
    filled = coco_to_h36m(filled)
    interpolated = (COCO_TO_H36M_WEIGHTS[None] * missing[:, None, :]).any(axis=-1)
  else:
    interpolated = missing
  if normalized_input:
    return PreparedKeypoints(normalized=filled.astype(np.float32), pixels=None,
                             interpolated=interpolated, image_size=None, warnings=warnings)
  pixels = filled.astype(np.float32)
  normalized = cameras.normalize_screen_coordinates(pixels, *image_size)
  return PreparedKeypoints(normalized=normalized, pixels=pixels, interpolated=interpolated,
                           image_size=image_size, warnings=warnings)

