"""`evaluate.py --save_predictions FILE.npz`: every scored sample's prediction, target, labels and
errors, to analyse failures without writing library code.

A plain `.npz` (`np.load(FILE)` reads it; strings are unicode arrays, no pickles), one row per
sample the tables count, in evaluation order. Poses are root-relative camera-frame metres
`[N, J, 3]`; errors are millimetres `[N]`. Every layout has `layout` ('frames', 'clips' or
'radar'), `family`, `target` and:

- frames (DiffPose, ICASSP'24), one row per test frame: `pred` (the sampler's output, the mean
  over its hypotheses), `mpjpe_mm`, `p_mpjpe_mm`, `subject` ('S9'), `action` (the class,
  'Directions'), `sequence` (the file's name, 'Directions 1'), `camera` (0-3), `frame` (index in
  the sequence).
- clips (D3DP, FinePOSE, DSGDiffu), one row per frame of every evaluated clip (a frame in two
  clips appears twice, as the tables count it): `hypotheses` `[N, H, J, 3]` (the last DDIM step),
  for each aggregation mode M of `eval.modes` `pred_M` `[N, J, 3]` and `mpjpe_mm_M`,
  `p_mpjpe_mm_M` (the last step's errors as the tables count them: J-Best and J-Agg P2 average
  per-joint Procrustes errors, as upstream), and `subject`, `action` (class), `sequence` (the
  video's action name; MPI-INF-3DHP: the sequence, 'TS1'), `camera`, `frame` (index in the video),
  `clip` (running clip number), `batch` (the evaluation mini-batch, P-Best's unit), `real` (False
  on frames edge-padded past a short video's end) and `valid` (MPI-INF-3DHP's valid-frame flag,
  the frames its metric scores; True elsewhere).
- radar (mmDiff), one row per test frame: `pred` (refined), `coarse` (phase 1), `mpjpe_mm`,
  `p_mpjpe_mm`, `coarse_mpjpe_mm`, `coarse_p_mpjpe_mm`, `scene`, `sequence` (the recording's id)
  and `index` (row in the split).
"""

import pathlib
from typing import Any

import numpy as np


class Collector:
  """Gathers per-batch arrays (`add`) and writes them as one `.npz` (`save`)."""

  def __init__(self, layout: str, family: str):
    self.layout = layout
    self.family = family
    self._parts: dict[str, list[np.ndarray]] = {}

  def add(self, **columns) -> None:
    """Appends one batch: each column an array whose first axis is the batch's rows."""
    lengths = {len(np.asarray(v)) for v in columns.values()}
    if len(lengths) > 1:
      raise ValueError(f"predictions: columns of one batch differ in length: "
                       f"{ {k: len(np.asarray(v)) for k, v in columns.items()} }")
    for name, value in columns.items():
      self._parts.setdefault(name, []).append(np.asarray(value))

  def arrays(self) -> dict[str, Any]:
    out = {"layout": np.asarray(self.layout), "family": np.asarray(self.family)}
    for name, parts in self._parts.items():
      array = np.concatenate(parts)
      if array.dtype.kind == "O":
        array = array.astype(str)
      out[name] = array.astype(np.float32) if array.dtype == np.float64 else array
    return out

  def save(self, path) -> pathlib.Path:
    """Writes the file (numpy's own uncompressed `.npz`; the folder is created)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: numpy would add '.npz' to another name
      np.savez(f, **self.arrays())
    return path
