r"""Times mmDiff's two phases at the released mmBody sizes: phase-2 refinement and phase-1 encoding.

  python benchmarks/bench_mmdiff.py [--batch 256] [--phase1-batch 16] [--repeats 10] \
      [--phase1-repeats 3] [--dtypes float32,bfloat16]

Random weights at the released sizes (configs/mmdiff_mmbody.py: the GCNdiff denoiser with hid 96,
5 layers and all four conditions; the P4Transformer encoder with dim 1024, depth 10), on inputs
built from the synthetic radar generator (a person's points plus clutter, preprocessed as upstream:
4 frames x 5184 points x 6 channels, zero-padded). Phase 2 is the whole evaluation pipeline of one
batch (`families.mmdiff.predict`: 3 DDIM steps from the coarse pose, each with the 50-nearest-point
search per joint over 4 x 5184 points), timed for each compute dtype (`eval.compute_dtype`);
phase 1 is the encoder over radar windows. Reports frames/s for both, the compile times and, with
both dtypes, how far bfloat16's poses land from float32's, and rewrites its section of
docs/benchmarks.md.
"""

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from configs import mmdiff_mmbody  # pylint: disable=g-import-not-at-top
from posediff_jax.data import radar as radar_data  # pylint: disable=g-import-not-at-top
# pylint: disable-next=g-import-not-at-top
from posediff_jax.data.synthetic import radar as synthetic_radar
from posediff_jax.families import mmdiff  # pylint: disable=g-import-not-at-top

SECTION = "## mmDiff (mmBody sizes): phase-2 refinement and phase-1 encoding"
# The authors' code samples about 22 frames/s in phase 2 (issue #6).
UPSTREAM_PHASE2_FRAMES_PER_S = 22.0


def radar_windows(config, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`count` synthetic windows [count, T, P, C] preprocessed as upstream, and their root-relative
  poses [count, 17, 3]."""
  settings = radar_data.settings_from_config(config)
  prep = settings.preprocessing
  rng = np.random.default_rng(seed)
  frames = len(settings.window_offsets)
  motion = synthetic_radar.skeleton_motion(0, count + frames, seed, 3.0)
  velocity = np.gradient(motion, axis=0) * 10.0
  scale = np.array([1, 1, 1, 1e-38, 0.1, 100.0])  # the raw columns upstream's factors undo
  windows = np.zeros((count, frames, prep.points, prep.channels), np.float32)
  for i in range(count):
    for slot in range(frames):
      k = i + frames - slot
      raw = synthetic_radar.radar_frame(motion[k], velocity[k], rng, body_points=1500,
                                        clutter_points=400) * scale
      windows[i, slot] = radar_data.preprocess_frame(raw, prep, centre=motion[i + frames, 0])
  poses = motion[frames:] - motion[frames:, :1]
  return windows, poses.astype(np.float32)


def compile_timed(fn, args):
  """(the compiled function, its compile seconds, the output of its warm-up call)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  out = jax.block_until_ready(compiled(*args))
  return compiled, compile_s, out


def interleaved_seconds(fns: dict, args, repeats: int) -> dict[str, list[float]]:
  """Seconds per call of each function, over `repeats` rounds of one call each.

  Interleaved, so a slow spell of a shared machine hits every function alike.
  """
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t0)
  return times


