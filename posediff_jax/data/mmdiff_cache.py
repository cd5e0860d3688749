"""Upstream mmDiff's phase-2 cache (what its phase 1 writes; spec §4.1), read as a
`radar.RadarSplit` that already holds the phase-1 outputs.

`joint_gt_array_<s>.npy` (ground truth), `joint_pred_array_<s>.npy` (coarse poses),
`radar_feat_array_<s>.npy` (features), `radar_input_array_<s>.npy` (the current frame only; train
in `radar_input_array_train{0..4}` chunks), and with v1's layout `sequence_array_<s>.npy` and one
test split per scene (`test_<scene>`); `data.cache_layout` says which. Windows are rebuilt from
neighbouring rows. Arrays are memory-mapped; every value is checked as it is read.
"""

import pathlib

import numpy as np

from posediff_jax.data import radar


def _load_array(path: pathlib.Path, shape_tail: tuple, what: str) -> np.ndarray:
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


def load_split(settings: radar.RadarSettings, split: str) -> radar.RadarSplit:
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
    gt.append(_finite(_load_array(gt_path, (radar.NUM_JOINTS, 3), "ground truth"), gt_path))
    n = len(gt[-1])
    for store, name, what in ((pred, "joint_pred_array", "coarse poses"),
                              (feats, "radar_feat_array", "phase-1 features")):
      path = root / f"{name}_{suffix}.npy"
      array = _finite(_load_array(path, (), what), path)
      if array.ndim != 3 or array.shape[:2] != (n, radar.NUM_JOINTS):
        raise ValueError(f"{path}: expected {what} [{n}, {radar.NUM_JOINTS}, ...] to match "
                         f"{gt_path}, got {array.shape}")
      store.append(array)
    if settings.cache_layout == "v1":
      path = root / f"sequence_array_{suffix}.npy"
      ids = np.asarray(_load_array(path, (), "sequence ids"), np.int64).reshape(-1)
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
        array = _load_array(root / name, (), "cached radar frames")
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
    rows = radar.window_rows(ids, np.arange(len(sequence)), settings.window_offsets,
                             settings.window_fallbacks)
    windows = radar.CachedWindows(radar_chunks, rows, settings.preprocessing.channels)
  target = np.concatenate(gt)
  coarse = np.concatenate(pred)
  return radar.RadarSplit(f"{settings.dataset} {split} (cache, {root})", target - target[:, :1],
                          sequence, np.concatenate(scenes), tuple(n for n, _ in parts), windows,
                          coarse - coarse[:, :1], np.concatenate(feats))
