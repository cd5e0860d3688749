"""bfloat16 compute: operands rounded, float32 accumulation, and gradients computed the same way.

`layers.mixed_matmul` and the narrow `node_mix` carry their own backward pass so that the
gradient's products run with bfloat16 operands as the forward's do. These tests pin that
backward to its definition (the cotangent rounded to bfloat16, products accumulated in float32),
check it against float32 autodiff within bfloat16's precision, and check that the training loss
of each family keeps its float32 gradient to bfloat16 precision.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posediff_jax import families
from posediff_jax.models import layers
from tests import tiny_run

BF16 = jnp.bfloat16
F32 = jnp.float32


def _reference_grads(x, y, g):
  """dx, dy by definition: products of bfloat16-rounded operands, accumulated in float32."""
  xc, yc, gc = (a.astype(BF16).astype(F32) for a in (x, y, g))
  _, pull = jax.vjp(lambda a, b: jnp.matmul(a, b, precision="highest"), xc, yc)
  return pull(gc)


@pytest.mark.parametrize("x_shape,y_shape", [
    ((6, 5), (5, 7)),  # a dense layer
    ((2, 3, 6, 5), (5, 7)),  # a dense layer over many rows
    ((2, 3, 6, 5), (2, 3, 5, 7)),  # batched (attention)
    ((6, 5), (2, 3, 5, 7)),  # a shared left matrix (node mixing)
    ((2, 1, 6, 5), (1, 3, 5, 7)),  # broadcast both ways
])
def test_mixed_matmul_values_and_gradients(x_shape, y_shape):
  kx, ky, kg = jax.random.split(jax.random.key(0), 3)
  x, y = jax.random.normal(kx, x_shape), jax.random.normal(ky, y_shape)
  out, pull = jax.vjp(lambda a, b: layers.mixed_matmul(a, b, jnp.dtype(BF16)), x, y)
  g = jax.random.normal(kg, out.shape)
  dx, dy = pull(g)
  assert out.dtype == F32 and dx.dtype == F32 and dy.dtype == F32
  assert dx.shape == x.shape and dy.shape == y.shape
  np.testing.assert_allclose(
      out, jnp.matmul(x.astype(BF16), y.astype(BF16), preferred_element_type=F32), rtol=1e-6)
  ref_dx, ref_dy = _reference_grads(x, y, g)
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dy, ref_dy, rtol=1e-5, atol=1e-5)
  # And within bfloat16's precision of the float32 gradient.
  _, pull32 = jax.vjp(jnp.matmul, x, y)
  for ours, exact in zip((dx, dy), pull32(g)):
    assert np.max(np.abs(ours - exact)) <= 2e-2 * np.max(np.abs(exact))


def test_narrow_node_mix_gradients():
  kx, km, kg = jax.random.split(jax.random.key(1), 3)
  x, matrix = jax.random.normal(kx, (4, 3, 17, 8)), jax.random.normal(km, (17, 17))
  out, pull = jax.vjp(lambda m, a: layers.node_mix(m, a, BF16), matrix, x)
  g = jax.random.normal(kg, out.shape)
  dm, dx = pull(g)
  ref_dm, ref_dx = _reference_grads(matrix, x, g)
  np.testing.assert_allclose(dm, ref_dm, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)


def test_float32_is_the_plain_product():
  x, y = jnp.ones((3, 4)), jnp.ones((4, 2))
  for dtype in (None, "float32", jnp.float32):
    # No custom rule on the float32 path: it is exactly `x @ y`.
    jaxpr = str(jax.make_jaxpr(lambda a, b: layers.matmul(a, b, dtype))(x, y))
    assert "custom_vjp" not in jaxpr, dtype


@pytest.mark.parametrize("family", ["diffpose", "d3dp", "mmdiff"])
def test_bfloat16_training_gradients_stay_close_to_float32(family, tmp_path_factory):
  root = (tiny_run.tiny_radar_data(tmp_path_factory) if family == "mmdiff"
          else tiny_run.tiny_data(tmp_path_factory))
  grads = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_run.tiny_family_config(family, root, {"train.compute_dtype": dtype})
    fam = families.get(config.family)
    params = fam.init_params(config, jax.random.key(0))
    batch = _batch(config, jax.random.key(1))
    loss = fam.LOSSES["denoiser"]

    def value(p, config=config, loss=loss):
      out = loss(config, p, batch, jax.random.key(2))
      return out[0] if isinstance(out, tuple) else out

    grads[dtype] = jax.jit(jax.grad(value))(params["denoiser"])
  g32, g16 = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads[d])])
              for d in ("float32", "bfloat16"))
  assert all(g.dtype == F32 for g in jax.tree.leaves(grads["bfloat16"]))
  # The whole gradient, as the optimizer sees it: a max over frames (mmDiff's TMC) may pick
  # another frame in bfloat16, so single entries can move more than rounding alone would.
  assert np.linalg.norm(g16 - g32) <= 3e-2 * np.linalg.norm(g32)


def _batch(config, key, rows: int = 8):
  """A random training batch of the family's denoiser stage."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  if config.family == "mmdiff":
    model = config.model
    return {"x_history": 0.3 * jax.random.normal(k1, (rows, 17, 3 * (model.past_frames + 1))),
            "features": jax.random.normal(k2, (rows, 17, model.feature_size)),
            "radar": 0.5 * jax.random.normal(k3, (rows, 4, 64, model.radar_channels)),
            "target_3d": 0.3 * jax.random.normal(k4, (rows, 17, 3))}
  if config.data.get("layout") == "clips":
    frames = config.model.num_frames
    return {"input_2d": 0.3 * jax.random.normal(k1, (2, frames, 17, 2)),
            "target_3d": 0.3 * jax.random.normal(k2, (2, frames, 17, 3))}
  return {"input_2d": 0.3 * jax.random.normal(k1, (rows, 17, 2)),
          "input_2d_var": jnp.full((rows, 17, 2), 0.01),
          "target_3d": 0.3 * jax.random.normal(k2, (rows, 17, 3))}
