"""Tests for the synthetic Human3.6M-layout data generator."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from posediff_jax import cameras
from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.data.synthetic import body
from posediff_jax.data.synthetic import h36m as synthetic_h36m
from posediff_jax.data.synthetic import motion

from tests.conftest import REPO_ROOT

FRAMES = 24
KEPT = list(skeleton.H36M32_TO_17)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Every subject and action, short sequences, read back with the project's safe loader."""
  out = tmp_path_factory.mktemp("synthetic")
  paths = synthetic_h36m.generate(out, frames_per_sequence=FRAMES, seed=0)
  loaded = {key: safe_load.load_pickled_npz(path) for key, path in paths.items()}
  return paths, loaded


def _kept(positions_32):
  return positions_32[:, KEPT]


def test_file_names_and_keys(data):
  paths, loaded = data
  assert {k: p.name for k, p in paths.items()} == {
      "3d": "data_3d_h36m.npz", "2d_gt": "data_2d_h36m_gt.npz",
      "2d_gt_gmm": "data_2d_h36m_gt_gmm.npz",
      "2d_cpn_gmm": "data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz",
      "2d_cpn": "data_2d_h36m_cpn_ft_h36m_dbb.npz"}
  assert set(loaded["3d"]) == {"positions_3d"}
  assert set(loaded["2d_gt"]) == {"positions_2d", "metadata"}
  assert set(loaded["2d_gt_gmm"]) == {"positions_2d"}
  assert set(loaded["2d_cpn_gmm"]) == {"positions_2d"}
  assert loaded["2d_gt"]["metadata"] == {
      "layout_name": "h36m", "num_joints": 17,
      "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}


def test_layouts(data):
  _, loaded = data
  p3d = loaded["3d"]["positions_3d"]
  assert list(p3d) == ["S1", "S5", "S6", "S7", "S8", "S9", "S11"]
  names = list(p3d["S1"])
  assert len(names) == 15
  assert [n.split(" ")[0] for n in names] == list(motion.ACTIONS)
  assert {"Directions 1", "Eating 2", "Walking", "WalkDog", "SittingDown"} <= set(names)
  for subject, actions in p3d.items():
    assert list(actions) == names
    for name, pose in actions.items():
      assert pose.dtype == np.float32 and pose.shape == (FRAMES, 32, 3)
      assert np.isfinite(pose).all()
      gt = loaded["2d_gt"]["positions_2d"][subject][name]
      assert isinstance(gt, list) and len(gt) == 4
      assert all(a.dtype == np.float32 and a.shape == (FRAMES, 17, 2) for a in gt)
      for key in ("2d_gt_gmm", "2d_cpn_gmm"):
        gmm = loaded[key]["positions_2d"][subject][name]
        assert isinstance(gmm, list) and len(gmm) == 4
        for a in gmm:
          assert a.dtype == np.float32 and a.ndim == 4 and a.shape[1:] == (17, 3, 5)
          # The GT arrays match the 3D length; the CPN-like ones may run up to 2 frames longer.
          assert (a.shape[0] == FRAMES if key == "2d_gt_gmm"
                  else FRAMES <= a.shape[0] <= FRAMES + 2)
          np.testing.assert_array_equal(a[..., 0], np.broadcast_to([1.0, 0.0, 0.0], a.shape[:3]))
          assert a[..., 3:].min() >= 0.004 and a[..., 3:].max() <= 0.021


def test_the_32_joint_layout(data):
  _, loaded = data
  pose = loaded["3d"]["positions_3d"]["S5"]["Greeting"]
  parents = skeleton.H36M32_PARENTS
  dropped = [j for j in range(32) if j not in KEPT]
  assert len(dropped) == 15
  np.testing.assert_array_equal(pose[:, 11], pose[:, 0])  # lower spine at the hip
  np.testing.assert_array_equal(pose[:, 16], pose[:, 13])  # shoulder anchors at the thorax
  np.testing.assert_array_equal(pose[:, 24], pose[:, 13])
  for j in set(dropped) - {11, 16, 24}:
    # Toes and hand sites sit close to their parent in the 32-joint tree.
    distance = np.linalg.norm(pose[:, j] - pose[:, parents[j]], axis=-1)
    assert distance.max() < 0.16, j


def test_bone_lengths_constant_per_subject(data):
  _, loaded = data
  parents = np.array(skeleton.H36M_PARENTS[1:])
  for subject, actions in loaded["3d"]["positions_3d"].items():
    expected = body.subject_bone_lengths(subject, seed=0)
    for pose in actions.values():
      x = _kept(pose).astype(np.float64)
      lengths = np.linalg.norm(x[:, 1:] - x[:, parents], axis=-1)
      np.testing.assert_allclose(lengths, np.broadcast_to(expected[1:], lengths.shape), atol=2e-6)
    # Left and right limbs match; the subject is within 10% of the Human3.6M mean.
    np.testing.assert_array_equal(expected[list(skeleton.H36M_LEFT)],
                                  expected[list(skeleton.H36M_RIGHT)])
    ratio = expected[1:] / body.MEAN_BONE_LENGTHS[1:]
    assert 0.85 < ratio.min() and ratio.max() < 1.1
  s1, s9 = body.subject_bone_lengths("S1"), body.subject_bone_lengths("S9")
  assert not np.allclose(s1, s9)


def _cmu_dir() -> pathlib.Path:
  path = REPO_ROOT.parent / "shared" / "data" / "cmu_mocap"
  if not (path / "cmu_mocap_h36m17.npz").is_file():
    pytest.skip(f"CMU motion capture not found at {path} (a user's clone has no ../shared)")
  return path


def test_bone_lengths_and_motion_match_real_mocap(data):
  cmu = np.load(_cmu_dir() / "cmu_mocap_h36m17.npz")
  real = np.concatenate([cmu["01_01_h36m17"], cmu["11_01_h36m17"]])  # Y up
  parents = np.array(cmu["parents_h36m17"])[1:]
  real_lengths = np.linalg.norm(real[:, 1:] - real[:, parents], axis=-1).mean(0)
  _, loaded = data
  ours = np.mean([body.subject_bone_lengths(s) for s in body.SUBJECTS], axis=0)[1:]
  # The leg bones are where the CMU-to-H36M joint mapping is anatomically the same.
  for child in (1, 2, 3, 4, 5, 6):
    assert abs(ours[child - 1] / real_lengths[child - 1] - 1) < 0.15, child
  # Standing pelvis height and walking speed are those of real people.
  real_root_height = np.median(real[:, 0, 1])
  walk = _kept(motion.synthesize_sequence("S9", "Walking", 100))
  assert abs(np.median(walk[:, 0, 2]) / real_root_height - 1) < 0.15
  bvh = np.load(_cmu_dir() / "cmu_mocap_bvh_retargeted_h36m17.npz")
  real_walk = bvh["02_01_h36m17"]
  real_speed = np.linalg.norm(np.diff(real_walk[:, 0, [0, 2]], axis=0), axis=-1).mean() * 120
  speed = np.linalg.norm(np.diff(walk[:, 0, :2], axis=0), axis=-1).mean() * (
      motion.DEFAULT_FRAME_RATE_HZ)
  assert 0.7 < speed / real_speed < 1.3


def test_poses_are_human_and_in_view(data):
  _, loaded = data
  for subject, actions in loaded["3d"]["positions_3d"].items():
    for name, pose in actions.items():
      x = _kept(pose)
      assert x[..., 2].min() > 0.05, name  # nothing below the floor
      assert np.abs(x[..., 2].min(axis=1) - 0.09).max() < 0.02  # the lowest ankle is on the floor
      if name.split(" ")[0] not in ("Purchases", "SittingDown"):  # the two that bend over
        assert (x[:, 10, 2] > x[:, 8, 2]).all(), name
      # Smooth motion: no joint moves faster than a kicking foot (m/s).
      speed = np.linalg.norm(np.diff(x, axis=0), axis=-1) * motion.DEFAULT_FRAME_RATE_HZ
      assert speed.max() < 8.0, name
      assert np.abs(x[:, 0, :2]).max() < 2.0  # inside the capture volume
      for cam, uv in zip(cameras.h36m_cameras(subject),
                         loaded["2d_gt"]["positions_2d"][subject][name]):
        inside = ((uv[..., 0] >= 0) & (uv[..., 0] < cam.res_w)
                  & (uv[..., 1] >= 0) & (uv[..., 1] < cam.res_h))
        assert inside.mean() > 0.99, (subject, name, cam.id)


def test_actions_differ(data):
  _, loaded = data
  poses = {name.split(" ")[0]: _kept(p) for name, p in loaded["3d"]["positions_3d"]["S9"].items()}
  root_height = {a: np.median(x[:, 0, 2]) for a, x in poses.items()}
  assert root_height["Sitting"] < 0.7 and root_height["Eating"] < 0.7
  assert root_height["Walking"] > 0.85 and root_height["Waiting"] > 0.85
  speed = {a: np.linalg.norm(np.diff(x[:, 0, :2], axis=0), axis=-1).mean()
           for a, x in poses.items()}
  assert speed["Walking"] > 5 * speed["Waiting"] and speed["Sitting"] < 1e-3
  # No two actions share the same root-relative pose statistics.
  means = np.stack([(x - x[:, :1]).mean(0).ravel() for x in poses.values()])
  gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)
  assert gaps[~np.eye(len(means), dtype=bool)].min() > 0.02


