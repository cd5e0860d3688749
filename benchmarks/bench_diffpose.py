r"""Times the full-size DiffPose CPN evaluation pipeline (lifter + 2 DDIM steps) on this machine.

  python benchmarks/bench_diffpose.py [--batch 1024] [--repeats 20] [--dtypes float32,bfloat16] \
      [--output docs/benchmarks.md]

Random weights at the released sizes (hid 96, 5 layers, 4 heads; configs/diffpose_h36m.py:cpn). For
each compute dtype (`eval.compute_dtype`) it reports frames/s at the large batch, latency at batch 1
and the first call's trace+compile time; with both dtypes, how far bfloat16's poses land from
float32's. It rewrites its section of docs/benchmarks.md.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from configs import diffpose_h36m  # pylint: disable=g-import-not-at-top
from posediff_jax.families import diffpose  # pylint: disable=g-import-not-at-top

SECTION = "## DiffPose CPN evaluation pipeline"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--output", default=str(common.DOCS))
  args = parser.parse_args()

  config = diffpose_h36m.get_config("cpn")
  params = jax.device_put(diffpose.init_params(config, jax.random.key(0)))
  dtypes = args.dtypes.split(",")
  rows, poses = common.time_dtypes(config, params, dtypes, args.batch, args.repeats)

  cmd = "python benchmarks/bench_diffpose.py " + " ".join(sys.argv[1:])
  lines = [
      SECTION, "",
      f"Machine: {common.machine()}. Environment: {common.environment()}.",
      f"Command: `{cmd.strip()}` (median of {args.repeats} calls at batch {args.batch}, "
      f"{10 * args.repeats} at batch 1; random weights, full CPN config; `eval.compute_dtype` "
      "per column).", ""]
  upstream = ("upstream PyTorch (issue #2, 2-core CPU, torch 2.13)", "~530", "~8.5 ms")
  lines += common.dtype_table(rows, dtypes, args.batch, "lifter + 2 DDIM steps", upstream)
  lines += common.bfloat16_note(poses)
  common.write_section(args.output, SECTION, "\n".join(lines) + "\n")
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
