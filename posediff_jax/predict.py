r"""From a user's own 2D keypoints to root-relative 3D poses, with optional pictures.

  python -m posediff_jax.predict --config configs/diffpose_h36m.py:cpn \
      --checkpoint checkpoints/diffpose_cpn --keypoints video.json --image_size=1920,1080 \
      --output out.npz --render out.gif

Installed with pip, the same is `posediff-predict --config diffpose_h36m.py:cpn ...`. The model
sizes come from the checkpoint; --config gives the family and the sampling settings.

What each family needs (a Human3.6M config and checkpoint; the video families see the sequence
cut into clips of the checkpoint's length, 243 frames, the last one padded):
  diffpose, icassp   nothing more: every frame is lifted on its own
  d3dp               nothing more: --config.sampling.num_hypotheses=H hypotheses, and their mean
  finepose, dsgdiffu --action=NAME: the action whose text prompt conditions the model, one of the
                     checkpoint's prompt actions (Directions, Discussion, ..., Walking,
                     WalkTogether; a missing or unknown one is refused with the list)
  mmdiff             not here: it lifts radar point clouds, not 2D keypoints; evaluate.py runs
                     it on radar data (README 'mmDiff')

KEYPOINTS is a `.npz`, `.npy` or COCO-style `.json` file of COCO-17 or Human3.6M-17 keypoints
(`posediff_jax/keypoints.py` describes the formats and the COCO -> Human3.6M mapping). Pixel
coordinates are normalised by `--image_size=W,H`; `--normalized` says they already are. Joints below
`--min_confidence` are filled in by interpolation over time.

The output `.npz` holds, for N frames:
  poses_3d            [N, 17, 3] root-relative camera-frame metres (Human3.6M-17 order; for a
                      multi-hypothesis model the mean of its hypotheses)
  hypotheses_3d       [N, H, 17, 3] every hypothesis (multi-hypothesis families only)
  keypoints_2d        [N, 17, 2] the normalised Human3.6M-17 input the model saw
  keypoints_2d_pixels [N, 17, 2] the same in pixels (pixel input only)
  interpolated        [N, 17] bool, joints filled in by interpolation
  joint_names         [17] Human3.6M joint names
`--render` writes a PNG (one frame: the sequence's only one, or `--render_frame`), a GIF or an MP4
(with the ffmpeg on PATH, else the one of the imageio-ffmpeg package in requirements.txt).

Every flag, path and config value is checked before anything is read (`config_checks`), and the
keypoints are checked against what the flags say they are (`keypoints.check_plausible`).
"""

import functools
import pathlib
import sys

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from posediff_jax import checkpoint
from posediff_jax import config_checks
from posediff_jax import evaluation
from posediff_jax import families
from posediff_jax import keypoints as keypoints_lib
from posediff_jax import model_sizes
from posediff_jax import plots
from posediff_jax import runtime
from posediff_jax import skeleton


def mmdiff_refusal(config) -> str | None:
  """Why predict cannot run `config.family`'s model (mmDiff), or None."""
  if config.get("family") != "mmdiff":
    return None
  return ("predict lifts 2D keypoints, but mmDiff estimates poses from radar point clouds: "
          "evaluate an mmDiff checkpoint on radar data with evaluate.py --config "
          "configs/mmdiff_mmbody.py (or configs/mmdiff_mmfi.py) --checkpoint DIR (README 'mmDiff')")


def _match_action(action: str, names) -> str | None:
  """The prompt action of `names` that `action` means: itself, regardless of case, spaces and
  underscores, or the action of a Human3.6M key ('Walking 1')."""
  def plain(text):
    return "".join(c for c in text.lower() if c not in " _-")
  if action in names:
    return action
  by_plain = {plain(n): n for n in names}
  for candidate in (action, action.split(" ")[0]):
    if plain(candidate) in by_plain:
      return by_plain[plain(candidate)]
  return None


