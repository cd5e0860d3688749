"""Careless users: every mistake ends with one `error: ...` line naming it and exit status 2.

The tools run as a user types them (fresh interpreters, `tests/tiny_run.py`'s shared compilation
cache). Every error here must come before any data is loaded or anything compiled, so each run
takes seconds; where a mistake used to leave directories behind, the test checks none is created.
A few cases that need no process are checked on the library functions directly.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs import demo
from posediff_jax import checkpoint
from posediff_jax import config_checks
from posediff_jax import evaluation
from posediff_jax import keypoints as kp
from posediff_jax.convert import common
from posediff_jax.convert import d3dp as convert_d3dp
from posediff_jax.convert import mmdiff as convert_mmdiff
from posediff_jax.families import diffpose
from posediff_jax.models import mmdiff_phase1
from tests import tiny_run
from tests.conftest import REPO_ROOT, ci_disallowed_skips, load_state_dict, parity_dir
from tests.conftest import spec_key_sections
from tests.test_predict import _synthetic_coco

CONFIG_FILES = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.py")
                      if p.name != "__init__.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return tiny_run.tiny_data(tmp_path_factory)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tiny_run.session_dir(tmp_path_factory, "xla_cache")


def _run(args, cache) -> subprocess.CompletedProcess:
  return tiny_run.python([str(a) for a in args], cache_dir=cache, check=False)


def _model_flags(data_root=None) -> list[str]:
  """The tiny model's sizes and eval settings (no train.*), and the data root if given."""
  flags = [f for f in tiny_run.config_flags() if not f.startswith("--config.train.")]
  return flags + ([f"--config.data.root={data_root}"] if data_root else [])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(config, params, meta) of the tiny DiffPose with fresh weights."""
  config = tiny_run.tiny_config(tmp_path_factory.mktemp("unused"))
  params = jax.tree.map(np.asarray, diffpose.init_params(config, jax.random.key(0)))
  return config, params, diffpose.checkpoint_meta(config)


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory):
  """A converted-style checkpoint of the tiny model (one step)."""
  _, params, meta = tiny
  return checkpoint.save_model(tmp_path_factory.mktemp("ckpt") / "tiny", params, meta)


@pytest.fixture(scope="module")
def keypoint_file(tmp_path_factory):
  """(a good COCO-17 .npz of a synthetic walk, its image size)."""
  coco, scores, size = _synthetic_coco(6)
  path = tmp_path_factory.mktemp("keypoints") / "walk.npz"
  np.savez(path, keypoints=coco, scores=scores, layout="coco")
  return path, size


def _cut_in_half(folder: pathlib.Path) -> None:
  """Truncates every array file of a checkpoint step's `state` (as a full disk or a copy would)."""
  for path in (folder / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and path.name != "_CHECKPOINT_METADATA":
      path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.fixture
def read_only(tmp_path):
  """A directory nothing can be created in: chmod 555, or, as root (which ignores permissions),
  a read-only part of sysfs."""
  folder = tmp_path / "read_only"
  folder.mkdir()
  folder.chmod(0o555)
  try:
    for candidate in (folder, pathlib.Path("/sys/kernel")):
      if candidate.is_dir() and config_checks.writable_problem(candidate / "x", "x",
                                                               directory=True):
        yield candidate
        return
    pytest.fail("no read-only directory found to test with")
  finally:
    folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# 1. Truncated or empty keypoint files.


@pytest.mark.parametrize("suffix,cut", [(".npz", 0), (".npz", 0.5), (".npy", 0), (".npy", 0.5)])
def test_truncated_or_empty_keypoint_files_are_one_clear_error(tmp_path, suffix, cut):
  whole = tmp_path / f"whole{suffix}"
  points = np.zeros((4, 17, 3))
  np.savez(whole, keypoints=points) if suffix == ".npz" else np.save(whole, points)
  damaged = tmp_path / f"damaged{suffix}"
  damaged.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * cut)])
  with pytest.raises(ValueError, match="empty" if cut == 0 else "truncated or damaged") as info:
    kp.load_keypoints(damaged, "coco")
  assert str(damaged) in str(info.value)


