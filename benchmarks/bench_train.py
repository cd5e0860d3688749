r"""Times the training step train.py runs, at a family's full size and the paper's batch size.

  python benchmarks/bench_train.py --family {diffpose,icassp,d3dp,finepose,dsgdiffu,mmdiff} \
      [--stage denoiser] [--steps 3] [--warmup 1] [--dtypes float32,bfloat16] [--tiny] \
      [--output docs/benchmarks.md] [--config.train.grad_accum_steps=4 ...]

The configs (each family's own, as train.py reads it):

  diffpose  configs/diffpose_h36m.py:cpn, batch 1024 frames (denoiser stage)
  icassp    configs/icassp_h36m.py:cpn, batch 1024 frames (denoiser stage)
  d3dp      configs/d3dp_h36m.py:cpn, 4 clips of 243 frames
  finepose  configs/finepose_h36m.py:cpn, 4 clips of 243 frames (+ the text branch)
  dsgdiffu  configs/dsgdiffu_h36m.py:cpn, 4 clips of 243 frames (+ the text branch)
  mmdiff    configs/mmdiff_mmbody.py (head), phase 2 (denoiser stage) on upstream's phase-2
            cache (so no encoder in the state), batch 128 frames with 4 x 5184 radar points each

The parameters, optimizer, state and jitted step are built as `training.train_and_evaluate` builds
them (all in `build_step`, so a change of training.py's helpers is one place to follow), with
random weights and one synthetic batch of the shapes and dtypes the family's training stream yields
(procedural motion for the poses; mmDiff's radar from the synthetic radar generator). For each
`train.compute_dtype` in `--dtypes`, a fresh Python process (so neither compiled code nor peak
memory carries over from the other dtype) reports:

  - trace + lower, and compile, timed separately (`jit(...).lower(...)`, `.compile()`),
  - the first call, then after `--warmup` calls the median and range of `--steps` timed steps,
  - XLA's memory analysis of the compiled step (arguments, outputs, temporaries, aliased/donated
    bytes, peak where XLA reports one) and the process's peak resident memory (getrusage).

Full size is slow on a CPU (a D3DP-size step takes ~30 s on 2 cores): `--steps` is small by
default. `--tiny` uses the tiny sizes of tests/tiny_run.py instead (a smoke test: about a minute,
mostly the two processes' start-up and compilation) and then prints only, unless `--output` is
given; a full-size run rewrites the family's section of docs/benchmarks.md. Extra
`--config.a.b=value` flags override config fields (value parsed as a Python literal, else taken as
a string), as train.py's flags do.
"""

import argparse
import ast
import importlib
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from posediff_jax import datasets  # pylint: disable=g-import-not-at-top
from posediff_jax import families  # pylint: disable=g-import-not-at-top
from posediff_jax import runtime  # pylint: disable=g-import-not-at-top
from posediff_jax import sharding  # pylint: disable=g-import-not-at-top
from posediff_jax import training  # pylint: disable=g-import-not-at-top
# pylint: disable-next=g-import-not-at-top
from posediff_jax.data.synthetic import radar as synthetic_radar

# family -> (config module, variant, what one example of a batch is)
FAMILY_CONFIGS = {
    "diffpose": ("diffpose_h36m", "cpn", "frames"),
    "icassp": ("icassp_h36m", "cpn", "frames"),
    "d3dp": ("d3dp_h36m", "cpn", "clips"),
    "finepose": ("finepose_h36m", "cpn", "clips"),
    "dsgdiffu": ("dsgdiffu_h36m", "cpn", "clips"),
    "mmdiff": ("mmdiff_mmbody", "head", "frames"),
}
NAMES = {"diffpose": "DiffPose", "icassp": "ICASSP", "d3dp": "D3DP", "finepose": "FinePOSE",
         "dsgdiffu": "DSGDiffu", "mmdiff": "mmDiff"}
