"""FinePOSE's training data and step against three steps of the authors' `main.py` training loop.

The fixture (`../shared/parity/finepose/train_step.*`, see its train_step.md) is D3DP's (see
tests/test_train_parity_d3dp.py) plus each clip's action prompt. Its CLIP is the stand-in of the
inference fixture (io.npz): the text transformer returns `clip_text_features` [77, B, W] whatever
the prompt, so each batch row reads that stand-in's row and the end-of-text index of its own
action's tokens. The learnt prompt context (`ctx_*`) sits under `no_grad` upstream: it gets no
gradient and AdamW never decays it; ours lives in the frozen text cache. Every size and
hyperparameter comes from the fixture's files. tests/test_train_parity_dsgdiffu.py runs these
tests on the DSGDiffu fixture (they read the running module's `FAMILY`).
"""

import json

import numpy as np
import pytest

from configs import dsgdiffu_h36m
from configs import finepose_h36m
from posediff_jax import safe_load
from posediff_jax.convert import finepose as convert
from posediff_jax.families import finepose
from tests import train_parity
from tests.test_parity_finepose import _rewrite
from tests.test_train_parity_d3dp import set_clip_recipe, upstream_batches

FAMILY = "finepose"
_CONFIGS = {"finepose": finepose_h36m, "dsgdiffu": dsgdiffu_h36m}


@pytest.fixture(scope="module")
def family(request):
  return request.module.FAMILY


@pytest.fixture(scope="module")
def fixture(family):
  return train_parity.load(family)


@pytest.fixture(scope="module")
def config(fixture, family):
  root, arrays, up = fixture
  fixture_config = json.loads((root / "config.json").read_text())
  config = _CONFIGS[family].get_config("cpn")
  set_clip_recipe(config, arrays, up, fixture_config)
  config.model.update(text_width=_rewrite(fixture_config, "'512'"),
                      text_ff_dim=_rewrite(fixture_config, "dim_feedforward=2048"),
                      text_layers=_rewrite(fixture_config, "num_layers=4"))
  return config


@pytest.fixture(scope="module")
def state_dict(fixture):
  root, _, _ = fixture
  return safe_load.load_torch_checkpoint(root / "denoiser.pth")["model_pos"]


def prompted_batches(config, fixture) -> list[dict]:
  """Our stream's batches with each row's stand-in CLIP output and end-of-text index."""
  root, arrays, up = fixture
  io = safe_load.load_pickled_npz(root / "io.npz")
  features = np.transpose(io["clip_text_features"], (1, 0, 2))  # [B, 77, W], row = batch row
  out = []
  for k, batch in enumerate(upstream_batches(config, arrays, up)):
    # Each row's action comes from its sequence, as upstream's per-sequence action list.
    np.testing.assert_array_equal(batch["sequence"], arrays[f"step{k}/action_index"])
    tokens = arrays[f"step{k}/text_tokens"]
    out.append(dict(batch, clip_features=features[:len(tokens)],
                    eot_index=np.argmax(tokens, axis=-1).astype(np.int32)))
  return out


def test_train_step_replays_upstream(fixture, config, state_dict, family):
  _, arrays, up = fixture
  converted, _, text_state = convert.convert_denoiser(state_dict, config.model, config.diffusion,
                                                      family=family)
  params = {"denoiser": converted}
  keys = [k[len("param2/"):] for k in arrays if k.startswith("param2/")]
  layout = train_parity.TorchLayout(
      lambda sd: convert.convert_denoiser(sd, config.model, config.diffusion,
                                          family=family)[0], state_dict, keys)
  batches = prompted_batches(config, fixture)
  # DSGDiffu's graph attention acts on a call's row 0 only: reordering rows is another
  # computation there, so its noise floor comes from the nudged weights alone.
  floor_batches = batches if family == "dsgdiffu" else [train_parity.reverse_rows(b)
                                                        for b in batches]
  steps_per_epoch = len(arrays["gen_pairs"]) // up["batch_size(clips)"]
  run, floor = train_parity.replay_with_floor(
      config, finepose, params, batches, floor_batches, steps_per_epoch=steps_per_epoch)
  np.testing.assert_allclose([m["lr"] for m in run[1]], [arrays[f"lr_{k}"] for k in range(3)],
                             rtol=1e-6)
  # The prompt context upstream never trains is what the text cache is made of: unchanged.
  for name, value in text_state.ctx.items():
    np.testing.assert_array_equal(arrays[f"param2/{convert.CTX_PREFIX}{name}".replace(
        "param2/", "param2/module.pose_estimator.", 1)], value)
  train_parity.check_clip_layout(arrays, layout, state_dict, run, floor)