def test_2d_is_the_projection_of_3d(data):
  _, loaded = data
  for subject in ("S1", "S11"):
    cams = cameras.h36m_cameras(subject)
    for name, pose in loaded["3d"]["positions_3d"][subject].items():
      for cam, uv in zip(cams, loaded["2d_gt"]["positions_2d"][subject][name]):
        expected = cameras.project_to_pixels(cameras.world_to_camera(_kept(pose), cam), cam)
        np.testing.assert_allclose(uv, expected, atol=1e-3)
        # Independent pinhole check (no distortion): within a few percent of the image.
        xc = cameras.world_to_camera(_kept(pose).astype(np.float64), cam)
        pinhole = np.array(cam.focal_length) * xc[..., :2] / xc[..., 2:] + np.array(cam.center)
        assert np.abs(pinhole - uv).max() < 30


def test_gmm_kernel0(data):
  _, loaded = data
  gt = loaded["2d_gt"]["positions_2d"]
  gmm = loaded["2d_gt_gmm"]["positions_2d"]
  cpn = loaded["2d_cpn_gmm"]["positions_2d"]
  errors = {}
  for subject in gt:
    for name in gt[subject]:
      for c in range(4):
        np.testing.assert_array_equal(gmm[subject][name][c][..., 0, 1:3], gt[subject][name][c])
        # The other kernels are perturbed copies.
        offset = gmm[subject][name][c][..., 1:, 1:3] - gt[subject][name][c][..., None, :]
        assert 0.5 < np.abs(offset).mean() < 20
        detected = cpn[subject][name][c][:FRAMES, :, 0, 1:3]
        err = np.linalg.norm(detected - gt[subject][name][c], axis=-1)
        errors.setdefault(name.split(" ")[0], []).append(err)
  per_action = {a: np.mean(e) for a, e in errors.items()}
  assert 2.0 < min(per_action.values()) and max(per_action.values()) < 15.0
  assert per_action["SittingDown"] > per_action["Walking"]
  assert max(np.max(e) for e in errors.values()) > 15  # occasional gross errors