# The optimizer's schedule only reads the step count against this (an epoch's length), which
# changes no timing; train.py takes it from the data. ~Human3.6M's training frames / 1024.
NOMINAL_STEPS_PER_EPOCH = 1500


def section_title(family: str, tiny: bool = False) -> str:
  """The family's docs section; a tiny smoke run's never replaces the full-size one."""
  return f"## Training step: {NAMES[family]}" + (" (tiny smoke sizes)" if tiny else "")


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides: dict) -> None:
  """Sets `{"a.b": value}` fields of `config` in place."""
  for dotted, value in overrides.items():
    *sections, field = dotted.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = value


def make_config(family: str, tiny: bool, overrides: dict):
  """The family's config as train.py would read it (or tests/tiny_run.py's tiny one)."""
  if tiny:
    from tests import tiny_run  # pylint: disable=g-import-not-at-top
    # The data root is never read: the batch is synthetic.
    config = tiny_run.tiny_family_config(family, "unused")
  else:
    module, variant, _ = FAMILY_CONFIGS[family]
    config = importlib.import_module(f"configs.{module}").get_config(variant)
  apply_overrides(config, overrides)
  return config


def batch_size_of(config, stage: str) -> int:
  """The global batch of `stage`, as `train_and_evaluate` picks it (stage's own size if staged)."""
  own = config.train.get(f"{stage}_batch_size")
  return int(own) if datasets.staged(config) and own else int(config.train.batch_size)


def _poses(count: int, seed: int) -> np.ndarray:
  """`count` root-relative poses float32 [count, 17, 3] (metres) of procedural human motion."""
  motion = synthetic_radar.skeleton_motion(0, count, seed, 3.0)
  return (motion - motion[:, :1]).astype(np.float32)


