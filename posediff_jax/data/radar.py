r"""Radar data for mmDiff: the mmBody and mm-Fi layouts, upstream's preprocessing, windows of past
frames, the training stream and the evaluation batches.

A split is a `RadarSplit`: per frame, in recording order, the root-relative ground truth
`target_3d` [N, 17, 3], a sequence id, a scene, a reader of radar windows [T, P, C] (T frames of P
points with C channels) and, once phase 1 has run, its coarse pose [N, 17, 3] (root-relative) and
per-joint features [N, 17, F]. Two sources fill it (`config.data.source`, spec §4):

* 'raw', the datasets' own layouts, preprocessed here:
  - mmBody: `root/train/sequence_<id>/{radar/frame_<k>.npy [n, 6], mesh/frame_<k>.npz}` and
    `root/test/<scene>/sequence_<id>/...` for the 7 test scenes. Radar columns: x, y (range), z
    (up), velocity, amplitude, energy. The label is SMPL-X `joints[SMPLX_TO_H36M]`. Each window
    is the frames [t, t-4, t-3, t-2] of the sequence (`radar_window_offsets`; a missing frame
    falls back to t + i, `radar_window_fallbacks`), every frame centred on the *current* frame's
    ground-truth pelvis (also at test time, as upstream), scaled (x1e38, x10, /100), cropped to
    the box around the pelvis and zero-padded or truncated (first rows) to 5184 points.
  - mm-Fi: `root/E0x/Sxx/Axx/{mmwave/frame<NNN>.bin float64 [n, 5], ground_truth.npy [297, 17,
    3]}`, protocol-1 actions, cross-subject split; the window repeats the current frame (see the
    config), padded or truncated to 150 points; no centring, scaling or cropping (HEAD).
  Phase 1 (the trained or converted encoder) then fills the coarse poses and features.
* 'cache', upstream's phase-2 cache (what phase 1 writes; spec §4.1): `joint_gt_array_<s>.npy`,
  `joint_pred_array_<s>.npy` (coarse), `radar_feat_array_<s>.npy` (features),
  `radar_input_array_<s>.npy` (the current frame only; train in `radar_input_array_train{0..4}`
  chunks), and with v1's layout `sequence_array_<s>.npy` and one test split per scene
  (`test_<scene>`). Windows are rebuilt from neighbouring rows.

Past coarse poses for phase 2 (`history_rows`): rows i-P .. i-1. Upstream HEAD ignores sequence
boundaries and replaces rows before the start by i + k; v1 stays within the sequence and uses row
i instead (`data.respect_sequences`, `data.history_fallback`).

Every value is checked where it is read: a frame that is not [n, C], holds NaN or infinity, or
holds no points at all (unless `data.allow_empty_frames`) raises a ValueError naming the file.
"""

import dataclasses
import pathlib
import re
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from posediff_jax import skeleton
from posediff_jax.data import pipeline

SOURCES = ("raw", "cache")
DATASETS = ("mmbody", "mmfi")
# Upstream's label: SMPL-X joints in Human3.6M slot order (spec §4.1).
SMPLX_TO_H36M = (0, 1, 4, 7, 2, 5, 8, 6, 12, 15, 24, 16, 18, 20, 17, 19, 21)
MMBODY_TEST_SCENES = ("lab1", "lab2", "furnished", "rain", "smoke", "poor_lighting", "occlusion")
MMFI_CHANNELS = 5
NUM_JOINTS = skeleton.NUM_JOINTS
STAGES = ("encoder", "denoiser")


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


# --------------------------------------------------------------------------------------------------
# Radar readers: raw files and upstream's cache.


def _read_npy_frame(path: str) -> np.ndarray:
  return np.load(path, allow_pickle=False)


def _read_bin_frame(path: str) -> np.ndarray:
  raw = pathlib.Path(path).read_bytes()
  if len(raw) % (8 * MMFI_CHANNELS):
    raise ValueError(f"radar frame {path}: {len(raw)} bytes is not a whole number of float64 "
                     f"points of {MMFI_CHANNELS} values")
  return np.frombuffer(raw, np.float64).reshape(-1, MMFI_CHANNELS)


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
# A split.


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


