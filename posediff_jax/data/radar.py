r"""Radar data for mmDiff: what every radar reader gives (`RadarSplit`) and shares (settings,
upstream's per-frame preprocessing, windows of past frames).

A split is a `RadarSplit`: per frame, in recording order, the root-relative ground truth
`target_3d` [N, 17, 3], a sequence id, a scene, a reader of radar windows [T, P, C] (T frames of P
points with C channels) and, once phase 1 has run, its coarse pose [N, 17, 3] (root-relative) and
per-joint features [N, 17, F]. Two sources fill it (`config.data.source`, spec §4):

* 'raw', the datasets' own layouts, preprocessed here (`preprocess_frame`): mmBody (`data.mmbody`)
  and mm-Fi (`data.mmfi`). Phase 1 (the trained or converted encoder) then fills the coarse poses
  and features.
* 'cache', upstream's phase-2 cache, what phase 1 writes (`data.mmdiff_cache`).

`datasets.load_split` picks the reader; `data.radar_pipeline` makes the batches of each stage.

Each window is the frames `data.radar_window_offsets` of the current one (`window_rows`; a missing
frame falls back to `data.radar_window_fallbacks`). Past coarse poses for phase 2
(`history_rows`): rows i-P .. i-1. Upstream HEAD ignores sequence boundaries and replaces rows
before the start by i + k; v1 stays within the sequence and uses row i instead
(`data.respect_sequences`, `data.history_fallback`).

Every value is checked where it is read: a frame that is not [n, C], holds NaN or infinity, or
holds no points at all (unless `data.allow_empty_frames`) raises a ValueError naming the file.
"""

import dataclasses
import pathlib
import re
from typing import Any, Sequence

import numpy as np

from posediff_jax import skeleton

SOURCES = ("raw", "cache")
DATASETS = ("mmbody", "mmfi")
# mmBody's 7 test scenes, the default of `data.test_scenes`.
MMBODY_TEST_SCENES = ("lab1", "lab2", "furnished", "rain", "smoke", "poor_lighting", "occlusion")
NUM_JOINTS = skeleton.NUM_JOINTS


# --------------------------------------------------------------------------------------------------
# Settings and preprocessing.


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a raw radar frame becomes a fixed-size point array (upstream `MMBody.__getitem__`).

  Attributes:
    points: P, points per frame after padding or truncation.
    channels: C, columns per point (the first 3 are x, y, z).
    centre_on_pelvis: subtract the current frame's ground-truth pelvis from x, y, z.
    feature_scale: factors for columns 3.. (mmBody: 1e38, 10, 0.01), or None.
    crop: ((x_min, x_max), (y_min, y_max), (z_min, z_max)), inclusive, or None.
    allow_empty_frames: a frame without points becomes all padding instead of an error.
  """
  points: int
  channels: int
  centre_on_pelvis: bool = False
  feature_scale: tuple[float, ...] | None = None
  crop: tuple[tuple[float, float], ...] | None = None
  allow_empty_frames: bool = False

  def __post_init__(self):
    if self.points < 1 or self.channels < 3:
      raise ValueError(f"radar preprocessing needs points >= 1 and channels >= 3, got "
                       f"points={self.points}, channels={self.channels}")
    if self.feature_scale is not None and len(self.feature_scale) != self.channels - 3:
      raise ValueError(f"data.feature_scale has {len(self.feature_scale)} factors but the frames "
                       f"have {self.channels - 3} feature columns")
    if self.crop is not None and (len(self.crop) != 3 or any(len(r) != 2 for r in self.crop)):
      raise ValueError(f"data.crop must be ((x_min, x_max), (y_min, y_max), (z_min, z_max)), got "
                       f"{self.crop}")


@dataclasses.dataclass(frozen=True)
class RadarSettings:
  """Everything the readers and batches take from `config.data` (and the model's sizes)."""
  source: str
  dataset: str
  root: pathlib.Path
  preprocessing: Preprocessing
  window_offsets: tuple[int, ...]
  window_fallbacks: tuple[int, ...]
  past_frames: int
  respect_sequences: bool
  history_fallback: str
  phase2_radar: bool
  cache_layout: str = "head"
  test_scenes: tuple[str, ...] = MMBODY_TEST_SCENES
  radar_train_chunks: int = 5
  protocol_actions: tuple[str, ...] = ()
  test_subjects: tuple[str, ...] = ()

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"config.data.source must be one of {SOURCES}, got {self.source!r}")
    if self.dataset not in DATASETS:
      raise ValueError(f"config.data.dataset must be one of {DATASETS}, got {self.dataset!r}")
    if self.history_fallback not in ("forward", "current"):
      raise ValueError(f"config.data.history_fallback must be 'forward' (HEAD: row i + k) or "
                       f"'current' (v1: row i), got {self.history_fallback!r}")
    if not self.window_offsets or self.window_offsets[0] != 0:
      raise ValueError(f"config.data.radar_window_offsets must start with 0 (the current frame), "
                       f"got {self.window_offsets}")
    if len(self.window_fallbacks) != len(self.window_offsets):
      raise ValueError(f"config.data.radar_window_fallbacks {self.window_fallbacks} must have one "
                       f"entry per window offset {self.window_offsets}")
    if self.cache_layout not in ("head", "v1"):
      raise ValueError(f"config.data.cache_layout must be 'head' or 'v1', got "
                       f"{self.cache_layout!r}")


