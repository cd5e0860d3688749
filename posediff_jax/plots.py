"""Pictures: 3D skeletons beside their 2D input, and charts of evaluation results.

- `render_pose_frame` / `render_sequence`: a 3D view of the Human3.6M-17 skeleton (the hypotheses
  of a multi-hypothesis model drawn faintly around their aggregate) with the 2D input beside it, as
  a PNG for one frame, a GIF or an MP4 for a sequence. MP4 needs an ffmpeg executable: the one on
  PATH (matplotlib's `animation.ffmpeg_path`), else the one the imageio-ffmpeg wheel ships
  (requirements.txt), so a pip install alone can write MP4.
- `action_error_chart`, `hypotheses_curve`, `write_eval_plots`: the per-action error bars and the
  error-versus-number-of-hypotheses curve of an evaluation.

matplotlib is imported inside the functions (importing this module does not need it) and always
with the non-interactive Agg backend, so everything works on a headless machine. Figures are made
with the object-oriented API (no pyplot figure registry) and saved at exactly `size_px` pixels.

Poses are camera-frame metres (x right, y down, z forward); the 3D view puts z into the screen and
-y up, so the person stands upright.
"""

import math
import pathlib
import shutil
from typing import Any, Mapping

import numpy as np

from posediff_jax import skeleton

DPI = 100
FRAME_SIZE_PX = (960, 480)
CHART_SIZE_PX = (1200, 700)
CURVE_SIZE_PX = (800, 500)
# Key of `write_eval_plots`'s input holding MPJPE by number of hypotheses (see there).
HYPOTHESES_CURVE_KEY = "mpjpe_by_hypotheses"
IMAGE_SUFFIXES = (".png",)
ANIMATION_SUFFIXES = (".gif", ".mp4")

_RIGHT_COLOR = "tab:red"
_LEFT_COLOR = "tab:blue"
_CENTRE_COLOR = "0.25"


def _matplotlib():
  """matplotlib on the Agg backend, with its 3D axes registered."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from mpl_toolkits import mplot3d  # pylint: disable=g-import-not-at-top,unused-import
  return matplotlib


def check_matplotlib() -> None:
  """A clear error now, rather than after a long evaluation, when matplotlib is missing."""
  try:
    _matplotlib()
  except ImportError as e:
    raise ImportError("plots need matplotlib: pip install -r requirements.txt") from e


def _figure(size_px: tuple[int, int]):
  """A figure of exactly `size_px` pixels at `DPI`, on an Agg canvas."""
  _matplotlib()
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top

  width, height = _check_size(size_px)
  fig = mpl_figure.Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _check_size(size_px) -> tuple[int, int]:
  try:
    width, height = (int(v) for v in size_px)
  except (TypeError, ValueError):
    raise ValueError(f"size_px must be (width, height) in pixels, got {size_px!r}") from None
  if width < 16 or height < 16:
    raise ValueError(f"size_px must be at least 16 x 16 pixels, got {size_px!r}")
  return width, height


def _edge_color(child: int) -> str:
  if child in skeleton.H36M_RIGHT:
    return _RIGHT_COLOR
  if child in skeleton.H36M_LEFT:
    return _LEFT_COLOR
  return _CENTRE_COLOR


def _check_poses(array, what: str, channels: int, leading: int) -> np.ndarray:
  """`array` as float64 with shape `[*leading axes, 17, channels]`, or a ValueError."""
  array = np.asarray(array, np.float64)
  if array.ndim != leading + 2 or array.shape[-2:] != (skeleton.NUM_JOINTS, channels):
    axes = ", ".join(["..."] * leading + [str(skeleton.NUM_JOINTS), str(channels)])
    raise ValueError(f"{what}: expected shape [{axes}], got {array.shape}")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{what}: holds non-finite values")
  return array


def _to_view(pose: np.ndarray) -> np.ndarray:
  """Camera frame (x right, y down, z forward) -> plot axes (x, depth, up)."""
  return np.stack([pose[..., 0], pose[..., 2], -pose[..., 1]], axis=-1)


def _radius_3d(*arrays) -> float:
  """Half the side of the 3D view's cube: everything fits, at least 0.8 m."""
  extent = max(float(np.max(np.abs(a))) for a in arrays if a is not None)
  return max(0.8, 1.1 * extent)


