"""The command-line tools as a user types them, and the one-line error each gives for bad input.

train.py trains the tiny model of `tests/tiny_run.py` on the session's tiny synthetic data; every
other command reuses its workdir. Bad input must end with status 2 and a single `error: ...` line on
stderr that names what is wrong, never a traceback.
"""

import json
import re
import shutil

import numpy as np
import pytest

from posediff_jax import checkpoint
from posediff_jax.data import h36m
from tests import tiny_run
from tests import torch_format
from tests.conftest import RunsCode, parity_dir

pytestmark = pytest.mark.slow

_ROW = re.compile(r"^(\w+)\s+(\d+\.\d\d)\s+(\d+\.\d\d)$")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return tiny_run.tiny_data(tmp_path_factory)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tiny_run.session_dir(tmp_path_factory, "xla_cache")


def _model_flags(data_root, **changes) -> list[str]:
  """The tiny model's sizes and eval settings as flags (train.* left out), plus `changes`."""
  flags = [f for f in tiny_run.config_flags() if not f.startswith("--config.train.")]
  return [f"--config.data.root={data_root}", *flags,
          *(f"--config.{k.replace('__', '.')}={v}" for k, v in changes.items())]


def _table(stdout: str) -> dict[str, tuple[float, float]]:
  """The per-action table's rows {action: (P1 mm, P2 mm)}, after its header line."""
  lines = stdout.splitlines()
  header = [i for i, line in enumerate(lines) if line.startswith("===Action===")]
  assert len(header) == 1, stdout
  rows = {}
  for line in lines[header[0] + 1:]:
    match = _ROW.match(line.strip())
    if not match:
      break
    rows[match[1]] = (float(match[2]), float(match[3]))
  assert list(rows) == [*h36m.ACTIONS, "Average"], stdout
  return rows


def _assert_table_matches(rows, results: dict) -> None:
  for action, (p1, p2) in rows.items():
    saved = results["average"] if action == "Average" else results["actions"][action]
    assert p1 == pytest.approx(saved["p1_mm"], abs=0.005 + 1e-9), action
    assert p2 == pytest.approx(saved["p2_mm"], abs=0.005 + 1e-9), action


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, cache):
  """`python train.py --config configs/demo.py --workdir W ...` with the tiny overrides."""
  workdir = tmp_path_factory.mktemp("cli") / "run"
  proc = tiny_run.python(["train.py", "--config", "configs/demo.py", "--workdir", str(workdir),
                          f"--config.data.root={data}", *tiny_run.config_flags()],
                         cache_dir=cache)
  return workdir, proc


def test_train_prints_the_table_and_writes_results(trained):
  workdir, proc = trained
  total = tiny_run.OVERRIDES["train.lifter_steps"] + tiny_run.OVERRIDES["train.steps"]
  assert f"step {total}/{total} [denoiser] loss" in proc.stderr  # the progress log
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["step"] == total
  assert results["results"]["num_samples"] == 2 * 15 * 4 * tiny_run.FRAMES_PER_SEQUENCE
  _assert_table_matches(_table(proc.stdout), results["results"])


def test_train_writes_metrics_events_config_and_checkpoints(trained):
  workdir, _ = trained
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = {(r["step"], key) for r in records for key in r if key not in ("step", "wall_time")}
  lifter = tiny_run.OVERRIDES["train.lifter_steps"]
  total = lifter + tiny_run.OVERRIDES["train.steps"]
  for step in range(1, total + 1):
    assert (step, f"train/{'lifter' if step <= lifter else 'denoiser'}_loss") in logged, step
  assert (total, "eval/mpjpe_mm") in logged and (total, "eval/p_mpjpe_mm") in logged
  (events,) = (workdir / "tb").glob("events.out.tfevents.*")
  content = events.read_bytes()
  assert b"brain.Event:2" in content and b"train/denoiser_loss" in content
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["hid_dim"] == tiny_run.OVERRIDES["model.hid_dim"]
  mngr = checkpoint.manager(workdir / "checkpoints", create=False)
  assert sorted(mngr.all_steps()) == list(range(2, total + 1, 2))
  mngr.close()
  params, meta, step = checkpoint.load_model(workdir)
  assert step == total and meta["family"] == "diffpose" and meta["source"] == "train.py"
  assert meta["model"]["hid_dim"] == tiny_run.OVERRIDES["model.hid_dim"]
  assert params["lifter"]["gconv_input"]["weight"].shape[-1] == tiny_run.OVERRIDES["lifter.hid_dim"]


