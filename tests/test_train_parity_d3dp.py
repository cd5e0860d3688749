"""D3DP's training data and step against three steps of the authors' `main.py` training loop.

The fixture (`../shared/parity/d3dp/train_step.*`, see its train_step.md) holds two synthetic
sequences, upstream's chunk list and its two epochs' shuffles, and per step the batch, the
timestep and noise draws, the loss, the learning rate (×0.993 after the first epoch of two
batches) and the gradient norm; then the step-0 gradients (loss-scaled, as upstream's
`loss.backward(loss)`), the parameters after step 2 and the AdamW moments (whole for some keys,
norm and sum for all). Our clip pipeline, with `train.shuffle=upstream`, must cut and order the
same batches, and `train.py`'s jitted step must replay them. Every size and hyperparameter comes
from the fixture's files.
"""

import json

import jax
import numpy as np
import pytest

from configs import d3dp_h36m
from posediff_jax import datasets
from posediff_jax import safe_load
from posediff_jax.convert import d3dp as convert
from posediff_jax.data import clip_pipeline
from posediff_jax.data import videos
from posediff_jax.families import d3dp
from tests import train_parity
from tests.conftest import assert_close, set_d3dp_fixture_settings

FAMILY = "d3dp"


def set_clip_recipe(config, arrays: dict, up: dict, fixture_config: dict) -> None:
  """Gives a D3DP-family config the fixture's sizes (config.json, the sequences' joints) and
  recipe (train_step.json)."""
  config.model.num_frames = up["frames"]
  config.model.num_joints = arrays["gen_seq_poses_3d"].shape[2]
  set_d3dp_fixture_settings(config, fixture_config)
  opt = up["optimizer"]
  assert opt["type"] == "torch.optim.AdamW" and tuple(opt["betas"]) == (0.9, 0.999)
  assert not opt["amsgrad"] and up["grad_clipping"] is None, up
  config.train.update(batch_size=up["batch_size(clips)"], lr=opt["lr"], adam_eps=opt["eps"],
                      weight_decay=opt["weight_decay"], lr_decay=up["lr_decay"]["factor"],
                      grad_clip=0.0, upstream_loss_scaled_gradient=True, flip_augment=True,
                      shuffle="upstream", upstream_shuffle_seed=up["draw_seed"],
                      grad_accum_steps=1, compute_dtype="float32")
  config.model.drop_path_rate = 0.0  # the fixture zeroes DropPath (train_step.md)


def sequences(arrays) -> list[videos.VideoSequence]:
  """The fixture's synthetic sequences as our clip pipeline holds videos (root joint zeroed)."""
  out = []
  for i, (pose_3d, pose_2d) in enumerate(zip(arrays["gen_seq_poses_3d"],
                                             arrays["gen_seq_poses_2d"])):
    target = pose_3d.copy()
    target[:, 0] = 0  # upstream: inputs_3d[:, :, 0] = 0
    out.append(videos.VideoSequence(
        input_2d=pose_2d, target_3d=target, trajectory=pose_3d[:, :1], intrinsic=np.zeros(9),
        subject="S1", action=f"seq{i}", camera=0, image_size=(1000, 1000),
        valid=np.ones(len(pose_2d), bool), root_joint=0))
  return out


def upstream_batches(config, arrays, up) -> list[dict]:
  """The first batches of our training stream, with each step's recorded draws added."""
  stream = iter(datasets.train_dataset(config, sequences(arrays), batch_size=up["batch_size(clips)"],
                                       shard_index=0, shard_count=1))
  return [dict(next(stream), draws={"t": arrays[f"step{k}/t"], "noise": arrays[f"step{k}/noise"]})
          for k in range(up["steps"])]


@pytest.fixture(scope="module")
def fixture():
  return train_parity.load(FAMILY)


@pytest.fixture(scope="module")
def config(fixture):
  root, arrays, up = fixture
  config = d3dp_h36m.get_config("cpn")
  set_clip_recipe(config, arrays, up, json.loads((root / "config.json").read_text()))
  return config


@pytest.fixture(scope="module")
def state_dict(fixture):
  root, _, _ = fixture
  return safe_load.load_torch_checkpoint(root / "denoiser.pth")["model_pos"]


def test_chunks_and_upstream_shuffle(fixture, config):
  _, arrays, up = fixture
  frames = config.model.num_frames
  chunks = clip_pipeline.chunk_index([len(s) for s in sequences(arrays)], frames, flip_augment=True)
  # Upstream's pairs are (video, start, end, flip); ours (video, start, flip).
  np.testing.assert_array_equal(chunks, arrays["gen_pairs"][:, [0, 1, 3]])
  np.testing.assert_array_equal(arrays["gen_pairs"][:, 2] - arrays["gen_pairs"][:, 1], frames)
  for epoch in range(2):
    order = np.random.RandomState(up["draw_seed"])
    for _ in range(epoch):
      order.permutation(len(chunks))
    np.testing.assert_array_equal(chunks[order.permutation(len(chunks))],
                                  arrays[f"gen_perm_epoch{epoch}"][:, [0, 1, 3]])


def test_training_stream_cuts_upstreams_batches(fixture, config):
  _, arrays, up = fixture
  for k, batch in enumerate(upstream_batches(config, arrays, up)):
    chunks = arrays[f"step{k}/chunks(seq,start,end,flip)"]
    np.testing.assert_array_equal(batch["sequence"], chunks[:, 0])
    np.testing.assert_array_equal(chunks[:, 3], arrays[f"step{k}/flip"])
    np.testing.assert_allclose(batch["input_2d"], arrays[f"step{k}/inputs_2d"], atol=1e-7)
    np.testing.assert_allclose(batch["target_3d"], arrays[f"step{k}/inputs_3d"], atol=1e-7)


def test_noised_input_and_prediction_of_step_0(fixture, config, state_dict):
  _, arrays, up = fixture
  params = convert.convert_denoiser(state_dict, config.model, config.diffusion)[0]
  batch = upstream_batches(config, arrays, up)[0]
  loss, aux = jax.jit(lambda p, b: d3dp.denoiser_loss_with_noise(
      config, p, b, b["draws"]["t"], b["draws"]["noise"]))(params, batch)
  assert_close(aux["x_noisy"], arrays["step0/x_noisy"], what="x_noisy")
  assert_close(aux["pred"], arrays["step0/pred"], what="pred")
  assert_close(loss, arrays["loss_0"], what="loss_0")


def test_train_step_replays_upstream(fixture, config, state_dict):
  _, arrays, up = fixture
  params = {"denoiser": convert.convert_denoiser(state_dict, config.model, config.diffusion)[0]}
  keys = [k[len("param2/"):] for k in arrays if k.startswith("param2/")]
  layout = train_parity.TorchLayout(
      lambda sd: convert.convert_denoiser(sd, config.model, config.diffusion)[0], state_dict,
      keys)
  batches = upstream_batches(config, arrays, up)
  steps_per_epoch = len(arrays["gen_pairs"]) // up["batch_size(clips)"]
  run, floor = train_parity.replay_with_floor(
      config, d3dp, params, batches, [train_parity.reverse_rows(b) for b in batches],
      steps_per_epoch=steps_per_epoch)
  np.testing.assert_allclose([m["lr"] for m in run[1]], [arrays[f"lr_{k}"] for k in range(3)],
                             rtol=1e-6)
  train_parity.check_clip_layout(arrays, layout, state_dict, run, floor)