# --------------------------------------------------------------------------------------------------
# Readers.


def _frame_number(path: pathlib.Path, pattern: str) -> int:
  match = re.fullmatch(pattern, path.name)
  if not match:
    raise ValueError(f"unexpected file name {path} (expected {pattern})")
  return int(match.group(1))


def _sequence_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  dirs = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"sequence_\d+", p.name)]
  return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))


def _mmbody_joints(path: pathlib.Path) -> np.ndarray:
  with np.load(path, allow_pickle=False) as mesh:
    if "joints" not in mesh.files:
      raise ValueError(f"mesh file {path} has no 'joints' (has {', '.join(mesh.files)})")
    joints = np.asarray(mesh["joints"], np.float64)
  if joints.ndim != 2 or joints.shape[1] != 3 or joints.shape[0] <= max(SMPLX_TO_H36M):
    raise ValueError(f"mesh file {path}: 'joints' must be SMPL-X joints [>= "
                     f"{max(SMPLX_TO_H36M) + 1}, 3], got {joints.shape}")
  if not np.all(np.isfinite(joints)):
    raise ValueError(f"mesh file {path}: 'joints' holds NaN or infinite values")
  return joints[list(SMPLX_TO_H36M)]


def load_mmbody_raw(settings: RadarSettings, split: str) -> RadarSplit:
  """mmBody's own layout (module docstring); train: one scene 'train'; test: `test_scenes`."""
  root = settings.root
  if split == "train":
    folders = [("train", root / "train")]
  else:
    folders = [(scene, root / "test" / scene) for scene in settings.test_scenes]
  targets, pelvis, files, sequence, position, scene = [], [], [], [], [], []
  num_sequences = 0
  for s, (_, folder) in enumerate(folders):
    if not folder.is_dir():
      raise FileNotFoundError(f"mmBody folder {folder} not found (config.data.root="
                              f"{settings.root}; expected root/train/sequence_<id>/ and "
                              "root/test/<scene>/sequence_<id>/)")
    dirs = _sequence_dirs(folder)
    if not dirs:
      raise FileNotFoundError(f"no sequence_<id> folders in {folder}")
    for seq_dir in dirs:
      meshes = sorted((seq_dir / "mesh").glob("frame_*.npz"),
                      key=lambda p: _frame_number(p, r"frame_(\d+)\.npz"))
      if not meshes:
        raise FileNotFoundError(f"no mesh/frame_<k>.npz files in {seq_dir}")
      seq_id, num_sequences = num_sequences, num_sequences + 1
      for mesh in meshes:
        k = _frame_number(mesh, r"frame_(\d+)\.npz")
        radar_file = seq_dir / "radar" / f"frame_{k}.npy"
        if not radar_file.is_file():
          raise FileNotFoundError(f"radar frame {radar_file} (for {mesh}) not found")
        joints = _mmbody_joints(mesh)
        targets.append(joints - joints[:1])
        pelvis.append(joints[0])
        files.append(str(radar_file))
        sequence.append(seq_id)
        position.append(k)
        scene.append(s)
  sequence_arr, position_arr = np.asarray(sequence), np.asarray(position)
  # Phase 1's windows: frames of the same recording (upstream tests which files exist).
  rows = window_rows(sequence_arr, position_arr, settings.window_offsets,
                     settings.window_fallbacks)
  windows = RawWindows(files, rows, np.asarray(pelvis), settings.preprocessing, _read_npy_frame)
  return RadarSplit(f"mmbody {split} (raw, {root})", np.asarray(targets, np.float32),
                    sequence_arr, np.asarray(scene, np.int32), tuple(n for n, _ in folders),
                    windows)