def test_predict_with_an_empty_or_truncated_keypoint_file(tmp_path, ckpt, cache):
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  half = tmp_path / "half.npy"
  np.save(tmp_path / "whole.npy", np.zeros((4, 17, 3)))
  half.write_bytes((tmp_path / "whole.npy").read_bytes()[:100])
  for path, words in ((empty, ("empty", "0 bytes")), (half, ("truncated", "100 bytes"))):
    proc = _run(["-m", "posediff_jax.predict", "--config", "configs/demo.py", *_model_flags(),
                 f"--checkpoint={ckpt}", f"--keypoints={path}", "--format=coco",
                 "--image_size=1000,1000", f"--output={tmp_path / 'out.npz'}"], cache)
    tiny_run.one_error_line(proc, path, *words)
  assert not (tmp_path / "out.npz").exists()


# ---------------------------------------------------------------------------------------------
# 2. Damaged checkpoints.


@pytest.fixture(scope="module")
def damaged_workdir(tiny, tmp_path_factory):
  """A train.py-like workdir with steps 2 and 4, step 4's arrays cut in half."""
  _, params, meta = tiny
  workdir = tmp_path_factory.mktemp("damaged") / "run"
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mngr = checkpoint.manager(workdir / "checkpoints")
  for step in (2, 4):
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params}),
                                            meta=ocp.args.JsonSave(meta)))
  mngr.wait_until_finished()
  mngr.close()
  _cut_in_half(workdir / "checkpoints" / "4")
  return workdir


def test_evaluate_a_workdir_whose_newest_step_is_damaged(damaged_workdir, data, cache):
  proc = _run(["evaluate.py", "--config", "configs/demo.py", "--checkpoint", damaged_workdir,
               *_model_flags(data)], cache)
  line = tiny_run.one_error_line(proc, damaged_workdir / "checkpoints", "step 4", "unreadable",
                                 "previous step 2", damaged_workdir / "checkpoints" / "4")
  assert len(line) < 1000, line
  assert "Event loop is closed" not in proc.stderr
  # evaluate.py only reads: the damaged step is neither renamed nor skipped silently.
  assert sorted(p.name for p in (damaged_workdir / "checkpoints").iterdir()) == ["2", "4"]


def test_predict_with_a_damaged_converted_checkpoint(tiny, keypoint_file, tmp_path, cache):
  _, params, meta = tiny
  damaged = checkpoint.save_model(tmp_path / "converted", params, meta)
  _cut_in_half(damaged / "0")
  path, size = keypoint_file
  proc = _run(["-m", "posediff_jax.predict", "--config", "configs/demo.py", *_model_flags(),
               f"--checkpoint={damaged}", f"--keypoints={path}",
               f"--image_size={size[0]},{size[1]}", f"--output={tmp_path / 'out.npz'}"], cache)
  tiny_run.one_error_line(proc, damaged, "step 0", "unreadable", "write the checkpoint again")
  assert "Event loop is closed" not in proc.stderr
  assert not (tmp_path / "out.npz").exists()


def test_load_model_names_a_deleted_file(tiny, tmp_path):
  _, params, meta = tiny
  path = checkpoint.save_model(tmp_path / "ckpt", params, meta)
  (path / "0" / "state" / "_METADATA").unlink()
  with pytest.raises(ValueError, match=r"step 0 is unreadable.*_METADATA"):
    checkpoint.load_model(path)


# ---------------------------------------------------------------------------------------------
# 3. Places the tools cannot write, found before any work.


def test_train_into_a_read_only_workdir_fails_before_loading_data(read_only, tmp_path, cache):
  fresh = tmp_path / "fresh_data"  # the demo would generate its synthetic set here first
  proc = _run(["train.py", "--config", "configs/demo.py", "--workdir", read_only / "run",
               f"--config.data.root={fresh}"], cache)
  tiny_run.one_error_line(proc, "--workdir", read_only / "run", "not writable")
  assert not fresh.exists() and not (read_only / "run").exists()


