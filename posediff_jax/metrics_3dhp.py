"""The official MPI-INF-3DHP test metric (PCK@150 mm, AUC, MPJPE), as its MATLAB code computes it.

A Python port of `mpii_evaluate_errors.m`, `mpii_compute_3d_pck.m` and
`mpii_get_pck_auc_joint_groups.m` (the 3DHP test kit that D3DP, FinePOSE and DSGDiffu ship), in
float64 numpy, so that no MATLAB/Octave run is needed (spec §7.5):

* per-joint errors e[17, n]: Euclidean distance in mm between root-relative poses (the pelvis,
  joint 14 of the "relevant" order, is the root), valid frames only;
* per sequence: MPJPE per joint (mean over frames) and their mean (pelvis included, error 0);
  PCK = 100 * fraction of e < 150 (strict) over 8 joint groups of 14 joints (pelvis, spine and head
  excluded), Total weighted by group size; AUC = 100 * mean over thresholds 0:5:150 (31 values) of
  the same fraction, Total from the size-weighted curve;
* per activity (1..7, frames of all sequences pooled) plus a frame-weighted "All" row; an activity
  without frames gives NaN;
* the paper numbers: the UNWEIGHTED mean over the sequences of PCK Total, AUC Total and MPJPE
  Average (not the frame-weighted "All" row).

Joint indices here are 0-based; the MATLAB groups are the same joints 1-based.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

from posediff_jax import skeleton

# The 17 "relevant" joints in MATLAB `mpii_get_joints('relevant')` order (also the data files').
MPI3DHP_JOINT_NAMES = ("head_top", "neck", "right_shoulder", "right_elbow", "right_wrist",
                       "left_shoulder", "left_elbow", "left_wrist", "right_hip", "right_knee",
                       "right_ankle", "left_hip", "left_knee", "left_ankle", "pelvis", "spine",
                       "head")
MPI3DHP_ROOT_JOINT = skeleton.MPI3DHP_ROOT_JOINT
NUM_JOINTS = len(MPI3DHP_JOINT_NAMES)

# `mpii_get_pck_auc_joint_groups.m`, 0-based.
PCK_GROUPS = (("Head", (0,)), ("Neck", (1,)), ("Shou", (2, 5)), ("Elbow", (3, 6)),
              ("Wrist", (4, 7)), ("Hip", (8, 11)), ("Knee", (9, 12)), ("Ankle", (10, 13)))
PCK_COLUMNS = tuple(name for name, _ in PCK_GROUPS) + ("Total",)
PCK_THRESHOLD_MM = 150.0
AUC_THRESHOLDS_MM = np.arange(0.0, 151.0, 5.0)  # 0:5:150, 31 values

# `mpii_get_activity_name.m`: activity ids 1..7.
ACTIVITY_NAMES = ("Standing/Walking", "Exercising", "Sitting", "Reaching/Crouching",
                  "On The Floor", "Sports", "Miscellaneous")


@dataclasses.dataclass(frozen=True)
class Mpi3dhpResults:
  """The MATLAB sequence-wise and activity-wise tables (float64; NaN for empty activities).

  Attributes:
    sequence_names: one name per sequence (MATLAB: 'TestSeq1', ...).
    frame_counts: [S] valid frames per sequence.
    seq_mpjpe: [S, 18] per-joint MPJPE (mm) in `MPI3DHP_JOINT_NAMES` order, then their mean.
    seq_pck: [S, 9] PCK@150 mm per `PCK_COLUMNS` (8 groups, then Total).
    seq_auc: [S, 9] AUC per `PCK_COLUMNS`.
    act_mpjpe: [8, 18] rows: activities 1..7 (`ACTIVITY_NAMES`), then "All".
    act_pck: [8, 9].
    act_auc: [8, 9].
  """
  sequence_names: tuple[str, ...]
  frame_counts: np.ndarray
  seq_mpjpe: np.ndarray
  seq_pck: np.ndarray
  seq_auc: np.ndarray
  act_mpjpe: np.ndarray
  act_pck: np.ndarray
  act_auc: np.ndarray

  @property
  def paper_pck(self) -> float:
    """PCK Total, unweighted mean over the sequences (the number papers report)."""
    return float(np.mean(self.seq_pck[:, -1]))

  @property
  def paper_auc(self) -> float:
    """AUC Total, unweighted mean over the sequences."""
    return float(np.mean(self.seq_auc[:, -1]))

  @property
  def paper_mpjpe(self) -> float:
    """MPJPE Average (mm), unweighted mean over the sequences."""
    return float(np.mean(self.seq_mpjpe[:, -1]))

  def to_dict(self) -> dict:
    """A JSON-ready summary: paper numbers, the "All" row and per-sequence totals."""
    return {
        "paper": {"pck": self.paper_pck, "auc": self.paper_auc, "mpjpe_mm": self.paper_mpjpe},
        "all_frames": {"pck": float(self.act_pck[-1, -1]), "auc": float(self.act_auc[-1, -1]),
                       "mpjpe_mm": float(self.act_mpjpe[-1, -1])},
        "sequences": {name: {"frames": int(n), "pck": float(pck[-1]), "auc": float(auc[-1]),
                             "mpjpe_mm": float(mpjpe[-1])}
                      for name, n, pck, auc, mpjpe in zip(self.sequence_names, self.frame_counts,
                                                          self.seq_pck, self.seq_auc,
                                                          self.seq_mpjpe)},
    }


def per_joint_errors(pred, gt, valid=None, *, root_joint: int = MPI3DHP_ROOT_JOINT) -> np.ndarray:
  """The [17, n] per-joint error array the metric consumes, from poses in mm.

  Both poses are made root-relative (MATLAB subtracts the pelvis from the GT; upstream's
  predictions already have the root at 0, so subtracting it again changes nothing).

  Args:
    pred: [N, 17, 3] predictions in mm, 3DHP "relevant" joint order.
    gt: [N, 17, 3] ground truth in mm (absolute or root-relative).
    valid: optional [N] mask of the frames to keep (bool, or 0/1 like `valid_frame`).
    root_joint: the root joint (14, pelvis).

  Returns:
    float64 [17, n] Euclidean errors, n = number of valid frames, in frame order.
  """
  pred = np.asarray(pred, np.float64)
  gt = np.asarray(gt, np.float64)
  if pred.ndim != 3 or pred.shape[1:] != (NUM_JOINTS, 3) or gt.shape != pred.shape:
    raise ValueError(f"pred and gt must both have shape [N, {NUM_JOINTS}, 3], got pred "
                     f"{pred.shape} and gt {gt.shape}")
  if not 0 <= root_joint < NUM_JOINTS:
    raise ValueError(f"root_joint must lie in [0, {NUM_JOINTS}), got {root_joint}")
  if valid is not None:
    valid = np.asarray(valid)
    if valid.shape != (pred.shape[0],):
      raise ValueError(f"valid must have shape [N] = ({pred.shape[0]},), got {valid.shape}")
    if valid.dtype != np.bool_:
      if not np.all((valid == 0) | (valid == 1)):
        raise ValueError("valid must be bool or hold only 0/1 values")
      valid = valid == 1
    pred, gt = pred[valid], gt[valid]
  pred = pred - pred[:, root_joint:root_joint + 1]
  gt = gt - gt[:, root_joint:root_joint + 1]
  return np.sqrt(np.sum((pred - gt) ** 2, axis=-1)).T


def _check_errors(errors, name: str) -> np.ndarray:
  errors = np.asarray(errors, np.float64)
  if errors.ndim != 2 or errors.shape[0] != NUM_JOINTS:
    raise ValueError(f"{name}: per-joint errors must have shape [{NUM_JOINTS}, n], got "
                     f"{errors.shape}")
  if np.any(~np.isfinite(errors)) or np.any(errors < 0):
    raise ValueError(f"{name}: per-joint errors must be finite and non-negative")
  return errors


def _mpjpe_row(errors: np.ndarray) -> np.ndarray:
  """[18]: per-joint mean over frames, then the mean of those (NaN without frames)."""
  if errors.shape[1] == 0:
    return np.full(NUM_JOINTS + 1, np.nan)
  per_joint = np.mean(errors, axis=1)
  return np.append(per_joint, np.mean(per_joint))


def _pck_auc_rows(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """([9] PCK, [9] AUC) with `mpii_compute_3d_pck.m`'s arithmetic (NaN without frames)."""
  num_frames = errors.shape[1]
  if num_frames == 0:
    return np.full(len(PCK_COLUMNS), np.nan), np.full(len(PCK_COLUMNS), np.nan)
  pck, auc = [], []
  pck_total = 0.0
  curve_total = np.zeros(len(AUC_THRESHOLDS_MM))
  joint_count = 0
  for _, joints in PCK_GROUPS:
    group = errors[list(joints)]
    denom = len(joints) * num_frames
    curve = np.array([np.sum(group < t) for t in AUC_THRESHOLDS_MM], np.float64) / denom
    auc.append(100 * np.sum(curve) / len(AUC_THRESHOLDS_MM))
    pck.append(100 * np.sum(group < PCK_THRESHOLD_MM) / denom)
    joint_count += len(joints)
    curve_total = curve_total + curve * len(joints)
    pck_total = pck_total + pck[-1] * len(joints)
  pck.append(pck_total / joint_count)
  auc.append(100 * np.sum(curve_total / joint_count) / len(AUC_THRESHOLDS_MM))
  return np.array(pck), np.array(auc)


