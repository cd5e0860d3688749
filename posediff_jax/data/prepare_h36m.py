r"""Human3.6M data preparation: VideoPose3D's `data_3d_h36m.npz` and `data_2d_h36m_gt.npz`, and
DiffPose-style one-kernel GMM files from any plain 2D file.

  python -m posediff_jax.data.prepare_h36m --source DIR --out DIR [--subjects S9,S11]
  python -m posediff_jax.data.prepare_h36m gmm --input data_2d_h36m_cpn_ft_h36m_dbb.npz \
      --variance 4 --out data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz

**3D and ground-truth 2D** (VideoPose3D `data/prepare_data_h36m.py` and `common/h36m_dataset.py`,
reproduced here so that it runs with current h5py and without every original file). `--source` is
one of:

- the original Human3.6M poses (`Poses_D3_Positions_S*.tgz` extracted):
  `DIR/S1/MyPoseFeatures/D3_Positions/Directions 1.cdf`, ... (read with `cdflib`: variable `Pose`,
  `[1, T, 96]` millimetres);
- 3d-pose-baseline's `h36m.zip`, extracted or not: `DIR/S1/MyPoses/3D_positions/Directions 1.h5`,
  ... (dataset `3D_positions`, `[96, T]` millimetres) and `DIR/cameras.h5` (read with `h5py`); a
  `DIR/h36m/` folder or the zip itself are found too.

What VideoPose3D does, and this does too:

- subjects S1, S5, S6, S7, S8, S9, S11 (the ones with published cameras);
- the sequence name is the file name without its extension; `TakingPhoto` and `WalkingDog` become
  `Photo` and `WalkDog` (VideoPose3D's `str.replace`, so `TakingPhoto 1` -> `Photo 1`);
- S11 `Directions` (not `Directions 1`) is dropped: its video is corrupted;
- every frame is kept, at the poses' 50 Hz (the video rate; nothing is subsampled);
- 3D: `[T, 32, 3]` world coordinates, millimetres / 1000 in the file's dtype, stored as float32;
- 2D: the 17 joints of `remove_joints` (`skeleton.H36M32_TO_17`) of each frame, moved into each
  of the subject's 4 cameras (`cameras.h36m_cameras`, VideoPose3D's calibration table), projected
  with the camera's radial and tangential distortion (`cameras.project_to_2d` with the normalised
  intrinsic vector, then `cameras.image_coordinates`), float32 pixels; `metadata` is
  `{'num_joints': 17, 'keypoints_symmetry': [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}`.

Where this differs: VideoPose3D asserts that all 30 files of every subject are present; here a
missing sequence is listed (per subject and action, 2 sequences each) and the rest is written. Its
dict order is the file system's; here sequences are in the order of their sorted file names
(the order only changes which frames share an evaluation batch). `cameras.h5`, when present, is
read (its rotation is stored transposed: world -> camera is `R.T @ (X - T)`) and checked against
the table by projecting every sequence's first frame with it (3d-pose-baseline's
`project_point_radial`): more than 1 pixel apart is reported.

**GMM files.** DiffPose reads 2D as a Gaussian mixture per joint, `[T, 17, K, 5]` of (weight,
u, v, var_u, var_v) with u, v in pixels (`data/h36m.py`). `gmm` writes one kernel of weight 1 at
each plain 2D point. The file's var channels are not variances in pixels²: DiffPose's training
(and ours, `families/diffpose.py`) multiplies unit Gaussian noise on the *normalised* u, v
(`cameras.normalize_screen_coordinates`, 2 / res_w per pixel) by them. So `--variance V` (pixels²)
is stored as the standard deviation it stands for in those units, `sqrt(V) * 2 / res_w` (0.004
for V = 4 on the 1000-pixel-wide Human3.6M cameras), which is also what `data.plain_2d_var`
means for a plain file read directly. The metadata records V and that unit.

`h5py` and `cdflib` are needed only here: `pip install -r requirements-prepare.txt`.
"""

import argparse
import io
import math
import os
import pathlib
import sys
import zipfile
from typing import Any, Callable, Iterable