def test_evaluate_outputs_in_a_read_only_folder_fail_before_evaluating(read_only, ckpt, data,
                                                                         cache):
  proc = _run(["evaluate.py", "--config", "configs/demo.py", "--checkpoint", ckpt,
               *_model_flags(data), f"--output={read_only / 'results' / 'out.json'}",
               f"--plots={read_only / 'plots'}"], cache)
  tiny_run.one_error_line(proc, "2 problems", "--output", read_only / "results" / "out.json",
                          "--plots", read_only / "plots")
  assert "===Action===" not in proc.stdout  # nothing was evaluated
  assert not (read_only / "results").exists() and not (read_only / "plots").exists()


def test_predict_outputs_in_a_read_only_folder(read_only, ckpt, keypoint_file, cache):
  path, size = keypoint_file
  proc = _run(["-m", "posediff_jax.predict", "--config", "configs/demo.py", *_model_flags(),
               f"--checkpoint={ckpt}", f"--keypoints={path}", f"--image_size={size[0]},{size[1]}",
               f"--output={read_only / 'out.npz'}", f"--render={read_only / 'sub' / 'out.gif'}"],
              cache)
  tiny_run.one_error_line(proc, "--output", read_only / "out.npz", "--render", read_only / "sub")
  assert not (read_only / "sub").exists()


def test_convert_into_a_read_only_folder_or_onto_a_file(read_only, tmp_path, cache):
  torch_file = tmp_path / "lifter.pth"
  torch_file.write_bytes(b"not read: the output is checked first")
  proc = _run(["convert_torch_weights.py", "--family", "diffpose", "--lifter", torch_file,
               "--output", read_only / "ckpt"], cache)
  tiny_run.one_error_line(proc, "--output", read_only / "ckpt", "not writable")
  proc = _run(["convert_torch_weights.py", "--family", "diffpose", "--lifter", torch_file,
               "--output", torch_file / "ckpt"], cache)
  tiny_run.one_error_line(proc, "--output", torch_file, "is a file")


def test_writable_problem_creates_nothing(tmp_path):
  deep = tmp_path / "a" / "b" / "c"
  assert config_checks.writable_problem(deep, "--workdir", directory=True) is None
  assert config_checks.writable_problem(deep / "out.json", "--output", directory=False) is None
  assert list(tmp_path.iterdir()) == []
  (tmp_path / "file").write_text("x")
  assert "is a directory" in config_checks.writable_problem(tmp_path, "--output", directory=False)
  assert "not a directory" in config_checks.writable_problem(tmp_path / "file", "--plots",
                                                             directory=True)
  assert config_checks.writable_problem("gs://bucket/run", "--workdir", directory=True) is None


# ---------------------------------------------------------------------------------------------
# 4-6. The config file, its variant and the overrides.


def test_misspelled_overrides_name_the_nearest_fields(tmp_path, cache):
  proc = _run(["train.py", "--config", "configs/demo.py", "--workdir", tmp_path / "run",
               "--config.train.bach_size=8", "--config.trian.steps=3", "--config.batch_size=8"],
              cache)
  tiny_run.one_error_line(proc, "did you mean --config.train.batch_size?",
                          "did you mean --config.train.steps?",
                          "--config.eval.batch_size or --config.train.batch_size")
  assert not (tmp_path / "run").exists()


def test_misspelled_override_of_the_converters_default_config(tmp_path, cache):
  proc = _run(["convert_torch_weights.py", "--family", "d3dp", "--checkpoint", tmp_path / "x.bin",
               "--output", tmp_path / "out", "--config.model.embeddim=64"], cache)
  tiny_run.one_error_line(proc, "--config.model.embeddim", "d3dp_h36m.py",
                          "did you mean --config.model.embed_dim?")


