"""DiffPose's training step against three steps of the authors' `Diffpose.train`.

The fixture (`../shared/parity/diffpose/train_step.*`, see its train_step.md) starts from
denoiser.pth and records every draw; `train.py`'s jitted step replays it with those draws and must
give upstream's losses, learning rates, gradient norms, step-0 gradients before and after
clipping, and the parameters, Adam moments and EMA after step 2. Every size and hyperparameter
comes from the fixture's files.
"""

import json

import numpy as np
import pytest

from posediff_jax import safe_load
from posediff_jax import training
from posediff_jax.convert import diffpose as convert
from posediff_jax.diffusion import schedules
from posediff_jax.families import diffpose
from tests import train_parity
from tests.test_parity_diffpose import fixture_config

FAMILY = "diffpose"


@pytest.fixture(scope="module")
def fixture():
  return train_parity.load(FAMILY)


@pytest.fixture(scope="module")
def config(fixture):
  root, _, up = fixture
  config = fixture_config(root, json.loads((root / "config.json").read_text()))
  train_parity.set_frame_recipe(config, up)
  return config


@pytest.fixture(scope="module")
def state_dict(fixture):
  """denoiser.pth's live weights under the fixture's names (`module.*`)."""
  root, _, _ = fixture
  return safe_load.load_torch_checkpoint(root / "denoiser.pth")[0]


def batches(arrays, up, *, reverse: bool = False) -> list[dict]:
  """The recorded batches as the train step takes them, each with its draws (`reverse`: rows in
  reverse order, with each row's own timestep, for `train_parity.Comparison`'s noise floor)."""
  out = []
  for k in range(up["steps"]):
    uvxyz, scale = arrays[f"in_uvxyz_{k}"], arrays[f"in_noise_scale_{k}"]
    # upstream's item is [u, v, x, y, z] with the 3D target, noise scales [var_u, var_v, 1, 1, 1]
    np.testing.assert_array_equal(uvxyz[..., 2:], arrays[f"in_target_3d_{k}"])
    np.testing.assert_array_equal(scale[..., 2:], 1.0)
    batch = {"input_2d": uvxyz[..., :2], "input_2d_var": scale[..., :2],
             "target_3d": arrays[f"in_target_3d_{k}"],
             "draws": {"t_half": arrays[f"draw_t_half_{k}"],
                       "noise": arrays[f"draw_noise_std_{k}"]}}
    if reverse:
      batch["draws"] = {"t": arrays[f"t_{k}"], "noise": arrays[f"draw_noise_std_{k}"]}
      batch = train_parity.reverse_rows(batch)
    out.append(batch)
  return out


def test_train_step_replays_upstream(fixture, config, state_dict):
  _, arrays, up = fixture
  keys = [str(k) for k in arrays["param_keys"]]
  params = {"denoiser": convert.convert_denoiser(state_dict, config.model)[0]}
  layout = train_parity.TorchLayout(lambda sd: convert.convert_denoiser(sd, config.model)[0],
                                    state_dict, keys)
  runs = train_parity.replay_with_floor(
      config, diffpose, params, batches(arrays, up), batches(arrays, up, reverse=True),
      steps_per_epoch=1, start_step=train_parity.lr_start_step(arrays, up))
  np.testing.assert_allclose([m["lr"] for m in runs[0][1]], up["lr_per_step"], rtol=1e-6)
  train_parity.check_frame_layout(arrays, layout, state_dict, *runs)


def test_schedule_and_draws_are_upstreams(fixture, config):
  _, arrays, up = fixture
  np.testing.assert_allclose(np.asarray(diffpose.betas(config)), arrays["betas"], rtol=1e-6)
  alpha_bar = np.asarray(schedules.alpha_bars(diffpose.betas(config)))
  for k in range(up["steps"]):
    batch = len(arrays[f"t_{k}"])
    t = np.asarray(schedules.antithetic_from_draw(arrays[f"draw_t_half_{k}"], batch,
                                                  up["num_timesteps"]))
    np.testing.assert_array_equal(t, arrays[f"t_{k}"])
    np.testing.assert_allclose(alpha_bar[t], arrays[f"a_{k}"], rtol=1e-6)
    # The regression target is the unit draw times the GMM noise scale.
    np.testing.assert_array_equal(arrays[f"draw_noise_std_{k}"] * arrays[f"in_noise_scale_{k}"],
                                  arrays[f"noise_{k}"])


def test_learning_rates_are_upstreams_schedule(fixture, config):
  _, arrays, up = fixture
  schedule = training.learning_rate(config, "denoiser", steps_per_epoch=1)
  start = train_parity.lr_start_step(arrays, up)
  np.testing.assert_allclose([float(schedule(start + k)) for k in range(up["steps"])],
                             up["lr_per_step"], rtol=1e-6)