def mmfi_environment(subject: str) -> str:
  """Upstream `get_scene`: S01-S10 were recorded in E01, S11-S20 in E02, and so on."""
  number = int(subject[1:])
  if not subject.startswith("S") or not 1 <= number <= 40:
    raise ValueError(f"mm-Fi subjects are S01..S40, got {subject!r}")
  return f"E{(number - 1) // 10 + 1:02d}"


def load_mmfi_raw(settings: RadarSettings, split: str) -> RadarSplit:
  """mm-Fi's own layout: protocol actions, test subjects vs all other subjects found."""
  root = settings.root
  if not root.is_dir():
    raise FileNotFoundError(f"mm-Fi folder {root} (config.data.root) not found")
  envs = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"E\d\d", p.name))
  if not envs:
    raise FileNotFoundError(f"no environment folders E01..E04 in {root}")
  test_subjects = set(settings.test_subjects)
  targets, files, sequence, scene, scene_names = [], [], [], [], []
  num_sequences = 0
  for env in envs:
    subjects = sorted(p for p in env.iterdir() if p.is_dir() and re.fullmatch(r"S\d\d", p.name))
    for subject in subjects:
      if (subject.name in test_subjects) != (split == "test"):
        continue
      for action in sorted(p for p in subject.iterdir() if p.is_dir()):
        if action.name not in settings.protocol_actions:
          continue
        gt_path = action / "ground_truth.npy"
        if not gt_path.is_file():
          raise FileNotFoundError(f"mm-Fi ground truth {gt_path} not found")
        gt = np.load(gt_path, allow_pickle=False)
        if gt.ndim != 3 or gt.shape[1:] != (NUM_JOINTS, 3) or not np.all(np.isfinite(gt)):
          raise ValueError(f"{gt_path}: expected finite joints [T, {NUM_JOINTS}, 3], got "
                           f"{gt.shape}")
        frames = sorted((action / "mmwave").glob("frame*.bin"))
        if not frames:
          raise FileNotFoundError(f"no mmwave/frame<NNN>.bin files in {action}")
        if env.name not in scene_names:
          scene_names.append(env.name)
        seq_id, num_sequences = num_sequences, num_sequences + 1
        for frame in frames:
          k = _frame_number(frame, r"frame(\d+)\.bin") - 1
          if not 0 <= k < len(gt):
            raise ValueError(f"{frame}: frame {k + 1} has no ground truth in {gt_path} "
                             f"({len(gt)} frames)")
          targets.append(gt[k] - gt[k, :1])
          files.append(str(frame))
          sequence.append(seq_id)
          scene.append(scene_names.index(env.name))
  if not targets:
    raise FileNotFoundError(
        f"no mm-Fi {split} sequences in {root} for actions {list(settings.protocol_actions)} "
        f"(test subjects {sorted(test_subjects)})")
  sequence_arr = np.asarray(sequence)
  position = np.concatenate([np.arange(c) for c in np.unique(sequence_arr, return_counts=True)[1]])
  rows = window_rows(sequence_arr, position, settings.window_offsets, settings.window_fallbacks)
  windows = RawWindows(files, rows, None, settings.preprocessing, _read_bin_frame)
  return RadarSplit(f"mmfi {split} (raw, {root})", np.asarray(targets, np.float32), sequence_arr,
                    np.asarray(scene, np.int32), tuple(scene_names), windows)


def _load_cache_array(path: pathlib.Path, shape_tail: tuple, what: str) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f"phase-2 cache file {path} not found ({what}; config.data.root + "
                            "upstream's file name, spec §4.1)")
  array = np.load(path, mmap_mode="r", allow_pickle=False)
  if array.shape[1:] != shape_tail and shape_tail:
    raise ValueError(f"{path}: expected {what} [N, {', '.join(map(str, shape_tail))}], got "
                     f"{array.shape}")
  return array


def _finite(array: np.ndarray, path: pathlib.Path) -> np.ndarray:
  array = np.asarray(array, np.float32)
  if not np.all(np.isfinite(array)):
    row = int(np.argwhere(~np.isfinite(array.reshape(len(array), -1)).any(axis=1))[0, 0])
    raise ValueError(f"{path}: non-finite values (NaN or inf), the first in row {row}")
  return array