def evaluate(sequence_errors: Sequence, sequence_activities: Sequence,
             sequence_names: Optional[Sequence[str]] = None) -> Mpi3dhpResults:
  """Both MATLAB tables from per-sequence per-joint errors (`mpii_evaluate_errors.m`).

  Args:
    sequence_errors: one [17, n_i] float array per test sequence (mm, valid frames only).
    sequence_activities: one [n_i] array of activity ids 1..7 per sequence.
    sequence_names: row names; default 'TestSeq1', 'TestSeq2', ... as in MATLAB.

  Returns:
    The `Mpi3dhpResults` tables.
  """
  if len(sequence_errors) == 0 or len(sequence_errors) != len(sequence_activities):
    raise ValueError(f"need one activity array per sequence and at least one sequence, got "
                     f"{len(sequence_errors)} error arrays and {len(sequence_activities)} "
                     "activity arrays")
  if sequence_names is None:
    sequence_names = tuple(f"TestSeq{i + 1}" for i in range(len(sequence_errors)))
  sequence_names = tuple(sequence_names)
  if len(sequence_names) != len(sequence_errors):
    raise ValueError(f"got {len(sequence_names)} sequence names for {len(sequence_errors)} "
                     "sequences")
  errors, activities = [], []
  for name, err, act in zip(sequence_names, sequence_errors, sequence_activities):
    err = _check_errors(err, f"sequence {name!r}")
    act = np.asarray(act).reshape(-1)
    if act.shape != (err.shape[1],):
      raise ValueError(f"sequence {name!r}: activities must have shape [n] = ({err.shape[1]},) "
                       f"like its errors, got {act.shape}")
    if act.size and (act.dtype.kind not in "iuf" or np.any(~np.isin(act, np.arange(1, 8)))):
      raise ValueError(f"sequence {name!r}: activity ids must be integers 1..7, got "
                       f"{np.unique(act).tolist()}")
    errors.append(err)
    activities.append(act.astype(np.int64))

  seq_rows = [(_mpjpe_row(err),) + _pck_auc_rows(err) for err in errors]
  all_errors = np.concatenate(errors, axis=1)
  all_activities = np.concatenate(activities)
  act_rows = []
  for activity in range(1, len(ACTIVITY_NAMES) + 1):
    subset = all_errors[:, all_activities == activity]
    act_rows.append((_mpjpe_row(subset),) + _pck_auc_rows(subset))
  act_rows.append((_mpjpe_row(all_errors),) + _pck_auc_rows(all_errors))
  return Mpi3dhpResults(
      sequence_names=sequence_names,
      frame_counts=np.array([err.shape[1] for err in errors], np.int64),
      seq_mpjpe=np.stack([r[0] for r in seq_rows]), seq_pck=np.stack([r[1] for r in seq_rows]),
      seq_auc=np.stack([r[2] for r in seq_rows]), act_mpjpe=np.stack([r[0] for r in act_rows]),
      act_pck=np.stack([r[1] for r in act_rows]), act_auc=np.stack([r[2] for r in act_rows]))


