"""mmDiff phase 2's training step against three steps of the authors' `phase2_train`.

The fixture (`../shared/parity/mmdiff/train_step.*`, see its train_step.md) records the cached
phase-1 inputs of each batch (coarse poses, joint features, radar window) and the noise and
timestep draws; `train.py`'s jitted denoiser step replays them and must give upstream's loss and
its two terms (ε and 10 × limb length), learning rates, gradient norms, step-0 gradients before and
after clipping, and the parameters, Adam moments and EMA after step 2. `gconv_input*`, which
upstream builds but never runs, is not in our model; upstream leaves it unchanged. Every size and
hyperparameter comes from the fixture's files.
"""

import json

import numpy as np
import pytest

from posediff_jax import safe_load
from posediff_jax.convert import mmdiff as convert
from posediff_jax.families import mmdiff
from posediff_jax.models import mmdiff as models
from tests import train_parity
from tests.test_parity_mmdiff import fixture_config

FAMILY = "mmdiff"


@pytest.fixture(scope="module")
def fixture():
  return train_parity.load(FAMILY)


@pytest.fixture(scope="module")
def config(fixture):
  root, _, up = fixture
  config = fixture_config(json.loads((root / "config.json").read_text()))
  model, ctor = up["config_model"], up["gcndiff_ctor"]
  config.model.update(hid_dim=model["hid_dim"], num_layers=model["num_layer"],
                      n_head=model["n_head"], feature_size=ctor["global_feat_size"],
                      past_frames=ctor["past_frames"], radar_channels=ctor["radar_input_c"],
                      **{f: ctor[f] for f in ("global_flag", "local_flag", "temp_flag",
                                              "limb_flag")})
  train_parity.set_frame_recipe(config, up)
  config.train.update(limb_loss_weight=float(up["limb_weight"]), limb_teacher_forcing=False,
                      diffuse_history=False)
  return config


@pytest.fixture(scope="module")
def state_dict(fixture):
  """model.pth's phase-2 weights (no prefix)."""
  root, _, _ = fixture
  return convert.load_state_dict(root / "model.pth")


def batches(arrays, up, *, reverse: bool = False) -> list[dict]:
  """The recorded batches with their draws (`reverse`: for `train_parity.Comparison`'s floor)."""
  out = []
  for k in range(up["steps"]):
    np.testing.assert_array_equal(arrays[f"in_noise_scale_{k}"], 1.0)  # upstream's scale
    batch = {"x_history": arrays[f"in_x_history_{k}"], "features": arrays[f"in_cemd_{k}"],
             "radar": arrays[f"in_radar_{k}"], "target_3d": arrays[f"in_target_3d_{k}"],
             "limb_lengths": arrays[f"in_limb_gt_{k}"],
             "draws": {"t_half": arrays[f"draw_t_half_{k}"],
                       "noise": arrays[f"draw_noise_std_{k}"]}}
    if reverse:
      batch["draws"] = {"t": arrays[f"t_{k}"], "noise": arrays[f"draw_noise_std_{k}"]}
      batch = train_parity.reverse_rows(batch)
    out.append(batch)
  return out


def test_limb_lengths_and_noise_are_upstreams(fixture):
  _, arrays, up = fixture
  for k in range(up["steps"]):
    np.testing.assert_allclose(np.asarray(models.limb_lengths(arrays[f"in_target_3d_{k}"])),
                               arrays[f"in_limb_gt_{k}"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(arrays[f"draw_noise_std_{k}"], arrays[f"noise_{k}"])


def test_train_step_replays_upstream(fixture, config, state_dict):
  _, arrays, up = fixture
  keys = [str(k) for k in arrays["param_keys"]]
  params = {"denoiser": convert.convert_denoiser(state_dict, config.model)[0]}
  layout = train_parity.TorchLayout(lambda sd: convert.convert_denoiser(sd, config.model)[0],
                                    state_dict, keys)
  runs = train_parity.replay_with_floor(
      config, mmdiff, params, batches(arrays, up), batches(arrays, up, reverse=True),
      steps_per_epoch=1, start_step=train_parity.lr_start_step(arrays, up))
  np.testing.assert_allclose([m["lr"] for m in runs[0][1]], up["lr_per_step"], rtol=1e-6)
  assert {str(k) for k in arrays["no_grad_params"]} == {k for k in keys if not layout.mapped(k)}
  train_parity.check_frame_layout(arrays, layout, state_dict, *runs,
                                  terms={"terms/eps": "loss_eps", "terms/limb": "loss_limb"})