def load_cache(settings: RadarSettings, split: str) -> RadarSplit:
  """Upstream's phase-2 cache (module docstring), HEAD or v1 layout (`data.cache_layout`)."""
  root = settings.root
  if split == "train":
    parts = [("train", "train")]
  elif settings.cache_layout == "v1":
    parts = [(scene, f"test_{scene}") for scene in settings.test_scenes]
  else:
    parts = [("test", "test")]
  gt, pred, feats, seqs, scenes, radar_chunks = [], [], [], [], [], []
  for s, (_, suffix) in enumerate(parts):
    gt_path = root / f"joint_gt_array_{suffix}.npy"
    gt.append(_finite(_load_cache_array(gt_path, (NUM_JOINTS, 3), "ground truth"), gt_path))
    n = len(gt[-1])
    for store, name, what in ((pred, "joint_pred_array", "coarse poses"),
                              (feats, "radar_feat_array", "phase-1 features")):
      path = root / f"{name}_{suffix}.npy"
      array = _finite(_load_cache_array(path, (), what), path)
      if array.ndim != 3 or array.shape[:2] != (n, NUM_JOINTS):
        raise ValueError(f"{path}: expected {what} [{n}, {NUM_JOINTS}, ...] to match {gt_path}, "
                         f"got {array.shape}")
      store.append(array)
    if settings.cache_layout == "v1":
      path = root / f"sequence_array_{suffix}.npy"
      ids = np.asarray(_load_cache_array(path, (), "sequence ids"), np.int64).reshape(-1)
      if len(ids) != n:
        raise ValueError(f"{path}: {len(ids)} sequence ids for {n} frames")
      seqs.append(ids)
    else:
      seqs.append(np.zeros(n, np.int64))  # HEAD's cache has no sequence ids
    scenes.append(np.full(n, s, np.int32))
    if settings.radar_train_chunks > 0:
      names = ([f"radar_input_array_train{i}.npy" for i in range(settings.radar_train_chunks)]
               if split == "train" else [f"radar_input_array_{suffix}.npy"])
      chunk_rows = 0
      for name in names:
        array = _load_cache_array(root / name, (), "cached radar frames")
        if array.ndim != 3 or array.shape[-1] != settings.preprocessing.channels:
          raise ValueError(f"{root / name}: expected radar frames [n, P, "
                           f"{settings.preprocessing.channels}], got {array.shape}")
        radar_chunks.append((str(root / name), array))
        chunk_rows += len(array)
      if chunk_rows != n:
        raise ValueError(f"{', '.join(names)} hold {chunk_rows} radar frames for the {n} frames "
                         f"of {gt_path}")
  sequence = np.concatenate(seqs)
  windows = None
  if radar_chunks:
    # Upstream rebuilds the window from neighbouring rows; v1 stays within the sequence.
    ids = sequence if settings.respect_sequences else np.zeros(len(sequence), np.int64)
    rows = window_rows(ids, np.arange(len(sequence)), settings.window_offsets,
                       settings.window_fallbacks)
    windows = CachedWindows(radar_chunks, rows, settings.preprocessing.channels)
  target = np.concatenate(gt)
  coarse = np.concatenate(pred)
  return RadarSplit(f"{settings.dataset} {split} (cache, {root})", target - target[:, :1],
                    sequence, np.concatenate(scenes), tuple(n for n, _ in parts), windows,
                    coarse - coarse[:, :1], np.concatenate(feats))