import numpy as np

from posediff_jax import cameras
from posediff_jax import skeleton
from posediff_jax.data import h36m
from posediff_jax.data import npz

SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")
OUTPUT_3D = "data_3d_h36m.npz"
OUTPUT_2D = "data_2d_h36m_gt.npz"
# VideoPose3D's renames, applied with str.replace as it does.
RENAMES = (("TakingPhoto", "Photo"), ("WalkingDog", "WalkDog"))
# (subject, sequence) -> why VideoPose3D leaves it out.
DROPPED = {("S11", "Directions"): "its video is corrupted"}
SEQUENCES_PER_ACTION = 2
NUM_JOINTS_32 = 32
METADATA = {"num_joints": skeleton.NUM_JOINTS,
            "keypoints_symmetry": [list(skeleton.H36M_LEFT), list(skeleton.H36M_RIGHT)]}
# cameras.h5 projections further than this from ours are reported (pixels).
CAMERA_CHECK_PIXELS = 1.0
_INSTALL = "pip install -r requirements-prepare.txt"


def _import_h5py():
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"reading 3d-pose-baseline .h5 files needs h5py: {_INSTALL} (or pip "
                     "install h5py)") from None
  return h5py


def _import_cdflib():
  try:
    import cdflib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"reading Human3.6M .cdf files needs cdflib: {_INSTALL} (or pip install "
                     "cdflib)") from None
  return cdflib


def canonical_name(name: str) -> str:
  """A file's sequence name as VideoPose3D stores it ('TakingPhoto 1' -> 'Photo 1')."""
  for old, new in RENAMES:
    name = name.replace(old, new)
  return name


# ---------------------------------------------------------------------------------------------
# Finding the source files.


class _Source:
  """The pose files of one source layout: `files[subject]` = [(sequence name, opener)], where
  `opener()` returns a path or a file object, plus the optional cameras.h5 opener."""

  def __init__(self, kind: str, where: str):
    self.kind = kind  # "cdf" or "h5"
    self.where = where
    self.files: dict[str, list[tuple[str, str, Callable[[], Any]]]] = {}
    self.cameras: Callable[[], Any] | None = None
    self.cameras_where = ""


def _from_folder(root: pathlib.Path) -> _Source | None:
  for base in (root, root / "h36m"):
    for kind, pattern in (("cdf", "MyPoseFeatures/D3_Positions/*.cdf"),
                          ("h5", "MyPoses/3D_positions/*.h5")):
      found = {s: sorted(base.glob(f"{s}/{pattern}")) for s in SUBJECTS}
      if not any(found.values()):
        continue
      source = _Source(kind, str(base))
      for subject, paths in found.items():
        source.files[subject] = [(p.name, str(p), lambda p=p: p) for p in paths]
      if kind == "h5" and (base / "cameras.h5").is_file():
        source.cameras = lambda path=base / "cameras.h5": path
        source.cameras_where = str(base / "cameras.h5")
      return source
  return None


def _from_zip(path: pathlib.Path) -> _Source | None:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
  source = _Source("h5", str(path))

  def opener(member):
    def read():
      with zipfile.ZipFile(path) as archive:
        return io.BytesIO(archive.read(member))
    return read

  for member in sorted(names):
    parts = pathlib.PurePosixPath(member).parts
    if parts and parts[0] == "h36m":
      parts = parts[1:]
    if len(parts) == 1 and parts[0] == "cameras.h5":
      source.cameras, source.cameras_where = opener(member), f"{path}:{member}"
    elif (len(parts) == 4 and parts[0] in SUBJECTS and parts[1:3] == ("MyPoses", "3D_positions")
          and parts[3].endswith(".h5")):
      source.files.setdefault(parts[0], []).append((parts[3], f"{path}:{member}",
                                                    opener(member)))
  return source if source.files else None


