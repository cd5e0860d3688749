"""`python -m posediff_jax.data.prepare_h36m`: VideoPose3D's files from tiny sources in both layouts
(Human3.6M `.cdf` written with cdflib's writer, 3d-pose-baseline `.h5` + cameras.h5 written with
h5py), and the one-kernel GMM files.

The 2D written is checked against an independent projection of the written 3D through the written
cameras (3d-pose-baseline's formula on a cameras.h5 made from the calibration table), the names
against VideoPose3D's renames and drops, the frame counts against the sources.
"""

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from posediff_jax import cameras
from posediff_jax import skeleton
from posediff_jax import safe_load
from posediff_jax.data import h36m
from posediff_jax.data import prepare_h36m
from tests.conftest import REPO_ROOT

cdfwrite = pytest.importorskip("cdflib.cdfwrite")
h5py = pytest.importorskip("h5py")

# Source file names -> frames. S9 lacks most actions and one Photo/WalkDog file each; S11's
# 'Directions' is VideoPose3D's dropped sequence.
SOURCE = {
    "S9": {"Directions 1": 5, "Directions": 4, "TakingPhoto": 3, "WalkingDog 1": 6},
    "S11": {"Directions": 3, "Directions 1": 4},
}
EXPECTED_NAMES = {"S9": {"Directions 1", "Directions", "Photo", "WalkDog 1"},
                  "S11": {"Directions 1"}}


def _poses_mm(frames: int, seed: int) -> np.ndarray:
  """[T, 32, 3] world millimetres inside the capture area, in front of every camera."""
  rng = np.random.default_rng(seed)
  low, high = np.array([-600.0, -600.0, 50.0]), np.array([600.0, 600.0, 1800.0])
  return rng.uniform(low, high, size=(frames, 32, 3))


def _sources():
  pairs = [(s, name, t) for s, names in SOURCE.items() for name, t in names.items()]
  return {(s, name): _poses_mm(t, seed=i) for i, (s, name, t) in enumerate(pairs)}


