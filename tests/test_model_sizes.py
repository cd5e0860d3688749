"""Checkpoints that describe themselves: the sizes a checkpoint records replace the config's.

The converter reads every size the weights show off them (the upstream DiffPose fixture is 64 wide
with 2 layers, the config 96 and 5) and records the head counts from the config; evaluate.py and
predict then need no size flag. A size flag that contradicts the checkpoint is refused
(tests/test_user_errors.py section 9 runs those mistakes as a user types them).
"""

import json

import jax
import ml_collections
import numpy as np
import pytest

from posediff_jax import checkpoint
from posediff_jax import model_sizes
from posediff_jax.cli import convert as convert_cli
from posediff_jax.convert import d3dp as convert_d3dp
from posediff_jax.families import diffpose
from tests import tiny_run
from tests.conftest import load_state_dict, parity_dir
from tests.test_predict import _synthetic_coco, _write_inputs


def _config():
  return ml_collections.ConfigDict({
      "family": "mmdiff",
      "model": {"hid_dim": 96, "num_layers": 5, "n_head": 4, "mlp_ratio": 2.0},
      "phase1": {"temporal_padding": (1, 0), "heads": 8, "dim_head": 256}})


def test_adopt_takes_the_recorded_sizes_in_the_configs_types():
  config = _config()
  meta = json.loads(json.dumps({"family": "mmdiff", "model": {
      "hid_dim": 64, "num_layers": 5, "n_head": 4, "mlp_ratio": 4, "gone": 1},
      "phase1": {"temporal_padding": (2, 1), "heads": 8, "dim_head": 256}}))
  adopted = model_sizes.adopt(config, meta, "ckpt")
  assert config.model.hid_dim == 64 and config.model.mlp_ratio == 4.0
  assert isinstance(config.model.mlp_ratio, float)
  assert config.phase1.temporal_padding == (2, 1)  # a tuple again, as the config has it
  assert [f for f, _, _ in adopted.changed] == ["model.hid_dim", "model.mlp_ratio",
                                                  "phase1.temporal_padding"]
  assert adopted.count == 7  # 'model.gone' is no field of the config: not a size of it
  assert adopted.line() == (
      "model sizes from checkpoint ckpt: model.hid_dim=64, model.mlp_ratio=4, "
      "phase1.temporal_padding=[2, 1] (the config had 96, 2.0, (1, 0)); its other 4 recorded "
      "sizes equal the config's")
  again = model_sizes.adopt(config, meta, "ckpt")
  assert again.line() == "model sizes from checkpoint ckpt: its 7 recorded sizes equal the config's"
  assert model_sizes.adopt(_config(), {"family": "mmdiff"}, "old").line() == (
      "checkpoint old records no model sizes: the config's are used")


def test_adopt_refuses_every_size_the_command_line_set_otherwise_at_once():
  config = _config()
  meta = {"model": {"hid_dim": 64, "num_layers": 2, "n_head": 4},
          "phase1": {"temporal_padding": [2, 1]}}
  with pytest.raises(ValueError) as info:
    model_sizes.adopt(config, meta, "ckpt", explicit=(
        "model.hid_dim", "model.n_head", "phase1.temporal_padding"))
  assert str(info.value) == (
      "checkpoint ckpt was made with other model sizes than the command line sets: "
      "--config.model.hid_dim=96 but the checkpoint has model.hid_dim=64, "
      "'--config.phase1.temporal_padding=(1, 0)' but the checkpoint has "
      "phase1.temporal_padding=[2, 1]; leave these flags out to take the checkpoint's sizes, or "
      "pass --config.model.hid_dim=64 '--config.phase1.temporal_padding=(2, 1)'")
  assert config.model.num_layers == 5  # nothing changed


def test_head_counts_must_divide_their_widths_and_the_converter_says_where_they_come_from():
  config = _config()
  config.model.hid_dim = 90
  assert model_sizes.head_problems(config, "mmdiff") == [
      "model.n_head=4 does not divide model.hid_dim=90 (the heads split that width): pass "
      "--config.model.n_head=N with N one of 1, 2, 3, 5, 6, 9, 10, 15, 18, 30, 45, 90"]
  assert model_sizes.unseen_line(config, "mmdiff", ["denoiser"]) == (
      "not in the weights, recorded from the config: model.n_head=4 (no weight shape shows a "
      "head count; if the checkpoint was trained with another, convert again with "
      "--config.model.n_head=N)")
  assert "phase1.heads x phase1.dim_head must equal" in model_sizes.unseen_line(
      config, "mmdiff", ["denoiser", "encoder"])
  assert model_sizes.unseen_line(config, "d3dp", ["denoiser"]) is None  # no such field here