def find_source(source) -> _Source:
  """The source layout at `source` (module docstring); a ValueError says what was expected."""
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(f"--source {path}: no such file or folder")
  found = (_from_zip(path) if path.is_file() and zipfile.is_zipfile(path)
           else _from_folder(path) if path.is_dir() else None)
  if found is None:
    raise ValueError(f"--source {path}: found neither Human3.6M D3_Positions files "
                     "(S1/MyPoseFeatures/D3_Positions/*.cdf) nor 3d-pose-baseline files "
                     "(S1/MyPoses/3D_positions/*.h5, also under h36m/ or in h36m.zip)")
  return found


# ---------------------------------------------------------------------------------------------
# Reading.


def _metres(millimetres: np.ndarray, where: str) -> np.ndarray:
  """mm -> m in the file's float dtype, as VideoPose3D's `positions /= 1000`, then float32."""
  if not np.issubdtype(millimetres.dtype, np.floating):
    millimetres = millimetres.astype(np.float64)
  npz.check_finite(millimetres, where)
  return (millimetres / millimetres.dtype.type(1000)).astype(np.float32)


def read_cdf(path) -> np.ndarray:
  """A D3_Positions `.cdf` file -> float32 `[T, 32, 3]` metres."""
  cdflib = _import_cdflib()
  try:
    pose = np.asarray(cdflib.CDF(str(path)).varget("Pose"))
  except Exception as e:  # cdflib raises assorted types on damaged or foreign files
    raise ValueError(f"{path}: not a readable Human3.6M CDF file with a 'Pose' variable "
                     f"({type(e).__name__}: {e})") from None
  if pose.size == 0 or pose.size % (NUM_JOINTS_32 * 3):
    raise ValueError(f"{path}: 'Pose' has shape {pose.shape}; expected [1, T, 96] "
                     "(32 joints x 3 coordinates per frame)")
  return _metres(pose.reshape(-1, NUM_JOINTS_32, 3), str(path))


def read_h5(opened, where: str) -> np.ndarray:
  """A 3d-pose-baseline `3D_positions/*.h5` file -> float32 `[T, 32, 3]` metres."""
  h5py = _import_h5py()
  try:
    with h5py.File(opened, "r") as hf:
      if "3D_positions" not in hf:
        raise ValueError(f"{where}: no '3D_positions' dataset; the file has {sorted(hf)}")
      data = np.asarray(hf["3D_positions"][()])
  except OSError as e:
    raise ValueError(f"{where}: not a readable HDF5 file ({e})") from None
  if data.ndim != 2 or data.shape[0] != NUM_JOINTS_32 * 3:
    raise ValueError(f"{where}: '3D_positions' has shape {data.shape}; expected [96, T] "
                     "(32 joints x 3 coordinates, frames last)")
  return _metres(data.reshape(NUM_JOINTS_32, 3, -1).transpose(2, 0, 1), where)


def read_cameras_h5(opened, where: str, subjects: Iterable[str]) -> dict[str, list[dict]]:
  """cameras.h5 -> {subject: [4 x {'R' world->camera [3, 3], 'T' [3] mm, 'f', 'c', 'k', 'p'}]}.

  3d-pose-baseline's `load_camera_params`: group `subject<n>/camera<m>/`; R is stored transposed
  (the file holds camera -> world), so world -> camera is `R.T @ (X - T)`.
  """
  h5py = _import_h5py()
  out = {}
  try:
    with h5py.File(opened, "r") as hf:
      for subject in subjects:
        number = int(subject[1:])
        out[subject] = []
        for index in range(h36m.NUM_CAMERAS):
          group = f"subject{number}/camera{index + 1}"
          if group not in hf:
            raise ValueError(f"{where}: no group {group!r}")
          values = {k: np.asarray(hf[f"{group}/{k}"][()], np.float64)
                    for k in ("R", "T", "f", "c", "k", "p")}
          expected = {"R": (3, 3), "T": (3,), "f": (2,), "c": (2,), "k": (3,), "p": (2,)}
          for k, shape in expected.items():
            if values[k].size != math.prod(shape):
              raise ValueError(f"{where}: {group}/{k} has shape {values[k].shape}, expected "
                               f"{shape} (or a column)")
            values[k] = values[k].reshape(shape)
          values["R"] = values["R"].T
          out[subject].append(values)
  except OSError as e:
    raise ValueError(f"{where}: not a readable HDF5 file ({e})") from None
  return out