def compile_and_time(fn, args, repeats: int) -> tuple[float, float]:
  """(compile seconds, median seconds per call) of a jitted function."""
  compiled, compile_s, _ = compile_timed(fn, args)
  return compile_s, common.median_seconds(lambda: compiled(*args), repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=256, help="phase-2 frames per call")
  parser.add_argument("--phase1-batch", type=int, default=16,
                      help="phase-1 windows per call (0 skips phase 1)")
  parser.add_argument("--repeats", type=int, default=10, help="phase-2 calls per dtype")
  parser.add_argument("--phase1-repeats", type=int, default=3)
  parser.add_argument("--dtypes", default="float32,bfloat16",
                      help="phase-2 compute dtypes, comma-separated")
  parser.add_argument("--output", default=str(common.DOCS))
  args = parser.parse_args()

  config = mmdiff_mmbody.get_config("head")
  rng = np.random.default_rng(0)
  windows, poses = radar_windows(config, max(args.batch, args.phase1_batch))
  past = config.model.past_frames
  # Coarse poses a few centimetres off the truth, the history a copy of them.
  coarse = poses[:args.batch] + rng.normal(scale=0.03, size=poses[:args.batch].shape)
  batch = {"x_history": np.tile(coarse, (1, 1, past + 1)).astype(np.float32),
           "features": rng.normal(size=(args.batch, 17, config.model.feature_size)
                                  ).astype(np.float32),
           "radar": windows[:args.batch]}
  params = jax.device_put(mmdiff.init_params(config, jax.random.key(0)))
  batch = jax.device_put(batch)
  key = jax.random.key(0)
  rows, poses, compiled, compile_s = [], {}, {}, {}
  for dtype in args.dtypes.split(","):
    dtype_config = config.copy_and_resolve_references()
    dtype_config.eval.compute_dtype = dtype
    compiled[dtype], compile_s[dtype], pose = compile_timed(
        lambda p, b, k, c=dtype_config: mmdiff.predict(c, p, b, k), (params, batch, key))
    poses[dtype] = np.asarray(pose)
  times = interleaved_seconds(compiled, (params, batch, key), args.repeats)
  for dtype, seconds in times.items():
    sec = float(np.median(seconds))
    fps = args.batch / sec
    slowest, fastest = args.batch / max(seconds), args.batch / min(seconds)
    speedup = fps / UPSTREAM_PHASE2_FRAMES_PER_S
    rows.append((f"phase 2, {dtype}: 3 DDIM steps (GCNdiff, all conditions)", args.batch,
                 compile_s[dtype], sec, f"{fps:.1f} ({slowest:.0f}-{fastest:.0f})",
                 f"~{UPSTREAM_PHASE2_FRAMES_PER_S:.0f} frames/s (here {speedup:.1f}x)"))
    print(f"phase 2, {dtype}: compile {compile_s[dtype]:.1f} s, {sec:.3f} s per batch of "
          f"{args.batch}, {fps:.1f} frames/s (calls {slowest:.1f}-{fastest:.1f})", flush=True)
  if args.phase1_batch > 0:
    encoder = jax.device_put(mmdiff.init_encoder(config, jax.random.key(1)))
    radar = jax.device_put(windows[:args.phase1_batch])
    compile_s, sec = compile_and_time(lambda v, r: mmdiff.encode(config, v, r),
                                      (encoder, radar), args.phase1_repeats)
    fps = args.phase1_batch / sec
    rows.append(("phase 1, float32: P4Transformer encoder", args.phase1_batch, compile_s, sec,
                 f"{fps:.1f}", "n/a"))
    print(f"phase 1: compile {compile_s:.1f} s, {sec:.3f} s per batch of {args.phase1_batch}, "
          f"{fps:.1f} frames/s", flush=True)

  lines = [SECTION, "",
           f"Machine: {common.machine()}. Environment: {common.environment()}.",
           f"Command: `python benchmarks/bench_mmdiff.py {' '.join(sys.argv[1:])}`".rstrip() +
           f" (median of {args.repeats} phase-2 and {args.phase1_repeats} phase-1 call(s) after a "
           "warm-up, the phase-2 dtypes interleaved call by call, the range over the calls in "
           "brackets; random weights at the released "
           "mmBody sizes; synthetic radar windows of 4 x 5184 points).", "",
           "| pass | frames per call | compile | s per call | frames/s | authors' code |",
           "|---|---|---|---|---|---|"]
  for name, size, compile_s, sec, fps, upstream in rows:
    lines.append(f"| {name} | {size} | {compile_s:.1f} s | {sec:.3f} | {fps} | {upstream} |")
  lines += common.bfloat16_note(poses)
  common.write_section(args.output, SECTION, "\n".join(lines) + "\n")
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
