"""DiffPose networks and their building blocks, checked against brute-force numpy and by properties.

Also covers the family-independent torch->Flax mapping helpers (`posediff_jax.convert.common`).
"""

import collections
import math

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from configs import diffpose_h36m
from posediff_jax import skeleton
from posediff_jax.convert import common
from posediff_jax.families import diffpose as diffpose_family
from posediff_jax.models import diffpose
from posediff_jax.models import layers

SMALL = dict(hid_dim=8, num_layers=1, n_head=2, dropout=0.25)


def _rng(seed=0):
  return np.random.default_rng(seed)


def _count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def _flat_paths(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else key
    out.update(_flat_paths(value, path) if isinstance(value, dict) else {path: value.shape})
  return out


def _template(model, *inputs):
  """The params tree of `model` as shapes only (cheap: no random-number kernels to compile)."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)["params"]


def _random_tree(template, seed=0):
  """Random values for every leaf, so init symmetries are broken.

  Gains stay near 1 and `A_hat` near the identity, as in a trained model: a random `A_hat` can have
  negative column sums, where GraphNet's `sum ** -0.5` is NaN (upstream too).
  """
  rng = _rng(seed)

  def leaf(path, shape_dtype):
    name = path[-1].key
    values = rng.normal(0, 0.3, shape_dtype.shape)
    if name == "A_hat":
      values = np.eye(shape_dtype.shape[0]) + 0.05 * values
    elif name == "a_2":
      values = 1 + values
    return jnp.asarray(values, jnp.float32)

  return jax.tree_util.tree_map_with_path(leaf, template)


def _jit_apply(module, params, *inputs):
  return jax.jit(lambda p, *a: module.apply({"params": p}, *a))(params, *inputs)


def _denoiser_and_params(seed=0, **overrides):
  model = diffpose.GCNDenoiser(**dict(SMALL, **overrides))
  template = _template(model, jnp.zeros((1, 17, 5)), jnp.zeros((1,)))
  return model, _random_tree(template, seed)


# --------------------------------------------------------------------------------------------------
# Graph constants.


def test_adjacency_diagonals_and_rows():
  adj = layers.normalized_adjacency(17, skeleton.H36M_EDGES)
  assert adj.dtype == np.float32 and adj.shape == (17, 17)
  expected = np.full(17, 1 / 3)
  expected[0], expected[8] = 1 / 4, 1 / 5
  expected[[3, 6, 10, 13, 16]] = 1 / 2
  np.testing.assert_allclose(np.diag(adj), expected, rtol=1e-7)
  np.testing.assert_array_equal(adj.sum(axis=1), np.ones(17, np.float32))
  np.testing.assert_array_equal(adj > 0, (adj > 0).T)
  # Brute force: 1 / (deg + 1) on the closed neighbourhood.
  neighbours = [{i} for i in range(17)]
  for i, j in skeleton.H36M_EDGES:
    neighbours[i].add(j)
    neighbours[j].add(i)
  brute = np.zeros((17, 17))
  for i, nbrs in enumerate(neighbours):
    brute[i, sorted(nbrs)] = 1 / len(nbrs)
  np.testing.assert_array_equal(adj, brute.astype(np.float32))


@pytest.mark.parametrize("edges, match", [
    (((0, 1), (1, 5)), "out of range"),
    (((0, 1), (2, 2)), "self-loop"),
    (((0, 1), (1, 0)), "listed twice"),
    (((0, 1, 2),), "not a pair"),
])
def test_adjacency_rejects_bad_edges(edges, match):
  with pytest.raises(ValueError, match=match):
    layers.normalized_adjacency(5, edges)


def test_chebyshev_basis_on_row_normalised_graph_is_identity_minus_adjacency():
  adj = layers.normalized_adjacency(17, skeleton.H36M_EDGES)
  basis = layers.chebyshev_basis(adj)
  assert basis.shape == (3, 17, 17) and basis.dtype == np.float32
  eye = np.eye(17, dtype=np.float32)
  np.testing.assert_array_equal(basis[0], eye)
  np.testing.assert_array_equal(basis[1], eye - adj)
  np.testing.assert_allclose(basis[2], 2 * basis[1] @ basis[1] - eye, atol=1e-7)


def test_chebyshev_basis_general_graph_matches_float64():
  rng = _rng(1)
  weights = rng.uniform(0.1, 1.0, (6, 6))
  graph = (weights + weights.T).astype(np.float32)
  d = np.diag(graph.astype(np.float64).sum(1) ** -0.5)
  lap = np.eye(6) - d @ graph @ d
  t2 = 2 * lap @ lap - np.eye(6)
  expected = [np.eye(6), lap, t2, 2 * lap @ t2 - lap]
  np.testing.assert_allclose(layers.chebyshev_basis(graph, order=3), np.stack(expected), atol=1e-5)
  with pytest.raises(ValueError, match=r"square"):
    layers.chebyshev_basis(np.ones((3, 4)))


def test_timestep_embedding_matches_numpy():
  t = np.array([0, 7, 25, 50], np.float32)
  for dim in (64, 9):
    half = dim // 2
    freqs = np.exp(-np.arange(half) * math.log(10000) / (half - 1))
    expected = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
    if dim % 2:
      expected = np.pad(expected, ((0, 0), (0, 1)))
    got = layers.timestep_embedding(jnp.asarray(t), dim)
    assert got.shape == (4, dim)
    np.testing.assert_allclose(got, expected, atol=2e-5)
  with pytest.raises(ValueError, match="1-D"):
    layers.timestep_embedding(jnp.zeros((2, 2)), 8)


# --------------------------------------------------------------------------------------------------
# Layers against numpy.


def test_layer_norm_matches_numpy():
  rng = _rng(2)
  x = rng.normal(size=(3, 5, 8)).astype(np.float32)
  a2, b2 = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
  module = layers.UpstreamLayerNorm()
  init = jax.jit(module.init)(jax.random.PRNGKey(0), x)["params"]
  np.testing.assert_array_equal(init["a_2"], np.ones(8))
  np.testing.assert_array_equal(init["b_2"], np.zeros(8))
  got = _jit_apply(module, {"a_2": a2, "b_2": b2}, x)
  mean = x.mean(-1, keepdims=True)
  std = np.sqrt(((x - mean) ** 2).sum(-1, keepdims=True) / 7)  # unbiased
  np.testing.assert_allclose(got, a2 * (x - mean) / (std + 1e-6) + b2, rtol=1e-5, atol=1e-5)


def test_chebconv_matches_numpy_and_init():
  rng = _rng(3)
  edges = ((0, 1), (1, 2), (1, 3))
  x = rng.normal(size=(2, 4, 3)).astype(np.float32)
  module = layers.ChebConv(5, num_nodes=4, edges=edges)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), x)["params"]
  assert params["weight"].shape == (3, 3, 5) and params["bias"].shape == (5,)
  np.testing.assert_array_equal(params["bias"], np.zeros(5))
  params = _random_tree(params, seed=4)
  basis = layers.graph_basis(4, edges)
  w, b = np.asarray(params["weight"]), np.asarray(params["bias"])
  expected = sum(np.einsum("nm,bmc,cd->bnd", basis[k], x, w[k]) for k in range(3)) + b
  np.testing.assert_allclose(_jit_apply(module, params, x), expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"expected input \[\.\.\., 4, C\]"):
    module.apply({"params": params}, x[:, :3])


def test_chebconv_weight_init_std_follows_torch_xavier_rule():
  module = layers.ChebConv(96, num_nodes=17, edges=skeleton.H36M_EDGES)
  weight = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 17, 96)))["params"]["weight"]
  # torch fans for [3, 1, in, out]: fan_in = in*out, fan_out = 3*in*out -> std = 1/sqrt(2 in out).
  np.testing.assert_allclose(np.std(weight), 1 / math.sqrt(2 * 96 * 96), rtol=0.03)


def test_linear_init_is_torch_uniform():
  params = jax.jit(layers.Linear(64).init)(jax.random.PRNGKey(0), jnp.zeros((1, 25)))["params"]
  assert params["kernel"].shape == (25, 64) and params["bias"].shape == (64,)
  for leaf in (params["kernel"], params["bias"]):
    assert np.abs(leaf).max() <= 1 / 5
  assert np.abs(params["kernel"]).max() > 0.9 / 5  # uniform over the whole range, not a narrow one


def test_graphnet_matches_numpy_with_column_normalisation():
  rng = _rng(5)
  x = rng.normal(size=(2, 6, 4)).astype(np.float32)
  module = layers.GraphNet(num_nodes=6)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), x)["params"]
  np.testing.assert_array_equal(params["A_hat"], np.eye(6))
  params = _random_tree(params, seed=6)
  params["A_hat"] = jnp.asarray(rng.uniform(0.0, 1.0, (6, 6)), jnp.float32)  # not symmetric
  a = np.asarray(params["A_hat"], np.float64)
  d = (a.sum(axis=0) + 1e-5) ** -0.5  # column sums
  lhat = d[:, None] * a * d[None, :]
  g1, g2 = params["gconv1"], params["gconv2"]
  hidden = np.maximum(lhat @ x @ np.asarray(g1["kernel"]) + g1["bias"], 0)
  expected = lhat @ hidden @ np.asarray(g2["kernel"]) + g2["bias"]
  np.testing.assert_allclose(_jit_apply(module, params, x), expected, rtol=1e-4, atol=1e-5)


def test_multi_head_attention_matches_numpy():
  rng = _rng(7)
  heads, width = 4, 8
  x = rng.normal(size=(2, 5, width)).astype(np.float32)
  module = layers.MultiHeadAttention(heads)
  params = _random_tree(_template(module, x), seed=8)
  lin = [(np.asarray(params[f"linears_{i}"]["kernel"]), np.asarray(params[f"linears_{i}"]["bias"]))
         for i in range(4)]
  q, k, v = (x @ w + b for w, b in lin[:3])
  out = np.zeros_like(x)
  d = width // heads
  for h in range(heads):
    cols = slice(h * d, (h + 1) * d)
    scores = q[..., cols] @ np.swapaxes(k[..., cols], -1, -2) / math.sqrt(d)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out[..., cols] = probs @ v[..., cols]
  expected = out @ lin[3][0] + lin[3][1]
  np.testing.assert_allclose(_jit_apply(module, params, x), expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="not divisible"):
    _template(layers.MultiHeadAttention(3), x)


@pytest.mark.parametrize("deterministic", [True, False])
def test_pooled_attention_is_the_node_mean_of_the_attention(deterministic):
  x = _rng(9).normal(size=(3, 2, 7, 8)).astype(np.float32)
  full = layers.MultiHeadAttention(4, dropout_rate=0.5)
  pooled = layers.MultiHeadAttention(4, dropout_rate=0.5, pool_nodes=True)
  params = _random_tree(_template(full, x), seed=10)
  assert jax.tree.structure(_template(pooled, x)) == jax.tree.structure(params)
  rngs = {"dropout": jax.random.key(3)}  # the same key drops the same attention weights

  def run(module):
    return module.apply({"params": params}, x, deterministic=deterministic, rngs=rngs)

  np.testing.assert_allclose(run(pooled), np.mean(run(full), axis=-2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool_nodes", [False, True])
def test_attention_with_an_input_map_attends_to_the_mapped_input(pool_nodes):
  rng = _rng(11)
  x = rng.normal(size=(2, 7, 3)).astype(np.float32)
  in_kernel = rng.normal(size=(3, 8)).astype(np.float32)
  in_bias = rng.normal(size=(8,)).astype(np.float32)
  module = layers.MultiHeadAttention(4, pool_nodes=pool_nodes)
  mapped = x @ in_kernel + in_bias
  params = _random_tree(_template(module, mapped), seed=12)
  folded = module.apply({"params": params}, x, input_map=(in_kernel, in_bias))
  np.testing.assert_allclose(folded, _jit_apply(module, params, mapped), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="input_map"):
    module.apply({"params": params}, x, input_map=(in_kernel.T, in_bias))


# --------------------------------------------------------------------------------------------------
# Whole networks.


def test_parameter_counts_and_names_at_full_size():
  denoiser = jax.eval_shape(diffpose.GCNDenoiser().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 17, 5)), jnp.zeros((1,)))["params"]
  lifter = jax.eval_shape(diffpose.GCNLifter().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 17, 2)))["params"]
  assert _count(denoiser) == 1_025_674
  assert _count(lifter) == 654_344  # upstream 839,432 minus the unused temb (185,088)
  den_paths, lift_paths = _flat_paths(denoiser), _flat_paths(lifter)
  assert len(den_paths) == 123  # one Flax leaf per upstream tensor
  assert len(lift_paths) == 113 - 4
  assert den_paths["atten_layers_4/self_attn/linears_2/kernel"] == (96, 96)
  assert den_paths["atten_layers_0/feed_forward/gconv1/kernel"] == (96, 192)
  assert den_paths["gconv_layers_3/temb_proj/kernel"] == (384, 96)
  assert den_paths["gconv_layers_0/gconv1/gconv/weight"] == (3, 96, 96)
  assert den_paths["gconv_input/weight"] == (3, 5, 96)
  assert den_paths["temb/dense_1/kernel"] == (384, 384)
  assert lift_paths["gconv_output/bias"] == (3,)
  assert not any(p.startswith("temb/") or "temb_proj" in p for p in lift_paths)


def test_forward_shapes_and_intermediates():
  denoiser, params = _denoiser_and_params(seed=9)
  x = jnp.asarray(_rng(9).normal(size=(3, 17, 5)), jnp.float32)
  apply = jax.jit(lambda p, y, t: denoiser.apply({"params": p}, y, t, mutable=["intermediates"]))
  eps, state = apply(params, x, jnp.array([0.0, 7.0, 50.0]))
  assert eps.shape == (3, 17, 5) and eps.dtype == jnp.float32
  inter = state["intermediates"]
  assert set(inter) == {"timestep_embedding_sin", "after_gconv_input", "after_atten_0",
                        "after_gconv_0"}
  assert inter["timestep_embedding_sin"][0].shape == (3, 8)
  assert inter["after_atten_0"][0].shape == (3, 17, 8)

  lifter = diffpose.GCNLifter(**SMALL)
  lparams = _random_tree(_template(lifter, jnp.zeros((1, 17, 2))), seed=10)
  out = jax.jit(lambda p, y: lifter.apply({"params": p}, y))(lparams, x[:2, :, :2])
  assert out.shape == (2, 17, 3)


def test_time_input_changes_only_its_own_sample():
  denoiser, params = _denoiser_and_params(seed=10)
  x = jnp.asarray(_rng(11).normal(size=(2, 17, 5)), jnp.float32)
  apply = jax.jit(lambda t: denoiser.apply({"params": params}, x, t))
  a = apply(jnp.array([3.0, 3.0]))
  b = apply(jnp.array([3.0, 40.0]))
  np.testing.assert_array_equal(a[0], b[0])
  assert np.abs(a[1] - b[1]).max() > 1e-4
  np.testing.assert_array_equal(apply(jnp.array([3, 40])), b)  # integer steps are accepted


def test_dropout_only_when_not_deterministic():
  denoiser, params = _denoiser_and_params(seed=12)
  x = jnp.asarray(_rng(12).normal(size=(3, 17, 5)), jnp.float32)
  t = jnp.array([1.0, 2.0, 3.0])
  apply = jax.jit(
      lambda seed, det: denoiser.apply({"params": params}, x, t, deterministic=det,
                                       rngs={"dropout": jax.random.PRNGKey(seed)}),
      static_argnums=1)
  clean = apply(0, True)
  np.testing.assert_array_equal(apply(1, True), clean)  # the rng is ignored when deterministic
  noisy0, noisy1 = apply(0, False), apply(1, False)
  assert np.abs(noisy0 - clean).max() > 1e-3
  assert np.abs(noisy0 - noisy1).max() > 1e-3
  np.testing.assert_array_equal(apply(0, False), noisy0)  # same rng, same masks


def test_input_validation_names_shapes():
  denoiser, params = _denoiser_and_params()
  with pytest.raises(ValueError, match=r"\[B, 17, 5\].*got \(2, 17, 3\)"):
    denoiser.apply({"params": params}, jnp.zeros((2, 17, 3)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match=r"t of shape \[B\] = \(2,\).*got \(3,\)"):
    denoiser.apply({"params": params}, jnp.zeros((2, 17, 5)), jnp.zeros((3,)))
  lifter = diffpose.GCNLifter(**SMALL)
  with pytest.raises(ValueError, match=r"\[B, 17, 2\].*got \(2, 16, 2\)"):
    _template(lifter, jnp.zeros((2, 16, 2)))


def test_one_shared_step_equals_the_same_step_per_row():
  denoiser, params = _denoiser_and_params(seed=13)
  x = jnp.asarray(_rng(13).normal(size=(3, 17, 5)), jnp.float32)
  apply = jax.jit(lambda t: denoiser.apply({"params": params}, x, t))
  np.testing.assert_allclose(apply(jnp.array([6.0])), apply(jnp.full((3,), 6.0)), rtol=1e-6,
                             atol=1e-6)


def test_bfloat16_compute_in_the_networks_and_the_family():
  config = diffpose_h36m.get_config("cpn")
  config.model.update(SMALL)
  config.lifter.update(SMALL)
  params = {"lifter": _random_tree(_template(diffpose_family.lifter_module(config),
                                             jnp.zeros((1, 17, 2))), seed=14),
            "denoiser": _denoiser_and_params(seed=15)[1]}
  uv = jnp.asarray(_rng(16).uniform(-0.8, 0.8, (4, 17, 2)), jnp.float32)
  reference = jax.jit(lambda p: diffpose_family.predict(config, p, uv, chunk_size=0))(params)
  config.eval.compute_dtype = "bfloat16"
  predict = lambda p: diffpose_family.predict(config, p, uv, chunk_size=0)
  pred = jax.jit(predict)(params)
  assert pred.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: a few parts in a thousand through the networks.
  scale = np.abs(np.asarray(reference)).max()
  assert 0 < np.abs(np.asarray(pred) - np.asarray(reference)).max() < 3e-2 * scale
  dots = {(tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype))
          for eqn in _all_eqns(jax.make_jaxpr(predict)(params).jaxpr)
          if eqn.primitive.name == "dot_general"}
  # Every dense product takes bfloat16 operands and accumulates in float32; the attention's
  # per-head products stay float32.
  assert dots == {(("bfloat16", "bfloat16"), "float32"), (("float32", "float32"), "float32")}


def _all_eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it (scan and map bodies)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax_core.jaxprs_in_params(eqn.params):
      yield from _all_eqns(sub)


def test_models_from_config():
  lifter = diffpose.lifter_from_config(SMALL)
  assert (lifter.hid_dim, lifter.num_layers, lifter.n_head, lifter.dropout) == (8, 1, 2, 0.25)
  assert diffpose.denoiser_from_config(dict(SMALL, coords_dim=5)).coords_dim == 5
  with pytest.raises(ValueError, match="lacks field 'n_head'"):
    diffpose.lifter_from_config(dict(hid_dim=8, num_layers=1, dropout=0.1))


# --------------------------------------------------------------------------------------------------
# convert.common: state-dict extraction and the strict mapper.


def _toy_state_dict():
  return collections.OrderedDict([
      ("module.lin.weight", np.arange(6, dtype=np.float32).reshape(2, 3)),
      ("module.lin.bias", np.array([1.0, 2.0], np.float32)),
      ("module.cheb.weight", np.ones((3, 1, 2, 4), np.float32)),
      ("module.cheb.bias", np.ones((1, 1, 4), np.float32)),
      ("module.extra.weight", np.zeros(3, np.float32)),
  ])


_TOY_RULES = (
    common.Rule(r"lin\.weight", "lin/kernel", common.LINEAR_WEIGHT),
    common.Rule(r"lin\.bias", "lin/bias"),
    common.Rule(r"cheb\.weight", "cheb/weight", common.CHEB_WEIGHT),
    common.Rule(r"cheb\.bias", "cheb/bias", common.CHEB_BIAS),
)
_TOY_TEMPLATE = {
    "lin": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32),
            "bias": jax.ShapeDtypeStruct((2,), jnp.float32)},
    "cheb": {"weight": jax.ShapeDtypeStruct((3, 2, 4), jnp.float32),
             "bias": jax.ShapeDtypeStruct((4,), jnp.float32)},
}


def test_extract_state_dict_layouts():
  sd = _toy_state_dict()
  for obj, kwargs in [(sd, {}), ([sd, {"state": {}}, 0, 0, {}], {}), ([{}, sd], {"list_index": 1}),
                      ({"model_pos": sd, "epoch": 3}, {"dict_key": "model_pos"})]:
    got = common.extract_state_dict(obj, "f.pth", **kwargs)
    assert list(got) == [k[len("module."):] for k in sd]
  mixed = dict(sd, plain=np.zeros(1))
  assert "module.lin.weight" in common.extract_state_dict(mixed, "f.pth")  # not all prefixed


@pytest.mark.parametrize("obj, kwargs, match", [
    ([], {}, r"f\.pth: expected the state dict at list index 0"),
    ([{"a": 1}], {}, r"f\.pth: element 0 .* is not a state dict"),
    ({"epoch": 3, "model": {}}, {"dict_key": "model_pos"}, r"f\.pth: expected a dict with key "
     r"'model_pos'.*'epoch', 'model'"),
    (np.zeros(3), {}, r"f\.pth: expected a state dict"),
])
def test_extract_state_dict_errors_name_the_file(obj, kwargs, match):
  with pytest.raises(common.ConversionError, match=match):
    common.extract_state_dict(obj, "f.pth", **kwargs)


def test_map_state_dict_transforms_and_reports_unused():
  sd = common.strip_module_prefix(_toy_state_dict())
  params, report = common.map_state_dict(sd, _TOY_RULES, _TOY_TEMPLATE, unused=[r"extra\..*"])
  np.testing.assert_array_equal(params["lin"]["kernel"], sd["lin.weight"].T)
  assert params["cheb"]["weight"].shape == (3, 2, 4) and params["cheb"]["bias"].shape == (4,)
  assert report.unused == ("extra.weight",)
  assert report.num_tensors == 4 and report.num_elements == 6 + 2 + 24 + 4
  assert "extra.weight" in str(report)


def test_map_state_dict_is_strict():
  sd = common.strip_module_prefix(_toy_state_dict())
  with pytest.raises(common.ConversionError, match=r"do not belong.*'extra\.weight'"):
    common.map_state_dict(sd, _TOY_RULES, _TOY_TEMPLATE)
  partial = {k: v for k, v in sd.items() if k != "cheb.bias"}
  with pytest.raises(common.ConversionError, match=r"no checkpoint key: 'cheb/bias'"):
    common.map_state_dict(partial, _TOY_RULES, _TOY_TEMPLATE, unused=[r"extra\..*"])
  wrong = dict(sd, **{"lin.weight": np.zeros((2, 5), np.float32)})
  with pytest.raises(common.ConversionError,
                     match=r"'lin\.weight' has shape \[2, 5\].*'lin/kernel' \[3, 2\] "
                           r"needs \[2, 3\]"):
    common.map_state_dict(wrong, _TOY_RULES, _TOY_TEMPLATE, unused=[r"extra\..*"])
  ints = dict(sd, **{"lin.bias": np.array([1, 2])})
  with pytest.raises(common.ConversionError, match=r"'lin\.bias' has dtype int64"):
    common.map_state_dict(ints, _TOY_RULES, _TOY_TEMPLATE, unused=[r"extra\..*"])
  outside = _TOY_RULES + (common.Rule(r"extra\.weight", "extra/kernel"),)
  with pytest.raises(common.ConversionError, match=r"'extra/kernel', which the model does not"):
    common.map_state_dict(sd, outside, _TOY_TEMPLATE)
  twice = _TOY_RULES + (common.Rule(r"extra\.weight", "lin/bias"),)
  with pytest.raises(common.ConversionError, match=r"both map to Flax parameter 'lin/bias'"):
    common.map_state_dict(sd, twice, _TOY_TEMPLATE)
