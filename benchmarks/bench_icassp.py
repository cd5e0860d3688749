r"""Times the full-size ICASSP'24 CPN evaluation pipeline (lifter + 2 DDIM steps x 2 flips) here.

  python benchmarks/bench_icassp.py [--batch 1024] [--repeats 10] [--output docs/benchmarks.md]

Random weights at the released sizes (hid 96, 5 layers, 4 heads; configs/icassp_h36m.py:cpn). The
whole pipeline is one jitted function; the mirrored and unmirrored passes run as one batch of 2B.
Reports frames/s at the large batch, latency at batch 1, and the first call's trace+compile time,
and rewrites its section of the output file.
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--output", default=str(common.DOCS))
  args = parser.parse_args()

  config = icassp_h36m.get_config("cpn")
  params = jax.device_put(icassp.init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(0)
  rows = []
  for batch in (args.batch, 1):
    predict = evaluation.make_predict_fn(config)
    x = jax.device_put(rng.uniform(-0.8, 0.8, (batch, 17, 2)).astype(np.float32))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(predict(params, x, key))
    first = time.perf_counter() - t0
    repeats = args.repeats if batch > 1 else 10 * args.repeats
    sec = common.median_seconds(lambda: predict(params, x, key), repeats)
    rows.append((batch, first, sec))
    print(f"batch {batch}: first call {first:.2f} s, {sec * 1e3:.2f} ms/call, "
          f"{batch / sec:.0f} frames/s", flush=True)

  (b_big, first_big, sec_big), (_, _, sec_one) = rows
  cmd = "python benchmarks/bench_icassp.py " + " ".join(sys.argv[1:])
  text = "\n".join([
      SECTION, "",
      f"Machine: {common.machine()}. Environment: {common.environment()}.",
      f"Command: `{cmd.strip()}` (median of {args.repeats} calls at batch {b_big}, "
      f"{10 * args.repeats} at batch 1; random weights, full CPN config: hid 96, 5 layers, "
      "flip test-time augmentation).", "",
      "| measure | posediff-jax | upstream PyTorch (issue #3, 2-core CPU, 2 threads, torch 2.13) |",
      "|---|---|---|",
      f"| frames/s at batch {b_big} (lifter + 2 DDIM steps x 2 flips) | {b_big / sec_big:,.0f} "
      f"| ~{UPSTREAM_FRAMES_PER_S} |",
      f"| latency at batch 1 | {sec_one * 1e3:.2f} ms | n/a |",
      f"| first call at batch {b_big} (trace + compile + run) | {first_big:.2f} s | n/a |", ""])
  common.write_section(args.output, SECTION, text)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