def project_point_radial(points, camera: dict) -> np.ndarray:
  """3d-pose-baseline's `project_point_radial`: world mm `[N, 3]` -> pixels `[N, 2]`."""
  x = camera["R"] @ (np.asarray(points, np.float64).T - camera["T"][:, None])
  xx = x[:2] / x[2]
  r2 = xx[0] ** 2 + xx[1] ** 2
  k, p = camera["k"], camera["p"]
  radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
  tan = p[0] * xx[1] + p[1] * xx[0]
  distorted = xx * (radial + tan) + np.outer([p[1], p[0]], r2)
  return (camera["f"][:, None] * distorted + camera["c"][:, None]).T


# ---------------------------------------------------------------------------------------------
# The 2D of VideoPose3D's prepare script.


def project_gt_2d(world_32: np.ndarray, subject: str) -> list[np.ndarray]:
  """The 4 cameras' ground-truth 2D of one sequence, as VideoPose3D computes it.

  Args:
    world_32: float32 `[T, 32, 3]` world metres.
    subject: a subject with published cameras.

  Returns:
    4 float32 `[T, 17, 2]` pixel arrays, in `cameras.H36M_CAMERA_IDS` order.
  """
  world = np.asarray(world_32, np.float32)[:, skeleton.H36M32_TO_17]
  out = []
  for cam in cameras.h36m_cameras(subject):
    in_camera = np.asarray(cameras.world_to_camera(world, cam), np.float32)
    normalised = cameras.project_to_2d(in_camera, h36m.h36m_intrinsic(cam))
    out.append(cameras.image_coordinates(normalised, cam.res_w, cam.res_h).astype(np.float32))
  return out


