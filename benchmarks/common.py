"""What every benchmark script shares: timing, the machine line, and rewriting its docs section."""

import os
import pathlib
import platform
import time

import jax
import numpy as np

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


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
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', 'unset')}, load average {load:.1f} at start")


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
