"""The pod planner (`python -m posediff_jax.plan`): TPU compiles on a CPU, with libtpu and no TPU.

The tiny configs of tests/tiny_run.py compile for a TPU in seconds. libtpu comes with
requirements-dev.txt; without it these tests fail rather than skip (planning is a feature).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from posediff_jax import datasets
from posediff_jax import plan
from posediff_jax import sharding
from tests import tiny_run
from tests.conftest import REPO_ROOT
from tests.conftest import assert_close

# The smallest slice: one v5e chip (16 GiB).
ONE_CHIP = "v5litepod-1"
# DiffPose's tiny denoiser stage alone: one train step and the sampler to compile.
_DIFFPOSE = {"train.lifter_steps": 0}


def _run_planner(*flags: str) -> subprocess.CompletedProcess:
  """`python -m posediff_jax.plan ...` as a user types it (no JAX_PLATFORMS, no TPU_* settings)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("TPU_") and k not in ("JAX_PLATFORMS", "POSEDIFF_TRACEBACK",
                                                     "ALLOW_MULTIPLE_LIBTPU_LOAD")}
  return subprocess.run([sys.executable, "-m", "posediff_jax.plan", *flags], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=600, check=False)


def _tiny_flags(**changes) -> list[str]:
  return ["--config=configs/demo.py", *tiny_run.config_flags({**_DIFFPOSE, **changes})]


def test_topology_names():
  assert plan.parse_topology("v5litepod-8").shape == (2, 4)
  assert plan.parse_topology("v5e-1").shape == (1, 1)
  v5p = plan.parse_topology("v5p-64")  # 64 TensorCores = 32 chips
  assert (v5p.chip.name, v5p.chips, v5p.libtpu_name) == ("v5p", 32, "v5p:2x4x4")
  assert plan.parse_topology("v5p:4x4x8").cloud_name == "v5p-256"
  assert plan.parse_topology("v4-8").chips == 4
  for bad, words in (("v5p-6", "v5p-8"), ("h100-8", "v5litepod-8"), ("v5e:2x2x1", "2 axes")):
    with pytest.raises(ValueError, match=words):
      plan.parse_topology(bad)


def test_libtpu_describes_the_documented_slices():
  for name, chips in (("v5litepod-8", 8), ("v5p-8", 4), ("v5p-64", 32), ("v5p-256", 128),
                      (ONE_CHIP, 1)):
    devices = plan.topology_devices(plan.parse_topology(name))
    assert len(devices) == chips and devices[0].platform == "tpu", name
  # Describing a TPU slice changed nothing about this process's own backend.
  assert jax.default_backend() == "cpu"