def test_d3dp_converter_reads_the_sizes_and_checks_the_head_count():
  root = parity_dir("d3dp")
  from configs import d3dp_h36m  # pylint: disable=g-import-not-at-top
  sd = load_state_dict(root / "denoiser.pth", dict_key="model_pos")
  dims = convert_d3dp.infer_d3dp_dims(sd)
  config = d3dp_h36m.get_config()  # 243 frames, 512 wide, depth 8: not the fixture's sizes
  steps = int(np.shape(convert_d3dp.normalize_keys(sd)["betas"])[0])
  config.diffusion.num_steps = steps
  # A head count that splits the config's width but not the weights' width.
  config.model.num_heads = next(n for n in range(2, 64) if dims["embed_dim"] % n)
  config.model.embed_dim = config.model.num_heads * dims["embed_dim"]
  with pytest.raises(ValueError, match=rf"model.num_heads={config.model.num_heads} does not "
                     rf"divide model.embed_dim={dims['embed_dim']}"):
    convert_cli.convert_reading_sizes(config, "d3dp", root / "denoiser.pth", None)
  config = d3dp_h36m.get_config()
  config.diffusion.num_steps = steps
  config.model.num_heads = 1
  params, _, taken = convert_cli.convert_reading_sizes(config, "d3dp", root / "denoiser.pth", None)
  for field in ("num_frames", "num_joints", "embed_dim", "depth"):
    assert config.model[field] == dims[field]
  assert {"model.num_frames", "model.embed_dim", "model.depth"} <= set(taken)
  assert params["denoiser"]["joint_embed"]["kernel"].shape[-1] == dims["embed_dim"]
  # A size set on the command line is not replaced but refused, with the others at once.
  config = d3dp_h36m.get_config()
  config.diffusion.num_steps = steps
  config.model.num_heads = 1
  with pytest.raises(ValueError, match=r"--config.model.num_frames=243 but the weights have "
                     rf"model.num_frames={dims['num_frames']}.*--config.model.depth=8 but"):
    convert_cli.convert_reading_sizes(config, "d3dp", root / "denoiser.pth", None,
                                      explicit=("model.num_frames", "model.depth"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tiny_run.session_dir(tmp_path_factory, "xla_cache")


@pytest.mark.slow
def test_convert_evaluate_and_predict_without_size_flags(tmp_path, tmp_path_factory, cache):
  root = parity_dir("diffpose")
  data = tiny_run.tiny_data(tmp_path_factory)
  ckpt = tmp_path / "ckpt"
  proc = tiny_run.python(["convert_torch_weights.py", "--family=diffpose",
                          f"--checkpoint={root / 'denoiser.pth'}",
                          f"--lifter={root / 'lifter.pth'}", f"--output={ckpt}"], cache_dir=cache)
  assert ("model sizes read off the weights: model.hid_dim=64, model.num_layers=2, "
          "lifter.hid_dim=64, lifter.num_layers=2 (the config had 96, 5, 96, 5)") in proc.stdout
  assert ("not in the weights, recorded from the config: model.n_head=4, lifter.n_head=4"
          in proc.stdout), proc.stdout
  meta, _ = checkpoint.load_meta(ckpt)
  assert meta["model"] == {"hid_dim": 64, "num_layers": 2, "n_head": 4}
  assert meta["lifter"] == {"hid_dim": 64, "num_layers": 2, "n_head": 4}

  proc = tiny_run.python(["evaluate.py", "--config=configs/diffpose_h36m.py:cpn",
                          f"--checkpoint={ckpt}", f"--config.data.root={data}",
                          f"--output={tmp_path / 'result.json'}"], cache_dir=cache)
  assert proc.stdout.splitlines()[0] == (
      f"model sizes from checkpoint {ckpt}: model.hid_dim=64, model.num_layers=2, "
      "lifter.hid_dim=64, lifter.num_layers=2 (the config had 96, 5, 96, 5); its other 2 "
      "recorded sizes equal the config's")
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["config"]["model"]["hid_dim"] == 64 and saved["results"]["average"]["p1_mm"] > 0

  coco, scores, size = _synthetic_coco(5)
  json_path, _ = _write_inputs(tmp_path, coco, scores)
  proc = tiny_run.python(["-m", "posediff_jax.predict", "--config=configs/diffpose_h36m.py:cpn",
                          f"--checkpoint={ckpt}", f"--keypoints={json_path}",
                          f"--image_size={size[0]},{size[1]}",
                          f"--output={tmp_path / 'out.npz'}"], cache_dir=cache)
  assert "model sizes from checkpoint" in proc.stdout
  assert np.load(tmp_path / "out.npz")["poses_3d"].shape == (5, 17, 3)


def test_a_training_checkpoint_describes_itself_too(tmp_path):
  # train.py writes the same meta (family.checkpoint_meta of its config): a workdir's sizes are
  # taken alike.
  config = tiny_run.tiny_config(tmp_path / "unused")
  params = jax.tree.map(np.asarray, diffpose.init_params(config, jax.random.key(0)))
  ckpt = checkpoint.save_model(tmp_path / "ckpt", params, diffpose.checkpoint_meta(config))
  from configs import demo  # pylint: disable=g-import-not-at-top
  fresh = demo.get_config()
  adopted = model_sizes.adopt_from_checkpoint(fresh, ckpt)
  assert fresh.model.hid_dim == config.model.hid_dim and fresh.lifter.num_layers == 1
  assert len(adopted.changed) == 4
  assert model_sizes.adopt_from_checkpoint(fresh, tmp_path / "missing") is None
  other = demo.get_config()
  other.family = "icassp"
  assert model_sizes.adopt_from_checkpoint(other, ckpt) is None  # the checks name the family