def test_evaluate_prints_the_table_and_saves_config_and_checkpoint(trained, data, cache, tmp_path):
  workdir, _ = trained
  out = tmp_path / "results" / "out.json"
  proc = tiny_run.python(["evaluate.py", "--config", "configs/demo.py", "--checkpoint",
                          str(workdir), "--output", str(out), *_model_flags(data)],
                         cache_dir=cache)
  saved = json.loads(out.read_text())
  assert saved["checkpoint"] == str(workdir)
  assert saved["checkpoint_step"] == json.loads((workdir / "eval_results.json").read_text())["step"]
  assert saved["config"]["family"] == "diffpose"
  assert saved["config"]["model"]["hid_dim"] == tiny_run.OVERRIDES["model.hid_dim"]
  assert saved["config"]["data"]["root"] == str(data)
  _assert_table_matches(_table(proc.stdout), saved["results"])
  # The same weights on the same test set: evaluate.py reproduces train.py's final evaluation.
  trained_results = json.loads((workdir / "eval_results.json").read_text())["results"]
  np.testing.assert_allclose(saved["results"]["average"]["p1_mm"],
                             trained_results["average"]["p1_mm"], rtol=1e-6)


def test_evaluate_on_an_action_subset_saves_its_predictions(trained, data, cache, tmp_path):
  workdir, _ = trained
  out = tmp_path / "predictions.npz"
  proc = tiny_run.python(["evaluate.py", "--config", "configs/demo.py", "--checkpoint",
                          str(workdir), "--save_predictions", str(out),
                          "--config.data.actions=('Walking', 'Eating')", *_model_flags(data)],
                         cache_dir=cache)
  lines = proc.stdout.splitlines()
  start = lines.index("===Action=== ==p#1 mm== =p#2 mm=")
  rows = {m[1]: float(m[2]) for m in map(_ROW.match, lines[start + 1:start + 4])}
  # Only the evaluated actions are listed, and the Average is theirs.
  assert list(rows) == ["Eating", "Walking", "Average"], proc.stdout
  assert rows["Average"] == pytest.approx((rows["Eating"] + rows["Walking"]) / 2, abs=0.01)
  saved = np.load(out)  # a plain .npz: no pickles
  assert str(saved["layout"]) == "frames" and str(saved["family"]) == "diffpose"
  assert len(saved["pred"]) == 2 * 2 * 4 * tiny_run.FRAMES_PER_SEQUENCE
  for action in ("Eating", "Walking"):
    rows_of = saved["action"] == action
    assert saved["mpjpe_mm"][rows_of].mean() == pytest.approx(rows[action], abs=0.005 + 1e-9)
  assert set(saved["subject"]) == {"S9", "S11"} and saved["frame"].max() == 15
  bad = tiny_run.python(["evaluate.py", "--config", "configs/demo.py", "--checkpoint",
                         str(workdir), "--config.data.actions=('Jogging',)", *_model_flags(data)],
                        cache_dir=cache, check=False)
  tiny_run.one_error_line(bad, "config.data.actions", "Jogging")


def test_evaluate_with_another_width_fails_with_one_line(trained, data, cache):
  workdir, _ = trained
  hid = tiny_run.OVERRIDES["model.hid_dim"]
  proc = tiny_run.python(["evaluate.py", "--config", "configs/demo.py", "--checkpoint",
                          str(workdir), *_model_flags(data, model__hid_dim=2 * hid)],
                         cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, str(workdir), f"model.hid_dim={hid}", 2 * hid,
                          f"--config.model.hid_dim={hid}")


def test_train_with_a_lifter_checkpoint_of_another_width_fails_with_one_line(trained, data, cache,
                                                                              tmp_path):
  workdir, _ = trained
  hid = tiny_run.OVERRIDES["lifter.hid_dim"]
  proc = tiny_run.python(["train.py", "--config", "configs/demo.py", "--workdir",
                          str(tmp_path / "run"), f"--config.data.root={data}",
                          *tiny_run.config_flags({"lifter.hid_dim": 2 * hid,
                                                  "train.lifter_steps": 0}),
                          f"--config.train.lifter_checkpoint={workdir}"],
                         cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, f"lifter.hid_dim={hid}", f"--config.lifter.hid_dim={hid}")


