"""Pictures, made headless (Agg): skeleton frames and animations, evaluation charts."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from posediff_jax import metrics
from posediff_jax import plots
from posediff_jax import skeleton
from tests.conftest import REPO_ROOT


def _poses(frames: int, seed: int = 0) -> np.ndarray:
  """Root-relative camera-frame poses [frames, 17, 3]: a rough standing person, jittered."""
  rng = np.random.default_rng(seed)
  rest = np.zeros((17, 3))
  for joint, parent in enumerate(skeleton.H36M_PARENTS):
    if parent >= 0:
      side = 1.0 if joint in skeleton.H36M_LEFT else -1.0 if joint in skeleton.H36M_RIGHT else 0
      rest[joint] = rest[parent] + [0.1 * side, 0.25 if joint <= 6 else -0.2, 0.0]
  return rest[None] + rng.normal(0, 0.02, (frames, 17, 3))


def _keypoints(poses: np.ndarray) -> np.ndarray:
  """A pinhole view in pixels of a 640 x 480 image."""
  return 500 * poses[..., :2] / (poses[..., 2:] + 4.0) + [320, 240]


def _png_size(path) -> tuple[int, int]:
  assert path.stat().st_size > 0
  with Image.open(path) as image:
    assert image.format == "PNG"
    return image.size


def test_one_frame_png_has_the_asked_size(tmp_path):
  poses = _poses(3)
  path = plots.render_pose_frame(poses[0], _keypoints(poses[0]), tmp_path / "sub" / "one.png",
                                 hypotheses=poses, interpolated=np.arange(17) == 13,
                                 image_size=(640, 480), title="frame", size_px=(640, 320))
  assert _png_size(path) == (640, 320)
  alone = plots.render_pose_frame(poses[1], None, tmp_path / "alone.png")
  assert _png_size(alone) == plots.FRAME_SIZE_PX


def test_sequence_gif_has_every_frame_at_the_asked_size(tmp_path):
  poses = _poses(4)
  hypotheses = poses[:, None] + np.random.default_rng(1).normal(0, 0.03, (4, 3, 17, 3))
  path = plots.render_sequence(poses, _keypoints(poses), tmp_path / "seq.gif",
                               hypotheses=hypotheses, interpolated=np.zeros((4, 17), bool),
                               image_size=(640, 480), fps=10, size_px=(480, 240))
  assert path.stat().st_size > 0
  with Image.open(path) as gif:
    assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (480, 240)
  one = plots.render_sequence(poses[:1], None, tmp_path / "single.png")
  assert _png_size(one) == plots.FRAME_SIZE_PX


def test_mp4_without_ffmpeg_says_so(tmp_path, monkeypatch):
  monkeypatch.setattr(plots, "ffmpeg_available", lambda: False)
  with pytest.raises(FileNotFoundError, match=r"needs ffmpeg.*\.gif"):
    plots.render_sequence(_poses(2), None, tmp_path / "seq.mp4")
  assert not (tmp_path / "seq.mp4").exists()


def _assert_mp4(path, frames: int) -> None:
  """An MP4 container (an `ftyp` box first) that ffmpeg reads back with `frames` video frames."""
  content = path.read_bytes()
  assert content[4:8] == b"ftyp", content[:16]
  # Decoding the whole video: ffmpeg's progress line ends with the number of frames read.
  proc = subprocess.run([plots.ffmpeg_path(), "-i", str(path), "-map", "0:v:0", "-f", "null",
                         "-"], capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  counts = re.findall(r"frame=\s*(\d+)", proc.stderr)
  assert counts and int(counts[-1]) == frames, proc.stderr


def test_mp4_with_the_pip_installed_ffmpeg(tmp_path):
  # requirements.txt's imageio-ffmpeg ships an ffmpeg binary, so MP4 needs no system package.
  assert plots.ffmpeg_available(), "pip install -r requirements.txt brings imageio-ffmpeg"
  path = plots.render_sequence(_poses(3), None, tmp_path / "seq.mp4", size_px=(320, 160))
  _assert_mp4(path, 3)


def test_mp4_falls_back_to_imageio_ffmpeg_without_one_on_path(tmp_path, monkeypatch):
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  from matplotlib import animation  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(animation.FFMpegWriter, "isAvailable", classmethod(lambda cls: False))
  assert plots.ffmpeg_path() == imageio_ffmpeg.get_ffmpeg_exe()
  path = plots.render_sequence(_poses(2), None, tmp_path / "seq.mp4", size_px=(320, 160))
  _assert_mp4(path, 2)


def test_render_rejects_what_it_cannot_draw(tmp_path):
  poses = _poses(3)
  with pytest.raises(ValueError, match=r"PNG shows one frame but the sequence has 3"):
    plots.render_sequence(poses, None, tmp_path / "x.png")
  with pytest.raises(ValueError, match=r"\.png \(one frame\), \.gif or \.mp4"):
    plots.render_sequence(poses, None, tmp_path / "x.avi")
  with pytest.raises(ValueError, match=r"poses_3d: expected shape \[\.\.\., 17, 3\]"):
    plots.render_sequence(poses[..., :2], None, tmp_path / "x.gif")
  with pytest.raises(ValueError, match=r"keypoints_2d has 2 frames but poses_3d has 3"):
    plots.render_sequence(poses, _keypoints(poses[:2]), tmp_path / "x.gif")
  with pytest.raises(ValueError, match=r"does not end in \.png"):
    plots.render_pose_frame(poses[0], None, tmp_path / "x.jpg")


def _table(seed: int) -> dict:
  table = metrics.ActionErrorTable()
  rng = np.random.default_rng(seed)
  actions = np.arange(len(metrics.H36M_ACTIONS)).repeat(2)
  table.update(rng.uniform(0.03, 0.08, actions.size), rng.uniform(0.02, 0.05, actions.size),
               actions)
  return table.to_dict()


def test_action_error_chart_one_table_and_several(tmp_path):
  assert _png_size(plots.action_error_chart(_table(0), tmp_path / "one.png")) == (
      plots.CHART_SIZE_PX)
  modes = {"P_Agg": _table(1), "P_Best": _table(2), "J_Agg": _table(3)}
  path = plots.action_error_chart(modes, tmp_path / "modes.png", title="modes", size_px=(800, 500))
  assert _png_size(path) == (800, 500)
  with pytest.raises(ValueError, match=r"expected a per-action table"):
    plots.action_error_chart({"p1": 3.0}, tmp_path / "bad.png")


def test_hypotheses_curve_reads_json_keys(tmp_path):
  curve = json.loads(json.dumps({1: 52.0, 5: 49.5, 20: 48.1}))  # keys come back as strings
  assert _png_size(plots.hypotheses_curve(curve, tmp_path / "one.png")) == plots.CURVE_SIZE_PX
  several = {"P_Best": {1: 52.0, 20: 45.0}, "J_Best": {1: 52.0, 20: 40.0}}
  assert _png_size(plots.hypotheses_curve(several, tmp_path / "two.png", size_px=(400, 300))) == (
      400, 300)
  with pytest.raises(ValueError, match=r"whole numbers >= 1"):
    plots.hypotheses_curve({0: 50.0}, tmp_path / "bad.png")
  with pytest.raises(ValueError, match=r"expected \{number of hypotheses: MPJPE mm\}"):
    plots.hypotheses_curve({"five": 50.0}, tmp_path / "bad.png")


def test_write_eval_plots_for_frame_and_multi_hypothesis_results(tmp_path):
  frame_result = {"checkpoint": "ckpt", "results": _table(0),
                  "config": {"family": "diffpose", "variant": "cpn",
                             "sampling": {"hypotheses": 1}}}
  written = plots.write_eval_plots(json.loads(json.dumps(frame_result)), tmp_path / "frame")
  assert [p.name for p in written] == ["action_errors.png"]
  multi = {"results": {"P_Agg": _table(1), "J_Best": _table(2)},
           "config": {"family": "d3dp", "sampling": {"num_hypotheses": 5}},
           plots.HYPOTHESES_CURVE_KEY: {"P_Agg": {1: 50.0, 5: 48.0},
                                        "J_Best": {1: 50.0, 5: 41.0}}}
  written = plots.write_eval_plots(json.loads(json.dumps(multi)), tmp_path / "multi")
  assert [p.name for p in written] == ["action_errors.png", "error_vs_hypotheses.png"]
  assert all(_png_size(p) for p in written)
  del multi[plots.HYPOTHESES_CURVE_KEY]
  with pytest.raises(ValueError, match=r"5-hypothesis model but has no 'mpjpe_by_hypotheses'"):
    plots.write_eval_plots(multi, tmp_path / "missing")
  assert not (tmp_path / "missing").exists()
  with pytest.raises(ValueError, match=r"a dict with 'results'"):
    plots.write_eval_plots({"table": 1}, tmp_path / "bad")


def test_importing_the_library_does_not_import_matplotlib():
  code = ("import sys, posediff_jax.plots, posediff_jax.predict, posediff_jax.keypoints; "
          "print('matplotlib' in sys.modules)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                        text=True, check=True)
  assert proc.stdout.strip() == "False"