def data_paths(config) -> dict[str, pathlib.Path]:
  """{'root': the data folder}, generating the synthetic set first if `data.generate_synthetic`."""
  settings = settings_from_config(config)
  if config.data.get("generate_synthetic", False):
    if settings.source != "raw":
      raise ValueError("config.data.generate_synthetic writes the raw layout: set "
                       "config.data.source='raw'")
    from posediff_jax.data import synthetic_radar  # pylint: disable=g-import-not-at-top
    synthetic_radar.ensure_synthetic_radar(
        settings.root, settings.dataset,
        frames_per_sequence=int(config.data.get("synthetic_frames",
                                                synthetic_radar.DEFAULT_FRAMES)))
  if not settings.root.is_dir():
    raise FileNotFoundError(f"radar data folder {settings.root} (config.data.root) not found; see "
                            "README 'mmDiff' for the layouts, or generate a synthetic set with "
                            "python -m posediff_jax.data.synthetic_radar")
  return {"root": settings.root}


def load_split(config, split: str) -> RadarSplit:
  """The train or test split of `config.data` (module docstring)."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  data_paths(config)
  settings = settings_from_config(config)
  if settings.source == "cache":
    return load_cache(settings, split)
  if settings.dataset == "mmbody":
    return load_mmbody_raw(settings, split)
  return load_mmfi_raw(settings, split)


# --------------------------------------------------------------------------------------------------
# Batches.


def check_stage(settings: RadarSettings, stage: str) -> None:
  """A clear error for a stage the data cannot feed."""
  if stage not in STAGES:
    raise ValueError(f"unknown mmDiff stage {stage!r}; expected one of {STAGES}")
  if stage == "encoder" and settings.source == "cache":
    raise ValueError("the phase-1 encoder trains on raw radar frames, but config.data.source="
                     "'cache' (upstream's cache holds the authors' phase-1 outputs); set "
                     "config.data.source='raw' or train.encoder_steps/encoder_epochs=0")


def encoder_batch(split: RadarSplit, rows: np.ndarray) -> dict[str, np.ndarray]:
  """Phase-1 inputs of `rows`: `radar` float32 [B, T, P, C], `target_3d` [B, 17, 3]."""
  return {"radar": split.radar(rows), "target_3d": split.target_3d[rows]}


def denoiser_batch(split: RadarSplit, rows: np.ndarray, history: np.ndarray, *,
                   with_radar: bool) -> dict[str, np.ndarray]:
  """Phase-2 inputs of `rows` (the family's batch dict, spec §4.1).

  Returns:
    `x_history` float32 [B, 17, 3(P+1)] (the past coarse poses `history[rows]`, oldest first,
    then the current one), `features` [B, 17, F], `target_3d` [B, 17, 3] and with `with_radar`
    `radar` [B, T, P, C].
  """
  if not split.has_phase1:
    raise ValueError(f"{split.name} has no phase-1 outputs yet; run the encoder first "
                     "(radar_evaluation.encode_split)")
  rows = np.asarray(rows, np.int64)
  past = split.coarse[history[rows]]  # [B, P, 17, 3]
  frames = np.concatenate([past, split.coarse[rows][:, None]], axis=1)
  x_history = np.transpose(frames, (0, 2, 1, 3)).reshape(len(rows), NUM_JOINTS, -1)
  batch = {"x_history": x_history.astype(np.float32), "features": split.features[rows],
           "target_3d": split.target_3d[rows]}
  if with_radar:
    batch["radar"] = split.radar(rows)
  return batch


class RadarBatches(pipeline.ShuffledBatchIndices):
  """`pipeline.ShuffledBatchIndices` over the frames of a split: element i is one batch of the
  stage (`encoder_batch` or `denoiser_batch`)."""

  def __init__(self, split: RadarSplit, settings: RadarSettings, *, stage: str, batch_size: int,
               seed: int, shard_index: int, shard_count: int, num_epochs: int | None):
    super().__init__(len(split), batch_size=batch_size, seed=seed, shard_index=shard_index,
                     shard_count=shard_count, num_epochs=num_epochs)
    self._split = split
    self._stage = stage
    self._with_radar = settings.phase2_radar
    self._history = (history_rows(split, settings.past_frames,
                                  respect_sequences=settings.respect_sequences,
                                  fallback=settings.history_fallback)
                     if stage == "denoiser" else None)

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    rows = np.sort(super().__getitem__(index))
    if self._stage == "encoder":
      return encoder_batch(self._split, rows)
    return denoiser_batch(self._split, rows, self._history, with_radar=self._with_radar)


def train_dataset(split: RadarSplit, settings: RadarSettings, *, stage: str, batch_size: int,
                  seed: int, shard_index: int = 0, shard_count: int = 1, worker_count: int = 0,
                  num_epochs: int | None = None) -> grain.IterDataset:
  """The training stream of one stage, reshuffled every epoch and split across processes.

  Global batch i is the next `batch_size * shard_count` frames of the epoch's permutation; this
  process keeps every `shard_count`-th (`pipeline.ShuffledBatchIndices`); a partial last global
  batch is dropped. The encoder stage's batches are `encoder_batch`es, the denoiser's
  `denoiser_batch`es (the split must hold phase-1 outputs). The stages shuffle differently (the
  stage is mixed into the seed). Iterators support `get_state()` / `set_state()`.
  """
  check_stage(settings, stage)
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  if len(split) < batch_size * shard_count:
    raise ValueError(f"{split.name}: {len(split)} frames cannot fill one batch of {batch_size} on "
                     f"each of {shard_count} process(es)")
  if stage == "denoiser" and not split.has_phase1:
    raise ValueError(f"{split.name} has no phase-1 outputs: the denoiser stage needs the coarse "
                     "poses and features (train or convert the encoder first)")
  source = RadarBatches(split, settings, stage=stage, batch_size=batch_size,
                        seed=seed + STAGES.index(stage), shard_index=shard_index,
                        shard_count=shard_count, num_epochs=num_epochs)
  return pipeline.training_stream(grain.MapDataset.source(source), worker_count)


def eval_batches(split: RadarSplit, batch_size: int, *, stage: str, settings: RadarSettings,
                 shard_index: int = 0, shard_count: int = 1
                 ) -> tuple[Iterator[dict[str, Any]], int]:
  """Evaluation batches in split order with a fixed shape.

  Global batch i holds frames `[i * batch_size, (i + 1) * batch_size)`; the last one is padded
  by repeating the last frame. Each process reads only its contiguous `batch_size // shard_count`
  rows of a global batch (`arrays`); every process gets the global bookkeeping.

  Args:
    split: the frames.
    batch_size: global batch size (divisible by `shard_count`).
    stage: 'encoder' (phase-1 inputs) or 'denoiser' (phase-2 inputs; needs phase-1 outputs).
    settings: the data settings (past frames, history rule, radar in phase 2).
    shard_index: this process's index.
    shard_count: the number of processes.

  Returns:
    `(iterator, number of batches)`. Each item: `arrays` (this process's rows of `encoder_batch`
    or `denoiser_batch`), and for the whole global batch `valid` bool [B] (False on padding),
    `scene` int32 [B] and `index` int64 [B] (row in the split).
  """
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
  if stage == "denoiser" and not split.has_phase1:
    raise ValueError(f"{split.name} has no phase-1 outputs; run the encoder over it first "
                     "(radar_evaluation.encode_split)")
  if batch_size <= 0 or batch_size % shard_count:
    raise ValueError(f"eval batch_size={batch_size} must be > 0 and divisible by "
                     f"shard_count={shard_count}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  n = len(split)
  num_batches = -(-n // batch_size)
  local = batch_size // shard_count
  history = (history_rows(split, settings.past_frames,
                          respect_sequences=settings.respect_sequences,
                          fallback=settings.history_fallback)
             if stage == "denoiser" else None)

  def generate():
    for b in range(num_batches):
      rows = b * batch_size + np.arange(batch_size)
      valid = rows < n
      rows = np.minimum(rows, n - 1)
      mine = rows[shard_index * local:(shard_index + 1) * local]
      arrays = (encoder_batch(split, mine) if stage == "encoder"
                else denoiser_batch(split, mine, history, with_radar=settings.phase2_radar))
      yield {"arrays": arrays, "valid": valid, "scene": split.scene[rows], "index": rows}

  return generate(), num_batches
