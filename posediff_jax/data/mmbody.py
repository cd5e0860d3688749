"""mmBody's own layout (Arbe 4D imaging radar), read as a `radar.RadarSplit`.

`root/train/sequence_<id>/{radar/frame_<k>.npy [n, 6], mesh/frame_<k>.npz}` and
`root/test/<scene>/sequence_<id>/...` for the 7 test scenes. Radar columns: x, y (range), z (up),
velocity, amplitude, energy. The label is SMPL-X `joints[SMPLX_TO_H36M]`. Each window is the
frames [t, t-4, t-3, t-2] of the sequence (`radar_window_offsets`; a missing frame falls back to
t + i, `radar_window_fallbacks`), every frame centred on the *current* frame's ground-truth pelvis
(also at test time, as upstream), scaled (x1e38, x10, /100), cropped to the box around the pelvis
and zero-padded or truncated (first rows) to 5184 points (`radar.preprocess_frame`).
"""

import pathlib
import re

import numpy as np

from posediff_jax.data import radar

# Upstream's label: SMPL-X joints in Human3.6M slot order (spec §4.1).
SMPLX_TO_H36M = (0, 1, 4, 7, 2, 5, 8, 6, 12, 15, 24, 16, 18, 20, 17, 19, 21)


def _read_npy_frame(path: str) -> np.ndarray:
  return np.load(path, allow_pickle=False)


def _sequence_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  dirs = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"sequence_\d+", p.name)]
  return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))


def _joints(path: pathlib.Path) -> np.ndarray:
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


def load_split(settings: radar.RadarSettings, split: str) -> radar.RadarSplit:
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
                      key=lambda p: radar.frame_number(p, r"frame_(\d+)\.npz"))
      if not meshes:
        raise FileNotFoundError(f"no mesh/frame_<k>.npz files in {seq_dir}")
      seq_id, num_sequences = num_sequences, num_sequences + 1
      for mesh in meshes:
        k = radar.frame_number(mesh, r"frame_(\d+)\.npz")
        radar_file = seq_dir / "radar" / f"frame_{k}.npy"
        if not radar_file.is_file():
          raise FileNotFoundError(f"radar frame {radar_file} (for {mesh}) not found")
        joints = _joints(mesh)
        targets.append(joints - joints[:1])
        pelvis.append(joints[0])
        files.append(str(radar_file))
        sequence.append(seq_id)
        position.append(k)
        scene.append(s)
  sequence_arr, position_arr = np.asarray(sequence), np.asarray(position)
  # Phase 1's windows: frames of the same recording (upstream tests which files exist).
  rows = radar.window_rows(sequence_arr, position_arr, settings.window_offsets,
                           settings.window_fallbacks)
  windows = radar.RawWindows(files, rows, np.asarray(pelvis), settings.preprocessing,
                             _read_npy_frame)
  return radar.RadarSplit(f"mmbody {split} (raw, {root})", np.asarray(targets, np.float32),
                          sequence_arr, np.asarray(scene, np.int32),
                          tuple(n for n, _ in folders), windows)