def _limits_2d(keypoints: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(x limits, y limits top-down) of the 2D panel: a square around all keypoints given."""
  low = keypoints.reshape(-1, 2).min(axis=0)
  high = keypoints.reshape(-1, 2).max(axis=0)
  centre, half = (low + high) / 2, max(float(np.max(high - low)) * 0.6, 1e-3)
  return (centre[0] - half, centre[0] + half), (centre[1] + half, centre[1] - half)


def _draw_skeleton_3d(ax, pose: np.ndarray, *, alpha: float, width: float) -> None:
  view = _to_view(pose)
  for parent, child in skeleton.H36M_EDGES:
    ax.plot(*view[[parent, child]].T, color=_edge_color(child), alpha=alpha, linewidth=width)


def _draw_frame(fig, pose, keypoints, hypotheses, interpolated, *, radius, limits_2d,
                image_size, title) -> None:
  """Clears `fig` and draws one frame: the 3D panel, and the 2D panel when there is 2D input."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  fig.clear()
  columns = 2 if keypoints is not None else 1
  ax3d = fig.add_subplot(1, columns, 1, projection="3d")
  if hypotheses is not None:
    for hypothesis in hypotheses:
      _draw_skeleton_3d(ax3d, hypothesis, alpha=0.2, width=1.0)
  _draw_skeleton_3d(ax3d, pose, alpha=1.0, width=2.5)
  ax3d.set_xlim(-radius, radius)
  ax3d.set_ylim(-radius, radius)
  ax3d.set_zlim(-radius, radius)
  ax3d.set_box_aspect((1, 1, 1))
  for axis in (ax3d.xaxis, ax3d.yaxis, ax3d.zaxis):
    axis.set_major_locator(ticker.MaxNLocator(4))
  ax3d.view_init(elev=15.0, azim=-70.0)
  ax3d.set_xlabel("x (m)")
  ax3d.set_ylabel("depth (m)")
  ax3d.set_zlabel("up (m)")
  label = "3D (root-relative)"
  if hypotheses is not None:
    label += f", mean of {len(hypotheses)} hypotheses"
  ax3d.set_title(label, fontsize=9)
  if keypoints is not None:
    ax2d = fig.add_subplot(1, columns, 2)
    for parent, child in skeleton.H36M_EDGES:
      ax2d.plot(*keypoints[[parent, child]].T, color=_edge_color(child), linewidth=2)
    seen = np.ones(skeleton.NUM_JOINTS, bool) if interpolated is None else ~interpolated
    ax2d.scatter(*keypoints[seen].T, s=12, color="k", zorder=3)
    if not seen.all():
      ax2d.scatter(*keypoints[~seen].T, s=30, facecolors="none", edgecolors="k", zorder=3,
                   label="interpolated")
      ax2d.legend(loc="lower right", fontsize=8)
    ax2d.set_xlim(*limits_2d[0])
    ax2d.set_ylim(*limits_2d[1])
    ax2d.set_aspect("equal")
    ax2d.set_title("2D input" + (f" (pixels of a {image_size[0]} x {image_size[1]} image)"
                                 if image_size else ""), fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.subplots_adjust(left=0.02, right=0.97, bottom=0.08, top=0.88, wspace=0.1)


def check_render_path(path, num_frames: int) -> str:
  """Checks before any work that `path` can be written; returns its suffix ('.png', '.gif', '.mp4').

  Raises:
    ValueError: an unknown suffix, or a PNG asked for a sequence of more than one frame.
    FileNotFoundError: MP4 asked for but ffmpeg is not installed.
  """
  suffix = pathlib.Path(path).suffix.lower()
  if suffix not in IMAGE_SUFFIXES + ANIMATION_SUFFIXES:
    raise ValueError(f"cannot render to {path}: the file must end in .png (one frame), .gif or "
                     ".mp4 (a sequence)")
  if suffix == ".png" and num_frames != 1:
    raise ValueError(f"{path}: a PNG shows one frame but the sequence has {num_frames}; choose "
                     "one (--render_frame) or render to .gif / .mp4")
  if suffix == ".mp4" and not ffmpeg_available():
    raise FileNotFoundError(f"writing {path} needs ffmpeg, which was not found (neither on PATH "
                            "nor from the imageio-ffmpeg package): pip install imageio-ffmpeg "
                            "(it is in requirements.txt), install ffmpeg, or render to .gif")
  return suffix


def ffmpeg_path() -> str | None:
  """The ffmpeg executable MP4 rendering uses, or None when there is none.

  matplotlib's (`animation.ffmpeg_path`, by default `ffmpeg` on PATH) when it finds one, else the
  binary inside the imageio-ffmpeg wheel, which needs nothing but pip.
  """
  _matplotlib()
  from matplotlib import animation  # pylint: disable=g-import-not-at-top
  if animation.FFMpegWriter.isAvailable():
    configured = animation.FFMpegWriter.bin_path()
    return shutil.which(configured) or configured
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  try:
    return imageio_ffmpeg.get_ffmpeg_exe()
  except RuntimeError:  # the package has no binary for this platform
    return None


def ffmpeg_available() -> bool:
  """Whether an ffmpeg executable to write MP4 can be found (`ffmpeg_path`)."""
  return ffmpeg_path() is not None


def render_pose_frame(pose_3d, keypoints_2d, path, *, hypotheses=None, interpolated=None,
                      image_size=None, title: str | None = None,
                      size_px: tuple[int, int] = FRAME_SIZE_PX) -> pathlib.Path:
  """Saves one frame as a PNG: the 3D pose, and the 2D input beside it.

  Args:
    pose_3d: `[17, 3]` root-relative camera-frame metres (a multi-hypothesis model's aggregate).
    keypoints_2d: `[17, 2]` the Human3.6M-17 input (pixels or normalised units, y pointing
      down), or None for the 3D view alone.
    path: the `.png` to write (its folder is created).
    hypotheses: optional `[H, 17, 3]` hypotheses, drawn faintly.
    interpolated: optional bool `[17]`: joints filled in by interpolation (drawn hollow).
    image_size: `(width, height)` of the image the 2D pixels are in (named in the 2D panel).
    title: a line above the figure.
    size_px: `(width, height)` of the PNG in pixels.

  Returns:
    `path`.
  """
  path = pathlib.Path(path)
  if path.suffix.lower() != ".png":
    raise ValueError(f"render_pose_frame writes PNG; {path} does not end in .png")
  pose = _check_poses(pose_3d, "pose_3d", 3, 0)
  keypoints = None if keypoints_2d is None else _check_poses(keypoints_2d, "keypoints_2d", 2, 0)
  hyps = None if hypotheses is None else _check_poses(hypotheses, "hypotheses", 3, 1)
  mask = None if interpolated is None else _check_mask(interpolated, (skeleton.NUM_JOINTS,))
  fig = _figure(size_px)
  limits_2d = None if keypoints is None else _limits_2d(keypoints)
  _draw_frame(fig, pose, keypoints, hyps, mask, radius=_radius_3d(pose, hyps),
              limits_2d=limits_2d, image_size=image_size, title=title)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=DPI, format="png")
  return path


def _check_mask(mask, shape) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.shape != tuple(shape) or mask.dtype != np.bool_:
    raise ValueError(f"interpolated: expected a bool array of shape {tuple(shape)}, got "
                     f"{mask.dtype} {mask.shape}")
  return mask


def render_sequence(poses_3d, keypoints_2d, path, *, hypotheses=None, interpolated=None,
                    image_size=None, fps: float = 25.0, title: str | None = None,
                    size_px: tuple[int, int] = FRAME_SIZE_PX) -> pathlib.Path:
  """Saves a sequence as a GIF or an MP4 (`ffmpeg_path`'s ffmpeg); a one-frame `.png` also works.

  Args:
    poses_3d: `[N, 17, 3]` root-relative camera-frame metres.
    keypoints_2d: `[N, 17, 2]` the 2D input (see `render_pose_frame`), or None.
    path: `.gif`, `.mp4`, or `.png` when N = 1 (its folder is created).
    hypotheses: optional `[N, H, 17, 3]`, drawn faintly.
    interpolated: optional bool `[N, 17]`: joints filled in by interpolation (drawn hollow).
    image_size: `(width, height)` pixels of the 2D input's image.
    fps: frames per second of the animation.
    title: a line above every frame (the frame number is added).
    size_px: `(width, height)` of every frame in pixels.

  Returns:
    `path`.
  """
  path = pathlib.Path(path)
  poses = _check_poses(poses_3d, "poses_3d", 3, 1)
  num_frames = poses.shape[0]
  suffix = check_render_path(path, num_frames)
  keypoints = None if keypoints_2d is None else _check_poses(keypoints_2d, "keypoints_2d", 2, 1)
  hyps = None if hypotheses is None else _check_poses(hypotheses, "hypotheses", 3, 2)
  mask = (None if interpolated is None
          else _check_mask(interpolated, (num_frames, skeleton.NUM_JOINTS)))
  for name, array in (("keypoints_2d", keypoints), ("hypotheses", hyps)):
    if array is not None and array.shape[0] != num_frames:
      raise ValueError(f"{name} has {array.shape[0]} frames but poses_3d has {num_frames}")
  if suffix == ".png":
    return render_pose_frame(poses[0], None if keypoints is None else keypoints[0], path,
                             hypotheses=None if hyps is None else hyps[0],
                             interpolated=None if mask is None else mask[0],
                             image_size=image_size, title=title, size_px=size_px)
  if not (math.isfinite(fps) and fps > 0):
    raise ValueError(f"fps must be a positive number, got {fps!r}")
  matplotlib = _matplotlib()
  from matplotlib import animation  # pylint: disable=g-import-not-at-top

  fig = _figure(size_px)
  # matplotlib's default MP4 codec is H.264 in yuv420p, which every player reads. The writer
  # looks the executable up in rcParams when it starts, so the whole save runs in this context.
  settings = {"animation.ffmpeg_path": ffmpeg_path()} if suffix == ".mp4" else {}
  radius = _radius_3d(poses, hyps)
  limits_2d = None if keypoints is None else _limits_2d(keypoints)
  path.parent.mkdir(parents=True, exist_ok=True)
  with matplotlib.rc_context(settings):
    writer = (animation.PillowWriter(fps=fps) if suffix == ".gif"
              else animation.FFMpegWriter(fps=fps))
    with writer.saving(fig, str(path), dpi=DPI):
      for f in range(num_frames):
        label = f"frame {f + 1}/{num_frames}"
        _draw_frame(fig, poses[f], None if keypoints is None else keypoints[f],
                    None if hyps is None else hyps[f], None if mask is None else mask[f],
                    radius=radius, limits_2d=limits_2d, image_size=image_size,
                    title=f"{title}: {label}" if title else label)
        writer.grab_frame()
  return path


# ---------------------------------------------------------------------------------------------
# Evaluation charts.


def _is_table(value) -> bool:
  return isinstance(value, Mapping) and isinstance(value.get("actions"), Mapping)


def _tables(table_dict) -> dict[str, Mapping]:
  """One `ActionErrorTable.to_dict()` -> {'': it}; {label: to_dict()} -> itself."""
  if _is_table(table_dict):
    return {"": table_dict}
  if isinstance(table_dict, Mapping):
    tables = {str(k): v for k, v in table_dict.items() if _is_table(v)}
    if tables:
      return tables
  raise ValueError("expected a per-action table ({'actions': {name: {'p1_mm', 'p2_mm'}}, ...}, as "
                   "ActionErrorTable.to_dict() gives) or a dict of such tables by label")


def action_error_chart(table_dict, path, *, title: str | None = None,
                       size_px: tuple[int, int] = CHART_SIZE_PX) -> pathlib.Path:
  """Saves a bar chart of the per-action errors: P1 (MPJPE) above, P2 (P-MPJPE) below.

  Args:
    table_dict: `ActionErrorTable.to_dict()`, or `{label: to_dict()}` for several series (e.g. the
      aggregation modes of a multi-hypothesis model), drawn as grouped bars.
    path: the image to write (format from the suffix, e.g. `.png`; its folder is created).
    title: a line above the chart.
    size_px: `(width, height)` in pixels.

  Returns:
    `path`.
  """
  tables = _tables(table_dict)
  actions = list(next(iter(tables.values()))["actions"])
  for label, table in tables.items():
    if list(table["actions"]) != actions:
      raise ValueError(f"table {label!r} lists other actions than the first: "
                       f"{list(table['actions'])} vs {actions}")
  names = actions + (["Average"] if all("average" in t for t in tables.values()) else [])
  fig = _figure(size_px)
  positions = np.arange(len(names))
  width = 0.8 / len(tables)
  for row, (metric, label) in enumerate((("p1_mm", "MPJPE (mm)"), ("p2_mm", "P-MPJPE (mm)"))):
    ax = fig.add_subplot(2, 1, row + 1)
    for i, (series, table) in enumerate(tables.items()):
      values = [float(table["actions"][a][metric]) for a in actions]
      if names[-1] == "Average":
        values.append(float(table["average"][metric]))
      ax.bar(positions + (i - (len(tables) - 1) / 2) * width, values, width,
             label=series or None)
    ax.set_ylabel(label)
    ax.set_xticks(positions)
    ax.set_xticklabels(names if row == 1 else [], rotation=45, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if len(tables) > 1 and row == 0:
      ax.legend(fontsize=8, ncol=len(tables))
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=DPI)
  return path


def _curve_points(mpjpe_by_h: Mapping, label: str) -> tuple[np.ndarray, np.ndarray]:
  """{H: mm} (keys may be JSON strings) -> (H sorted, mm)."""
  points = []
  for h, value in mpjpe_by_h.items():
    try:
      count, error = int(h), float(value)
    except (TypeError, ValueError):
      raise ValueError(f"curve {label!r}: expected {{number of hypotheses: MPJPE mm}}, got entry "
                       f"{h!r}: {value!r}") from None
    if count < 1 or str(count) != str(h).strip() or not math.isfinite(error):
      raise ValueError(f"curve {label!r}: hypotheses must be whole numbers >= 1 and errors finite, "
                       f"got {h!r}: {value!r}")
    points.append((count, error))
  if not points:
    raise ValueError(f"curve {label!r} has no points")
  points.sort()
  return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def hypotheses_curve(mpjpe_by_h: Mapping, path, *, title: str | None = None,
                     size_px: tuple[int, int] = CURVE_SIZE_PX) -> pathlib.Path:
  """Saves MPJPE against the number of hypotheses H.

  Args:
    mpjpe_by_h: `{H: MPJPE mm}`, or `{label: {H: MPJPE mm}}` for several lines (e.g. one per
      aggregation mode). Keys may be strings, as JSON gives them back.
    path: the image to write (its folder is created).
    title: a line above the chart.
    size_px: `(width, height)` in pixels.

  Returns:
    `path`.
  """
  if not isinstance(mpjpe_by_h, Mapping) or not mpjpe_by_h:
    raise ValueError(f"expected a non-empty dict {{hypotheses: MPJPE mm}}, got {mpjpe_by_h!r}")
  nested = all(isinstance(v, Mapping) for v in mpjpe_by_h.values())
  curves = ({str(k): _curve_points(v, str(k)) for k, v in mpjpe_by_h.items()} if nested
            else {"": _curve_points(mpjpe_by_h, "")})
  fig = _figure(size_px)
  ax = fig.add_subplot(1, 1, 1)
  for label, (counts, errors) in curves.items():
    ax.plot(counts, errors, marker="o", label=label or None)
  ticks = sorted({int(c) for counts, _ in curves.values() for c in counts})
  ax.set_xticks(ticks)
  ax.set_xlabel("number of hypotheses H")
  ax.set_ylabel("MPJPE (mm)")
  ax.grid(alpha=0.3)
  if len(curves) > 1 or next(iter(curves)):
    ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=DPI)
  return path


