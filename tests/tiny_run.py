"""A tiny DiffPose run shared by the training, sharding and CLI tests; fresh interpreters for them.

Those tests start new Python processes: the command-line tools as a user types them, and code that
needs its own JAX start-up (a simulated device count, a compilation cache). All of them compile the
same few small programs, and on 2 CPU cores one train step takes 5-20 s to compile, so the processes
of one pytest session share a persistent XLA compilation cache. The cache only changes how long a
run takes, never what it computes.

Run as a module, it trains a sequence of tiny runs in one process (used by tests/test_training.py):

  python -m tests.tiny_run DATA_ROOT '[{"workdir": "...", "overrides": {"train.steps": 3}}, ...]'
"""

import json
import os
import pathlib
import subprocess
import sys

from tests.conftest import REPO_ROOT

# Small enough to compile in seconds and train a few steps in well under one; every other setting is
# configs/demo.py's. The data (see `tiny_data`) gives 4800 training frames: 150 batches of 32.
OVERRIDES = {
    "model.hid_dim": 16, "model.num_layers": 1, "lifter.hid_dim": 16, "lifter.num_layers": 1,
    "train.batch_size": 32, "train.lifter_steps": 2, "train.steps": 2, "train.log_every": 1,
    "train.checkpoint_every": 2, "train.eval_at_start": False, "eval.batch_size": 512,
}
# Frames per synthetic sequence: 7 subjects x 15 actions x 4 cameras x 16 frames, generated in ~1 s.
FRAMES_PER_SEQUENCE = 16


def session_dir(tmp_path_factory, name: str) -> pathlib.Path:
  """A folder shared by every test module of this pytest session."""
  path = tmp_path_factory.getbasetemp() / name
  path.mkdir(exist_ok=True)
  return path


def tiny_data(tmp_path_factory) -> pathlib.Path:
  """The session's tiny synthetic Human3.6M-layout data set (all subjects and actions)."""
  # pylint: disable-next=g-import-not-at-top
  from posediff_jax.data.synthetic import h36m as synthetic_h36m

  root = session_dir(tmp_path_factory, "tiny_data")
  synthetic_h36m.ensure_synthetic_data(root, frames_per_sequence=FRAMES_PER_SEQUENCE)
  return root


def config_flags(overrides: dict | None = None) -> list[str]:
  """`OVERRIDES` (updated by `overrides`) as `--config.x.y=v` command-line flags."""
  return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **(overrides or {})}.items()]


def tiny_config(data_root, overrides: dict | None = None):
  """configs/demo.py with `OVERRIDES` (updated by `overrides`), reading data from `data_root`."""
  from configs import demo  # pylint: disable=g-import-not-at-top

  config = demo.get_config()
  config.data.root = str(data_root)
  for dotted, value in {**OVERRIDES, **(overrides or {})}.items():
    *sections, field = dotted.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = value
  return config


# The tiny sizes of the other families, on top of their own Human3.6M configs (mmDiff: mmBody's, on
# the synthetic radar set of `tiny_radar_data`, both phases).
FAMILY_CONFIGS = {"mmdiff": "mmdiff_mmbody"}
FAMILY_OVERRIDES = {
    "icassp": {k: v for k, v in OVERRIDES.items() if k != "eval.batch_size"},
    "d3dp": {"model.num_frames": 9, "model.embed_dim": 16, "model.depth": 1,
             "model.num_heads": 2, "sampling.num_hypotheses": 2, "sampling.num_steps": 2,
             "train.batch_size": 8, "train.steps": 2, "train.log_every": 1,
             "train.checkpoint_every": 2, "eval.batch_size": 2},
    "mmdiff": {"data.source": "raw", "data.points_per_frame": 64, "model.hid_dim": 16,
               "model.num_layers": 1, "model.n_head": 2, "model.feature_size": 8,
               "model.local_points": 16, "model.limb_hidden": 32, "phase1.dim": 32,
               "phase1.depth": 1, "phase1.heads": 2, "phase1.dim_head": 8, "phase1.mlp_dim": 32,
               "phase1.feature_size": 8, "phase1.num_samples": 8, "phase1.spatial_stride": 16,
               "train.encoder_steps": 2, "train.encoder_batch_size": 8, "train.steps": 2,
               "train.batch_size": 8, "train.log_every": 1, "train.checkpoint_every": 2,
               "eval.batch_size": 16, "eval.encoder_batch_size": 16, "eval.cpu_chunk_size": 0},
}
# FinePOSE and DSGDiffu: D3DP's tiny sizes and a tiny text branch (CLIP width = embed_dim).
_TEXT_TINY = {"model.text_width": 16, "model.text_layers": 1, "model.text_ff_dim": 32}
FAMILY_OVERRIDES.update({f: {**FAMILY_OVERRIDES["d3dp"], **_TEXT_TINY}
                         for f in ("finepose", "dsgdiffu")})
