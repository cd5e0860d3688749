"""What every benchmark script shares: timing, the machine line, and rewriting its docs section.

The frame families' scripts (bench_diffpose.py, bench_icassp.py) also share the per-dtype timing of
the evaluation pipeline and its markdown table.
"""

import os
import pathlib
import platform
import time

import jax
import numpy as np

from posediff_jax import evaluation

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
# Taken when a script imports this module, before it loads the machine itself.
_LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `repeats` calls of `fn` (its result waited for)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def machine() -> str:
  """The device, the CPU model, and the versions, for the 'Machine:' line."""
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  dev = jax.devices()[0]
  return (f"{dev.platform.upper()} ({dev.device_kind}), {os.cpu_count()} cores visible, {cpu}; "
          f"jax {jax.__version__}, Python {platform.python_version()}")


def environment() -> str:
  """The settings that change CPU timings, and the load when the run started."""
  return (f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', 'unset')}, load average "
          f"{_LOAD_AT_START:.1f} at start")


def write_section(path, section: str, text: str) -> None:
  """Replaces (or appends) the markdown section `section` of `path` with `text`."""
  out = pathlib.Path(path)
  old = (out.read_text() if out.exists()
         else "# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`.\n\n")
  if section in old:
    head, rest = old.split(section, 1)
    nxt = rest.find("\n## ")
    old = head + (rest[nxt + 1:] if nxt >= 0 else "")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(old.rstrip() + "\n\n" + text)


def measure_pipeline(config, params, batch: int, repeats: int):
  """Times `evaluation.make_predict_fn(config)` on random 2D input [batch, 17, 2].

  Args:
    config: the run config; its `eval.compute_dtype` picks the dtype timed.
    params: the model parameters, already on the device.
    batch: frames per call.
    repeats: calls the median is taken over.

  Returns:
    (first-call seconds, median seconds per call, predictions [batch, 17, 3]).
  """
  predict = evaluation.make_predict_fn(config)
  x = jax.device_put(np.random.default_rng(0).uniform(-0.8, 0.8, (batch, 17, 2)).astype(np.float32))
  key = jax.random.key(0)
  t0 = time.perf_counter()
  out = jax.block_until_ready(predict(params, x, key))
  first = time.perf_counter() - t0
  sec = median_seconds(lambda: predict(params, x, key), repeats)
  return first, sec, np.asarray(out)


def time_dtypes(config, params, dtypes, batch: int, repeats: int):
  """Times the pipeline under each compute dtype, at `batch` and at batch 1, printing each.

  Args:
    config: the run config; `eval.compute_dtype` is set to each of `dtypes` in turn (and left at
      the last one).
    params: the model parameters, already on the device.
    dtypes: compute dtype names, e.g. ["float32", "bfloat16"].
    batch: frames per call for the throughput figure.
    repeats: calls at `batch` the median is taken over (10x as many at batch 1).

  Returns:
    (rows, poses): rows[dtype] = (first-call seconds at `batch`, median seconds per call at
    `batch`, median seconds per call at batch 1); poses[dtype] = predictions [batch, 17, 3].
  """
  rows, poses = {}, {}
  for dtype in dtypes:
    config.eval.compute_dtype = dtype
    first, sec, poses[dtype] = measure_pipeline(config, params, batch, repeats)
    _, sec_one, _ = measure_pipeline(config, params, 1, 10 * repeats)
    rows[dtype] = (first, sec, sec_one)
    print(f"{dtype}: first call {first:.2f} s, {batch / sec:.0f} frames/s at batch "
          f"{batch}, {sec_one * 1e3:.2f} ms at batch 1", flush=True)
  return rows, poses


def dtype_table(rows, dtypes, batch: int, pipeline: str, upstream) -> list[str]:
  """The markdown table of `time_dtypes`' rows: one column per dtype, then upstream's.

  Args:
    rows: the first result of `time_dtypes`.
    dtypes: the dtypes, in column order.
    batch: the throughput batch.
    pipeline: what one frame goes through, e.g. "lifter + 2 DDIM steps".
    upstream: (column header, frames/s, latency at batch 1) of the upstream code, as text.

  Returns:
    The table's lines.
  """
  header, fps, latency = upstream
  return [
      "| measure | " + " | ".join(f"posediff-jax {d}" for d in dtypes) + f" | {header} |",
      "|---|" + "---|" * (len(dtypes) + 1),
      f"| frames/s at batch {batch} ({pipeline}) | "
      + " | ".join(f"{batch / rows[d][1]:,.0f}" for d in dtypes) + f" | {fps} |",
      "| latency at batch 1 | " + " | ".join(f"{rows[d][2] * 1e3:.2f} ms" for d in dtypes)
      + f" | {latency} |",
      f"| first call at batch {batch} (trace + compile + run) | "
      + " | ".join(f"{rows[d][0]:.2f} s" for d in dtypes) + " | n/a |"]


def bfloat16_note(poses) -> list[str]:
  """Lines saying how far bfloat16's poses [B, 17, 3] land from float32's (none without both)."""
  if "float32" not in poses or "bfloat16" not in poses:
    return []
  diff = np.linalg.norm(poses["bfloat16"] - poses["float32"], axis=-1) * 1000
  return ["", f"bfloat16 vs float32, same random weights and inputs: the poses differ by "
          f"{diff.mean():.2f} mm per joint on average ({np.percentile(diff, 99):.2f} mm at the "
          "99th percentile); the numerical effect of bfloat16 matmul operands, not a trained "
          "model's MPJPE change."]