def test_evaluate_a_checkpoint_of_another_family_fails_with_one_line(data, cache, tmp_path):
  ckpt = tmp_path / "icassp_ckpt"
  checkpoint.save_model(ckpt, {"lifter": {"w": np.zeros(2, np.float32)},
                               "denoiser": {"w": np.zeros(2, np.float32)}}, {"family": "icassp"})
  proc = tiny_run.python(["evaluate.py", "--config", "configs/demo.py", "--checkpoint", str(ckpt),
                          *_model_flags(data)], cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, str(ckpt), "'icassp'", "'diffpose'")


def test_evaluate_a_missing_checkpoint_directory_fails_with_one_line(data, cache, tmp_path):
  missing = tmp_path / "no_such_checkpoint"
  proc = tiny_run.python(["evaluate.py", "--config", "configs/demo.py", "--checkpoint",
                          str(missing), *_model_flags(data)], cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, "not found", str(missing))


def test_train_with_a_missing_data_file_fails_with_one_line(data, cache, tmp_path):
  partial = tmp_path / "partial_data"
  partial.mkdir()
  # The CPN-like test file is absent; the others are there.
  for name in ("data_3d_h36m.npz", "data_2d_h36m_gt_gmm.npz"):
    shutil.copy(data / name, partial / name)
  proc = tiny_run.python(["train.py", "--config", "configs/demo.py", "--workdir",
                          str(tmp_path / "run"), *tiny_run.config_flags(),
                          f"--config.data.root={partial}",
                          "--config.data.generate_synthetic=False"], cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, partial / "data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz",
                          "config.data.test_2d", "not found")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_with_a_batch_the_devices_cannot_split_fails_with_one_line(data, cache, tmp_path):
  batch = tiny_run.OVERRIDES["train.batch_size"]
  assert batch % 3
  proc = tiny_run.python(["train.py", "--config", "configs/demo.py", "--workdir",
                          str(tmp_path / "run"), f"--config.data.root={data}",
                          *tiny_run.config_flags()], cache_dir=cache, devices=3, check=False)
  tiny_run.one_error_line(proc, f"train.batch_size={batch}", "3 devices")


def test_convert_a_checkpoint_that_runs_code_fails_with_one_line(cache, tmp_path):
  marker = tmp_path / "pwned"
  evil = tmp_path / "evil.pth"
  torch_format.save_raw_pickle({"model": RunsCode(marker)}, evil)
  proc = tiny_run.python(["convert_torch_weights.py", "--family", "diffpose", "--checkpoint",
                          str(evil), "--lifter", str(evil), "--output", str(tmp_path / "out")],
                         cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, evil, "system")
  assert not marker.exists() and not (tmp_path / "out").exists()


def test_convert_a_missing_file_fails_with_one_line(cache, tmp_path):
  missing = tmp_path / "diffpose_uvxyz_cpn.pth"
  proc = tiny_run.python(["convert_torch_weights.py", "--family", "diffpose", "--checkpoint",
                          str(missing), "--lifter", str(missing), "--output",
                          str(tmp_path / "out")], cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, missing, "not found")


def test_convert_with_the_wrong_width_or_the_wrong_file_fails_with_one_line(cache, tmp_path):
  root = parity_dir("diffpose")  # torch checkpoints at hid_dim 64, 2 layers
  denoiser, lifter = root / "denoiser.pth", root / "lifter.pth"
  sizes = ["--config.model.num_layers=2", "--config.lifter.hid_dim=64",
           "--config.lifter.num_layers=2"]
  proc = tiny_run.python(["convert_torch_weights.py", "--family", "diffpose", "--checkpoint",
                          str(denoiser), "--lifter", str(lifter), "--output", str(tmp_path / "a"),
                          "--config.model.hid_dim=32", *sizes], cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, denoiser, "hid_dim=64", "--config.model.hid_dim=64")
  # The lifter's file given as the denoiser.
  proc = tiny_run.python(["convert_torch_weights.py", "--family", "diffpose", "--checkpoint",
                          str(lifter), "--lifter", str(lifter), "--output", str(tmp_path / "b"),
                          "--config.model.hid_dim=64", *sizes], cache_dir=cache, check=False)
  tiny_run.one_error_line(proc, lifter, "DiffPose lifter", "expected a DiffPose denoiser")
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