def settings_from_config(config) -> RadarSettings:
  """The `RadarSettings` of an mmDiff config (see configs/mmdiff_mmbody.py for the fields)."""
  d = config.data
  crop = d.get("crop")
  scale = d.get("feature_scale")
  prep = Preprocessing(
      points=int(d.points_per_frame), channels=int(d.radar_channels),
      centre_on_pelvis=bool(d.get("centre_on_pelvis", False)),
      feature_scale=tuple(float(s) for s in scale) if scale else None,
      crop=tuple(tuple(float(v) for v in r) for r in crop) if crop else None,
      allow_empty_frames=bool(d.get("allow_empty_frames", False)))
  return RadarSettings(
      source=str(d.get("source", "cache")), dataset=str(d.dataset), root=pathlib.Path(d.root),
      preprocessing=prep, window_offsets=tuple(int(o) for o in d.radar_window_offsets),
      window_fallbacks=tuple(int(o) for o in d.radar_window_fallbacks),
      past_frames=int(config.model.past_frames),
      respect_sequences=bool(d.get("respect_sequences", False)),
      history_fallback=str(d.get("history_fallback", "forward")),
      phase2_radar=int(config.model.get("local_flag", 1)) == 1,
      cache_layout=str(d.get("cache_layout", "head")),
      test_scenes=tuple(d.get("test_scenes", MMBODY_TEST_SCENES)),
      radar_train_chunks=int(d.get("radar_train_chunks", 0)),
      protocol_actions=tuple(d.get("protocol_actions", ())),
      test_subjects=tuple(d.get("test_subjects", ())))


def check_points(points: np.ndarray, channels: int, where: str, *, allow_empty: bool = False
                 ) -> None:
  """Raises a ValueError naming `where` unless `points` is a finite, non-empty `[n, channels]`."""
  if points.ndim != 2 or points.shape[1] != channels:
    raise ValueError(f"radar frame {where}: expected points [n, {channels}], got shape "
                     f"{points.shape}")
  if len(points) == 0 and not allow_empty:
    raise ValueError(f"radar frame {where} holds no points (shape {points.shape}); drop the frame, "
                     "or set --config.data.allow_empty_frames=True to read it as all padding "
                     "(what upstream does)")
  bad = ~np.isfinite(points)
  if bad.any():
    row, col = (int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"radar frame {where}: {int(bad.sum())} non-finite values (NaN or inf), the "
                     f"first at point {row}, column {col} = {points[row, col]}")


def preprocess_frame(points: np.ndarray, prep: Preprocessing, *, centre=None,
                     where: str = "frame") -> np.ndarray:
  """One raw frame `[n, C]` -> float32 `[P, C]`: centre, scale, crop, pad (upstream's order).

  Args:
    points: the raw frame.
    prep: the preprocessing.
    centre: `[3]` the ground-truth pelvis to subtract (used iff `prep.centre_on_pelvis`).
    where: names the frame in error messages (e.g. its file).
  """
  points = np.asarray(points, np.float64)
  check_points(points, prep.channels, where, allow_empty=prep.allow_empty_frames)
  points = points.copy()
  if prep.centre_on_pelvis:
    if centre is None:
      raise ValueError(f"radar frame {where}: centre_on_pelvis needs the pelvis position")
    points[:, :3] -= np.asarray(centre, np.float64)
  if prep.feature_scale is not None:
    points[:, 3:] *= np.asarray(prep.feature_scale, np.float64)
  if prep.crop is not None:
    keep = np.ones(len(points), bool)
    for axis, (low, high) in enumerate(prep.crop):
      keep &= (points[:, axis] >= low) & (points[:, axis] <= high)
    points = points[keep]
  out = np.zeros((prep.points, prep.channels), np.float32)
  count = min(len(points), prep.points)
  out[:count] = points[:count]
  return out


