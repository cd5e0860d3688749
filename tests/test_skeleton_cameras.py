"""Tests for the Human3.6M skeleton helpers and the camera table / camera maths."""

import jax.numpy as jnp
import numpy as np
import pytest

from posediff_jax import cameras
from posediff_jax import skeleton


def _random_poses(seed, shape=(5, 17, 3)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_skeleton_constants_are_consistent():
  assert len(skeleton.H36M_JOINT_NAMES) == 17
  assert len(skeleton.H36M_EDGES) == 16
  # Every non-root joint has exactly one parent edge, matching H36M_PARENTS.
  assert sorted((p, c) for c, p in enumerate(skeleton.H36M_PARENTS) if p >= 0) == sorted(
      skeleton.H36M_EDGES)
  assert set(skeleton.H36M_LEFT).isdisjoint(skeleton.H36M_RIGHT)
  for left, right in zip(skeleton.H36M_LEFT, skeleton.H36M_RIGHT):
    assert skeleton.H36M_JOINT_NAMES[left][0] == "L"
    assert skeleton.H36M_JOINT_NAMES[right][0] == "R"
    assert skeleton.H36M_JOINT_NAMES[left][1:] == skeleton.H36M_JOINT_NAMES[right][1:]
  # The 32-joint parents, reduced to the kept joints with the shoulders rewired to the thorax,
  # give the 17-joint parents.
  keep = skeleton.H36M32_TO_17
  parents = []
  for joint in keep:
    parent = skeleton.H36M32_PARENTS[joint]
    while parent >= 0 and parent not in keep:
      parent = skeleton.H36M32_PARENTS[parent]
    parents.append(keep.index(parent) if parent >= 0 else -1)
  parents[11] = parents[14] = 8
  assert tuple(parents) == skeleton.H36M_PARENTS


def test_root_relative_is_out_of_place():
  x = _random_poses(0)
  original = x.copy()
  y = skeleton.root_relative(x)
  np.testing.assert_array_equal(x, original)
  np.testing.assert_array_equal(y[:, 0], 0)
  np.testing.assert_allclose(y[:, 5], x[:, 5] - x[:, 0])


def test_flip_swaps_left_right_and_negates_x():
  x = _random_poses(1)
  y = skeleton.flip_pose(x)
  for left, right in zip(skeleton.H36M_LEFT, skeleton.H36M_RIGHT):
    np.testing.assert_array_equal(y[:, left, 0], -x[:, right, 0])
    np.testing.assert_array_equal(y[:, right, 1:], x[:, left, 1:])
  for centre in (0, 7, 8, 9, 10):
    np.testing.assert_array_equal(y[:, centre, 0], -x[:, centre, 0])
    np.testing.assert_array_equal(y[:, centre, 1:], x[:, centre, 1:])


def test_flip_twice_is_identity_numpy_and_jax():
  x = _random_poses(2, (3, 4, 17, 5))
  np.testing.assert_array_equal(skeleton.flip_pose(skeleton.flip_pose(x, x_channel=2),
                                                   x_channel=2), x)
  jx = jnp.asarray(x)
  flipped = skeleton.flip_pose(jx, x_channel=2)
  assert isinstance(flipped, type(jx))
  np.testing.assert_array_equal(np.asarray(flipped), skeleton.flip_pose(x, x_channel=2))
  np.testing.assert_array_equal(np.asarray(skeleton.flip_pose(flipped, x_channel=2)), x)


def test_flip_rejects_bad_shapes():
  with pytest.raises(ValueError, match="17"):
    skeleton.flip_pose(np.zeros((4, 16, 3)))
  with pytest.raises(ValueError, match="x_channel"):
    skeleton.flip_pose(np.zeros((4, 17, 2)), x_channel=2)


def _rotation_matrix(q):
  w, x, y, z = np.asarray(q, np.float64)
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_camera_table_shapes_and_units():
  assert cameras.H36M_CAMERA_IDS == ("54138969", "55011271", "58860488", "60457274")
  for subject in ("S1", "S5", "S6", "S7", "S8", "S9", "S11"):
    cams = cameras.h36m_cameras(subject)
    assert tuple(c.id for c in cams) == cameras.H36M_CAMERA_IDS
    for cam in cams:
      assert abs(np.linalg.norm(cam.orientation) - 1) < 1e-6
      assert 3.0 < np.linalg.norm(cam.translation) < 7.0  # metres from the capture volume centre
      assert (cam.res_w, cam.res_h) in ((1000, 1000), (1000, 1002))
  cam = cameras.h36m_cameras("S9")[0]
  assert cam.res_h == 1002 and cam.center == (512.54150390625, 515.4514770507812)
  assert cam.translation == pytest.approx((2.04445849609375, 4.9351171875, 1.4812275390625))


@pytest.mark.parametrize("subject", ["S2", "S3", "S4", "S10", "s9", ""])
def test_unknown_subject_errors(subject):
  with pytest.raises(ValueError, match="subject"):
    cameras.h36m_cameras(subject)


def test_qrot_matches_rotation_matrix():
  rng = np.random.default_rng(3)
  q = rng.normal(size=(6, 4))
  q /= np.linalg.norm(q, axis=-1, keepdims=True)
  v = rng.normal(size=(6, 3))
  expected = np.einsum("nij,nj->ni", np.stack([_rotation_matrix(qq) for qq in q]), v)
  np.testing.assert_allclose(cameras.qrot(q, v), expected, atol=1e-12)
  np.testing.assert_allclose(cameras.qrot(cameras.qinverse(q), cameras.qrot(q, v)), v, atol=1e-12)
  np.testing.assert_allclose(np.asarray(cameras.qrot(jnp.asarray(q, jnp.float32),
                                                     jnp.asarray(v, jnp.float32))),
                             expected, atol=1e-5)


def test_world_camera_round_trip_and_matrix_form():
  cam = cameras.h36m_cameras("S11")[2]
  x_world = _random_poses(4, (7, 17, 3)) + np.float32([0.0, 0.0, 1.0])
  x_cam = cameras.world_to_camera(x_world, cam)
  assert x_cam.dtype == np.float32 and x_cam.shape == x_world.shape
  rotation = _rotation_matrix(cam.orientation)
  expected = (x_world.astype(np.float64) - np.array(cam.translation)) @ rotation
  np.testing.assert_allclose(x_cam, expected, atol=1e-5)
  np.testing.assert_allclose(cameras.camera_to_world(x_cam, cam), x_world, atol=1e-5)
  # float64 stays float64 (the round trip is limited by the float32-rounded, not quite unit,
  # quaternion of the table).
  x64 = x_world.astype(np.float64)
  back = cameras.camera_to_world(cameras.world_to_camera(x64, cam), cam)
  assert back.dtype == np.float64
  np.testing.assert_allclose(back, x64, atol=5e-6)
  # The subjects stand in front of the cameras.
  assert (cameras.world_to_camera(np.zeros(3, np.float32), cam)[2]) > 3.0


def test_projection_of_optical_axis_is_the_principal_point():
  for cam in cameras.h36m_cameras("S1"):
    pixel = cameras.project_to_pixels(np.array([[0.0, 0.0, 4.2]]), cam)
    np.testing.assert_allclose(pixel[0], cam.center, atol=1e-9)


def test_projection_matches_brute_force_distortion_model():
  cam = cameras.h36m_cameras("S5")[1]
  rng = np.random.default_rng(5)
  points = np.concatenate([rng.uniform(-1, 1, (20, 2)), rng.uniform(3, 6, (20, 1))], axis=1)
  pixels = cameras.project_to_pixels(points, cam)
  k1, k2, k3 = cam.radial_distortion
  p1, p2 = cam.tangential_distortion
  for point, pixel in zip(points, pixels):
    a, b = point[0] / point[2], point[1] / point[2]
    r2 = a * a + b * b
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    tangential = p1 * a + p2 * b
    xd = a * (radial + tangential) + p1 * r2
    yd = b * (radial + tangential) + p2 * r2
    np.testing.assert_allclose(pixel, [cam.focal_length[0] * xd + cam.center[0],
                                       cam.focal_length[1] * yd + cam.center[1]], rtol=1e-12)
  jax_pixels = cameras.project_to_pixels(jnp.asarray(points, jnp.float32), cam)
  np.testing.assert_allclose(np.asarray(jax_pixels), pixels, rtol=1e-5)


def test_normalize_and_image_coordinates_round_trip():
  pixels = np.random.default_rng(6).uniform(0, 1000, (10, 17, 2))
  for w, h in ((1000, 1002), (1000, 1000)):
    u = cameras.normalize_screen_coordinates(pixels, w, h)
    np.testing.assert_allclose(u[..., 0], pixels[..., 0] / w * 2 - 1, atol=1e-12)
    np.testing.assert_allclose(u[..., 1], pixels[..., 1] / w * 2 - h / w, atol=1e-12)
    np.testing.assert_allclose(cameras.image_coordinates(u, w, h), pixels, atol=1e-9)
  u32 = cameras.normalize_screen_coordinates(pixels.astype(np.float32), 1000, 1002)
  assert u32.dtype == np.float32
  # The upstream arithmetic: float32 x / w * 2, then the offset in float64, then float32.
  expected = ((pixels.astype(np.float32) / np.float32(1000) * np.float32(2)).astype(np.float64)
              - [1.0, 1.002]).astype(np.float32)
  np.testing.assert_array_equal(u32, expected)
  with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
    cameras.normalize_screen_coordinates(np.zeros((3, 3)), 1000, 1000)


def test_normalized_intrinsics_match_diffpose_table_and_calibration():
  cams = cameras.h36m_cameras("S9")
  np.testing.assert_allclose(cameras.normalized_intrinsics(cams[0]),
                             [2.2901, 2.2876, 0.0251, 0.0289], rtol=0, atol=1e-7)
  for cam in cams:
    para = cameras.normalized_intrinsics(cam)
    assert para.dtype == np.float32 and para.shape == (4,)
    focal = np.array(cam.focal_length) / cam.res_w * 2
    center = cameras.normalize_screen_coordinates(np.array(cam.center), cam.res_w, cam.res_h)
    np.testing.assert_allclose(para, np.concatenate([focal, center]), atol=5.1e-5)
