r"""Times the full-size ICASSP'24 CPN evaluation pipeline (lifter + 2 DDIM steps x 2 flips) here.

  python benchmarks/bench_icassp.py [--batch 1024] [--repeats 10] [--dtypes float32,bfloat16] \
      [--output docs/benchmarks.md]

Random weights at the released sizes (hid 96, 5 layers, 4 heads; configs/icassp_h36m.py:cpn). The
whole pipeline is one jitted function; the mirrored and unmirrored passes run as one batch of 2B.
For each compute dtype (`eval.compute_dtype`) it reports frames/s at the large batch, latency at
batch 1 and the first call's trace+compile time; with both dtypes, how far bfloat16's poses land
from float32's. It rewrites its section of the output file.
"""

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from configs import icassp_h36m  # pylint: disable=g-import-not-at-top
from posediff_jax import evaluation  # pylint: disable=g-import-not-at-top
from posediff_jax.families import icassp  # pylint: disable=g-import-not-at-top

SECTION = "## ICASSP CPN evaluation pipeline (flip TTA)"
# The authors' pipeline (jjkislele/monoMotionDiff test(), flip TTA) at batch 1024 on a 2-core CPU
# with 2 threads, torch 2.13 (issue #3, our measurement).
UPSTREAM_FRAMES_PER_S = 136


def measure(config, params, batch: int, repeats: int):
  """(first-call seconds, median seconds per call, predictions [batch, 17, 3]) at one batch."""
  predict = evaluation.make_predict_fn(config)
  x = jax.device_put(np.random.default_rng(0).uniform(-0.8, 0.8, (batch, 17, 2)).astype(np.float32))
  key = jax.random.key(0)
  t0 = time.perf_counter()
  out = jax.block_until_ready(predict(params, x, key))
  first = time.perf_counter() - t0
  sec = common.median_seconds(lambda: predict(params, x, key), repeats)
  return first, sec, np.asarray(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--output", default=str(common.DOCS))
  args = parser.parse_args()

  config = icassp_h36m.get_config("cpn")
  params = jax.device_put(icassp.init_params(config, jax.random.key(0)))
  dtypes = args.dtypes.split(",")
  rows, poses = {}, {}
  for dtype in dtypes:
    config.eval.compute_dtype = dtype
    first, sec, poses[dtype] = measure(config, params, args.batch, args.repeats)
    _, sec_one, _ = measure(config, params, 1, 10 * args.repeats)
    rows[dtype] = (first, sec, sec_one)
    print(f"{dtype}: first call {first:.2f} s, {args.batch / sec:.0f} frames/s at batch "
          f"{args.batch}, {sec_one * 1e3:.2f} ms at batch 1", flush=True)

  cmd = "python benchmarks/bench_icassp.py " + " ".join(sys.argv[1:])
  upstream = ("upstream PyTorch (issue #3, 2-core CPU, 2 threads, torch 2.13)",
              f"~{UPSTREAM_FRAMES_PER_S}")
  lines = [
      SECTION, "",
      f"Machine: {common.machine()}. Environment: {common.environment()}.",
      f"Command: `{cmd.strip()}` (median of {args.repeats} calls at batch {args.batch}, "
      f"{10 * args.repeats} at batch 1; random weights, full CPN config: hid 96, 5 layers, "
      "flip test-time augmentation; `eval.compute_dtype` per column).", "",
      "| measure | " + " | ".join(f"posediff-jax {d}" for d in dtypes) + f" | {upstream[0]} |",
      "|---|" + "---|" * (len(dtypes) + 1),
      f"| frames/s at batch {args.batch} (lifter + 2 DDIM steps x 2 flips) | "
      + " | ".join(f"{args.batch / rows[d][1]:,.0f}" for d in dtypes) + f" | {upstream[1]} |",
      "| latency at batch 1 | " + " | ".join(f"{rows[d][2] * 1e3:.2f} ms" for d in dtypes)
      + " | n/a |",
      f"| first call at batch {args.batch} (trace + compile + run) | "
      + " | ".join(f"{rows[d][0]:.2f} s" for d in dtypes) + " | n/a |"]
  if "float32" in poses and "bfloat16" in poses:
    diff = np.linalg.norm(poses["bfloat16"] - poses["float32"], axis=-1) * 1000
    lines += ["", f"bfloat16 vs float32, same random weights and inputs: the poses differ by "
              f"{diff.mean():.2f} mm per joint on average ({np.percentile(diff, 99):.2f} mm at the "
              "99th percentile); the numerical effect of bfloat16 matmul operands, not a trained "
              "model's MPJPE change."]
  common.write_section(args.output, SECTION, "\n".join(lines) + "\n")
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