def test_override_syntax_is_unchanged(tmp_path, cache):
  """`--config.x v`, `--config.x=v` and `--noconfig.x` still parse (and then fail on purpose on
  the value check, before anything runs)."""
  proc = _run(["evaluate.py", "--config", "configs/demo.py", "--checkpoint", tmp_path / "none",
               "--config.eval.batch_size", "-3", "--noconfig.eval.use_ema",
               "--config.sampling.num_steps=0"], cache)
  tiny_run.one_error_line(proc, "config.eval.batch_size=-3", "config.sampling.num_steps=0",
                          f"--checkpoint {tmp_path / 'none'}")


def test_missing_config_file(tmp_path, cache):
  proc = _run(["train.py", "--config", "configs/dem.py", "--workdir", tmp_path / "run"], cache)
  tiny_run.one_error_line(proc, "configs/dem.py", "not found", "did you mean configs/demo.py?")
  proc = _run(["evaluate.py", "--config", tmp_path / "nowhere.py", "--checkpoint", tmp_path],
              cache)
  tiny_run.one_error_line(proc, tmp_path / "nowhere.py", "not found")


def test_unknown_variants_and_variants_of_a_config_without_any(tmp_path, cache):
  proc = _run(["evaluate.py", "--config", "configs/diffpose_h36m.py:nope", "--checkpoint",
               tmp_path], cache)
  tiny_run.one_error_line(proc, "unknown variant 'nope'", "valid variants: cpn, gt")
  proc = _run(["train.py", "--config", "configs/demo.py:anything", "--workdir",
               tmp_path / "run"], cache)
  tiny_run.one_error_line(proc, "configs/demo.py has no variants", "'anything'")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_is_strict_about_its_variant(name):
  module = importlib.import_module(f"configs.{name[:-3]}")
  default = module.get_config()
  assert module.get_config("").to_dict() == default.to_dict()
  with pytest.raises(ValueError, match=rf"configs/{name}.*'surely_not_a_variant'"):
    module.get_config("surely_not_a_variant")


# ---------------------------------------------------------------------------------------------
# 7. Config values, data and paths, all checked up front.


def test_bad_values_are_listed_together_before_anything_is_created(tmp_path, cache):
  fresh = tmp_path / "fresh_data"
  proc = _run(["train.py", "--config", "configs/demo.py", "--workdir", tmp_path / "x",
               f"--config.data.root={fresh}", "--config.train.batch_size=-4",
               "--config.train.steps=-1", "--config.eval.compute_dtype=float64",
               "--config.train.ema_rate=1.5", "--config.train.lifter_checkpoint=/no/such/dir"],
              cache)
  tiny_run.one_error_line(proc, "5 problems", "config.train.batch_size=-4", "config.train.steps=-1",
                          "config.eval.compute_dtype='float64'", "'float32', 'bfloat16'",
                          "config.train.ema_rate=1.5", "/no/such/dir")
  assert not (tmp_path / "x").exists() and not fresh.exists()


def test_missing_data_is_found_before_anything_is_created(tmp_path, cache):
  proc = _run(["train.py", "--config", "configs/diffpose_h36m.py", "--workdir", tmp_path / "run",
               f"--config.data.root={tmp_path / 'h36m'}", "--config.train.lifter_steps=1"],
              cache)
  tiny_run.one_error_line(proc, "data files not found", tmp_path / "h36m" / "data_3d_h36m.npz",
                          "config.data.test_2d")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_the_shipped_configs_pass_the_value_checks(name):
  config = importlib.import_module(f"configs.{name[:-3]}").get_config()
  for tool in (config_checks.TRAIN, config_checks.EVALUATE, config_checks.PREDICT,
               config_checks.CONVERT):
    assert config_checks.value_problems(config, tool) == [], (name, tool)
  assert config_checks.training_problems(config) in (
      [], [f"{config.family} needs a lifter: pass --config.train.lifter_checkpoint=DIR (e.g. the "
           "converted gcn_xyz_cpn.pth) or train one with --config.train.lifter_steps=N"])


