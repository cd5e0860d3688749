r"""Times train.py's step against another revision of this repository, interleaved.

  python benchmarks/train_step_vs.py --family d3dp --rev c1ddfe7 [--dtype float32] \
      [--pairs 2] [--steps 3] [--rows 4]

bench_train.py measures today's step in detail; this answers "how much faster than revision REV",
which bench_train.py cannot, since older revisions have no bench_train.py. REV is checked out into
a temporary git worktree; then, `--pairs` times, a fresh process of REV and one of this checkout
(in turn, so a drifting machine affects both alike) each build the family's full-size denoiser
step with its own code (configs/<family>_<dataset>.py at its defaults, random weights, one
synthetic batch of `--rows` clips or frames), compile it, run it once untimed and time `--steps`
steps. The figure per process is its median step; the ratio is REV / this checkout, pair by pair.
The step is built through `training.make_train_step` / `make_optimizer` with whichever signature
the revision has (c1ddfe7's and today's are both handled).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent

CONFIGS = {"diffpose": ("diffpose_h36m", 1024), "icassp": ("icassp_h36m", 1024),
           "d3dp": ("d3dp_h36m", 4), "finepose": ("finepose_h36m", 4),
           "dsgdiffu": ("dsgdiffu_h36m", 4)}

# Runs inside the timed process, in the root of the revision it times (sys.path[0]).
_CHILD = r"""
import importlib, inspect, json, sys, time
import jax, numpy as np
from posediff_jax import families, training
family_name, rows, dtype, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
config = importlib.import_module("configs." + sys.argv[5]).get_config()
config.train.compute_dtype, config.train.batch_size = dtype, rows
family = families.get(config.family)
params = family.init_params(config, jax.random.key(0))
rng = np.random.default_rng(0)
if config.data.get("layout") == "clips" or family_name in ("d3dp", "finepose", "dsgdiffu"):
  frames = config.model.num_frames
  batch = {"input_2d": 0.3 * rng.normal(size=(rows, frames, 17, 2)).astype(np.float32),
           "target_3d": 0.3 * rng.normal(size=(rows, frames, 17, 3)).astype(np.float32)}
  if family_name != "d3dp":
    batch["action_index"] = np.zeros((rows,), np.int32)
else:
  batch = {"input_2d": 0.3 * rng.normal(size=(rows, 17, 2)).astype(np.float32),
           "input_2d_var": np.full((rows, 17, 2), 0.01, np.float32),
           "target_3d": 0.3 * rng.normal(size=(rows, 17, 3)).astype(np.float32)}
losses = family.losses(params["text_cache"]) if "text_cache" in params else family.LOSSES
if "steps_per_epoch" in inspect.signature(training.make_train_step).parameters:
  opt = training.make_optimizer(config, "denoiser",
                                training.untrained_params(config, "denoiser"))
  step = training.make_train_step(config, "denoiser", opt, losses["denoiser"],
                                  steps_per_epoch=100)
else:
  opt = training.make_optimizer(config, "denoiser", 100)
  step = training.make_train_step(config, "denoiser", opt, losses["denoiser"])
state = training.init_state(config, params, {"denoiser": opt})
compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
state, out = compiled(state, batch)
jax.block_until_ready(out)
times = []
for _ in range(steps):
  start = time.perf_counter()
  state, out = compiled(state, batch)
  jax.block_until_ready(out)
  times.append(time.perf_counter() - start)
print("RESULT " + json.dumps({"median": float(np.median(times)), "times": times}))
"""


def time_tree(root: pathlib.Path, args) -> float:
  """The median step of a fresh process running `root`'s code."""
  module, _ = CONFIGS[args.family]
  proc = subprocess.run(
      [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(root)!r})\n" + _CHILD,
       args.family, str(args.rows), args.dtype, str(args.steps), module],
      cwd=root, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
      check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise SystemExit(f"the step of {root} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])["median"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--family", required=True, choices=sorted(CONFIGS))
  parser.add_argument("--rev", required=True, help="the git revision to compare with")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--pairs", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--rows", type=int, default=None,
                      help="clips or frames per step (default: the paper's batch)")
  args = parser.parse_args()
  args.rows = args.rows or CONFIGS[args.family][1]
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                        text=True, check=True).stdout.strip()
  with tempfile.TemporaryDirectory() as tmp:
    other = pathlib.Path(tmp) / "rev"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(other), args.rev], cwd=REPO,
                   capture_output=True, check=True)
    try:
      pairs = []
      for i in range(args.pairs):
        old, new = time_tree(other, args), time_tree(REPO, args)
        pairs.append((old, new))
        print(f"pair {i + 1}: {args.rev} {old:.3f} s, {head} {new:.3f} s per step, "
              f"ratio {old / new:.2f}", flush=True)
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO,
                     capture_output=True, check=False)
  ratios = sorted(o / n for o, n in pairs)
  summary = (f"{args.family} {args.dtype}, {args.rows} {'clips' if args.rows < 64 else 'frames'}:"
             f" {args.rev} " + ", ".join(f"{o:.2f}" for o, _ in pairs) + f" s; {head} " +
             ", ".join(f"{n:.2f}" for _, n in pairs) + " s per step; ratios " +
             ", ".join(f"{r:.2f}" for r in ratios))
  print(summary)


if __name__ == "__main__":
  main()