def action_row(config, meta: dict, action: str | None, checkpoint_dir="the checkpoint"
               ) -> int | None:
  """The text cache row of `--action` for a prompt-conditioned checkpoint; None for the other
  families.

  The rows are the checkpoint's prompt actions, `meta['text_actions']` (the config's
  `text.actions` for a checkpoint that does not record them).

  Raises:
    ValueError: an action given to a family without prompts; a prompt family's action missing
      (when the checkpoint has more than one prompt) or not one of its prompts (both list them).
  """
  family = families.get(config.family)
  if not getattr(family, "TEXT_CONDITIONED", False):
    if action:
      raise ValueError(f"--action={action}: only FinePOSE and DSGDiffu models take an action "
                       f"prompt; a {config.family} model lifts the keypoints alone (leave it out)")
    return None
  names = [str(n) for n in (meta.get("text_actions") or family.text_actions(config))]
  listed = ", ".join(n or "''" for n in names)
  if action is None:
    if len(names) == 1:
      return 0
    raise ValueError(f"checkpoint {checkpoint_dir} is a {config.family} model, which conditions "
                     f"every clip on the text prompt of an action: pass --action=NAME, one of "
                     f"its prompt actions: {listed}")
  name = _match_action(action, names)
  if name is None:
    raise ValueError(f"--action={action} is not one of the prompt actions of checkpoint "
                     f"{checkpoint_dir}: {listed}")
  return names.index(name)


def _check_input(config, keypoints_2d) -> np.ndarray:
  refusal = mmdiff_refusal(config)
  if refusal:
    raise ValueError(refusal)
  keypoints_2d = np.asarray(keypoints_2d, np.float32)
  if keypoints_2d.ndim != 3 or keypoints_2d.shape[1:] != (skeleton.NUM_JOINTS, 2):
    raise ValueError(f"keypoints_2d: expected [frames, {skeleton.NUM_JOINTS}, 2] normalised "
                     f"Human3.6M-17 keypoints, got shape {keypoints_2d.shape}")
  if keypoints_2d.shape[0] == 0:
    raise ValueError("keypoints_2d holds no frames")
  if not np.all(np.isfinite(keypoints_2d)):
    raise ValueError("keypoints_2d holds non-finite values; fill missing joints first "
                     "(keypoints.prepare_keypoints)")
  dataset = config.data.get("dataset", "h36m")
  if dataset != "h36m":
    raise ValueError(f"predict feeds Human3.6M-17 keypoints, but the config's model is for "
                     f"data.dataset={dataset!r} (another joint order); use a Human3.6M config")
  return keypoints_2d