def _rotation(q) -> np.ndarray:
  """Camera -> world rotation matrix of a unit quaternion (w, x, y, z)."""
  w, x, y, z = q
  return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                   [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                   [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _baseline_cameras(subject: str) -> list[dict]:
  """The table's cameras as 3d-pose-baseline's cameras.h5 holds them (R camera -> world, i.e.
  transposed; T in mm; p in the order of its `project_point_radial`)."""
  out = []
  for cam in cameras.h36m_cameras(subject):
    p1, p2 = cam.tangential_distortion
    out.append({"R": _rotation(cam.orientation),
                "T": np.asarray(cam.translation, np.float64)[:, None] * 1000,
                "f": np.asarray(cam.focal_length, np.float64)[:, None],
                "c": np.asarray(cam.center, np.float64)[:, None],
                "k": np.asarray(cam.radial_distortion, np.float64)[:, None],
                "p": np.array([[p2], [p1]]),
                "Name": np.array([ord(ch) for ch in cam.id], np.uint8)})
  return out


def _project_baseline(points_mm, cam) -> np.ndarray:
  """3d-pose-baseline's project_point_radial, written out independently of the module."""
  x = cam["R"].T @ (points_mm.reshape(-1, 3).T - cam["T"])
  xx = x[:2] / x[2]
  r2 = (xx ** 2).sum(0)
  k, p = cam["k"][:, 0], cam["p"][:, 0]
  radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
  tan = p[0] * xx[1] + p[1] * xx[0]
  proj = cam["f"] * (xx * (radial + tan) + np.outer([p[1], p[0]], r2)) + cam["c"]
  return proj.T.reshape(points_mm.shape[:-1] + (2,))


def _write_cdf_source(root, poses):
  for (subject, name), mm in poses.items():
    folder = root / subject / "MyPoseFeatures" / "D3_Positions"
    folder.mkdir(parents=True, exist_ok=True)
    writer = cdfwrite.CDF(str(folder / f"{name}.cdf"))
    writer.write_var({"Variable": "Pose", "Data_Type": cdfwrite.CDF.CDF_DOUBLE,
                      "Num_Elements": 1, "Rec_Vary": True, "Dim_Sizes": [len(mm), 96]},
                     var_data=mm.reshape(1, len(mm), 96))
    writer.close()


def _write_h5_source(root, poses):
  base = root / "h36m"
  for (subject, name), mm in poses.items():
    folder = base / subject / "MyPoses" / "3D_positions"
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{name}.h5", "w") as f:
      # 3d-pose-baseline stores [96, T]: joint-major coordinates, frames last.
      f["3D_positions"] = mm.reshape(len(mm), 96).T
  with h5py.File(base / "cameras.h5", "w") as f:
    for subject in SOURCE:
      for index, cam in enumerate(_baseline_cameras(subject)):
        for key, value in cam.items():
          f[f"subject{int(subject[1:])}/camera{index + 1}/{key}"] = value
  return base


def _check_outputs(out, poses):
  positions_3d = safe_load.load_pickled_npz(out / prepare_h36m.OUTPUT_3D)["positions_3d"]
  members_2d = safe_load.load_pickled_npz(out / prepare_h36m.OUTPUT_2D)
  positions_2d = members_2d["positions_2d"]
  assert {s: set(a) for s, a in positions_3d.items()} == EXPECTED_NAMES
  assert {s: set(a) for s, a in positions_2d.items()} == EXPECTED_NAMES
  assert members_2d["metadata"] == {"num_joints": 17, "keypoints_symmetry": [
      [4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
  renamed = {("S9", "Photo"): "TakingPhoto", ("S9", "WalkDog 1"): "WalkingDog 1"}
  for subject, actions in positions_3d.items():
    calibration = _baseline_cameras(subject)
    for name, world in actions.items():
      mm = poses[(subject, renamed.get((subject, name), name))]
      assert world.dtype == np.float32 and world.shape == mm.shape
      np.testing.assert_allclose(world, mm / 1000, rtol=1e-6)
      per_camera = positions_2d[subject][name]
      assert len(per_camera) == 4
      for index, pixels in enumerate(per_camera):
        assert pixels.dtype == np.float32 and pixels.shape == (len(mm), 17, 2)
        expected = _project_baseline(world[:, skeleton.H36M32_TO_17].astype(np.float64) * 1000,
                                     calibration[index])
        np.testing.assert_allclose(pixels, expected, atol=2e-3)
  return positions_3d, positions_2d


def test_cdf_source_gives_videopose3d_files(tmp_path):
  poses = _sources()
  _write_cdf_source(tmp_path / "src", poses)
  lines = []
  result = prepare_h36m.prepare(tmp_path / "src", tmp_path / "out", subjects=("S9", "S11"),
                                log=lines.append)
  assert result["layout"] == "cdf" and result["camera_check"] is None
  assert result["dropped"] == [("S11", "Directions")]
  # Every action S9 lacks is listed, with how many of its 2 sequences were found.
  assert any(line.startswith("S9: ") and "Photo (1 of 2)" in line and "Eating (0 of 2)" in line
             for line in result["missing"])
  assert not any("Directions" in line for line in result["missing"])
  assert any("left out S11 'Directions'" in line for line in lines)
  _check_outputs(tmp_path / "out", poses)
  # The project's readers take the files as they are.
  videos = h36m.load_h36m_videos(tmp_path / "out" / prepare_h36m.OUTPUT_3D,
                                 tmp_path / "out" / prepare_h36m.OUTPUT_2D, ("S9", "S11"))
  assert len(videos) == 4 * 5
  with pytest.raises(FileExistsError, match="--overwrite"):
    prepare_h36m.prepare(tmp_path / "src", tmp_path / "out", subjects=("S9",), log=lambda _: 0)


def test_h5_source_folder_and_zip_give_the_same_files_and_the_cli_reports(tmp_path):
  poses = _sources()
  base = _write_h5_source(tmp_path / "src", poses)
  proc = subprocess.run(
      [sys.executable, "-m", "posediff_jax.data.prepare_h36m", "--source", str(tmp_path / "src"),
       "--out", str(tmp_path / "out"), "--subjects", "S9,S11"],
      cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "missing S9: " in proc.stdout and "cameras.h5 agrees" in proc.stdout, proc.stdout
  positions_3d, positions_2d = _check_outputs(tmp_path / "out", poses)

  archive = tmp_path / "h36m.zip"
  with zipfile.ZipFile(archive, "w") as z:
    for path in sorted(base.rglob("*")):
      if path.is_file():
        z.write(path, "h36m/" + str(path.relative_to(base)))
  result = prepare_h36m.prepare(archive, tmp_path / "from_zip", subjects=("S9", "S11"),
                                log=lambda _: 0)
  assert result["layout"] == "h5" and result["camera_check"] < 1e-3
  again_3d, again_2d = _check_outputs(tmp_path / "from_zip", poses)
  for subject, actions in positions_3d.items():
    for name in actions:
      np.testing.assert_array_equal(again_3d[subject][name], positions_3d[subject][name])
      for a, b in zip(again_2d[subject][name], positions_2d[subject][name]):
        np.testing.assert_array_equal(a, b)


def test_a_camera_file_that_disagrees_is_reported(tmp_path):
  poses = {k: v for k, v in _sources().items() if k[0] == "S9"}
  base = _write_h5_source(tmp_path / "src", poses)
  with h5py.File(base / "cameras.h5", "r+") as f:
    # Stored untransposed (the mistake 3d-pose-baseline's R.T guards against).
    rotation = f["subject9/camera2/R"][()]
    del f["subject9/camera2/R"]
    f["subject9/camera2/R"] = rotation.T
  lines = []
  result = prepare_h36m.prepare(base, tmp_path / "out", subjects=("S9",), log=lines.append)
  assert result["camera_check"] > 1
  assert any(line.startswith("warning:") and "S9 camera 2" in line for line in lines)


def test_missing_libraries_and_bad_sources_are_one_line_errors(tmp_path, monkeypatch):
  poses = {k: v for k, v in _sources().items() if k == ("S9", "Directions 1")}
  _write_h5_source(tmp_path / "src", poses)
  monkeypatch.setitem(sys.modules, "h5py", None)
  with pytest.raises(ValueError, match="needs h5py: pip install -r requirements-prepare.txt"):
    prepare_h36m.prepare(tmp_path / "src", tmp_path / "out", log=lambda _: 0)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="found neither Human3.6M D3_Positions files"):
    prepare_h36m.prepare(tmp_path / "empty", tmp_path / "out", log=lambda _: 0)
  with pytest.raises(ValueError, match="S2, S3 and S4 have no published cameras"):
    prepare_h36m.prepare(tmp_path / "src", tmp_path / "out", subjects=("S2",), log=lambda _: 0)


def test_gmm_file_from_plain_2d(tmp_path):
  poses = _sources()
  _write_cdf_source(tmp_path / "src", poses)
  prepare_h36m.prepare(tmp_path / "src", tmp_path, subjects=("S9", "S11"), log=lambda _: 0)
  plain = tmp_path / prepare_h36m.OUTPUT_2D
  gmm_path = tmp_path / "data_2d_h36m_gt_gmm.npz"
  proc = subprocess.run(
      [sys.executable, "-m", "posediff_jax.data.prepare_h36m", "gmm", "--input", str(plain),
       "--variance", "4", "--out", str(gmm_path)],
      cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "stored as 0.004" in proc.stdout, proc.stdout

  gmm, metadata = h36m.load_positions_2d(gmm_path)
  pixels, _ = h36m.load_positions_2d(plain)
  assert metadata["gmm_variance_px2"] == 4.0 and "normalised" in metadata["gmm_var_unit"]
  for subject, actions in gmm.items():
    for name, per_camera in actions.items():
      for array, plain_array in zip(per_camera, pixels[subject][name]):
        assert array.shape == plain_array.shape[:2] + (1, 5)
        np.testing.assert_array_equal(array[..., 0, 0], 1)
        np.testing.assert_array_equal(array[..., 0, 1:3], plain_array[..., 0, 1:3])
        # sqrt(4 px²) = 2 px = 2 * 2 / 1000 normalised units on the 1000-pixel-wide cameras.
        np.testing.assert_allclose(array[..., 0, 3:5], 0.004, rtol=1e-6)
  # The GMM file is the plain file read with data.plain_2d_var = 0.004.
  three_d = tmp_path / prepare_h36m.OUTPUT_3D
  from_gmm = h36m.load_frame_set(three_d, gmm_path, ("S9",))
  from_plain = h36m.load_frame_set(three_d, plain, ("S9",), plain_2d_var=0.004)
  np.testing.assert_allclose(from_gmm.gmm_2d, from_plain.gmm_2d, rtol=1e-6)
  with pytest.raises(FileExistsError):
    prepare_h36m.write_gmm(plain, gmm_path, 4.0)
  with pytest.raises(ValueError, match="variance in pixels"):
    prepare_h36m.write_gmm(plain, tmp_path / "x.npz", -1.0)
