"""mm-Fi's own layout (TI IWR6843), read as a `radar.RadarSplit`.

`root/E0x/Sxx/Axx/{mmwave/frame<NNN>.bin float64 [n, 5], ground_truth.npy [297, 17, 3]}`,
protocol-1 actions (`data.protocol_actions`), cross-subject split (`data.test_subjects` test, all
other subjects found train); the window repeats the current frame (see the config), padded or
truncated to 150 points; no centring, scaling or cropping (HEAD).
"""

import pathlib
import re

import numpy as np

from posediff_jax.data import radar

CHANNELS = 5  # x, y, z, doppler, intensity


def _read_bin_frame(path: str) -> np.ndarray:
  raw = pathlib.Path(path).read_bytes()
  if len(raw) % (8 * CHANNELS):
    raise ValueError(f"radar frame {path}: {len(raw)} bytes is not a whole number of float64 "
                     f"points of {CHANNELS} values")
  return np.frombuffer(raw, np.float64).reshape(-1, CHANNELS)


def environment(subject: str) -> str:
  """Upstream `get_scene`: S01-S10 were recorded in E01, S11-S20 in E02, and so on."""
  number = int(subject[1:])
  if not subject.startswith("S") or not 1 <= number <= 40:
    raise ValueError(f"mm-Fi subjects are S01..S40, got {subject!r}")
  return f"E{(number - 1) // 10 + 1:02d}"


def load_split(settings: radar.RadarSettings, split: str) -> radar.RadarSplit:
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
        if gt.ndim != 3 or gt.shape[1:] != (radar.NUM_JOINTS, 3) or not np.all(np.isfinite(gt)):
          raise ValueError(f"{gt_path}: expected finite joints [T, {radar.NUM_JOINTS}, 3], got "
                           f"{gt.shape}")
        frames = sorted((action / "mmwave").glob("frame*.bin"))
        if not frames:
          raise FileNotFoundError(f"no mmwave/frame<NNN>.bin files in {action}")
        if env.name not in scene_names:
          scene_names.append(env.name)
        seq_id, num_sequences = num_sequences, num_sequences + 1
        for frame in frames:
          k = radar.frame_number(frame, r"frame(\d+)\.bin") - 1
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
  rows = radar.window_rows(sequence_arr, position, settings.window_offsets,
                           settings.window_fallbacks)
  windows = radar.RawWindows(files, rows, None, settings.preprocessing, _read_bin_frame)
  return radar.RadarSplit(f"mmfi {split} (raw, {root})", np.asarray(targets, np.float32),
                          sequence_arr, np.asarray(scene, np.int32), tuple(scene_names), windows)
