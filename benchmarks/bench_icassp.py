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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from configs import icassp_h36m  # pylint: disable=g-import-not-at-top
from posediff_jax.families import icassp  # pylint: disable=g-import-not-at-top

SECTION = "## ICASSP CPN evaluation pipeline (flip TTA)"
# The authors' pipeline (jjkislele/monoMotionDiff test(), flip TTA) at batch 1024 on a 2-core CPU
# with 2 threads, torch 2.13 (issue #3, our measurement).
UPSTREAM_FRAMES_PER_S = 136


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
  rows, poses = common.time_dtypes(config, params, dtypes, args.batch, args.repeats)

  cmd = "python benchmarks/bench_icassp.py " + " ".join(sys.argv[1:])
  upstream = ("upstream PyTorch (issue #3, 2-core CPU, 2 threads, torch 2.13)",
              f"~{UPSTREAM_FRAMES_PER_S}", "n/a")
  lines = [
      SECTION, "",
      f"Machine: {common.machine()}. Environment: {common.environment()}.",
      f"Command: `{cmd.strip()}` (median of {args.repeats} calls at batch {args.batch}, "
      f"{10 * args.repeats} at batch 1; random weights, full CPN config: hid 96, 5 layers, "
      "flip test-time augmentation; `eval.compute_dtype` per column).", ""]
  lines += common.dtype_table(rows, dtypes, args.batch, "lifter + 2 DDIM steps x 2 flips",
                              upstream)
  lines += common.bfloat16_note(poses)
  common.write_section(args.output, SECTION, "\n".join(lines) + "\n")
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
