"""Reading a user's 2D keypoints, COCO-17 -> Human3.6M-17, gap filling and normalisation."""

import json

import numpy as np
import pytest

from posediff_jax import cameras
from posediff_jax import keypoints as kp
from posediff_jax import skeleton

COCO = {name: i for i, name in enumerate(kp.COCO_JOINT_NAMES)}
H36M = {name: i for i, name in enumerate(skeleton.H36M_JOINT_NAMES)}


def _t_pose_coco() -> np.ndarray:
  """A person facing the camera, arms out (pixels, y down); the person's left is image right."""
  points = {
      "nose": (100, 40), "left_eye": (104, 36), "right_eye": (96, 36), "left_ear": (110, 38),
      "right_ear": (90, 38), "left_shoulder": (120, 60), "right_shoulder": (80, 60),
      "left_elbow": (150, 60), "right_elbow": (50, 60), "left_wrist": (180, 60),
      "right_wrist": (20, 60), "left_hip": (112, 120), "right_hip": (88, 120),
      "left_knee": (114, 170), "right_knee": (86, 170), "left_ankle": (116, 220),
      "right_ankle": (84, 220),
  }
  return np.array([points[name] for name in kp.COCO_JOINT_NAMES], np.float64)


def _t_pose_h36m() -> np.ndarray:
  """The same person as Human3.6M-17, worked out by hand from the documented mapping."""
  points = {
      "Hip": (100, 120), "RHip": (88, 120), "RKnee": (86, 170), "RFoot": (84, 220),
      "LHip": (112, 120), "LKnee": (114, 170), "LFoot": (116, 220), "Spine": (100, 90),
      "Thorax": (100, 60), "Neck/Nose": (100, 40), "Head": (100, 36), "LShoulder": (120, 60),
      "LElbow": (150, 60), "LWrist": (180, 60), "RShoulder": (80, 60), "RElbow": (50, 60),
      "RWrist": (20, 60),
  }
  return np.array([points[name] for name in skeleton.H36M_JOINT_NAMES], np.float64)


def test_coco_to_h36m_on_a_known_pose():
  np.testing.assert_array_equal(kp.coco_to_h36m(_t_pose_coco()), _t_pose_h36m())
  # Batched, and the unused ears may be anything (even NaN).
  batch = np.stack([_t_pose_coco(), _t_pose_coco() + 5])
  batch[:, [COCO["left_ear"], COCO["right_ear"]]] = np.nan
  np.testing.assert_array_equal(kp.coco_to_h36m(batch),
                                np.stack([_t_pose_h36m(), _t_pose_h36m() + 5]))
  assert kp.COCO_JOINTS_USED == tuple(j for j in range(17)
                                      if j not in (COCO["left_ear"], COCO["right_ear"]))
  np.testing.assert_allclose(kp.COCO_TO_H36M_WEIGHTS.sum(axis=1), 1.0)


def test_coco_to_h36m_keeps_sides_and_mirrors_with_the_pose():
  """Mirroring the image and swapping COCO's sides commutes with the mapping."""
  coco = _t_pose_coco()
  swap = list(range(17))
  for name, i in COCO.items():
    if name.startswith("left_"):
      swap[i], swap[COCO["right_" + name[5:]]] = COCO["right_" + name[5:]], i
  mirrored = coco[swap] * np.array([-1, 1])
  np.testing.assert_allclose(kp.coco_to_h36m(mirrored),
                             skeleton.flip_pose(kp.coco_to_h36m(coco), x_channel=0))


def test_derived_joints_take_their_weakest_sources_confidence():
  scores = np.linspace(0.1, 0.9, 17)
  mapped = kp.coco_to_h36m_scores(scores)
  assert mapped[H36M["Hip"]] == min(scores[COCO["left_hip"]], scores[COCO["right_hip"]])
  assert mapped[H36M["Spine"]] == min(scores[[COCO["left_shoulder"], COCO["right_shoulder"],
                                              COCO["left_hip"], COCO["right_hip"]]])
  assert mapped[H36M["Head"]] == min(scores[COCO["left_eye"]], scores[COCO["right_eye"]])
  assert mapped[H36M["LWrist"]] == scores[COCO["left_wrist"]]