def _padded_batches(array: np.ndarray, batch: int) -> np.ndarray:
  """[N, ...] -> [ceil(N / batch), batch, ...], the last batch padded with its last row."""
  count = -(-array.shape[0] // batch)
  index = np.minimum(np.arange(count * batch), array.shape[0] - 1)
  return array[index].reshape((count, batch) + array.shape[1:])


def clip_starts(num_frames: int, clip_length: int) -> np.ndarray:
  """First frame of each clip: [0, F, 2F, ...], the last clip ending at the last frame.

  The last clip overlaps its predecessor instead of running past the end; a sequence shorter
  than one clip is one clip starting at 0 (edge-padded by `clip_frames`).
  """
  if clip_length < 1:
    raise ValueError(f"clip length must be >= 1, got {clip_length}")
  if num_frames <= clip_length:
    return np.zeros(1, np.int64)
  starts = np.arange(0, num_frames - clip_length, clip_length)
  return np.append(starts, num_frames - clip_length)


def clip_frames(num_frames: int, clip_length: int) -> np.ndarray:
  """int `[n_clips, F]`: the frame each clip position reads (the last frame repeats as padding)."""
  starts = clip_starts(num_frames, clip_length)
  return np.minimum(starts[:, None] + np.arange(clip_length)[None], num_frames - 1)


def predict_sequence(config, params, keypoints_2d, key=None, action_index: int | None = None
                     ) -> dict[str, np.ndarray]:
  """3D poses for a sequence of normalised Human3.6M-17 keypoints with `config.family`'s model.

  Frame families (DiffPose, ICASSP) lift every frame on its own (`family.predict`), in batches of
  `config.eval.batch_size` frames. Video families (a module attribute `VIDEO = True`, e.g. D3DP)
  see `config.model.num_frames`-frame clips: clip i holds frames [F i, F i + F), the last clip the
  last F frames (overlapping its predecessor, whose values it overwrites), and a sequence shorter
  than F is padded by repeating its last frame. Their `family.sample` gives every hypothesis; the
  last DDIM step's are returned with their mean (P-Agg). The joint-wise choice JPMA (J-Agg) is not
  offered: it reprojects with the camera intrinsics and the ground-truth root trajectory, which a
  user's video does not have. FinePOSE and DSGDiffu condition every clip on the text cache row
  `action_index` (`action_row`).

  Args:
    config: the experiment config (`family`, model sizes, sampling, `eval.batch_size`).
    params: the model parameters (`checkpoint.load_model`'s).
    keypoints_2d: `[N, 17, 2]` Human3.6M-17 keypoints in normalised screen coordinates.
    key: PRNG key for stochastic samplers (default: `config.seed`).
    action_index: the text cache row of the prompt (prompt-conditioned families only).

  Returns:
    {'poses_3d': float32 `[N, 17, 3]` root-relative metres} plus, for video families,
    'hypotheses_3d': float32 `[N, H, 17, 3]`.
  """
  keypoints_2d = _check_input(config, keypoints_2d)
  key = jax.random.key(config.seed) if key is None else key
  family = families.get(config.family)
  if getattr(family, "VIDEO", False):
    return _predict_video(config, family, params, keypoints_2d, key, action_index)
  return _predict_frames(config, params, keypoints_2d, key)


def _predict_frames(config, params, keypoints_2d, key) -> dict[str, np.ndarray]:
  predict = evaluation.make_predict_fn(config)
  num_frames = keypoints_2d.shape[0]
  batches = _padded_batches(keypoints_2d, min(int(config.eval.batch_size), num_frames))
  out = [np.asarray(predict(params, batch, jax.random.fold_in(key, i)))
         for i, batch in enumerate(batches)]
  poses = np.concatenate(out)[:num_frames]
  _check_output(poses, (num_frames, skeleton.NUM_JOINTS, 3), f"{config.family}.predict")
  return {"poses_3d": poses.astype(np.float32)}


def _predict_video(config, family, params, keypoints_2d, key, action_index=None
                   ) -> dict[str, np.ndarray]:
  num_frames = keypoints_2d.shape[0]
  clip_length = int(config.model.num_frames)
  index = clip_frames(num_frames, clip_length)
  starts = index[:, 0]
  clips = keypoints_2d[index]  # [n_clips, F, 17, 2]
  batch = min(int(config.eval.batch_size), clips.shape[0])
  sample = jax.jit(functools.partial(family.sample, config))
  # The prompt's text cache row, the same for every clip (only prompt families take one).
  prompt = {} if action_index is None else {"action_index": np.full((batch,), action_index,
                                                                     np.int32)}
  out = []
  for i, clip_batch in enumerate(_padded_batches(clips, batch)):
    steps = np.asarray(sample(params, clip_batch, jax.random.fold_in(key, i), **prompt))
    if steps.ndim != 6 or steps.shape[0] != batch or steps.shape[3:] != (
        clip_length, skeleton.NUM_JOINTS, 3):
      raise ValueError(f"{config.family}.sample returned shape {steps.shape}; expected [clips="
                       f"{batch}, steps, hypotheses, {clip_length}, {skeleton.NUM_JOINTS}, 3]")
    out.append(steps[:, -1])  # the last DDIM step's x0: [batch, H, F, 17, 3]
  per_clip = np.concatenate(out)[:clips.shape[0]]
  hypotheses = np.zeros((num_frames, per_clip.shape[1], skeleton.NUM_JOINTS, 3), np.float32)
  for start, clip in zip(starts, per_clip):
    length = min(clip_length, num_frames - start)
    hypotheses[start:start + length] = np.swapaxes(clip[:, :length], 0, 1)
  # Upstream D3DP quirk (spec §6): the predicted root joint is set to 0, not subtracted.
  hypotheses[:, :, skeleton.ROOT_JOINT] = 0.0
  return {"poses_3d": hypotheses.mean(axis=1), "hypotheses_3d": hypotheses}


def _check_output(array: np.ndarray, shape: tuple[int, ...], what: str) -> None:
  if array.shape != shape:
    raise ValueError(f"{what} returned shape {array.shape}; expected {shape}")


def parse_image_size(text: str | None) -> tuple[int, int] | None:
  """'1920,1080' or '1920x1080' -> (1920, 1080); None stays None."""
  if text is None:
    return None
  parts = text.lower().replace("x", ",").split(",")
  try:
    values = [int(p.strip()) for p in parts]
  except ValueError:
    values = []
  if len(values) != 2:
    raise ValueError(f"--image_size must be W,H in pixels (e.g. 1920,1080), got {text!r}")
  return keypoints_lib.check_image_size(values)


def run(config, checkpoint_dir, keypoints_path, output, *, layout: str = "auto",
        image_size=None, normalized: bool = False,
        min_confidence: float = keypoints_lib.DEFAULT_MIN_CONFIDENCE, render=None,
        render_frame: int | None = None, fps: float = 25.0,
        action: str | None = None) -> dict[str, np.ndarray]:
  """The `python -m posediff_jax.predict` pipeline: read, lift, save, render.

  Every input is checked before the model is loaded, so a wrong file fails at once.

  Args:
    config: the experiment config.
    checkpoint_dir: a converted checkpoint or a `train.py` workdir.
    keypoints_path: the 2D keypoint file.
    output: the `.npz` to write.
    layout: 'auto', 'coco' or 'h36m'.
    image_size: `(width, height)` of the images the pixel keypoints are in.
    normalized: the keypoints are already normalised screen coordinates.
    min_confidence: joints below this confidence are interpolated.
    render: optional picture to write (`.png`, `.gif`, `.mp4`).
    render_frame: the frame a `.png` shows (needed when there are several).
    fps: frames per second of a rendered animation.
    action: FinePOSE/DSGDiffu: the prompt action (`action_row`).

  Returns:
    What was saved to `output`.
  """
  output = pathlib.Path(output)
  if output.suffix != ".npz":
    raise ValueError(f"--output must be a .npz file, got {output}")
  sequence = keypoints_lib.load_keypoints(keypoints_path, layout)
  prepared = keypoints_lib.prepare_keypoints(sequence, image_size=image_size,
                                             min_confidence=min_confidence,
                                             normalized_input=normalized)
  for warning in prepared.warnings:
    print(f"warning: {warning}", file=sys.stderr)
  num_frames = sequence.num_frames
  if render_frame is not None and not render:
    raise ValueError("--render_frame picks the frame of a --render=....png; no --render given")
  if render_frame is not None and not 0 <= render_frame < num_frames:
    raise ValueError(f"--render_frame={render_frame} is outside the sequence's {num_frames} frames")
  if render:
    if render_frame is not None and pathlib.Path(render).suffix.lower() != ".png":
      raise ValueError(f"--render_frame picks the frame of a .png; {render} is an animation")
    plots.check_render_path(render, 1 if render_frame is not None else num_frames)

  refusal = mmdiff_refusal(config)
  if refusal:
    raise ValueError(refusal)
  params, meta, _ = checkpoint.load_model(checkpoint_dir, use_ema=config.eval.use_ema)
  evaluation.check_checkpoint_matches(config, meta, checkpoint_dir)
  row = action_row(config, meta, action, checkpoint_dir)
  result = predict_sequence(config, params, prepared.normalized, action_index=row)
  saved = {**result, "keypoints_2d": prepared.normalized, "interpolated": prepared.interpolated,
           "joint_names": np.array(skeleton.H36M_JOINT_NAMES)}
  if prepared.pixels is not None:
    saved["keypoints_2d_pixels"] = prepared.pixels
  output.parent.mkdir(parents=True, exist_ok=True)
  np.savez(output, **saved)
  hypotheses = result.get("hypotheses_3d")
  print(f"wrote {num_frames} frame(s) of 3D poses to {output}"
        + (f" ({hypotheses.shape[1]} hypotheses and their mean)" if hypotheses is not None else ""))
  if render:
    shown = slice(None) if render_frame is None else slice(render_frame, render_frame + 1)
    keypoints_shown = prepared.pixels if prepared.pixels is not None else prepared.normalized
    plots.render_sequence(
        result["poses_3d"][shown], keypoints_shown[shown], render,
        hypotheses=None if hypotheses is None else hypotheses[shown],
        interpolated=prepared.interpolated[shown], image_size=prepared.image_size, fps=fps,
        title=pathlib.Path(keypoints_path).name
        + ("" if render_frame is None else f", frame {render_frame}"))
    print(f"wrote {render}")
  return saved


def define_flags():
  """The command line's flags, defined only when run as a program (importing defines none)."""
  holders = {
      "config": config_flags.DEFINE_config_file(
          "config", None, "Config file (configs/*.py[:variant]) or a shipped config's name: the "
          "family and its sampling settings (the model sizes come from the checkpoint).",
          lock_config=True),
      "checkpoint": flags.DEFINE_string("checkpoint", None,
                                        "Converted or trained checkpoint directory."),
      "keypoints": flags.DEFINE_string("keypoints", None,
                                       "2D keypoints: .npz, .npy or COCO-style .json."),
      "output": flags.DEFINE_string("output", None, "Where to write the 3D poses (.npz)."),
      "format": flags.DEFINE_enum(
          "format", "auto", list(keypoints_lib.FORMATS),
          "Joint layout of the keypoints: coco (COCO-17), h36m (Human3.6M-17), or auto (.json is "
          "COCO; a .npz says it in a 'layout' entry)."),
      "image_size": flags.DEFINE_string(
          "image_size", None, "W,H: size in pixels of the images the keypoints come from."),
      "normalized": flags.DEFINE_bool(
          "normalized", False, "The keypoints are already normalised screen coordinates."),
      "min_confidence": flags.DEFINE_float(
          "min_confidence", keypoints_lib.DEFAULT_MIN_CONFIDENCE,
          "Joints with a lower confidence are treated as missing and interpolated over time."),
      "render": flags.DEFINE_string(
          "render", None, "Also draw the result: .png (one frame), .gif or .mp4."),
      "render_frame": flags.DEFINE_integer("render_frame", None,
                                           "The frame a .png render shows."),
      "fps": flags.DEFINE_float("fps", 25.0, "Frames per second of a rendered animation."),
      "action": flags.DEFINE_string(
          "action", None, "FinePOSE and DSGDiffu: the action whose text prompt conditions the "
          "model, one of the checkpoint's prompt actions (e.g. Walking); the other families take "
          "none."),
  }
  flags.mark_flags_as_required(["config", "checkpoint", "keypoints", "output"])
  return holders


def main(argv, holders):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; every option is one --flag=value "
                     "(e.g. --image_size=1920,1080)")
  value = {name: holder.value for name, holder in holders.items()}
  config = value["config"]
  refusal = mmdiff_refusal(config)
  if refusal:
    raise ValueError(refusal)
  # The checkpoint's model sizes replace the config's (except those set on the command line).
  adopted = model_sizes.adopt_from_checkpoint(config, value["checkpoint"],
                                              runtime.config_overrides("config"))
  # Every value and path before the keypoints or the model are read.
  config_checks.check_predict(config, value["checkpoint"], value["keypoints"],
                              value["output"], value["render"], value["fps"],
                              layout=value["format"], image_size=value["image_size"],
                              normalized=value["normalized"],
                              min_confidence=value["min_confidence"], action=value["action"])
  runtime.initialize()
  if adopted is not None:
    print(adopted.line(), flush=True)
  run(config, value["checkpoint"], value["keypoints"], value["output"],
      layout=value["format"], image_size=parse_image_size(value["image_size"]),
      normalized=value["normalized"], min_confidence=value["min_confidence"],
      render=value["render"], render_frame=value["render_frame"], fps=value["fps"],
      action=value["action"])


def cli() -> None:
  """`python -m posediff_jax.predict` and `posediff-predict`."""
  holders = define_flags()
  runtime.run(functools.partial(main, holders=holders), usage=__doc__, key_flags=holders)


if __name__ == "__main__":
  cli()