def test_training_problems_mirror_what_training_refuses():
  config = demo.get_config()
  config.train.update(steps=0, epochs=0, lifter_steps=0, lifter_epochs=0)
  assert any("nothing to train" in p for p in config_checks.training_problems(config))
  config = demo.get_config()
  config.train.update(lifter_steps=0, grad_accum_steps=3)
  problems = config_checks.training_problems(config)
  assert any("needs a lifter" in p for p in problems)
  assert any("batch_size=256 must be divisible by config.train.grad_accum_steps=3" in p
             for p in problems)


def test_predict_refuses_a_config_for_another_dataset(ckpt, keypoint_file, tmp_path, cache):
  path, size = keypoint_file
  proc = _run(["-m", "posediff_jax.predict", "--config", "configs/d3dp_3dhp.py",
               f"--checkpoint={ckpt}", f"--keypoints={path}", f"--image_size={size[0]},{size[1]}",
               f"--output={tmp_path / 'out.npz'}"], cache)
  tiny_run.one_error_line(proc, "data.dataset='3dhp'", "Human3.6M")


# ---------------------------------------------------------------------------------------------
# 8. Keypoints that cannot be what the flags say.


def test_pixel_keypoints_given_as_normalised(ckpt, keypoint_file, tmp_path, cache):
  path, _ = keypoint_file
  proc = _run(["-m", "posediff_jax.predict", "--config", "configs/demo.py", *_model_flags(),
               f"--checkpoint={ckpt}", f"--keypoints={path}", "--normalized",
               f"--output={tmp_path / 'out.npz'}"], cache)
  tiny_run.one_error_line(proc, path, "6 of 6 frames", "frame 0, nose at (", "within about [-1, 1]",
                          "look like pixels", "drop --normalized", "--image_size=W,H")
  assert not (tmp_path / "out.npz").exists()


def test_keypoints_far_outside_the_image_size(ckpt, keypoint_file, tmp_path, cache):
  path, size = keypoint_file
  proc = _run(["-m", "posediff_jax.predict", "--config", "configs/demo.py", *_model_flags(),
               f"--checkpoint={ckpt}", f"--keypoints={path}",
               f"--image_size={size[0] // 4},{size[1] // 4}", f"--output={tmp_path / 'out.npz'}"],
              cache)
  tiny_run.one_error_line(proc, "of 6 frames", f"{size[0] // 4}x{size[1] // 4} image",
                          "25% margin", "--image_size=W,H")


def test_coco_keypoints_read_as_human36m(ckpt, keypoint_file, tmp_path, cache):
  coco_path, size = keypoint_file
  plain = tmp_path / "no_layout.npz"
  with np.load(coco_path) as npz:
    np.savez(plain, keypoints=npz["keypoints"], scores=npz["scores"])
  proc = _run(["-m", "posediff_jax.predict", "--config", "configs/demo.py", *_model_flags(),
               f"--checkpoint={ckpt}", f"--keypoints={plain}", "--format=h36m",
               f"--image_size={size[0]},{size[1]}", f"--output={tmp_path / 'out.npz'}"], cache)
  tiny_run.one_error_line(proc, "read as Human3.6M-17", "6 of 6 frames", "nose, eyes and ears",
                          "pass --format coco")


def test_human36m_keypoints_read_as_coco_and_normalised_ones_as_pixels(keypoint_file):
  path, size = keypoint_file
  coco = kp.load_keypoints(path)
  h36m = kp.coco_to_h36m(coco.keypoints)
  as_coco = kp.KeypointSequence(keypoints=h36m, scores=None, layout="coco", source="h36m.npz")
  with pytest.raises(ValueError, match=r"read as COCO-17, but in [56] of 6 frames.*pelvis.*"
                                       r"pass --format h36m"):
    kp.prepare_keypoints(as_coco, image_size=size)
  normalised = kp.KeypointSequence(keypoints=h36m / size[0] * 2 - 1, scores=None, layout="h36m",
                                   source="n.npz")
  with pytest.raises(ValueError, match=r"look normalised already: pass --normalized"):
    kp.prepare_keypoints(normalised, image_size=size)