def test_interpolation_is_linear_in_time_and_holds_the_ends():
  frames = 6
  points = np.zeros((frames, 17, 2))
  points[:, 3, 0] = np.arange(frames) * 10.0
  points[:, 3, 1] = 7.0
  missing = np.zeros((frames, 17), bool)
  missing[[0, 2, 3, 5], 3] = True
  corrupted = points.copy()
  corrupted[missing] = -999.0
  filled = kp.interpolate_missing(corrupted, missing, names=skeleton.H36M_JOINT_NAMES)
  np.testing.assert_allclose(filled[:, 3, 0], [10, 10, 20, 30, 40, 40])
  np.testing.assert_allclose(filled[:, 3, 1], 7.0)
  np.testing.assert_array_equal(filled[:, :3], points[:, :3])


def test_a_joint_never_seen_is_an_error_naming_it():
  missing = np.zeros((4, 17), bool)
  missing[:, H36M["LWrist"]] = True
  with pytest.raises(ValueError, match=r"LWrist \(joint 13\).*all 4 frames"):
    kp.interpolate_missing(np.zeros((4, 17, 2)), missing, names=skeleton.H36M_JOINT_NAMES,
                           source="clip.npz")
  # Not required: filled with zeros instead.
  out = kp.interpolate_missing(np.ones((4, 17, 2)), missing, names=skeleton.H36M_JOINT_NAMES,
                               required=[0])
  np.testing.assert_array_equal(out[:, H36M["LWrist"]], 0.0)


def _coco_annotations(poses, scores, image_ids=None):
  anns = []
  for f, (pose, score) in enumerate(zip(poses, scores)):
    flat = np.concatenate([pose, score[:, None]], axis=1).reshape(-1).tolist()
    ann = {"keypoints": flat, "category_id": 1, "score": float(score.mean())}
    if image_ids is not None:
      ann["image_id"] = image_ids[f]
    anns.append(ann)
  return anns


def _poses(frames, seed=0):
  rng = np.random.default_rng(seed)
  poses = _t_pose_coco()[None] + rng.normal(0, 3, (frames, 17, 2))
  scores = rng.uniform(0.5, 1.0, (frames, 17))
  return poses, scores


def test_json_npz_and_npy_read_the_same(tmp_path):
  poses, scores = _poses(5)
  (tmp_path / "list.json").write_text(json.dumps(_coco_annotations(poses, scores)))
  with_scores = np.concatenate([poses, scores[..., None]], -1)
  np.savez(tmp_path / "three_channels.npz", keypoints=with_scores)
  np.savez(tmp_path / "scores.npz", keypoints=poses, scores=scores, layout="coco")
  np.save(tmp_path / "plain.npy", with_scores)
  for name in ("list.json", "three_channels.npz", "scores.npz", "plain.npy"):
    seq = kp.load_keypoints(tmp_path / name, "coco")
    np.testing.assert_allclose(seq.keypoints, poses, err_msg=name)
    np.testing.assert_allclose(seq.scores, scores, err_msg=name)
    assert seq.layout == "coco"
  assert kp.load_keypoints(tmp_path / "list.json").layout == "coco"
  assert kp.load_keypoints(tmp_path / "scores.npz").layout == "coco"


def test_json_frames_follow_image_ids_and_keep_the_best_person(tmp_path):
  poses, scores = _poses(11)
  ids = [f"frame{i}.jpg" for i in range(11)]
  anns = _coco_annotations(poses, scores, ids)
  # A less confident second person in frame 3, listed first; the list itself is shuffled.
  distractor = _coco_annotations(poses[:1] + 500, scores[:1] * 0.5, [ids[3]])
  order = np.random.default_rng(1).permutation(len(anns))
  content = {"annotations": distractor + [anns[i] for i in order]}
  (tmp_path / "video.json").write_text(json.dumps(content))
  seq = kp.load_keypoints(tmp_path / "video.json")
  np.testing.assert_allclose(seq.keypoints, poses)  # frame10 after frame9, not after frame1

  # With an 'images' list, an image without a person is a frame with every joint missing.
  content["images"] = [{"id": i} for i in ids] + [{"id": "frame11.jpg"}]
  (tmp_path / "with_images.json").write_text(json.dumps(content))
  seq = kp.load_keypoints(tmp_path / "with_images.json")
  assert seq.num_frames == 12
  assert np.all(seq.scores[11] == 0)
  prepared = kp.prepare_keypoints(seq, image_size=(200, 250))
  assert prepared.interpolated[11].all() and not prepared.interpolated[:11].any()
  np.testing.assert_allclose(prepared.pixels[11], prepared.pixels[10], rtol=1e-6)