# --------------------------------------------------------------------------------------------------
# Windows of past frames.


def window_rows(sequence: np.ndarray, position: np.ndarray, offsets: Sequence[int],
                fallbacks: Sequence[int]) -> np.ndarray:
  """For each row, the rows of its window: int64 `[N, len(offsets)]`.

  Slot s of row i is the row of the same sequence at position `position[i] + offsets[s]`; if
  there is none, the one at `position[i] + fallbacks[s]`; if neither exists, row i itself.

  Args:
    sequence: `[N]` sequence id of each row (all equal to ignore sequence boundaries).
    position: `[N]` frame number (or row index) within the sequence, unique per sequence.
    offsets: window offsets, e.g. (0, -4, -3, -2).
    fallbacks: offsets used where the frame does not exist, e.g. (0, 0, 1, 2).
  """
  sequence = np.asarray(sequence, np.int64)
  position = np.asarray(position, np.int64)
  lookup = {(int(s), int(p)): i for i, (s, p) in enumerate(zip(sequence, position))}
  if len(lookup) != len(sequence):
    raise ValueError("window_rows: a (sequence, position) pair occurs twice")
  out = np.empty((len(sequence), len(offsets)), np.int64)
  for i, (s, p) in enumerate(zip(sequence.tolist(), position.tolist())):
    for slot, (offset, fallback) in enumerate(zip(offsets, fallbacks)):
      row = lookup.get((s, p + offset))
      if row is None:
        row = lookup.get((s, p + fallback), i)
      out[i, slot] = row
  return out


def history_rows(split: "RadarSplit", past_frames: int, *, respect_sequences: bool,
                 fallback: str) -> np.ndarray:
  """The rows of the P past coarse poses of every row, oldest first: int64 `[N, P]`.

  Rows i-P .. i-1. Where one is missing (before the start; with `respect_sequences` also in
  another sequence) it is replaced by row i + k for slot k ('forward', upstream HEAD) or by row
  i ('current', v1).
  """
  n = len(split)
  offsets = tuple(range(-past_frames, 0))
  fallbacks = (tuple(range(past_frames)) if fallback == "forward" else (0,) * past_frames)
  sequence = split.sequence if respect_sequences else np.zeros(n, np.int64)
  return window_rows(sequence, np.arange(n), offsets, fallbacks)


class RawWindows:
  """Radar windows read from one file per frame and preprocessed on the fly.

  Window i is frames `rows[i]` (see `window_rows`), each preprocessed with the pelvis of frame i.
  """

  def __init__(self, files: Sequence[str], rows: np.ndarray, centres: np.ndarray | None,
               prep: Preprocessing, reader):
    self._files = tuple(files)
    self._rows = np.asarray(rows, np.int64)
    self._centres = None if centres is None else np.asarray(centres, np.float64)
    self._prep = prep
    self._reader = reader
    self.shape = (self._rows.shape[1], prep.points, prep.channels)

  def __len__(self) -> int:
    return len(self._rows)

  def read(self, rows) -> np.ndarray:
    """float32 `[len(rows), T, P, C]`."""
    out = np.empty((len(rows),) + self.shape, np.float32)
    for b, i in enumerate(np.asarray(rows, np.int64)):
      centre = None if self._centres is None else self._centres[i]
      for slot, frame in enumerate(self._rows[i]):
        path = self._files[frame]
        out[b, slot] = preprocess_frame(self._reader(path), self._prep, centre=centre, where=path)
    return out