def test_noisy_detections_are_accepted_with_warnings():
  """A wild joint in one frame of many is what detectors do: kept, and reported."""
  coco, scores, size = _synthetic_coco(30)
  coco[7, kp.COCO_JOINT_NAMES.index("right_wrist")] = [5 * size[0], -2 * size[1]]
  coco += np.random.default_rng(0).normal(0, 3, coco.shape)  # detector jitter
  coco[10, kp.COCO_JOINT_NAMES.index("left_ankle"), 0] = -0.1 * size[0]  # just outside the image
  seq = kp.KeypointSequence(keypoints=coco, scores=scores, layout="coco", source="noisy.json")
  prepared = kp.prepare_keypoints(seq, image_size=size)
  assert len(prepared.warnings) == 1 and "1 of 30 frames (7)" in prepared.warnings[0]
  assert "right_wrist" in prepared.warnings[0]
  assert np.isfinite(prepared.normalized).all()


# ---------------------------------------------------------------------------------------------
# 9. Model sizes: a size flag that contradicts the checkpoint (or the weights), all at once.


def test_evaluate_names_every_size_flag_the_checkpoint_contradicts(ckpt, data, cache):
  # The tiny checkpoint is 16 wide with 1 layer; its sizes replace configs/demo.py's (64, 2)
  # unless the command line sets them, as here.
  proc = _run(["evaluate.py", "--config", "configs/demo.py", "--checkpoint", ckpt,
               f"--config.data.root={data}", "--config.model.hid_dim=64",
               "--config.model.num_layers=1", "--config.lifter.num_layers=2"], cache)
  line = tiny_run.one_error_line(
              proc, ckpt, "--config.model.hid_dim=64 but the checkpoint has model.hid_dim=16",
              "--config.lifter.num_layers=2 but the checkpoint has lifter.num_layers=1",
              "pass --config.model.hid_dim=16 --config.lifter.num_layers=1")
  assert "model.num_layers" not in line  # set on the command line, but as the checkpoint has it


def test_check_checkpoint_matches_formats_tuples_as_overrides(tiny):
  config, _, meta = tiny
  meta = json.loads(json.dumps({**meta, "model": {**meta["model"], "hid_dim": 8}}))
  with pytest.raises(ValueError, match=r"pass --config\.model\.hid_dim=8$"):
    evaluation.check_checkpoint_matches(config, meta, "ckpt")
  assert config_checks.override_flag("phase1.temporal_padding", [1, 0]) == (
      "'--config.phase1.temporal_padding=(1, 0)'")


def test_convert_names_every_size_flag_of_both_files_the_weights_contradict(tmp_path, cache):
  root = parity_dir("diffpose")  # hid_dim 64 and 2 layers (the config has 96 and 5)
  proc = _run(["convert_torch_weights.py", "--family", "diffpose", "--checkpoint",
               root / "denoiser.pth", "--lifter", root / "lifter.pth", "--output",
               tmp_path / "out", "--config.model.hid_dim=96", "--config.model.num_layers=2",
               "--config.lifter.num_layers=5"], cache)
  tiny_run.one_error_line(proc, root / "denoiser.pth", root / "lifter.pth",
                          "--config.model.hid_dim=96 but the weights have model.hid_dim=64",
                          "--config.lifter.num_layers=5 but the weights have lifter.num_layers=2",
                          "pass --config.model.hid_dim=64 --config.lifter.num_layers=2")
  assert not (tmp_path / "out").exists()


