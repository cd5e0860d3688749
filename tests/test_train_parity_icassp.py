"""ICASSP 2024's training step against three steps of the authors' `DiffRunner.train`.

The fixture (`../shared/parity/icassp/train_step.*`, see its train_step.md) records each item
before augmentation, the mirror decision drawn per item, the noise and timestep draws; `train.py`'s
jitted step replays them and must give upstream's losses (float64 upstream: its noise scale is a
float64 tensor), learning rates, gradient norms, step-0 gradients before and after clipping, and
the parameters, Adam moments and EMA after step 2. The two parameter groups upstream's forward
never reaches (the context branch's last block and output) are not in our model; upstream leaves
them unchanged. Every size and hyperparameter comes from the fixture's files.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.convert import icassp as convert
from posediff_jax.families import icassp
from tests import train_parity
from tests.test_parity_icassp import fixture_config

FAMILY = "icassp"


@pytest.fixture(scope="module")
def fixture():
  return train_parity.load(FAMILY)


@pytest.fixture(scope="module")
def config(fixture):
  root, _, up = fixture
  config = fixture_config(root, json.loads((root / "config.json").read_text()))
  train_parity.set_frame_recipe(config, up)
  config.train.noise_scale = tuple(up["noise_scale"])
  return config


@pytest.fixture(scope="module")
def state_dict(fixture):
  """denoiser.pth's live weights (no prefix)."""
  root, _, _ = fixture
  return safe_load.load_torch_checkpoint(root / "denoiser.pth")[0]


def _items(arrays, k):
  """Step k's items as our frame pipeline gives them: normalised 2D, root-relative 3D."""
  pose_3d = arrays[f"raw_pose_3d_{k}"]
  return arrays[f"raw_pose_2d_{k}"], pose_3d - pose_3d[:, :1]


def batches(arrays, up, *, reverse: bool = False) -> list[dict]:
  """The recorded items with their draws (`reverse`: for `train_parity.Comparison`'s floor)."""
  out = []
  for k in range(up["steps"]):
    uv, xyz = _items(arrays, k)
    batch = {"input_2d": uv, "target_3d": xyz,
             "draws": {"mirror": arrays[f"mirror_{k}"], "t_half": arrays[f"draw_t_half_{k}"],
                       "noise": arrays[f"draw_noise_std_{k}"][:, 0]}}
    if reverse:
      batch["draws"] = dict(batch["draws"], t=arrays[f"t_{k}"])
      del batch["draws"]["t_half"]
      batch = train_parity.reverse_rows(batch)
    out.append(batch)
  return out


def test_mirror_augmentation_is_upstreams(fixture):
  _, arrays, up = fixture
  assert (tuple(arrays["kpt_left"]), tuple(arrays["kpt_right"])) == (skeleton.H36M_LEFT,
                                                                     skeleton.H36M_RIGHT)
  for k in range(up["steps"]):
    np.testing.assert_array_equal(arrays[f"draw_mirror_uniform_{k}"] <= 5, arrays[f"mirror_{k}"])
    uv, xyz = icassp.mirror_batch(*map(jnp.asarray, _items(arrays, k)), arrays[f"mirror_{k}"])
    np.testing.assert_allclose(np.asarray(uv), arrays[f"in_target_2d_{k}"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(xyz), arrays[f"in_target_3d_{k}"], atol=1e-6)
    # The scaled noise upstream regresses: the float32 unit draw times the float64 scale.
    np.testing.assert_allclose(arrays[f"draw_noise_std_{k}"] * arrays["noise_scale"],
                               arrays[f"noise_{k}"], rtol=1e-15)


def test_train_step_replays_upstream(fixture, config, state_dict):
  _, arrays, up = fixture
  keys = [str(k) for k in arrays["param_keys"]]
  params = {"denoiser": convert.convert_denoiser(state_dict, config.model)[0]}
  layout = train_parity.TorchLayout(lambda sd: convert.convert_denoiser(sd, config.model)[0],
                                    state_dict, keys)
  runs = train_parity.replay_with_floor(
      config, icassp, params, batches(arrays, up), batches(arrays, up, reverse=True),
      steps_per_epoch=1, start_step=train_parity.lr_start_step(arrays, up))
  np.testing.assert_allclose([m["lr"] for m in runs[0][1]], up["lr_per_step"], rtol=1e-6)
  assert {str(k) for k in arrays["no_grad_params"]} == {k for k in keys if not layout.mapped(k)}
  train_parity.check_frame_layout(arrays, layout, state_dict, *runs)