# Frames per sequence of the tiny radar set: 4 training sequences, 7 test scenes of one sequence.
RADAR_FRAMES_PER_SEQUENCE = 12


def tiny_radar_data(tmp_path_factory) -> pathlib.Path:
  """The session's tiny synthetic mmBody-layout radar set."""
  # pylint: disable-next=g-import-not-at-top
  from posediff_jax.data.synthetic import radar as synthetic_radar

  root = session_dir(tmp_path_factory, "tiny_radar_data")
  synthetic_radar.ensure_synthetic_radar(root, "mmbody",
                                         frames_per_sequence=RADAR_FRAMES_PER_SEQUENCE)
  return root


def tiny_family_config(family: str, data_root, overrides: dict | None = None):
  """`tiny_config` for DiffPose; for another family its config (`FAMILY_CONFIGS`, else
  configs/<family>_h36m.py) made tiny."""
  if family == "diffpose":
    return tiny_config(data_root, overrides)
  import importlib  # pylint: disable=g-import-not-at-top

  module = FAMILY_CONFIGS.get(family, f"{family}_h36m")
  config = importlib.import_module(f"configs.{module}").get_config()
  config.data.root = str(data_root)
  for dotted, value in {**FAMILY_OVERRIDES[family], **(overrides or {})}.items():
    *sections, field = dotted.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = value
  return config


def python(args: list[str], *, cache_dir, devices: int | None = None, xla_flags: str = "",
           timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
  """Runs `python ARGS` in the repository root on CPU, sharing the XLA compilation cache.

  Args:
    args: the interpreter's arguments, e.g. ["train.py", "--config", ...] or ["-c", code].
    cache_dir: the persistent compilation cache folder (see the module docstring).
    devices: simulate this many CPU devices (`--xla_force_host_platform_device_count`).
    xla_flags: more `XLA_FLAGS` for this process, e.g. "--xla_backend_optimization_level=0".
    timeout: seconds before the process is killed and the test fails.
    check: fail the test, showing stdout and stderr, unless the process exits with status 0.

  Returns:
    The finished process, with text `stdout` and `stderr`.
  """
  env = {k: v for k, v in os.environ.items() if k != "POSEDIFF_TRACEBACK"}
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  flags = [env.get("XLA_FLAGS", ""), xla_flags]
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  if any(flags):
    env["XLA_FLAGS"] = " ".join(f for f in flags if f)
  proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)
  if check and proc.returncode != 0:
    raise AssertionError(f"python {' '.join(map(str, args))} exited with {proc.returncode}\n"
                         f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
  return proc


def one_error_line(proc: subprocess.CompletedProcess, *words) -> str:
  """Status 2, no traceback, exactly one `error: ` line on stderr, naming every one of `words`
  (as `str(word)`); returns that line."""
  assert proc.returncode == 2, f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
  assert "Traceback" not in proc.stderr, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, proc.stderr
  for word in words:
    assert str(word) in errors[0], (word, errors[0])
  return errors[0]


def _train_jobs(data_root: str, jobs: list[dict]) -> None:
  from posediff_jax import training  # pylint: disable=g-import-not-at-top

  for job in jobs:
    training.train_and_evaluate(tiny_config(data_root, job.get("overrides")), job["workdir"])


if __name__ == "__main__":
  _train_jobs(sys.argv[1], json.loads(sys.argv[2]))