def _num_hypotheses(result: Mapping) -> int:
  sampling = (result.get("config") or {}).get("sampling") or {}
  return int(sampling.get("num_hypotheses", 1) or 1)


def write_eval_plots(result_dict: Mapping[str, Any], out_dir) -> list[pathlib.Path]:
  """`evaluate.py --plots DIR`: the charts of what `evaluation.run` returns.

  Writes `action_errors.png` (per-action P1 and P2 bars; one series per table when `results`
  holds several, e.g. `{mode: table}`) and, for a multi-hypothesis model, `error_vs_hypotheses.png`
  from `result_dict["mpjpe_by_hypotheses"]` (`{H: mm}` or `{mode: {H: mm}}`).

  Args:
    result_dict: `evaluation.run`'s result: `results` is one `ActionErrorTable.to_dict()` or a dict
      of them; `config` is the config as a dict (its `sampling.num_hypotheses` > 1 marks a
      multi-hypothesis model, which must then come with `mpjpe_by_hypotheses`).
    out_dir: the folder to write into (created).

  Returns:
    The files written.

  Raises:
    ValueError: no per-action table, or a multi-hypothesis result without its curve.
  """
  if not isinstance(result_dict, Mapping) or "results" not in result_dict:
    raise ValueError("write_eval_plots: expected evaluation.run's result, a dict with 'results'")
  tables = _tables(result_dict["results"])
  curve = result_dict.get(HYPOTHESES_CURVE_KEY)
  hypotheses = _num_hypotheses(result_dict)
  if curve is None and hypotheses > 1:
    raise ValueError(f"the result is from a {hypotheses}-hypothesis model but has no "
                     f"'{HYPOTHESES_CURVE_KEY}' ({{H: MPJPE mm}}) to plot against H")
  config = result_dict.get("config") or {}
  name = " ".join(str(config[k]) for k in ("family", "variant") if config.get(k))
  out_dir = pathlib.Path(out_dir)
  written = [action_error_chart(tables if len(tables) > 1 else tables[next(iter(tables))],
                                out_dir / "action_errors.png",
                                title=f"{name}: error per action" if name else None)]
  if curve is not None:
    written.append(hypotheses_curve(curve, out_dir / "error_vs_hypotheses.png",
                                    title=f"{name}: error vs hypotheses" if name else None))
  return written