def prepare(source, out, *, subjects=SUBJECTS, overwrite: bool = False,
            log: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes `data_3d_h36m.npz` and `data_2d_h36m_gt.npz` into `out` (module docstring).

  Args:
    source: the source folder (or 3d-pose-baseline's zip).
    out: the output folder (created).
    subjects: which of `SUBJECTS` to convert.
    overwrite: replace existing output files.
    log: where the report lines go.

  Returns:
    {'layout': 'cdf' | 'h5', 'written': {subject: [sequence names]}, 'missing': [lines],
    'dropped': [(subject, name)], 'skipped': [files], 'camera_check': None (no cameras.h5) or the
    largest difference in pixels, 'paths': (3D file, 2D file)}.

  Raises:
    ValueError: unknown subjects, nothing to convert, a damaged file, an output that exists.
  """
  subjects = tuple(subjects)
  unknown = [s for s in subjects if s not in SUBJECTS]
  if unknown or not subjects:
    raise ValueError(f"--subjects {','.join(subjects)}: expected some of {','.join(SUBJECTS)} "
                     "(S2, S3 and S4 have no published cameras)")
  out = pathlib.Path(out)
  paths = (out / OUTPUT_3D, out / OUTPUT_2D)
  existing = [str(p) for p in paths if p.exists()]
  if existing and not overwrite:
    raise FileExistsError(f"{', '.join(existing)} already exist(s); remove or pass --overwrite")
  found = find_source(source)
  log(f"reading {found.kind} files from {found.where}")

  positions_3d, positions_2d, missing, dropped, skipped = {}, {}, [], [], []
  for subject in subjects:
    files = found.files.get(subject, [])
    if not files:
      missing.append(f"{subject}: no files")
      continue
    counts = dict.fromkeys(h36m.ACTIONS, 0)
    sequences = {}
    for filename, where, opener in sorted(files):
      name = canonical_name(filename.rsplit(".", 1)[0])
      try:
        action = h36m.action_class(name)
      except ValueError:
        skipped.append(where)  # not a Human3.6M sequence (e.g. a stray copy)
        continue
      counts[action] += 1
      if (subject, name) in DROPPED:
        dropped.append((subject, name))
        continue
      if name in sequences:
        raise ValueError(f"{where}: a second file for {subject} {name!r} after renaming "
                         f"({dict(RENAMES)})")
      sequences[name] = read_cdf(opener()) if found.kind == "cdf" else read_h5(opener(), where)
    short = {a: n for a, n in counts.items() if n < SEQUENCES_PER_ACTION}
    if short:
      missing.append(f"{subject}: " + ", ".join(
          f"{a} ({n} of {SEQUENCES_PER_ACTION})" for a, n in short.items()))
    if sequences:
      positions_3d[subject] = sequences
      positions_2d[subject] = {name: project_gt_2d(world, subject)
                               for name, world in sequences.items()}
  if not positions_3d:
    raise ValueError(f"--source {found.where}: no sequences of subjects {', '.join(subjects)}")

  camera_check = None
  if found.cameras is not None:
    calibration = read_cameras_h5(found.cameras(), found.cameras_where, positions_3d)
    camera_check = 0.0
    for subject, sequences in positions_3d.items():
      for name, world in sequences.items():
        first = world[0, skeleton.H36M32_TO_17].astype(np.float64) * 1000
        for index, camera in enumerate(calibration[subject]):
          theirs = project_point_radial(first, camera)
          distance = float(np.abs(theirs - positions_2d[subject][name][index][0]).max())
          camera_check = max(camera_check, distance)
          if distance > CAMERA_CHECK_PIXELS:
            log(f"warning: {found.cameras_where}: {subject} camera {index + 1} puts {name!r} "
                f"frame 0 {distance:.2f} px from VideoPose3D's calibration table")

  out.mkdir(parents=True, exist_ok=True)
  npz.save_npz(paths[0], positions_3d=positions_3d)
  npz.save_npz(paths[1], positions_2d=positions_2d, metadata=dict(METADATA))
  written = {s: list(v) for s, v in positions_3d.items()}
  total = sum(len(v) for v in written.values())
  frames = sum(len(a) for v in positions_3d.values() for a in v.values())
  log(f"wrote {paths[0]} and {paths[1]}: {total} sequences, {frames} frames, subjects "
      f"{', '.join(written)}")
  for subject, name in dropped:
    log(f"left out {subject} {name!r}: {DROPPED[(subject, name)]} (as VideoPose3D)")
  for line in missing:
    log(f"missing {line}")
  for where in skipped:
    log(f"skipped {where}: not a Human3.6M action name")
  if camera_check is None:
    log("no cameras.h5 in the source: the calibration cross-check was skipped")
  else:
    log(f"cameras.h5 agrees with VideoPose3D's calibration to {camera_check:.3f} px")
  return {"layout": found.kind, "written": written, "missing": missing, "dropped": dropped,
          "skipped": skipped, "camera_check": camera_check, "paths": paths}


# ---------------------------------------------------------------------------------------------
# GMM files.


def gmm_scale(variance_px2: float, res_w: int) -> float:
  """The var-channel value for a pixel² variance: its standard deviation in normalised units."""
  return math.sqrt(variance_px2) * 2 / res_w


def write_gmm(input_path, out_path, variance_px2: float, *, overwrite: bool = False) -> dict:
  """A plain 2D file -> a one-kernel DiffPose GMM file (module docstring).

  Args:
    input_path: a VideoPose3D plain 2D `.npz` (`[T, 17, 2]` pixels per camera).
    out_path: the GMM `.npz` to write.
    variance_px2: the kernels' variance in pixels² (> 0), stored as `gmm_scale` of it.
    overwrite: replace an existing output.

  Returns:
    {'sequences': count, 'var': {camera index: the stored var value}}.
  """
  if not (math.isfinite(variance_px2) and variance_px2 > 0):
    raise ValueError(f"--variance {variance_px2}: expected a variance in pixels² > 0")
  out_path = pathlib.Path(out_path)
  if out_path.exists() and not overwrite:
    raise FileExistsError(f"{out_path} already exists; remove it or pass --overwrite")
  # The same checks as the video families' reader: [T, 17, 2] per camera, finite.
  # pylint: disable-next=protected-access
  plain, metadata = h36m._read_positions_2d(input_path, h36m._read_plain_camera_2d)
  widths = [cam.res_w for cam in cameras.h36m_cameras(cameras.H36M_CALIBRATED_SUBJECTS[0])]
  scales = {}
  positions = {}
  for subject, actions in plain.items():
    positions[subject] = {}
    for action, per_camera in actions.items():
      if len(per_camera) > len(widths):
        raise ValueError(f"{input_path}: positions_2d[{subject!r}][{action!r}] has "
                         f"{len(per_camera)} cameras, expected {len(widths)}")
      arrays = []
      for index, pixels in enumerate(per_camera):
        scales[index] = gmm_scale(variance_px2, widths[index])
        gmm = np.empty(pixels.shape[:2] + (1, h36m.GMM_CHANNELS), np.float32)
        gmm[..., 0, 0] = 1
        gmm[..., 0, 1:3] = pixels
        gmm[..., 0, 3:5] = scales[index]
        arrays.append(gmm)
      positions[subject][action] = arrays
  metadata = dict(metadata or METADATA)
  metadata.update(gmm_variance_px2=float(variance_px2),
                  gmm_var_unit="standard deviation of u and v in normalised screen units "
                               "(2 / res_w per pixel): sqrt(gmm_variance_px2) * 2 / res_w")
  out_path.parent.mkdir(parents=True, exist_ok=True)
  npz.save_npz(out_path, positions_2d=positions, metadata=metadata)
  return {"sequences": sum(len(a) for a in positions.values()), "var": scales}


# ---------------------------------------------------------------------------------------------
# Command line.


def _parse(argv: list[str]) -> argparse.Namespace:
  prog = "python -m posediff_jax.data.prepare_h36m"
  if argv[:1] == ["gmm"]:
    parser = argparse.ArgumentParser(
        prog=f"{prog} gmm", description="Write a one-kernel DiffPose GMM file from a plain 2D "
        "file (VideoPose3D layout).")
    parser.add_argument("--input", required=True, help="plain 2D .npz ([T, 17, 2] pixels)")
    parser.add_argument("--variance", required=True, type=float,
                        help="the kernels' variance in pixels² (stored as sqrt(V) * 2 / res_w, "
                             "the noise scale on normalised u, v)")
    parser.add_argument("--out", required=True, help="the GMM .npz to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv[1:])
    args.command = "gmm"
    return args
  parser = argparse.ArgumentParser(
      prog=prog, description="Write VideoPose3D's data_3d_h36m.npz and data_2d_h36m_gt.npz from "
      "the Human3.6M D3_Positions .cdf files or 3d-pose-baseline's h36m.zip layout. "
      f"Also: {prog} gmm --help.")
  parser.add_argument("--source", required=True, help="folder with S1/MyPoseFeatures/"
                      "D3_Positions/*.cdf, or S1/MyPoses/3D_positions/*.h5 (+ cameras.h5), or "
                      "h36m.zip")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--subjects", default=",".join(SUBJECTS),
                      help="comma-separated subjects (default: all seven)")
  parser.add_argument("--overwrite", action="store_true", help="replace existing files")
  args = parser.parse_args(argv)
  args.command = "prepare"
  return args


def main(argv=None) -> None:
  args = _parse(list(sys.argv[1:] if argv is None else argv))
  try:
    if args.command == "gmm":
      result = write_gmm(args.input, args.out, args.variance, overwrite=args.overwrite)
      stored = ", ".join(f"{v:.6g}" for v in sorted(set(result["var"].values())))
      print(f"wrote {args.out}: {result['sequences']} sequences, one kernel, variance "
            f"{args.variance:g} px² stored as {stored} (normalised standard deviation)")
    else:
      prepare(args.source, args.out,
              subjects=[s.strip() for s in args.subjects.split(",") if s.strip()],
              overwrite=args.overwrite)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    if os.environ.get("POSEDIFF_TRACEBACK") == "1":
      raise
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