def test_convert_refuses_a_head_count_that_does_not_divide_the_weights_width(tmp_path, cache):
  root = parity_dir("diffpose")  # 64 wide: no head count shows in the weights, 3 cannot split 64
  proc = _run(["convert_torch_weights.py", "--family", "diffpose", "--checkpoint",
               root / "denoiser.pth", "--lifter", root / "lifter.pth", "--output",
               tmp_path / "out", "--config.lifter.n_head=3"], cache)
  tiny_run.one_error_line(proc, "lifter.n_head=3 does not divide lifter.hid_dim=64",
                          "--config.lifter.n_head=N with N one of 1, 2, 4, 8, 16, 32, 64")
  assert not (tmp_path / "out").exists()


def test_d3dp_converter_names_every_size_and_the_schedule_length():
  root = parity_dir("d3dp")
  sd = load_state_dict(root / "denoiser.pth", dict_key="model_pos")
  dims = convert_d3dp.infer_d3dp_dims(sd)
  model = {"num_frames": dims["num_frames"] + 2, "num_joints": dims["num_joints"],
           "embed_dim": dims["embed_dim"] * 2, "depth": dims["depth"] + 1, "num_heads": 2,
           "mlp_ratio": dims["mlp_ratio"], "drop_path_rate": 0.0}
  steps = int(np.shape(convert_d3dp.normalize_keys(sd)["betas"])[0])
  diffusion = {"beta_schedule": "cosine", "num_steps": steps + 10}
  with pytest.raises(common.ConversionError) as info:
    convert_d3dp.convert_denoiser(sd, ml_collections.ConfigDict(model),
                                  ml_collections.ConfigDict(diffusion))
  flags = str(info.value).split("; pass ")[1].split()
  assert flags == [f"--config.model.num_frames={dims['num_frames']}",
                   f"--config.model.embed_dim={dims['embed_dim']}",
                   f"--config.model.depth={dims['depth']}",
                   f"--config.diffusion.num_steps={steps}"]
  assert {m.field for m in info.value.mismatches} == {
      "model.num_frames", "model.embed_dim", "model.depth", "diffusion.num_steps"}


def test_phase1_converter_names_every_size():
  sections = {title[3:].split(" ")[0].rstrip(":,"): sd
              for title, sd in spec_key_sections("keys_mmdiff.txt")}
  p4 = sections["P4Transformer_feat"]
  with pytest.raises(common.ConversionError) as info:
    convert_mmdiff.convert_phase1(p4, mmdiff_phase1.P4TransformerEncoder(
        dim=512, depth=4, mlp_dim=2048, feature_size=32, heads=4, dim_head=64), source="p1.pth")
  message = str(info.value)
  assert message.endswith("pass --config.phase1.dim=1024 --config.phase1.depth=10 "
                          "--config.phase1.feature_size=64"), message
  assert "so that their product is 2048" in message


# ---------------------------------------------------------------------------------------------
# Flags that are not config fields, and the CI skip rule.


def test_unknown_flags_and_missing_required_flags_are_one_line(cache):
  proc = _run(["evaluate.py", "--config", "configs/demo.py", "--checkpont=x"], cache)
  tiny_run.one_error_line(proc, "checkpont")


def test_ci_fails_a_skip_that_is_not_allowed(tmp_path):
  (tmp_path / "test_skips.py").write_text(
      "import pytest\n\ndef test_skipped():\n  pytest.skip('fixture missing')\n\n"
      "def test_runs():\n  pass\n")
  command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
             str(tmp_path / "test_skips.py")]
  env = {k: v for k, v in os.environ.items() if k != "POSEDIFF_CI"}
  proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  proc = subprocess.run(command, cwd=REPO_ROOT, env={**env, "POSEDIFF_CI": "1"},
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "test_skips.py::test_skipped: Skipped: fixture missing" in proc.stdout, proc.stdout
  assert "CI_ALLOWED_SKIPS" in proc.stdout
  skipped = [("tests/test_a.py::test_x[1]", "r"), ("tests/test_b.py::test_y", "r")]
  assert ci_disallowed_skips(skipped, {"tests/test_a.py::test_x*": "why"}) == skipped[1:]