def test_deterministic_and_subsets_reproduce(tmp_path, data):
  _, loaded = data
  kw = dict(frames_per_sequence=FRAMES, subjects=["S9", "S5"], actions=["Walking", "Sitting"])
  a = synthetic_h36m.generate(tmp_path / "a", seed=0, **kw)
  b = synthetic_h36m.generate(tmp_path / "b", seed=0, **kw)
  c = synthetic_h36m.generate(tmp_path / "c", seed=1, **kw)
  for key in a:
    assert a[key].read_bytes() == b[key].read_bytes(), key
  small = safe_load.load_pickled_npz(a["3d"])["positions_3d"]
  assert list(small) == ["S5", "S9"] and list(small["S9"]) == ["Sitting 2", "Walking"]
  full = loaded["3d"]["positions_3d"]
  np.testing.assert_array_equal(small["S9"]["Walking"], full["S9"]["Walking"])
  small_cpn = safe_load.load_pickled_npz(a["2d_cpn_gmm"])["positions_2d"]
  np.testing.assert_array_equal(small_cpn["S5"]["Sitting 2"][3],
                                loaded["2d_cpn_gmm"]["positions_2d"]["S5"]["Sitting 2"][3])
  other = safe_load.load_pickled_npz(c["3d"])["positions_3d"]
  assert not np.allclose(other["S9"]["Walking"], small["S9"]["Walking"])


def test_ensure_synthetic_data(tmp_path):
  kw = dict(frames_per_sequence=3, subjects=["S1"], actions=["Posing"])
  paths = synthetic_h36m.ensure_synthetic_data(tmp_path, **kw)
  assert all(p.is_file() for p in paths.values())
  stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
  assert synthetic_h36m.ensure_synthetic_data(tmp_path, **kw) == paths
  assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamps
  paths["2d_cpn_gmm"].unlink()
  synthetic_h36m.ensure_synthetic_data(tmp_path, **kw)
  assert paths["2d_cpn_gmm"].is_file()
  assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="S2"):
    synthetic_h36m.generate(tmp_path, subjects=["S2"])
  with pytest.raises(ValueError, match="Running"):
    synthetic_h36m.generate(tmp_path, actions=["Walking", "Running"])
  with pytest.raises(ValueError, match="string"):
    synthetic_h36m.generate(tmp_path, actions="Walking")
  with pytest.raises(ValueError, match="frames_per_sequence"):
    synthetic_h36m.generate(tmp_path, frames_per_sequence=0)
  assert not list(tmp_path.iterdir())


def test_command_line(tmp_path, capsys):
  synthetic_h36m.main(["--out", str(tmp_path), "--frames", "2", "--seed", "3"])
  assert len(capsys.readouterr().out.splitlines()) == 5
  pose = safe_load.load_pickled_npz(tmp_path / "data_3d_h36m.npz")["positions_3d"]["S11"]
  assert pose["Walking"].shape == (2, 32, 3)


@pytest.mark.parametrize("module", ["posediff_jax.data.synthetic", "posediff_jax.data.synthetic_3dhp",
                                    "posediff_jax.data.synthetic_radar"])
def test_documented_commands_start_their_generator(module):
  # README's commands: each module path must still run its writer's command line.
  proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  assert f"python -m {module}" in proc.stdout and "--out" in proc.stdout
