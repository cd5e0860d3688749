r"""Times one FinePOSE / DSGDiffu denoiser call at the README evaluation size here.

  python benchmarks/bench_finepose.py [--families finepose,dsgdiffu] [--dtypes float32,bfloat16]
      [--clips 4] [--hypotheses 20] [--repeats 1] [--output docs/benchmarks.md]

One evaluation mini-batch at the README settings (configs/finepose_h36m.py, dsgdiffu_h36m.py: 4
clips, H=20 hypotheses, K=10 DDIM steps, flip TTA) is 2 x K = 20 denoiser calls, each over clips x H
rows of 243 frames x 17 joints: minutes per call on a 2-core CPU. So this times ONE call, jitted
(compile time reported apart), of the network function the sampler uses (`finepose._eval_apply`,
prompts bound, eval.cpu_chunk_size rows per pass on CPU), on one flip direction of the first step,
at that shape (the sampler runs a step's plain and mirrored calls in one program): random weights
at the released sizes (MixSTE dim 512, depth 8; text branch 4 layers of width 512), a random text
cache, and every clip with one prompt, as in an evaluation mini-batch (one video). The output
frames/s of a whole evaluation are derived from the measured call: clips x 243 / (2 x K x s per
call). For bfloat16 compute (eval.compute_dtype) it reports how far its x0 lands from float32's
(same weights, same inputs). Rewrites its section of docs/benchmarks.md.
"""

import argparse
import functools
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from configs import dsgdiffu_h36m  # pylint: disable=g-import-not-at-top
from configs import finepose_h36m  # pylint: disable=g-import-not-at-top
from posediff_jax.families import finepose  # pylint: disable=g-import-not-at-top

SECTION = "## FinePOSE and DSGDiffu evaluation (243 frames, H=20, K=10, flip TTA), per call"
CONFIGS = {"finepose": finepose_h36m, "dsgdiffu": dsgdiffu_h36m}
NAMES = {"finepose": "FinePOSE", "dsgdiffu": "DSGDiffu"}
# The authors' code: one denoiser call of 4 clips x 20 hypotheses x 243 frames in 162 s on a
# 2-core CPU, 2 threads, torch CPU (issue #5).
UPSTREAM_S_PER_CALL = 162.0
UPSTREAM_SHAPE = (4, 20)  # (clips, hypotheses) of that figure


def call_inputs(config, clips: int, hypotheses: int, seed: int = 0):
  """The rows of one first-step call, clip-major as `d3dp._x0_scaled` builds them.

  Returns:
    rows_2d [N, F, J, 2], rows_x [N, F, J, 3], rows_t [N] and action_index [clips], where
    N = clips x hypotheses.
  """
  rng = np.random.default_rng(seed)
  m, d = config.model, config.diffusion
  input_2d = rng.uniform(-0.8, 0.8, (clips, m.num_frames, m.num_joints, 2)).astype(np.float32)
  x_t = rng.normal(size=(clips * hypotheses, m.num_frames, m.num_joints, 3)).astype(np.float32)
  bound = d.clip * d.scale
  rows_x = np.clip(x_t, -bound, bound) / d.scale
  rows_2d = np.repeat(input_2d, hypotheses, axis=0)
  # The sampler's first step, the largest timestep.
  rows_t = np.full((clips * hypotheses,), finepose.timesteps(config)[-1], np.int32)
  # An evaluation mini-batch holds clips of one video: one prompt (Human3.6M's first action).
  action_index = np.zeros((clips,), np.int32)
  return rows_2d, rows_x, rows_t, action_index


def denoiser_call(config, params, rows_2d, rows_x, rows_t, action_index):
  """x0 [N, F, J, 3] of one network call (one group: one flip direction of one step)."""
  # The sampler's own network call (prompt rows, compute dtype), so this follows any change to it.
  apply_fn = finepose._eval_apply(  # pylint: disable=protected-access
      config, params, action_index.shape[0], action_index, None, None)
  return apply_fn(rows_2d[None], rows_x[None], rows_t[None])[0]