def test_cli_prints_per_chip_memory_and_refuses_a_batch_too_large(tmp_path):
  out = tmp_path / "plan.json"
  proc = _run_planner(*_tiny_flags(), f"--topology={ONE_CHIP}", f"--json={out}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  text = proc.stdout
  assert "v5litepod-1 (v5e:1x1: 1 v5e chip" in text, text
  for words in ("train step (denoiser)", "evaluation (evaluate.py)", "HBM needed",
                "of 16 GiB", "fits", "parameters", "optimizer state + EMA",
                "activations + temps", "FLOPs", "XLA's estimate", "collectives"):
    assert words in text, (words, text)
  # No libtpu probe warnings: the planner told it what it would have asked a metadata server.
  assert "TPU_ACCELERATOR_TYPE" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
  saved = __import__("json").loads(out.read_text())
  assert [p["name"] for p in saved["programs"]] == ["train step (denoiser)",
                                                    "evaluation (evaluate.py)"]
  assert all(0 < p["needed"] < 16 * 2**30 for p in saved["programs"])

  # 8M frames per chip: XLA refuses to place the step in 16 GiB; one line says so and what to do.
  proc = _run_planner(*_tiny_flags(**{"train.batch_size": 2**23}), f"--topology={ONE_CHIP}",
                      "--programs=train")
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, proc.stderr
  for words in ("train step (denoiser)", "v5e chip has 16 GiB", "over", "batch_size",
                "grad_accum_steps", "compute_dtype=bfloat16"):
    assert words in errors[0], (words, errors[0])
  assert "DOES NOT FIT" in proc.stdout


def test_cli_errors_are_one_line():
  proc = _run_planner(*_tiny_flags(), "--topology=v5p-6")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --topology 'v5p-6'")
  proc = _run_planner(*_tiny_flags(**{"train.batch_size": 12}), "--topology=v5litepod-8")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert "train.batch_size=12" in proc.stderr and "--config.train.batch_size=16" in proc.stderr


# A TPU compile of a tiny model still takes 30-140 s on a 2-core machine: D3DP stands for the clip
# families here (FinePOSE / DSGDiffu build on its network and sampler); the CLI test covers the
# frame layout. POSEDIFF_PLAN_ALL_FAMILIES=1 plans ICASSP, FinePOSE, DSGDiffu and mmDiff too.
_FAMILIES = ["d3dp"] + (["icassp", "finepose", "dsgdiffu", "mmdiff"]
                        if os.environ.get("POSEDIFF_PLAN_ALL_FAMILIES") == "1" else [])


@pytest.mark.parametrize("family", _FAMILIES)
def test_every_family_plans(family):
  """Families through the library: train step and evaluation program on one chip; D3DP on a
  4-chip v5p slice, where the gradients are all-reduced over the data axis."""
  config = tiny_run.tiny_family_config(family, "unused")
  topology = "v5p-8" if family == "d3dp" else ONE_CHIP
  result = plan.plan(config, topology)
  names = [p.name for p in result.programs]
  assert names[-1] == "evaluation (evaluate.py)" and "train step (denoiser)" in names, names
  for prog in result.programs:
    assert not prog.refused and 0 < prog.needed < 1 * 2**30, (prog.name, prog.needed)
    assert prog.flops > 0 and prog.parts["parameters"] > 0
  report = plan.format_plan(result)
  assert "HBM needed" in report and plan.misfit_message(result, config) is None
  if family == "d3dp":
    # Each chip evaluates its own mini-batches: only the results cross chips (gathered for every
    # process's tables), no reduction and no batched SVD gathered onto every chip.
    evaluation = result.programs[-1]
    assert set(evaluation.collectives) <= {"all-gather"}, evaluation.collectives
    step = result.programs[0]
    count, size = step.collectives["all-reduce"]
    # Gradients (float32, replicated parameters) are summed over the data axis every step.
    assert count >= 1 and size >= 0.9 * step.parts["parameters"], step.collectives
    assert result.mesh_shape == {"data": 4, "model": 1}


def test_abstract_batches_match_the_training_streams(tmp_path_factory):
  """The planner's batch shapes are the ones the data code yields (frames and clips)."""
  root = tiny_run.tiny_data(tmp_path_factory)
  for family in ("diffpose", "d3dp"):
    config = tiny_run.tiny_family_config(family, root)
    size = config.train.batch_size
    data = datasets.load_split(config, "train")
    real = next(iter(datasets.train_dataset(config, data, batch_size=size, shard_index=0,
                                            shard_count=1)))
    mesh = sharding.make_mesh(None)
    abstract = plan.train_batch(config, "denoiser", size, sharding.by_batch(mesh))
    assert sorted(abstract) == sorted(real), family
    for key, value in real.items():
      value = np.asarray(value)
      assert abstract[key].shape == value.shape, (family, key)
      assert abstract[key].dtype == value.dtype, (family, key)


def test_libtpu_leaves_the_default_backend_alone():
  """With libtpu installed, a plain process (no JAX_PLATFORMS) still runs on the CPU."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and not k.startswith("TPU_")}
  code = "import jax; print(jax.default_backend(), jax.devices()[0].platform)"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=True)
  assert proc.stdout.split() == ["cpu", "cpu"], proc.stdout + proc.stderr
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  assert cloud_tpu_init.get_tpu_library_path(), "libtpu is not installed (requirements-dev.txt)"


def test_tools_start_without_libtpu_warnings():
  """On a machine without a TPU, libtpu (installed for the planner) prints host-probe warnings
  when JAX looks for a TPU; the tools ask for the CPU first (`runtime.run` does this) and print
  nothing."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and not k.startswith("TPU_")}
  code = ("from posediff_jax import runtime; runtime.quiet_libtpu_without_tpu(); import jax; "
          "print(jax.default_backend())")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=True)
  assert proc.stdout.split() == ["cpu"], proc.stdout + proc.stderr
  assert "TPU" not in proc.stderr, proc.stderr