class CachedWindows:
  """Radar windows gathered from upstream's cached current frames `[n_k, P, C]` (one or more
  chunk files, memory-mapped), window i being rows `rows[i]`."""

  def __init__(self, chunks: Sequence[tuple[str, np.ndarray]], rows: np.ndarray,
               channels: int):
    self._chunks = tuple(chunks)
    self._starts = np.cumsum([0] + [len(a) for _, a in self._chunks])
    self._rows = np.asarray(rows, np.int64)
    self._channels = channels
    points = {a.shape[1:] for _, a in self._chunks}
    if len(points) != 1:
      raise ValueError(f"the cached radar chunks have different frame shapes: {sorted(points)}")
    self.shape = (self._rows.shape[1],) + points.pop()

  def __len__(self) -> int:
    return len(self._rows)

  def read(self, rows) -> np.ndarray:
    """float32 `[len(rows), T, P, C]`."""
    frames = self._rows[np.asarray(rows, np.int64)]  # [B, T]
    flat = frames.reshape(-1)
    out = np.empty((len(flat),) + self.shape[1:], np.float32)
    chunk = np.searchsorted(self._starts, flat, side="right") - 1
    for k in np.unique(chunk):
      where = chunk == k
      path, array = self._chunks[k]
      local = flat[where] - self._starts[k]
      values = np.asarray(array[local], np.float32)
      bad = ~np.isfinite(values).all(axis=(1, 2))
      if bad.any():
        raise ValueError(f"radar frame {path} row {int(local[np.argmax(bad)])}: non-finite values "
                         "(NaN or inf) in the cached radar")
      out[where] = values
    return out.reshape((len(frames),) + self.shape)


# --------------------------------------------------------------------------------------------------
# A split, and what its readers share.


@dataclasses.dataclass(frozen=True, eq=False)
class RadarSplit:
  """The frames of one split, in recording order (module docstring).

  Attributes:
    name: what the split is, for messages (e.g. 'mmbody test (raw)').
    target_3d: float32 `[N, 17, 3]` ground truth, root-relative (metres).
    sequence: int64 `[N]` sequence id of each frame.
    scene: int32 `[N]` index into `scene_names`.
    scene_names: the scenes (mmBody test scenes, mm-Fi environments, 'train', 'test').
    windows: `RawWindows` or `CachedWindows` (`read(rows) -> [B, T, P, C]`), or None when the
      source carries no radar (upstream's mm-Fi cache).
    coarse: float32 `[N, 17, 3]` phase-1 pose, root-relative, or None before phase 1.
    features: float32 `[N, 17, F]` phase-1 per-joint features, or None before phase 1.
  """
  name: str
  target_3d: np.ndarray
  sequence: np.ndarray
  scene: np.ndarray
  scene_names: tuple[str, ...]
  windows: Any
  coarse: np.ndarray | None = None
  features: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.target_3d)
    if n == 0:
      raise ValueError(f"{self.name}: no frames")
    for field in ("sequence", "scene"):
      if len(getattr(self, field)) != n:
        raise ValueError(f"{self.name}: {field} has {len(getattr(self, field))} entries for {n} "
                         "frames")
    if self.windows is not None and len(self.windows) != n:
      raise ValueError(f"{self.name}: {len(self.windows)} radar windows for {n} frames")
    if (self.coarse is None) != (self.features is None):
      raise ValueError(f"{self.name}: phase-1 poses and features come together")
    if self.coarse is not None and (self.coarse.shape != (n, NUM_JOINTS, 3)
                                    or self.features.shape[:2] != (n, NUM_JOINTS)):
      raise ValueError(f"{self.name}: phase-1 outputs of shapes {self.coarse.shape} and "
                       f"{self.features.shape}, expected [{n}, {NUM_JOINTS}, 3] and "
                       f"[{n}, {NUM_JOINTS}, F]")

  def __len__(self) -> int:
    return len(self.target_3d)

  @property
  def has_phase1(self) -> bool:
    return self.coarse is not None

  def with_phase1(self, coarse: np.ndarray, features: np.ndarray) -> "RadarSplit":
    """A copy holding phase-1 outputs; `coarse` is made root-relative."""
    coarse = np.asarray(coarse, np.float32)
    return dataclasses.replace(self, coarse=coarse - coarse[:, :1],
                               features=np.asarray(features, np.float32))

  def radar(self, rows) -> np.ndarray:
    if self.windows is None:
      raise ValueError(f"{self.name} holds no radar frames (upstream's mm-Fi cache has none); "
                       "phase 1 needs the raw data (config.data.source='raw')")
    return self.windows.read(rows)


def frame_number(path: pathlib.Path, pattern: str) -> int:
  """The frame number in a file name: group 1 of `pattern` (a clear error when it does not fit)."""
  match = re.fullmatch(pattern, path.name)
  if not match:
    raise ValueError(f"unexpected file name {path} (expected {pattern})")
  return int(match.group(1))