def test_prepare_maps_interpolates_and_normalises(tmp_path):
  poses, scores = _poses(4)
  scores[1:3, COCO["left_wrist"]] = 0.05  # below the default threshold in frames 1 and 2
  scores[2, COCO["left_ear"]] = 0.0  # the ears are not used: no effect
  seq = kp.KeypointSequence(keypoints=poses, scores=scores, layout="coco", source="mem")
  prepared = kp.prepare_keypoints(seq, image_size=(200, 250))
  expected_coco = poses.copy()
  for f, weight in ((1, 1 / 3), (2, 2 / 3)):
    expected_coco[f, COCO["left_wrist"]] = ((1 - weight) * poses[0, COCO["left_wrist"]]
                                           + weight * poses[3, COCO["left_wrist"]])
  expected = kp.coco_to_h36m(expected_coco)
  np.testing.assert_allclose(prepared.pixels, expected, rtol=1e-6)
  np.testing.assert_allclose(prepared.normalized,
                             cameras.normalize_screen_coordinates(expected.astype(np.float32),
                                                                  200, 250))
  interpolated = np.zeros((4, 17), bool)
  interpolated[1:3, H36M["LWrist"]] = True
  np.testing.assert_array_equal(prepared.interpolated, interpolated)
  # Already normalised input goes through unchanged.
  norm = kp.KeypointSequence(keypoints=prepared.normalized.astype(np.float64), scores=None,
                             layout="h36m", source="mem")
  np.testing.assert_array_equal(kp.prepare_keypoints(norm, normalized_input=True).normalized,
                                prepared.normalized)


def test_wrong_joint_count_is_a_clear_error(tmp_path):
  np.savez(tmp_path / "eighteen.npz", keypoints=np.zeros((3, 18, 2)))
  with pytest.raises(ValueError, match=r"eighteen.npz.*expected 17 joints.*got 18"):
    kp.load_keypoints(tmp_path / "eighteen.npz", "coco")
  np.save(tmp_path / "four_channels.npy", np.zeros((3, 17, 4)))
  with pytest.raises(ValueError, match=r"four_channels.npy.*2 or 3"):
    kp.load_keypoints(tmp_path / "four_channels.npy", "h36m")
  ann = {"image_id": 0, "keypoints": [0.0] * 54}
  (tmp_path / "halpe.json").write_text(json.dumps([ann]))
  with pytest.raises(ValueError, match=r"halpe.json annotation 0.*51 numbers.*got 54"):
    kp.load_keypoints(tmp_path / "halpe.json")


@pytest.mark.parametrize("size", [(0, 1000), (1000, 0), (-5, 10), (10.5, 10)])
def test_a_bad_image_size_is_a_clear_error(size):
  poses, scores = _poses(2)
  seq = kp.KeypointSequence(keypoints=poses, scores=scores, layout="coco", source="mem")
  with pytest.raises(ValueError, match=r"image (width|height) must be a positive whole number"):
    kp.prepare_keypoints(seq, image_size=size)


def test_missing_image_size_all_zero_confidences_and_unknown_layout_are_errors(tmp_path):
  poses, scores = _poses(3)
  seq = kp.KeypointSequence(keypoints=poses, scores=np.zeros_like(scores), layout="coco",
                            source="zeros.json")
  with pytest.raises(ValueError, match=r"zeros.json: all keypoint confidences are 0"):
    kp.prepare_keypoints(seq, image_size=(100, 100))
  low = kp.KeypointSequence(keypoints=poses, scores=scores * 0.1, layout="coco", source="low")
  with pytest.raises(ValueError, match=r"no keypoint reaches the confidence threshold"):
    kp.prepare_keypoints(low, image_size=(100, 100))
  good = kp.KeypointSequence(keypoints=poses, scores=scores, layout="coco", source="px.npz")
  with pytest.raises(ValueError, match=r"px.npz: pixel keypoints need the image size"):
    kp.prepare_keypoints(good)
  np.save(tmp_path / "ambiguous.npy", poses)
  with pytest.raises(ValueError, match=r"cannot tell COCO-17 from Human3.6M-17.*--format"):
    kp.load_keypoints(tmp_path / "ambiguous.npy")
  np.savez(tmp_path / "says_h36m.npz", keypoints=poses, layout="h36m")
  with pytest.raises(ValueError, match=r"says its layout is 'h36m' but 'coco'"):
    kp.load_keypoints(tmp_path / "says_h36m.npz", "coco")
  with pytest.raises(FileNotFoundError, match=r"nowhere.json"):
    kp.load_keypoints(tmp_path / "nowhere.json")
  np.savez(tmp_path / "no_key.npz", points=poses)
  with pytest.raises(ValueError, match=r"no 'keypoints' array \(found: points\)"):
    kp.load_keypoints(tmp_path / "no_key.npz", "coco")
