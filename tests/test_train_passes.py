"""A training batch run in several passes (`train.cpu_chunk_size`, `train.grad_accum_steps`) gives
the whole batch's step: the same loss, gradients and updated parameters up to float32 rounding,
with the same draws. Families whose rows interact refuse it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posediff_jax import families
from posediff_jax import sharding
from posediff_jax import training
from tests import tiny_run

ROWS = {"diffpose": 8, "d3dp": 4, "finepose": 4}


def _batch(config, rows: int, rng: np.random.Generator) -> dict:
  """A random batch of `rows` with per-row draws (timesteps and unit noise)."""
  if config.data.get("layout") == "clips":
    frames = config.model.num_frames
    shape = (rows, frames, 17)
    batch = {"input_2d": 0.3 * rng.normal(size=shape + (2,)),
             "target_3d": 0.3 * rng.normal(size=shape + (3,))}
    batch["target_3d"][:, :, 0] = 0
    draws = {"t": rng.integers(0, config.diffusion.num_steps, rows),
             "noise": rng.normal(size=shape + (3,))}
    if config.family == "finepose":
      batch["action_index"] = rng.integers(0, len(config.text.actions), rows)
  else:
    batch = {"input_2d": 0.3 * rng.normal(size=(rows, 17, 2)),
             "input_2d_var": np.full((rows, 17, 2), 0.01),
             "target_3d": 0.3 * rng.normal(size=(rows, 17, 3))}
    draws = {"t": rng.integers(0, config.diffusion.num_steps, rows),
             "noise": rng.normal(size=(rows, 17, 5))}
  batch = {k: np.asarray(v, np.int32 if k == "action_index" else np.float32)
           for k, v in batch.items()}
  return {**batch, "draws": {k: np.asarray(v, np.float32 if k == "noise" else np.int32)
                             for k, v in draws.items()}}


def _step(config, params, batch):
  family = families.get(config.family)
  losses = family.losses(params["text_cache"]) if "text_cache" in params else family.LOSSES
  optimizer = training.make_optimizer(config, "denoiser")
  # A copy: the step donates the state it is given.
  state = training.init_state(config, jax.tree.map(lambda x: jnp.array(x, copy=True), params),
                              {"denoiser": optimizer})
  step = training.jit_train_step(config, "denoiser", optimizer, losses["denoiser"],
                                 sharding.make_mesh(None), steps_per_epoch=10, return_grads=True)
  return jax.tree.map(np.asarray, step(state, batch))


CHUNKED = {"train.cpu_chunk_size": 1}
ACCUMULATED = {"train.grad_accum_steps": 2, "train.cpu_chunk_size": 0}


@pytest.mark.parametrize("family,passes", [(f, CHUNKED) for f in sorted(ROWS)]
                         + [("d3dp", ACCUMULATED)])
def test_passes_give_the_whole_batch_step(family, passes):
  deterministic = {"model.drop_path_rate": 0.0} if family != "diffpose" else {
      "model.dropout": 0.0, "model.inner_dropout": 0.0}
  if family == "finepose":
    deterministic["model.text_tiling"] = "per_clip"  # upstream's tiling couples the rows
  whole = tiny_run.tiny_family_config(family, "unused", {**deterministic,
                                                         "train.cpu_chunk_size": 0})
  cut = tiny_run.tiny_family_config(family, "unused", {**deterministic, **passes})
  params = jax.tree.map(jnp.asarray, families.get(family).init_params(whole, jax.random.key(0)))
  batch = _batch(whole, ROWS[family], np.random.default_rng(0))
  (state_a, out_a), (state_b, out_b) = _step(whole, params, batch), _step(cut, params, batch)
  np.testing.assert_allclose(out_b["loss"], out_a["loss"], rtol=1e-6)
  # Relative to the largest gradient anywhere: some (the attention key bias's) are 0 in exact
  # arithmetic and rounding noise in both runs.
  scale = max(np.abs(a).max() for a in jax.tree.leaves(out_a["grads"]))
  for a, b in zip(jax.tree.leaves(out_a["grads"]), jax.tree.leaves(out_b["grads"])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)
  # Adam's first step moves a weight by lr · g / (|g| + eps): where g is near 0, float32 rounding
  # of g alone moves it by a few percent of lr.
  lr = float(out_a["lr"])
  for a, b in zip(jax.tree.leaves(state_a["params"]), jax.tree.leaves(state_b["params"])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=0.1 * lr)


@pytest.mark.parametrize("family,tiling", [("dsgdiffu", "per_clip"), ("finepose", "upstream")])
def test_a_family_whose_rows_interact_refuses_passes(family, tiling):
  config = tiny_run.tiny_family_config(family, "unused", {"train.cpu_chunk_size": 1,
                                                          "model.text_tiling": tiling})
  with pytest.raises(ValueError, match="rows interact.*train.cpu_chunk_size=0"):
    training.train_chunk_rows(config, "denoiser")


def test_draws_that_are_not_per_row_cannot_be_split():
  batch = {"input_2d": np.zeros((4, 17, 2), np.float32),
           "draws": {"t_half": np.zeros((3,), np.int32)}}
  with pytest.raises(ValueError, match="t_half.*not per row"):
    training._split_rows(batch, 2)  # pylint: disable=protected-access