def test_remat_gives_the_same_step():
  """`model.remat` (the planner's fix for a MixSTE step that does not fit) only moves memory:
  the same parameters, loss and gradients as the plain step, stochastic depth included."""
  from posediff_jax import families  # pylint: disable=g-import-not-at-top
  from posediff_jax import training  # pylint: disable=g-import-not-at-top

  results = []
  for remat in (False, True):
    config = tiny_run.tiny_family_config("d3dp", "unused", {"model.remat": remat,
                                                            "model.depth": 2})
    family = families.get("d3dp")
    params = family.init_params(config, jax.random.key(0))
    optimizer = training.make_optimizer(config, "denoiser")
    state = training.init_state(config, params, {"denoiser": optimizer})
    rng = np.random.default_rng(0)
    shape = (config.train.batch_size, config.model.num_frames, config.model.num_joints)
    batch = {"input_2d": rng.normal(size=shape + (2,)).astype(np.float32),
             "target_3d": rng.normal(size=shape + (3,)).astype(np.float32) * 0.2,
             "sequence": np.zeros(shape[:1], np.int32)}
    step = training.make_train_step(config, "denoiser", optimizer, family.LOSSES["denoiser"],
                                    steps_per_epoch=100, return_grads=True)
    new_state, measured = jax.jit(step)(state, batch)
    results.append((jax.tree.map(np.asarray, params), jax.device_get(measured),
                    jax.device_get(new_state["params"])))
  (params, plain, plain_after), (params_remat, remat, remat_after) = results
  assert jax.tree.structure(params) == jax.tree.structure(params_remat)
  jax.tree.map(np.testing.assert_array_equal, params, params_remat)
  np.testing.assert_allclose(remat["loss"], plain["loss"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               remat["grads"], plain["grads"])
  # After the AdamW step: a near-zero gradient's direction g / (|g| + eps) magnifies rounding, so
  # compare against the largest parameter (the parity tests' measure).
  jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-5), remat_after, plain_after)


def test_eval_chunk_size_gives_the_same_samples():
  """`eval.chunk_size` (the planner's fix for FinePOSE's sampler on a v5e chip) runs a call's
  denoiser rows a few at a time on accelerators; traced as a GPU/TPU would, it gives the same
  poses as all rows at once."""
  from posediff_jax import families  # pylint: disable=g-import-not-at-top

  outputs = []
  for chunk in (0, 3):
    config = tiny_run.tiny_family_config("finepose", "unused", {"eval.chunk_size": chunk})
    family = families.get("finepose")
    params = family.init_params(config, jax.random.key(0))
    shape = (2, config.model.num_frames, config.model.num_joints, 2)
    input_2d = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 0.3
    sample = jax.jit(lambda p, x, k, c=config: family.sample(
        c, p, x, k, action_index=np.array([0, 1], np.int32)))
    with plan.traced_for("gpu"):  # eval.cpu_chunk_size would decide on the CPU
      outputs.append(np.asarray(sample(params, input_2d, jax.random.key(1))))
  assert_close(outputs[1], outputs[0], rtol=1e-5, what="chunked vs one pass")
