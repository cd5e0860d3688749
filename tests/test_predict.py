"""`python -m posediff_jax.predict`: a user's 2D keypoints in, 3D poses (and pictures) out.

The frame families run the tiny DiffPose of `tests/tiny_run.py` with fresh weights; the video path
runs a stub family whose `sample` writes where each value came from into its output, so the clip
cutting, padding, stitching and hypothesis handling are checked without any real video model.
Then the command runs once per family on tiny checkpoints (fresh weights, no size flags: the
checkpoint's sizes are taken), FinePOSE and DSGDiffu with --action; mmDiff is refused.
"""

import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from posediff_jax import cameras
from posediff_jax import checkpoint
from posediff_jax import families
from posediff_jax import keypoints as kp
from posediff_jax import plots
from posediff_jax import predict
from posediff_jax import skeleton
from posediff_jax.data.synthetic import h36m as synthetic_h36m
from posediff_jax.data.synthetic import motion
from posediff_jax.families import diffpose
from tests import tiny_run

COCO = {name: i for i, name in enumerate(kp.COCO_JOINT_NAMES)}
H36M = {name: i for i, name in enumerate(skeleton.H36M_JOINT_NAMES)}
# COCO joints copied from their Human3.6M namesakes when a synthetic pose is written as COCO-17.
_SAME_JOINT = {"nose": "Neck/Nose", "left_shoulder": "LShoulder", "right_shoulder": "RShoulder",
               "left_elbow": "LElbow", "right_elbow": "RElbow", "left_wrist": "LWrist",
               "right_wrist": "RWrist", "left_hip": "LHip", "right_hip": "RHip",
               "left_knee": "LKnee", "right_knee": "RKnee", "left_ankle": "LFoot",
               "right_ankle": "RFoot"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(config, checkpoint dir) of the tiny DiffPose, with fresh weights."""
  folder = tmp_path_factory.mktemp("predict")
  config = tiny_run.tiny_config(folder / "unused_data")
  params = diffpose.init_params(config, jax.random.key(0))
  ckpt = checkpoint.save_model(folder / "ckpt", jax.tree.map(np.asarray, params),
                               diffpose.checkpoint_meta(config))
  return config, ckpt


def _synthetic_coco(frames: int):
  """A synthetic walk seen by a Human3.6M camera, as COCO-17 pixels with confidences."""
  positions = motion.synthesize_sequence("S9", "Walking", frames)
  camera = cameras.h36m_cameras("S9")[0]
  h36m_px = synthetic_h36m.project_sequence(positions, "S9")[0].astype(np.float64)
  coco = np.zeros((frames, 17, 2))
  for coco_name, h36m_name in _SAME_JOINT.items():
    coco[:, COCO[coco_name]] = h36m_px[:, H36M[h36m_name]]
  head = h36m_px[:, H36M["Head"]]
  for side, sign in (("left", 1), ("right", -1)):
    coco[:, COCO[f"{side}_eye"]] = head + [sign * 4.0, 0.0]
    coco[:, COCO[f"{side}_ear"]] = head + [sign * 9.0, 3.0]
  scores = np.random.default_rng(0).uniform(0.6, 1.0, (frames, 17))
  scores[2:4, COCO["left_wrist"]] = 0.1  # filled in by interpolation
  scores[0, COCO["right_knee"]] = 0.0
  return coco, scores, (camera.res_w, camera.res_h)


def _write_inputs(folder, coco, scores):
  """The same sequence as a COCO JSON (with a weaker second person) and as a COCO npz."""
  anns = []
  for f in range(coco.shape[0]):
    flat = np.concatenate([coco[f], scores[f, :, None]], axis=1).reshape(-1).tolist()
    anns.append({"image_id": f"{f}.jpg", "category_id": 1, "keypoints": flat, "score": 2.0})
    anns.append({"image_id": f"{f}.jpg", "category_id": 1, "score": 1.0,
                 "keypoints": (np.array(flat) * 0.5).tolist()})
  (folder / "video.json").write_text(json.dumps(anns))
  np.savez(folder / "video.npz", keypoints=coco, scores=scores, layout="coco")
  return folder / "video.json", folder / "video.npz"


@pytest.fixture(scope="module")
def from_json(tiny, tmp_path_factory):
  """(folder, image size, `predict.run`'s result) for a synthetic walk given as COCO JSON."""
  config, ckpt = tiny
  folder = tmp_path_factory.mktemp("from_json")
  coco, scores, size = _synthetic_coco(11)
  json_path, _ = _write_inputs(folder, coco, scores)
  return folder, size, predict.run(config, ckpt, json_path, folder / "json_out.npz",
                                   image_size=size)


def test_json_and_npz_give_the_same_3d(tiny, from_json, tmp_path):
  config, ckpt = tiny
  folder, size, from_json = from_json
  npz_path = folder / "video.npz"
  from_npz = predict.run(config, ckpt, npz_path, tmp_path / "npz_out.npz", layout="coco",
                         image_size=size, render=tmp_path / "frame.png", render_frame=2)
  with Image.open(tmp_path / "frame.png") as picture:
    assert picture.size == plots.FRAME_SIZE_PX
  np.testing.assert_allclose(from_npz["poses_3d"], from_json["poses_3d"], rtol=1e-6, atol=1e-7)
  # The Human3.6M-17 pixels they made, given back as an h36m file, make the same model input.
  np.savez(tmp_path / "h36m.npz", keypoints=from_npz["keypoints_2d_pixels"])
  h36m = kp.prepare_keypoints(kp.load_keypoints(tmp_path / "h36m.npz", "h36m"), image_size=size)
  np.testing.assert_array_equal(h36m.normalized, from_json["keypoints_2d"])
  poses = from_json["poses_3d"]
  assert poses.shape == (11, 17, 3) and poses.dtype == np.float32
  assert np.all(np.isfinite(poses))
  np.testing.assert_array_equal(poses[:, skeleton.ROOT_JOINT], 0.0)
  saved = np.load(folder / "json_out.npz")
  assert sorted(saved.files) == ["interpolated", "joint_names", "keypoints_2d",
                                 "keypoints_2d_pixels", "poses_3d"]
  np.testing.assert_array_equal(saved["poses_3d"], poses)
  assert saved["interpolated"][2:4, H36M["LWrist"]].all()
  assert saved["interpolated"][0, H36M["RKnee"]]
  assert saved["interpolated"].sum() == 3
  assert list(saved["joint_names"]) == list(skeleton.H36M_JOINT_NAMES)


def test_frame_batches_do_not_change_the_result(tiny):
  config, _ = tiny
  params, _, _ = checkpoint.load_model(tiny[1])
  inputs = np.random.default_rng(0).uniform(-0.5, 0.5, (10, 17, 2)).astype(np.float32)
  whole = predict.predict_sequence(config, params, inputs)["poses_3d"]
  small = config.copy_and_resolve_references()
  small.eval.batch_size = 4  # 3 batches, the last one padded
  pieces = predict.predict_sequence(small, params, inputs)["poses_3d"]
  np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-6)


def test_bad_input_to_predict_sequence(tiny):
  config, _ = tiny
  with pytest.raises(ValueError, match=r"expected \[frames, 17, 2\].*got shape \(4, 16, 2\)"):
    predict.predict_sequence(config, {}, np.zeros((4, 16, 2)))
  with pytest.raises(ValueError, match=r"non-finite"):
    predict.predict_sequence(config, {}, np.full((4, 17, 2), np.nan))
  other = config.copy_and_resolve_references()
  other.data.dataset = "3dhp"
  with pytest.raises(ValueError, match=r"data.dataset='3dhp'"):
    predict.predict_sequence(other, {}, np.zeros((4, 17, 2)))


def test_clips_cover_the_sequence():
  np.testing.assert_array_equal(predict.clip_starts(10, 4), [0, 4, 6])
  np.testing.assert_array_equal(predict.clip_starts(8, 4), [0, 4])
  np.testing.assert_array_equal(predict.clip_starts(4, 4), [0])
  np.testing.assert_array_equal(predict.clip_frames(3, 5), [[0, 1, 2, 2, 2]])
  np.testing.assert_array_equal(predict.clip_frames(5, 2), [[0, 1], [2, 3], [3, 4]])


_STEPS, _HYPOTHESES = 2, 3


def _stub_sample(config, params, input_2d, key=None, *, num_hypotheses=None, num_steps=None):
  """[B, K, H, F, J, 3]: x, y = the input 2D plus 1000 x (position in the clip) on y; z encodes
  the step and the hypothesis (10 k + 0.1 h) plus the parameter `offset`."""
  del config, key, num_hypotheses, num_steps
  clips, frames = input_2d.shape[:2]
  position = jnp.arange(frames, dtype=input_2d.dtype)[None, :, None] * 1000.0
  base = jnp.stack([input_2d[..., 0], input_2d[..., 1] + position,
                    jnp.full(input_2d.shape[:-1], params["offset"])], axis=-1)
  code = (10.0 * jnp.arange(_STEPS)[:, None] + 0.1 * jnp.arange(_HYPOTHESES)[None, :])
  out = jnp.broadcast_to(base[:, None, None], (clips, _STEPS, _HYPOTHESES) + base.shape[1:])
  return out.at[..., 2].add(code[None, :, :, None, None])


def _video_config(num_frames: int, batch_size: int):
  config = ml_collections.ConfigDict()
  config.family = "stub_video"
  config.seed = 0
  config.data = ml_collections.ConfigDict({"dataset": "h36m"})
  config.model = ml_collections.ConfigDict({"num_frames": num_frames})
  config.eval = ml_collections.ConfigDict({"batch_size": batch_size})
  return config


@pytest.mark.parametrize("num_frames,clip_length,batch_size", [
    (10, 4, 2),  # 3 clips, the last overlapping; 2 batches, the second padded
    (3, 5, 4),  # shorter than one clip: padded with the last frame
    (8, 4, 4),  # whole clips
])
def test_video_family_clips_are_stitched_back(monkeypatch, num_frames, clip_length, batch_size):
  stub = types.SimpleNamespace(VIDEO=True, sample=_stub_sample)
  real_get = families.get
  monkeypatch.setattr(families, "get",
                      lambda name: stub if name == "stub_video" else real_get(name))
  inputs = np.random.default_rng(1).uniform(-1, 1, (num_frames, 17, 2)).astype(np.float32)
  out = predict.predict_sequence(_video_config(clip_length, batch_size), {"offset": 1.0}, inputs)
  hypotheses = out["hypotheses_3d"]
  assert hypotheses.shape == (num_frames, _HYPOTHESES, 17, 3)
  starts = predict.clip_starts(num_frames, clip_length)
  # The last clip covering a frame is the one whose value it keeps.
  position = np.array([n - starts[starts <= n].max() for n in range(num_frames)])
  expected = np.empty_like(hypotheses)
  expected[..., 0] = inputs[:, None, :, 0]
  expected[..., 1] = inputs[:, None, :, 1] + 1000.0 * position[:, None, None]
  expected[..., 2] = (1.0 + 10.0 * (_STEPS - 1)
                      + 0.1 * np.arange(_HYPOTHESES)[None, :, None])
  expected[:, :, skeleton.ROOT_JOINT] = 0.0
  np.testing.assert_allclose(hypotheses, expected, rtol=1e-6)
  np.testing.assert_allclose(out["poses_3d"], expected.mean(axis=1), rtol=1e-6)


def test_video_family_with_a_wrong_output_shape(monkeypatch):
  stub = types.SimpleNamespace(
      VIDEO=True, sample=lambda config, params, x, key=None: jnp.zeros(x.shape[:2] + (17, 3)))
  monkeypatch.setattr(families, "get", lambda name: stub)
  with pytest.raises(ValueError, match=r"stub_video.sample returned shape \(2, 4, 17, 3\)"):
    predict.predict_sequence(_video_config(4, 2), {}, np.zeros((6, 17, 2), np.float32))


def test_cli_errors_before_loading_anything(tiny, tmp_path):
  config, ckpt = tiny
  coco, scores, size = _synthetic_coco(3)
  json_path, _ = _write_inputs(tmp_path, coco, scores)
  out = tmp_path / "out.npz"
  with pytest.raises(ValueError, match=r"image width must be a positive whole number"):
    predict.run(config, ckpt, json_path, out, image_size=(0, 100))
  with pytest.raises(ValueError, match=r"--image_size must be W,H"):
    predict.parse_image_size("1920")
  assert predict.parse_image_size("1920x1080") == (1920, 1080)
  with pytest.raises(ValueError, match=r"a PNG shows one frame but the sequence has 3"):
    predict.run(config, ckpt, json_path, out, image_size=size, render=tmp_path / "a.png")
  with pytest.raises(ValueError, match=r"--render_frame=5 is outside"):
    predict.run(config, ckpt, json_path, out, image_size=size, render=tmp_path / "a.png",
                render_frame=5)
  with pytest.raises(ValueError, match=r"must be a \.npz"):
    predict.run(config, ckpt, json_path, tmp_path / "out.txt", image_size=size)
  assert not out.exists()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tiny_run.session_dir(tmp_path_factory, "xla_cache")


def _model_flags() -> list[str]:
  return [f for f in tiny_run.config_flags() if not f.startswith("--config.train.")]


def test_cli_end_to_end_with_a_picture(tiny, from_json, tmp_path, cache):
  _, ckpt = tiny
  folder, size, expected = from_json
  proc = tiny_run.python(
      ["-m", "posediff_jax.predict", "--config", "configs/demo.py", *_model_flags(),
       f"--checkpoint={ckpt}", f"--keypoints={folder / 'video.json'}",
       f"--image_size={size[0]},{size[1]}", f"--output={tmp_path / 'out.npz'}",
       f"--render={tmp_path / 'out.gif'}"],
      cache_dir=cache)
  frames = expected["poses_3d"].shape[0]
  assert f"wrote {frames} frame(s) of 3D poses" in proc.stdout, proc.stdout
  np.testing.assert_allclose(np.load(tmp_path / "out.npz")["poses_3d"], expected["poses_3d"],
                             rtol=1e-6, atol=1e-7)
  with Image.open(tmp_path / "out.gif") as gif:
    assert gif.n_frames == frames and gif.size == plots.FRAME_SIZE_PX


def test_cli_bad_input_is_one_error_line(tiny, tmp_path, cache):
  _, ckpt = tiny
  coco, scores, size = _synthetic_coco(3)
  json_path, _ = _write_inputs(tmp_path, coco, np.zeros_like(scores))
  for extra, words in (([f"--image_size={size[0]},{size[1]}"], "confidences are 0"),
                       (["--image_size=0,1000"], "image width")):
    proc = tiny_run.python(
        ["-m", "posediff_jax.predict", "--config", "configs/demo.py", f"--checkpoint={ckpt}",
         f"--keypoints={json_path}", f"--output={tmp_path / 'out.npz'}", *extra],
        cache_dir=cache, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Every family: the prompt families' --action, mmDiff's refusal, and one run of each.


def test_action_row_names_the_checkpoints_prompt_actions():
  config = tiny_run.tiny_family_config("finepose", "unused")
  meta = families.get("finepose").checkpoint_meta(config)
  names = meta["text_actions"]
  assert predict.action_row(config, meta, "Walking") == names.index("Walking")
  # Case, spaces and a Human3.6M action key ('Walk dog', 'walking 1') find the same prompt.
  assert predict.action_row(config, meta, "walkdog") == names.index("WalkDog")
  assert predict.action_row(config, meta, "Walking 1") == names.index("Walking")
  with pytest.raises(ValueError, match=r"pass --action=NAME, one of its prompt actions: "
                     r"Directions, Discussion, .*WalkTogether"):
    predict.action_row(config, meta, None, "ckpt")
  with pytest.raises(ValueError, match=r"--action=Jogging is not one of the prompt actions of "
                     r"checkpoint ckpt: Directions, "):
    predict.action_row(config, meta, "Jogging", "ckpt")
  assert predict.action_row(config, {**meta, "text_actions": ["Walking"]}, None) == 0
  d3dp = tiny_run.tiny_family_config("d3dp", "unused")
  assert predict.action_row(d3dp, {}, None) is None
  with pytest.raises(ValueError, match=r"only FinePOSE and DSGDiffu models take an action"):
    predict.action_row(d3dp, {}, "Walking")


def test_mmdiff_is_refused_in_one_line():
  config = tiny_run.tiny_family_config("mmdiff", "unused")
  with pytest.raises(ValueError, match=r"mmDiff estimates poses from radar point clouds: "
                     r"evaluate an mmDiff checkpoint on radar data with evaluate.py"):
    predict.predict_sequence(config, {}, np.zeros((3, 17, 2), np.float32))


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory):
  """{family: checkpoint dir} of each family's tiny model with fresh weights."""
  folder = tmp_path_factory.mktemp("family_checkpoints")
  out = {}
  for name in ("diffpose", "icassp", "d3dp", "finepose", "dsgdiffu"):
    config = tiny_run.tiny_family_config(name, folder / "unused_data")
    family = families.get(name)
    params = jax.tree.map(np.asarray, family.init_params(config, jax.random.key(0)))
    out[name] = checkpoint.save_model(folder / name, params, family.checkpoint_meta(config))
  return out


# (config, extra flags): the family's own Human3.6M config, no size flags (the checkpoint's sizes
# are taken), few hypotheses and steps for the video families.
_FAMILY_RUNS = {
    "diffpose": ("configs/diffpose_h36m.py:cpn", []),
    "icassp": ("configs/icassp_h36m.py:cpn", []),
    "d3dp": ("configs/d3dp_h36m.py:cpn", ["--config.sampling.num_hypotheses=2",
                                          "--config.sampling.num_steps=2"]),
    "finepose": ("configs/finepose_h36m.py:cpn", ["--config.sampling.num_hypotheses=2",
                                                  "--config.sampling.num_steps=2",
                                                  "--action=Walking"]),
    "dsgdiffu": ("configs/dsgdiffu_h36m.py:cpn", ["--config.sampling.num_hypotheses=2",
                                                  "--config.sampling.num_steps=2",
                                                  "--action=walking 1"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_FAMILY_RUNS))
def test_cli_runs_every_family(name, family_checkpoints, tmp_path, cache):
  coco, scores, size = _synthetic_coco(11)  # 11 frames: two 9-frame clips for the video models
  json_path, _ = _write_inputs(tmp_path, coco, scores)
  config, extra = _FAMILY_RUNS[name]
  proc = tiny_run.python(
      ["-m", "posediff_jax.predict", f"--config={config}",
       f"--checkpoint={family_checkpoints[name]}", f"--keypoints={json_path}",
       f"--image_size={size[0]},{size[1]}", f"--output={tmp_path / 'out.npz'}", *extra],
      cache_dir=cache)
  assert proc.stdout.startswith(f"model sizes from checkpoint {family_checkpoints[name]}: ")
  out = np.load(tmp_path / "out.npz")
  assert out["poses_3d"].shape == (11, 17, 3) and np.isfinite(out["poses_3d"]).all()
  if name in ("d3dp", "finepose", "dsgdiffu"):
    assert out["hypotheses_3d"].shape == (11, 2, 17, 3)


def test_cli_prompt_families_need_an_action_and_mmdiff_is_refused(family_checkpoints, tmp_path,
                                                                  cache):
  coco, scores, size = _synthetic_coco(3)
  json_path, _ = _write_inputs(tmp_path, coco, scores)
  common = [f"--keypoints={json_path}", f"--image_size={size[0]},{size[1]}",
            f"--output={tmp_path / 'out.npz'}"]
  for config, ckpt, extra, words in (
      ("configs/finepose_h36m.py", family_checkpoints["finepose"], [],
       ["pass --action=NAME", "Walking"]),
      ("configs/mmdiff_mmbody.py", family_checkpoints["d3dp"], [],
       ["mmDiff estimates poses from radar point clouds", "evaluate.py"])):
    proc = tiny_run.python(["-m", "posediff_jax.predict", f"--config={config}",
                            f"--checkpoint={ckpt}", *common, *extra], cache_dir=cache, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.npz").exists()