def _input_2d(poses: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Normalised-screen-like 2D of `poses` [..., 17, 3]: side and height axes, a little noise."""
  uv = np.stack([poses[..., 0], -poses[..., 2]], axis=-1)
  return (uv + rng.normal(0, 0.01, uv.shape)).astype(np.float32)


def synthetic_batch(config, stage: str, seed: int = 0) -> dict[str, np.ndarray]:
  """One training batch with the keys, shapes and dtypes the family's training stream yields.

  Frames (data/pipeline.py): `input_2d`, `input_2d_var` [B, 17, 2], `target_3d` [B, 17, 3],
  `action` [B]. Clips (data/clip_pipeline.py): `input_2d` [B, F, 17, 2], `target_3d` [B, F, 17, 3],
  `sequence` [B], and for the prompt families the `action_index` [B] train.py adds. Radar
  (data/radar.py): the encoder stage `radar` [B, T, P, C], `target_3d`; the denoiser stage
  `x_history` [B, 17, 3 (past + 1)], `features` [B, 17, F], `target_3d` and, when the LRC reads
  points (`model.local_flag`), `radar`.
  """
  rng = np.random.default_rng(seed)
  size = batch_size_of(config, stage)
  layout = datasets.layout(config)
  if layout == "clips":
    frames = int(config.model.num_frames)
    target = _poses(size * frames, seed).reshape(size, frames, 17, 3)
    batch = {"input_2d": _input_2d(target, rng), "target_3d": target,
             "sequence": rng.integers(0, 600, size).astype(np.int32)}
    family = families.get(config.family)
    if getattr(family, "TEXT_CONDITIONED", False):
      rows = len(family.text_actions(config))
      batch["action_index"] = rng.integers(0, rows, size).astype(np.int32)
    return batch
  if layout == "radar":
    from benchmarks import bench_mmdiff  # pylint: disable=g-import-not-at-top
    radar, target = bench_mmdiff.radar_windows(config, size, seed)
    if stage == "encoder":
      return {"radar": radar, "target_3d": target}
    past = int(config.model.past_frames)
    # Coarse poses a few centimetres off the truth (what a trained phase 1 gives), as history.
    coarse = target + rng.normal(0, 0.03, target.shape).astype(np.float32)
    batch = {"x_history": np.tile(coarse, (1, 1, past + 1)).astype(np.float32),
             "features": rng.normal(size=(size, 17, int(config.model.feature_size))
                                    ).astype(np.float32),
             "target_3d": target}
    if int(config.model.get("local_flag", 1)) == 1:
      batch["radar"] = radar
    return batch
  target = _poses(size, seed)
  return {"input_2d": _input_2d(target, rng),
          "input_2d_var": rng.uniform(4e-3, 2e-2, (size, 17, 2)).astype(np.float32),
          "target_3d": target,
          "action": rng.integers(0, 15, size).astype(np.int32)}


def build_step(config, stage: str):
  """(state, jitted step, global batch) exactly as `training.train_and_evaluate` builds them.

  Mirrors train_and_evaluate: the mesh, one optimizer per stage (its untrained parameters
  frozen), `family.init_params` with the config's seed, the state replicated, the prompt families'
  text cache bound into the loss, and `training.jit_train_step` (state replicated and donated);
  the batch is made global with the data sharding. Follow training.py here when its helpers
  change.
  """
  family = families.get(config.family)
  if stage not in family.STAGES:
    raise ValueError(f"{config.family} has no stage {stage!r}; it has {family.STAGES}")
  mesh = training.make_mesh(config)
  sharding.check_divisible(batch_size_of(config, stage), mesh, "the batch")
  optimizers = {name: training.make_optimizer(config, name,
                                              training.untrained_params(config, name))
                for name in family.STAGES}
  params = family.init_params(config, jax.random.key(config.seed))
  optimizers = {name: tx for name, tx in optimizers.items() if name in params}
  if stage not in optimizers:
    raise ValueError(f"the {stage} stage has no parameters with this config (mmDiff's encoder "
                     "needs --config.data.source=raw)")
  state = jax.device_put(training.init_state(config, params, optimizers),
                         sharding.replicated(mesh))
  if getattr(family, "TEXT_CONDITIONED", False):
    losses = family.losses(state["params"]["text_cache"])
  else:
    losses = family.LOSSES
  # The first stage of a run (stage_start 0); the schedule's epoch length changes no timing.
  step_fn = training.jit_train_step(config, stage, optimizers[stage], losses[stage], mesh,
                                    steps_per_epoch=NOMINAL_STEPS_PER_EPOCH, stage_start=0)
  batch = sharding.global_batch(synthetic_batch(config, stage, seed=config.seed),
                                sharding.by_batch(mesh))
  return state, step_fn, batch


def _peak_rss_mib() -> float:
  # ru_maxrss is in KiB on Linux (bytes on macOS).
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _memory(compiled) -> dict[str, float]:
  """XLA's memory analysis of a compiled step, in MiB (fields this jax version reports)."""
  stats = compiled.memory_analysis()
  out = {}
  for field in ("argument", "output", "alias", "temp", "generated_code", "peak_memory"):
    name = field if field == "peak_memory" else f"{field}_size"
    value = getattr(stats, f"{name}_in_bytes", None) if stats is not None else None
    if value is not None:
      out[field] = value / 2**20
  return out


def measure(config, stage: str, steps: int, warmup: int) -> dict:
  """Builds the step for `config` and times it (see the module docstring)."""
  t0 = time.perf_counter()
  state, step_fn, batch = build_step(config, stage)
  jax.block_until_ready((state, batch))
  build_s = time.perf_counter() - t0
  rss_built = _peak_rss_mib()
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  state, measured = jax.block_until_ready(compiled(state, batch))
  first_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, measured = jax.block_until_ready(compiled(state, batch))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    # The state is donated to the next call, as in train.py's loop.
    state, measured = jax.block_until_ready(compiled(state, batch))
    times.append(time.perf_counter() - t0)
  loss = float(measured["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"the timed step's loss is {loss}")
  return {"dtype": str(config.train.get("compute_dtype", "float32")), "build_s": build_s,
          "lower_s": lower_s, "compile_s": compile_s, "first_s": first_s, "times": times,
          "loss": loss, "memory": _memory(compiled), "peak_rss_mib": _peak_rss_mib(),
          "rss_built_mib": rss_built, "backend": jax.default_backend(),
          "batch": batch_size_of(config, stage),
          "params": int(sum(x.size for x in jax.tree.leaves(state["params"][stage]))),
          "shapes": {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}}


def _mib(value) -> str:
  """MiB with a decimal below 10 (tiny runs), else whole; 'n/a' for a missing figure."""
  if value is None or not np.isfinite(value):
    return "n/a"
  return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def _rate(value: float) -> str:
  return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _summary(r: dict) -> str:
  times = r["times"]
  sec = float(np.median(times))
  mem = r["memory"]
  return (f"{r['dtype']}: build {r['build_s']:.1f} s, lower {r['lower_s']:.2f} s, compile "
          f"{r['compile_s']:.2f} s, first step {r['first_s']:.3f} s; {sec:.4f} s/step median over "
          f"{len(times)} ({min(times):.4f}-{max(times):.4f}), {1 / sec:.3g} steps/s; XLA temp "
          f"{_mib(mem.get('temp'))} MiB, arguments {_mib(mem.get('argument'))} MiB; peak RSS "
          f"{r['peak_rss_mib']:.0f} MiB ({r['rss_built_mib']:.0f} before compiling); loss "
          f"{r['loss']:.4g}")


def _what(config, family: str, stage: str, batch: int) -> str:
  """What one step is, for the docs: the sizes that set its cost."""
  m = config.model
  if family in ("d3dp", "finepose", "dsgdiffu"):
    text = (f", text branch {m.text_layers} x {m.text_width}" if family != "d3dp" else "")
    return (f"{batch} clips x {m.num_frames} frames, dim {m.embed_dim}, depth {m.depth}{text}")
  if family == "mmdiff":
    points = f"{len(config.data.radar_window_offsets)} x {config.data.points_per_frame}"
    return (f"{batch} frames, {stage} stage, hid {m.hid_dim}, {m.num_layers} layer(s), radar "
            f"windows of {points} points")
  return f"{batch} frames, {stage} stage, hid {m.hid_dim}, {m.num_layers} layer(s)"


def _settings(config) -> str:
  """The settings that change how the step runs, not what it computes (those the config has)."""
  fields = ("train.grad_accum_steps", "train.cpu_chunk_size", "model.remat")
  found = []
  for dotted in fields:
    section, field = dotted.split(".")
    if field in config[section]:
      found.append(f"{dotted}={config[section][field]}")
  return ", ".join(found)


def markdown(family: str, config, stage: str, results: list[dict], args, argv) -> str:
  """The family's docs section (titled `section_title`)."""
  batch = results[0]["batch"]
  unit = "clips" if FAMILY_CONFIGS[family][2] == "clips" else "frames"
  frames = int(config.model.num_frames) if unit == "clips" else 1
  cmd = f"python benchmarks/bench_train.py {' '.join(argv)}".rstrip()
  lines = [section_title(family, args.tiny), "",
           f"Machine: {common.machine()}. Environment: {common.environment()}.",
           f"Command: `{cmd}` (one fresh process per compute dtype; median and range of "
           f"{args.steps} step(s) after {1 + args.warmup} untimed; random weights, one synthetic "
           f"batch: {_what(config, family, stage, batch)}; "
           f"{results[0]['params']:,} trained parameters; {_settings(config)}).", "",
           "| train.compute_dtype | s per step | steps/s | " + f"{unit}/s" +
           (" (frames/s)" if frames > 1 else "") +
           " | trace + lower | compile | first step | XLA temp | XLA args (aliased) | "
           "XLA peak | peak RSS (before compiling) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    times, mem = r["times"], r["memory"]
    sec = float(np.median(times))
    rate = _rate(batch / sec) + (f" ({_rate(batch * frames / sec)})" if frames > 1 else "")
    # On CPU XLA's "peak" came out below its own temporaries (tiny D3DP: 0.1 vs 4.3 MiB): not shown.
    peak = None if r["backend"] == "cpu" else mem.get("peak_memory") or None
    lines.append(
        f"| {r['dtype']} | {sec:.3g} ({min(times):.3g}-{max(times):.3g}) | {1 / sec:.3g} | "
        f"{rate} | {r['lower_s']:.2f} s | {r['compile_s']:.2f} s | {r['first_s']:.3g} s | "
        f"{_mib(mem.get('temp'))} MiB | {_mib(mem.get('argument'))} ({_mib(mem.get('alias'))}) "
        f"MiB | {_mib(peak)}{' MiB' if peak else ''} | {r['peak_rss_mib']:,.0f} "
        f"({r['rss_built_mib']:,.0f}) MiB |")
  lines += ["", "XLA figures: the compiled step's buffers (arguments: the state and the batch; "
            "aliased: the donated state the outputs reuse; XLA's peak except on CPU, where it came "
            "out below the temporaries). "
            "Peak RSS: the whole process (Python, jax, parameters, batch, compilation), and in "
            "brackets once the state and batch were built."]
  return "\n".join(lines) + "\n"


def _split_overrides(argv: list[str]) -> tuple[list[str], dict]:
  """(the other arguments, {"a.b": value} of the `--config.a.b=value` flags)."""
  rest, overrides = [], {}
  for arg in argv:
    if arg.startswith("--config.") and "=" in arg:
      key, value = arg[len("--config."):].split("=", 1)
      overrides[key] = _parse_value(value)
    else:
      rest.append(arg)
  return rest, overrides


def main(argv=None):
  # Before JAX picks its backend: no libtpu metadata query (and its warnings) without a TPU.
  runtime.quiet_libtpu_without_tpu()
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, overrides = _split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", required=True, choices=sorted(FAMILY_CONFIGS))
  parser.add_argument("--stage", default="denoiser",
                      help="the training stage to time (lifter, encoder, denoiser)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per dtype")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed steps after the first call")
  parser.add_argument("--dtypes", default="float32,bfloat16",
                      help="train.compute_dtype values, comma-separated")
  parser.add_argument("--tiny", action="store_true",
                      help="tests/tiny_run.py's sizes (a quick smoke run; prints only)")
  parser.add_argument("--output", default=None,
                      help="markdown file whose section to rewrite (default docs/benchmarks.md, "
                      "none with --tiny)")
  # Internal: measure one dtype in this process and write the result as JSON.
  parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(rest)
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be >= 1 and --warmup >= 0")

  if args.result_file:
    config = make_config(args.family, args.tiny, overrides)
    result = measure(config, args.stage, args.steps, args.warmup)
    pathlib.Path(args.result_file).write_text(json.dumps(result))
    return

  results = []
  for dtype in args.dtypes.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / "result.json"
      child = [sys.executable, str(pathlib.Path(__file__).resolve()), *rest,
               f"--result-file={out}",
               *(f"--config.{k}={v!r}" for k, v in overrides.items() if k != "train.compute_dtype"),
               f"--config.train.compute_dtype={dtype!r}"]
      subprocess.run(child, check=True)
      results.append(json.loads(out.read_text()))
    print(f"{NAMES[args.family]} {args.stage} step, {_summary(results[-1])}", flush=True)
  print("batch: " + ", ".join(f"{k} {tuple(s)} {d}" for k, (s, d) in results[0]["shapes"].items()))

  output = args.output or (None if args.tiny else str(common.DOCS))
  if output:
    config = make_config(args.family, args.tiny, overrides)
    text = markdown(args.family, config, args.stage, results, args, argv)
    common.write_section(output, section_title(args.family, args.tiny), text)
    print(f"wrote {output}")


if __name__ == "__main__":
  main()
