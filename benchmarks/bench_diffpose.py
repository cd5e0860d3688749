r"""Times the full-size DiffPose CPN evaluation pipeline (lifter + 2 DDIM steps) on this machine.

  python benchmarks/bench_diffpose.py [--batch 1024] [--repeats 20] [--output docs/benchmarks.md]

Random weights at the released sizes (hid 96, 5 layers, 4 heads; configs/diffpose_h36m.py:cpn). Reports
frames/s at the large batch, latency at batch 1, and the first call's trace+compile time, and rewrites its
section of docs/benchmarks.md.
"""

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from configs import diffpose_h36m  # pylint: disable=g-import-not-at-top
from posediff_jax import evaluation  # pylint: disable=g-import-not-at-top
from posediff_jax.families import diffpose  # pylint: disable=g-import-not-at-top

SECTION = "## DiffPose CPN evaluation pipeline"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--output", default=str(common.DOCS))
  args = parser.parse_args()

  config = diffpose_h36m.get_config("cpn")
  params = jax.device_put(diffpose.init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(0)
  rows = []
  for batch in (args.batch, 1):
    predict = evaluation.make_predict_fn(config)
    x = jax.device_put(rng.uniform(-0.8, 0.8, (batch, 17, 2)).astype(np.float32))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(predict(params, x, key))
    first = time.perf_counter() - t0
    sec = common.median_seconds(lambda: predict(params, x, key), args.repeats if batch > 1 else 10 * args.repeats)
    rows.append((batch, first, sec))
    print(f"batch {batch}: first call {first:.2f} s, {sec * 1e3:.2f} ms/call, {batch / sec:.0f} frames/s",
          flush=True)

  (b_big, first_big, sec_big), (_, _, sec_one) = rows
  cmd = "python benchmarks/bench_diffpose.py " + " ".join(sys.argv[1:])
  text = "\n".join([
      SECTION, "",
      f"Machine: {common.machine()}. Environment: {common.environment()}.",
      f"Command: `{cmd.strip()}` (median of {args.repeats} calls at batch {b_big}, "
      f"{10 * args.repeats} at batch 1; random weights, full CPN config).", "",
      "| measure | posediff-jax | upstream PyTorch (issue #2, 2-core CPU, torch 2.13) |",
      "|---|---|---|",
      f"| frames/s at batch {b_big} (lifter + 2 DDIM steps) | {b_big / sec_big:,.0f} | ~530 |",
      f"| latency at batch 1 | {sec_one * 1e3:.2f} ms | ~8.5 ms |",
      f"| first call at batch {b_big} (trace + compile + run) | {first_big:.2f} s | n/a |", ""])
  common.write_section(args.output, SECTION, text)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