def _format_block(title: str, columns: Sequence[str], names: Sequence[str],
                  rows: np.ndarray, width: int) -> list[str]:
  name_width = max(len(title), *(len(n) for n in names))
  lines = [f"{title:<{name_width}} " + " ".join(f"{c:>{width}}" for c in columns)]
  for name, row in zip(names, rows):
    lines.append(f"{name:<{name_width}} " + " ".join(f"{v:>{width}.2f}" for v in row))
  return lines


def format_sequence_table(results: Mpi3dhpResults, detailed: bool = False) -> str:
  """The per-sequence table as text (no trailing newline).

  Args:
    results: from `evaluate`.
    detailed: also print the per-group PCK and AUC and the per-joint MPJPE blocks of the MATLAB
      sequence-wise CSV.

  Returns:
    One row per sequence (frames, PCK Total, AUC Total, MPJPE Average), then the paper numbers
    (unweighted mean over sequences) and the frame-weighted "All" row.
  """
  names = results.sequence_names
  name_width = max(len("Mean (paper)"), *(len(n) for n in names))
  header = f"{'Sequence':<{name_width}} {'frames':>7} {'PCK':>7} {'AUC':>7} {'MPJPE':>8}"
  lines = [header]
  for name, n, pck, auc, mpjpe in zip(names, results.frame_counts, results.seq_pck,
                                      results.seq_auc, results.seq_mpjpe):
    lines.append(f"{name:<{name_width}} {n:>7d} {pck[-1]:>7.2f} {auc[-1]:>7.2f} {mpjpe[-1]:>8.2f}")
  lines.append(f"{'Mean (paper)':<{name_width}} {'':>7} {results.paper_pck:>7.2f} "
               f"{results.paper_auc:>7.2f} {results.paper_mpjpe:>8.2f}")
  lines.append(f"{'All frames':<{name_width}} {int(np.sum(results.frame_counts)):>7d} "
               f"{results.act_pck[-1, -1]:>7.2f} {results.act_auc[-1, -1]:>7.2f} "
               f"{results.act_mpjpe[-1, -1]:>8.2f}")
  if detailed:
    lines.append("")
    lines += _format_block("PCK", PCK_COLUMNS, names, results.seq_pck, 6)
    lines.append("")
    lines += _format_block("AUC", PCK_COLUMNS, names, results.seq_auc, 6)
    lines.append("")
    # Joints as rows: 18 joint columns would make the lines unreadably wide.
    lines += _format_block("MPJPE (mm)", names, MPI3DHP_JOINT_NAMES + ("Average",),
                           results.seq_mpjpe.T, max(8, *(len(n) for n in names)))
  return "\n".join(lines)