def xla_gflop(compiled) -> float:
  """XLA's FLOP count of a compiled call in GFLOP (NaN where the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return float("nan")
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan"))) / 1e9


def measure(config, params, inputs, repeats):
  """(compile s, median s per call, GFLOP per call, x0 [N, F, J, 3]) of the jitted call."""
  call = jax.jit(functools.partial(denoiser_call, config))
  t0 = time.perf_counter()
  compiled = call.lower(params, *inputs).compile()
  compile_s = time.perf_counter() - t0
  out = jax.block_until_ready(compiled(params, *inputs))  # warm-up
  sec = common.median_seconds(lambda: compiled(params, *inputs), repeats)
  # XLA counts a loop body once, so the FLOPs come from the same call in one pass (compiled only).
  whole = config.copy_and_resolve_references()
  whole.eval.cpu_chunk_size = 0
  gflop = xla_gflop(jax.jit(functools.partial(denoiser_call, whole)).lower(params, *inputs)
                    .compile())
  return compile_s, sec, gflop, np.asarray(out, np.float32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--families", default="finepose,dsgdiffu")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--clips", type=int, default=4)
  parser.add_argument("--hypotheses", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--output", default=str(common.DOCS))
  args = parser.parse_args()
  names = args.families.split(",")
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    parser.error(f"--families: unknown {unknown}; expected some of {', '.join(CONFIGS)}")
  dtypes = args.dtypes.split(",")
  if any(d not in ("float32", "bfloat16") for d in dtypes):
    parser.error(f"--dtypes: expected float32 and/or bfloat16, got {args.dtypes!r}")
  if args.clips < 1 or args.hypotheses < 1 or args.repeats < 1:
    parser.error("--clips, --hypotheses and --repeats must be >= 1")

  rows, diffs = [], []
  for name in names:
    config = CONFIGS[name].get_config("cpn")
    params = jax.jit(functools.partial(finepose.init_params, config))(jax.random.key(0))
    inputs = tuple(jax.device_put(a) for a in call_inputs(config, args.clips, args.hypotheses))
    calls = (2 if config.sampling.flip else 1) * config.sampling.num_steps
    frames = config.model.num_frames
    x0 = {}
    for dtype in dtypes:
      config.eval.compute_dtype = dtype
      compile_s, sec, gflop, x0[dtype] = measure(config, params, inputs, args.repeats)
      fps = args.clips * frames / (calls * sec)
      rows.append((name, dtype, sec, compile_s, fps, gflop / sec, calls))
      print(f"{name} {dtype}: compile {compile_s:.1f} s, {sec:.2f} s/call, derived "
            f"{fps:.3f} frames/s ({calls} calls per mini-batch), {gflop / sec:.0f} GFLOP/s",
            flush=True)
    if "float32" in x0 and "bfloat16" in x0:
      scale = config.diffusion.scale * 1000  # scaled units -> mm
      ref, low = x0["float32"] * scale, x0["bfloat16"] * scale
      dist = np.linalg.norm(low - ref, axis=-1)
      diffs.append((name, np.abs(low - ref).max(), dist.mean(),
                    np.linalg.norm(ref, axis=-1).mean()))
    del params
  c, h = args.clips, args.hypotheses
  upstream = UPSTREAM_SHAPE == (c, h)
  calls = rows[0][-1]  # the same K and flip for both families

  lines = [SECTION, "",
           f"Machine: {common.machine()}. Environment: {common.environment()}.",
           f"Command: `python benchmarks/bench_finepose.py {' '.join(sys.argv[1:])}`".rstrip()
           + f" (median of {args.repeats} call(s) after a warm-up; random weights and text cache, "
           f"full config: dim 512, depth 8, text branch 4 x 512; one call = {c} clips x {h} "
           f"hypotheses = {c * h} rows of 243 frames, one flip direction, "
           f"{CONFIGS[names[0]].get_config('cpn').eval.cpu_chunk_size} row(s) per pass as "
           "eval.cpu_chunk_size sets on CPU).", "",
           f"A whole evaluation mini-batch is {calls} such calls (every DDIM step, both flips); it "
           "was not run. The frames/s column is derived from the measured call: "
           f"{c} x 243 output frames / ({calls} x s per call). DSGDiffu runs one transformer "
           "block fewer than FinePOSE (its graph layer replaces the first spatial block).", "",
           "| family | compute dtype | s per call (measured) | compile | output frames/s "
           "(derived) | GFLOP/s (XLA count) | upstream PyTorch (issue #5) |",
           "|---|---|---|---|---|---|---|"]
  for name, dtype, sec, compile_s, fps, gflops, _ in rows:
    ref = (f"{UPSTREAM_S_PER_CALL:.0f} s per call, "
           f"{c * 243 / (calls * UPSTREAM_S_PER_CALL):.2f} frames/s" if upstream
           else f"n/a ({UPSTREAM_SHAPE[0]} x {UPSTREAM_SHAPE[1]} rows only)")
    lines.append(f"| {NAMES[name]} | {dtype} | {sec:.2f} | {compile_s:.1f} s | {fps:.3f} "
                 f"| {gflops:.0f} | {ref} |")
  if diffs:
    lines += [""] + [
        f"{NAMES[name]}, bfloat16 vs float32 (same weights and inputs): x0 differs by at most "
        f"{max_abs:.2f} mm in a coordinate and by {mean:.2f} mm per joint on average (float32's "
        f"joints lie {norm:.0f} mm from the origin on average)."
        for name, max_abs, mean, norm in diffs]
    lines += ["These are random weights, so this is the numerical effect of bfloat16 matmuls on "
              "one call, not a trained model's MPJPE change."]
  common.write_section(args.output, SECTION, "\n".join(lines) + "\n")
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
