"""The ICASSP'24 family: cross-channel denoiser, evaluation and training glue, data options.

The network is checked against the spec's wiring rebuilt from its parts, and by properties; the
pipeline against separate sampler runs; the data options against brute force on small files.
"""

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import icassp_h36m
from posediff_jax import chunking
from posediff_jax import evaluation
from posediff_jax import safe_load
from posediff_jax import skeleton
from posediff_jax.data import h36m
from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from posediff_jax.families import icassp
from posediff_jax.models import icassp as models
from posediff_jax.models import layers
from tests.conftest import RunsCode, assert_close
# Params as shapes, and random params near a trained model's (`A_hat` near I, gains near 1).
from tests.test_models_diffpose import _random_tree, _template

SMALL = dict(hid_dim=8, num_layers=2, n_head=2, dropout=0.25)
# The family tests compile whole pipelines: one layer per network keeps that quick.
TINY = dict(SMALL, num_layers=1)


def _rng(seed=0):
  return np.random.default_rng(seed)


def _count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def _inputs(batch, seed=0):
  rng = _rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, 17, 5)), jnp.float32)
  guide = jnp.asarray(rng.uniform(-0.8, 0.8, (batch, 17, 2)), jnp.float32)
  return x, guide


def _denoiser_and_params(seed=0, **overrides):
  model = models.CrossChannelDenoiser(**dict(SMALL, **overrides))
  x, guide = _inputs(1)
  return model, _random_tree(_template(model, x, guide, jnp.zeros((1,))), seed)


# --------------------------------------------------------------------------------------------------
# The 34-node graph.


def test_cross_channel_graph():
  edges = models.cross_channel_edges()
  assert len(edges) == 16 + 17 + 16
  adj = layers.normalized_adjacency(models.NUM_NODES, edges)
  # Spec §B.1: each 2D joint gains its 3D twin as a neighbour, and vice versa.
  expected = np.full(17, 1 / 4)
  expected[0], expected[8] = 1 / 5, 1 / 6
  expected[[3, 6, 10, 13, 16]] = 1 / 3
  np.testing.assert_allclose(np.diag(adj), np.tile(expected, 2), rtol=1e-7)
  for j in range(17):
    assert adj[j, j + 17] > 0 and adj[j + 17, j] > 0
    assert not adj[j, 17:][np.arange(17) != j].any()  # no other 2D-3D links
  skeleton_adj = layers.normalized_adjacency(17, skeleton.H36M_EDGES)
  np.testing.assert_array_equal(adj[:17, :17] > 0, skeleton_adj > 0)
  np.testing.assert_array_equal(adj[17:, 17:] > 0, skeleton_adj > 0)


# --------------------------------------------------------------------------------------------------
# The denoiser.


def test_parameter_counts_and_names_at_full_size():
  x, guide = _inputs(1)
  params = _template(models.CrossChannelDenoiser(), x, guide, jnp.zeros((1,)))
  # Upstream's 1,872,990 less the modules its forward never runs: the context branch's last
  # residual block (2 x (3*96*96 + 96) + 96*384 + 96) and gconv_output_t (3*96*3 + 3).
  assert _count(params) == 1_872_990 - (2 * (3 * 96 * 96 + 96) + 96 * 384 + 96) - (3 * 96 * 3 + 3)
  assert len(jax.tree_util.tree_leaves(params)) == 248 - 6 - 2  # one leaf per mapped tensor
  assert params["gconv_input"]["weight"].shape == (3, 3, 96)
  assert params["gconv_input_t"]["weight"].shape == (3, 2, 96)
  assert params["atten_layers_t_4"]["feed_forward"]["A_hat"].shape == (34, 34)
  assert params["fc1"]["kernel"].shape == (2, 3) and params["fc2"]["kernel"].shape == (6, 5)
  assert params["fc3"]["kernel"].shape == (17, 34)
  assert "gconv_layers_t_3" in params and "gconv_layers_t_4" not in params
  assert "gconv_output_t" not in params


def _wiring_from_the_spec(params, x, guide, t, hid, num_layers, heads):
  """Spec §B.1's forward, step by step, from the building blocks and numpy."""
  main = dict(num_nodes=34, edges=models.cross_channel_edges())

  def apply(module, name, *args):
    return np.asarray(module.apply({"params": params[name]}, *args))

  def linear(name, v):
    return v @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])

  temb = apply(layers.TimeEmbedding(4 * hid), "temb", layers.timestep_embedding(t, hid))
  nodes = np.concatenate([linear("fc1", np.asarray(x[..., :2])), x[..., 2:]], axis=1)
  ctx = apply(layers.ChebConv(hid, 17, skeleton.H36M_EDGES), "gconv_input_t", guide)
  # fc3 (17 -> 34) acts on the joint axis of [B, 17, h].
  ctx = (np.einsum("bjc,jk->bkc", ctx, np.asarray(params["fc3"]["kernel"]))
         + np.asarray(params["fc3"]["bias"])[None, :, None])
  out = apply(layers.ChebConv(hid, **main), "gconv_input", nodes) + ctx
  for i in range(num_layers):
    out = apply(layers.GraAttenLayer(34, heads, 0.25), f"atten_layers_{i}", out)
    ctx = apply(layers.GraAttenLayer(34, heads, 0.25), f"atten_layers_t_{i}", ctx)
    out_old = out
    out = out + ctx  # out += guide
    if i < num_layers - 1:
      ctx = 2 * ctx + out_old  # guide += out, with the updated out
      out = apply(layers.ResChebTimeBlock(**main), f"gconv_layers_{i}", out, temb)
      ctx = apply(layers.ResChebTimeBlock(**main), f"gconv_layers_t_{i}", ctx, temb)
    else:
      out = apply(layers.ResChebTimeBlock(**main), f"gconv_layers_{i}", out, temb)
  out = apply(layers.ChebConv(3, **main), "gconv_output", out)
  return linear("fc2", np.concatenate([out[:, :17], out[:, 17:]], axis=-1))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_forward_follows_the_spec_wiring(num_layers):
  model, params = _denoiser_and_params(seed=1, num_layers=num_layers)
  x, guide = _inputs(3, seed=2)
  t = jnp.array([0.0, 6.0, 50.0])
  eps = jax.jit(lambda p: model.apply({"params": p}, x, guide, t))(params)
  assert eps.shape == (3, 17, 5) and eps.dtype == jnp.float32
  expected = _wiring_from_the_spec(params, x, guide, t, SMALL["hid_dim"], num_layers,
                                   SMALL["n_head"])
  np.testing.assert_allclose(eps, expected, rtol=2e-5, atol=2e-5)


def test_rows_are_independent_and_every_input_matters():
  model, params = _denoiser_and_params(seed=3)
  x, guide = _inputs(2, seed=4)
  t = jnp.array([6.0, 6.0])
  apply = jax.jit(lambda x, g, t: model.apply({"params": params}, x, g, t))
  base = apply(x, guide, t)
  for changed in (apply(x.at[1].add(0.3), guide, t), apply(x, guide.at[1].add(0.3), t),
                  apply(x, guide, jnp.array([6.0, 0.0]))):
    np.testing.assert_array_equal(changed[0], base[0])
    assert np.abs(changed[1] - base[1]).max() > 1e-4


def test_dropout_only_when_not_deterministic():
  model, params = _denoiser_and_params(seed=5, num_layers=1)
  x, guide = _inputs(3, seed=5)
  t = jnp.array([1.0, 2.0, 3.0])
  apply = jax.jit(lambda seed, det: model.apply({"params": params}, x, guide, t, deterministic=det,
                                                rngs={"dropout": jax.random.PRNGKey(seed)}),
                  static_argnums=1)
  clean = apply(0, True)
  np.testing.assert_array_equal(apply(1, True), clean)
  assert np.abs(apply(0, False) - clean).max() > 1e-3
  assert np.abs(apply(0, False) - apply(1, False)).max() > 1e-3


def test_input_validation_names_shapes():
  model, params = _denoiser_and_params()
  x, guide = _inputs(2)
  with pytest.raises(ValueError, match=r"x of shape \[B, 17, 5\].*got \(2, 17, 3\)"):
    model.apply({"params": params}, x[..., :3], guide, jnp.zeros((2,)))
  with pytest.raises(ValueError, match=r"guide of shape \[B, 17, 2\] = \(2, 17, 2\).*\(1, 17, 2\)"):
    model.apply({"params": params}, x, guide[:1], jnp.zeros((2,)))
  with pytest.raises(ValueError, match=r"t of shape \[B\] = \(2,\).*got \(3,\)"):
    model.apply({"params": params}, x, guide, jnp.zeros((3,)))
  with pytest.raises(ValueError, match="lacks field 'n_head'"):
    models.denoiser_from_config(dict(hid_dim=8, num_layers=1, dropout=0.1))
  assert models.denoiser_from_config(SMALL) == models.CrossChannelDenoiser(**SMALL)


# --------------------------------------------------------------------------------------------------
# The family: evaluation pipeline and training loss.


def _config(**eval_overrides):
  config = icassp_h36m.get_config("cpn")
  config.model.update(TINY)
  config.lifter.update(TINY)
  config.eval.update(eval_overrides)
  return config


@pytest.fixture(name="family_params", scope="module")
def _family_params():
  config = _config()
  return {part: _random_tree(tree, seed) for seed, (part, tree) in
          enumerate(jax.eval_shape(lambda: icassp.init_params(config, jax.random.key(0))).items())}


def test_init_params_and_checkpoint_meta():
  config = _config()
  # Shapes only: compiling the random initialisers takes XLA seconds.
  params = jax.eval_shape(lambda: icassp.init_params(config, jax.random.key(0)))
  assert set(params) == set(icassp.STAGES) == {"lifter", "denoiser"}
  assert params["denoiser"]["fc3"]["kernel"].shape == (17, 34)
  assert params["lifter"]["gconv_input"]["weight"].shape == (3, 2, 8)
  assert icassp.checkpoint_meta(config) == {
      "family": "icassp", "model": {"hid_dim": 8, "num_layers": 1, "n_head": 2},
      "lifter": {"hid_dim": 8, "num_layers": 1, "n_head": 2}}


def test_flip_tta_and_noise_rows_match_separate_sampler_runs(family_params):
  """One batched call equals the two passes run apart, with the documented noise row order."""
  hyp, batch, steps = 2, 3, 2
  config = _config(cpu_chunk_size=0)
  config.sampling.update(hypotheses=hyp, eta=0.7)
  uv = _inputs(batch, seed=6)[1]
  noise = jnp.asarray(_rng(7).normal(size=(steps, hyp * 2 * batch, 17, 5)), jnp.float32)
  pred, traj = jax.jit(lambda p, x, z: icassp.predict(config, p, x, noise=z,
                                                      return_trajectory=True))(
      family_params, uv, noise)
  assert pred.shape == (batch, 17, 3)

  lifter, denoiser = icassp.lifter_module(config), icassp.denoiser_module(config)
  table = schedules.alpha_bars_with_start(icassp.betas(config))
  grouped_noise = noise.reshape(steps, hyp, 2, batch, 17, 5)  # (hypothesis, pass, sample)

  @jax.jit
  def apart(params):
    xyz = lifter.apply({"params": params["lifter"]}, uv)
    xyz = xyz - xyz[:, :1]
    outs, trajectories = [], []
    for index, (state, guide) in enumerate((
        (jnp.concatenate([uv, xyz], -1), uv),
        (jnp.concatenate([skeleton.flip_pose(uv), skeleton.flip_pose(xyz)], -1),
         skeleton.flip_pose(uv)))):
      guide = ddim.repeat_hypotheses(guide, hyp)
      final, xs, _ = ddim.ddim_sample(
          lambda x, t, g=guide: denoiser.apply({"params": params["denoiser"]}, x, g, t),
          ddim.repeat_hypotheses(state, hyp), icassp.sampler_timesteps(config), table, eta=0.7,
          noise=grouped_noise[:, :, index].reshape(steps, hyp * batch, 17, 5),
          return_trajectory=True)
      trajectories.append((xs, guide))
      out = ddim.mean_over_hypotheses(final, hyp)[..., 2:]
      outs.append(out - out[:, :1])
    return (outs[0] + skeleton.flip_pose(outs[1])) / 2, trajectories

  expected, trajectories = apart(family_params)
  for prefix, (xs, guide) in zip(("", "flip_"), trajectories):
    assert_close(traj[prefix + "xs"], xs, what=prefix + "xs")
    np.testing.assert_array_equal(traj[prefix + "guide"], guide)
  assert_close(pred, expected, what="fused prediction")


def test_map_rows_pads_chunks_and_drops_the_padding():
  # (The parity tests run the whole pipeline chunked and unchunked.)
  rows = jnp.arange(10.0)[:, None] * jnp.ones((1, 3))
  calls = []

  def fn(a, b):
    calls.append(a.shape)
    return a * 2 + b

  for chunk in (0, 4, 5, 10, 16):
    calls.clear()
    np.testing.assert_array_equal(chunking.map_rows(fn, chunk, rows, rows[:, :1]),
                                  rows * 2 + rows[:, :1])
    assert calls == [(chunk, 3) if 0 < chunk < 10 else (10, 3)]


def test_denoiser_loss_mirrors_the_batch_with_the_flip_probability(family_params):
  uv = _inputs(8, seed=9)[1]
  xyz = jnp.asarray(_rng(10).normal(scale=0.3, size=(8, 17, 3)), jnp.float32)
  xyz = xyz - xyz[:, :1]
  batch = {"input_2d": uv, "target_3d": xyz}
  mirrored = {"input_2d": skeleton.flip_pose(uv), "target_3d": skeleton.flip_pose(xyz)}
  key = jax.random.key(11)

  @jax.jit
  def loss(params, data, probability):
    # One compilation for every probability: a config that accepts a traced value.
    config = ml_collections.ConfigDict(_config().to_dict(), type_safe=False)
    config.train.flip_probability = probability
    return icassp.denoiser_loss(config, params, data, key)

  params = family_params["denoiser"]
  # The same key draws the same steps, noise and dropout: only the mirroring differs.
  np.testing.assert_allclose(loss(params, batch, 1.0), loss(params, mirrored, 0.0), rtol=1e-6)
  assert np.isfinite(loss(params, batch, 0.5))
  assert abs(float(loss(params, batch, 1.0) - loss(params, batch, 0.0))) > 1e-4
  assert icassp.LOSSES["lifter"] is icassp.diffpose.lifter_loss
  config = _config()
  config.train.noise_scale = (0.1, 0.1, 1.0)
  with pytest.raises(ValueError, match=r"noise_scale must have 5 entries"):
    icassp.denoiser_loss(config, family_params["denoiser"], batch, key)


def test_guide_context_and_one_shared_step_equal_the_plain_call():
  """What the evaluation reuses across sampler steps gives the same noise as the plain call."""
  model, params = _denoiser_and_params(seed=14)
  x, guide = _inputs(3, seed=15)
  variables = {"params": params}
  plain = jax.jit(lambda: model.apply(variables, x, guide, jnp.full((3,), 6.0)))()
  reused = jax.jit(lambda: model.apply(
      variables, x, guide, jnp.array([6.0]),
      context=model.apply(variables, guide, method="guide_context")))()
  assert_close(reused, plain, rtol=1e-6, what="reused context and shared step")
  with pytest.raises(ValueError, match=r"t of shape \[B\] = \(3,\).*\[1\], shared\), got \(2,\)"):
    model.apply(variables, x, guide, jnp.zeros((2,)))


@pytest.fixture(name="pieces", scope="module")
def _pieces(family_params):
  """The CPU fast path in float32: (config, inputs, prediction), pieces of 2 frames x 2 passes."""
  config = _config(cpu_chunk_size=4)
  uv = _inputs(5, seed=16)[1]  # 3 pieces, the last one padded
  return config, uv, jax.jit(lambda p: icassp.predict(config, p, uv))(family_params)


def test_pieces_of_the_whole_pipeline_equal_the_step_by_step_path(family_params, pieces):
  """The fast path (lifter apart, then lax.map over padded pieces of frames) is the same pipeline
  as the one that records trajectories (each network call in chunks)."""
  config, uv, fast = pieces
  traced, _ = jax.jit(lambda p: icassp.predict(config, p, uv, return_trajectory=True))(
      family_params)
  assert_close(fast, traced, rtol=1e-6, what="pieces vs step by step")


def _dot_and_exp_dtypes(fn, *args):
  """The (operand dtypes, result dtype) of every dot and the dtype of every exp in fn's jaxpr."""
  dots, exps = set(), set()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        dots.add((tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype)))
      elif eqn.primitive.name == "exp":
        exps.add(str(eqn.outvars[0].aval.dtype))
      for sub in jax_core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return dots, exps


def test_bfloat16_compute_rounds_only_matmul_operands(family_params, pieces):
  config, uv, reference = pieces
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.compute_dtype = "bfloat16"
  predict = lambda p: icassp.predict(config, p, uv)
  pred = jax.jit(predict)(family_params)
  assert pred.dtype == jnp.float32
  # bfloat16 keeps 8 bits of mantissa: a few parts in a thousand through the networks.
  assert_close(pred, reference, rtol=3e-2, what="bfloat16 vs float32")
  assert np.abs(np.asarray(pred) - np.asarray(reference)).max() > 0  # it did change the compute
  dots, exps = _dot_and_exp_dtypes(predict, family_params)
  # Every dense product takes bfloat16 operands and accumulates in float32; the attention's
  # per-head products and softmax stay float32.
  assert dots == {(("bfloat16", "bfloat16"), "float32"), (("float32", "float32"), "float32")}
  assert exps == {"float32"}
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(family_params))
  config.eval.compute_dtype = "float16"
  with pytest.raises(ValueError, match=r"eval.compute_dtype must be one of .*'float16'"):
    icassp.predict(config, family_params, uv)


def test_config_variants():
  cpn, gt = icassp_h36m.get_config("cpn"), icassp_h36m.get_config("gt")
  for config in (cpn, gt):
    assert icassp.sampler_timesteps(config) == (0, 6)
    assert config.data.train_2d == config.data.test_2d
    assert tuple(config.data.fixed_resolution) == (1000, 1000) and config.data.kernel == "first"
    assert config.eval.flip_tta and config.train.epochs == 800
  assert "cpn_ft_h36m_dbb" in cpn.data.test_2d and "_gt_" in gt.data.test_2d
  with pytest.raises(ValueError, match="unknown variant 'video'"):
    icassp_h36m.get_config("video")


# --------------------------------------------------------------------------------------------------
# The data options: first kernel, fixed resolution, prepared files.


def _gmm_sequence(lengths, seed):
  """One sequence of a GMM file whose weights favour kernel 1 or 2 for most joints."""
  rng = _rng(seed)
  per_camera = []
  for n in lengths:
    gmm = np.zeros((n, 17, 3, 5), np.float32)
    np.put_along_axis(gmm[..., 0], rng.integers(3, size=(n, 17, 1)), 1.0, axis=-1)
    gmm[..., 1:3] = rng.uniform(0, 1000, (n, 17, 3, 2))
    gmm[..., 3:5] = rng.uniform(0, 0.05, (n, 17, 3, 2))
    per_camera.append(gmm)
  return per_camera


@pytest.fixture(name="files")
def _files(tmp_path):
  rng = _rng(12)
  world = rng.normal(scale=0.3, size=(3, 32, 3)) + [0, 0, 1]
  world = {"S9": {"Eating": world.astype(np.float32)}}
  gmm = {"S9": {"Eating": _gmm_sequence((3, 4, 3, 3), seed=13)}}
  paths = {"3d": tmp_path / "data_3d_h36m.npz", "gmm": tmp_path / "data_2d_h36m_gt_gmm.npz"}
  np.savez(paths["3d"], positions_3d=world)
  np.savez(paths["gmm"], positions_2d=gmm)
  return paths, gmm


def test_first_kernel_and_fixed_resolution_against_brute_force(files):
  paths, gmm = files
  frames = h36m.load_frame_set(paths["3d"], paths["gmm"], ("S9",), kernel="first",
                               fixed_resolution=(1000, 1000))
  assert frames.num_kernels == 1
  uv, var = h36m.choose_kernel(frames.gmm_2d)
  expected_uv, expected_var = [], []
  for camera in gmm["S9"]["Eating"]:
    pixels = camera[:3, :, 0, 1:3].astype(np.float32)
    expected_uv.append(((pixels / np.float32(1000) * np.float32(2)).astype(np.float64)
                        - [1.0, 1.0]).astype(np.float32))
    expected_var.append(camera[:3, :, 0, 3:5])
  np.testing.assert_array_equal(uv, np.concatenate(expected_uv))
  np.testing.assert_array_equal(var, np.concatenate(expected_var))
  weighted = h36m.load_frame_set(paths["3d"], paths["gmm"], ("S9",), fixed_resolution=(1000, 1000))
  assert weighted.num_kernels == 3
  assert not np.array_equal(h36m.choose_kernel(weighted.gmm_2d)[0], uv)
  with pytest.raises(ValueError, match=r"kernel must be one of \('weighted', 'first'\), got 'max'"):
    h36m.load_frame_set(paths["3d"], paths["gmm"], ("S9",), kernel="max")


def test_prepared_files_load_like_their_source(files, tmp_path):
  paths, gmm = files
  with pytest.raises(ValueError, match=r"cameras have different lengths \[3, 4, 3, 3\]"):
    h36m.prepare_first_kernel_2d(gmm)
  reference = {"S9": {"Eating": np.zeros((4, 3, 17, 2))}}
  prepared = h36m.prepare_first_kernel_2d(gmm, reference=reference)
  assert prepared["S9"]["Eating"].shape == (4, 3, 17, 2)
  path = tmp_path / "data_2d_h36m_gt_gmm_norm.npy"
  # Upstream writes float64 (its normalisation's offset is a float64 list).
  np.save(path, {"S9": {"Eating": prepared["S9"]["Eating"].astype(np.float64)}})
  from_npy = h36m.load_frame_set(paths["3d"], path, ("S9",), plain_2d_var=0.02)
  from_npz = h36m.load_frame_set(paths["3d"], paths["gmm"], ("S9",), kernel="first",
                                 fixed_resolution=(1000, 1000))
  np.testing.assert_array_equal(from_npy.gmm_2d[..., :3], from_npz.gmm_2d[..., :3])
  np.testing.assert_array_equal(from_npy.gmm_2d[..., 3:], np.float32(0.02))
  longer = {"S9": {"Eating": np.zeros((4, 4, 17, 2))}}
  with pytest.raises(ValueError, match=r"3 frames \(shortest camera\), fewer than the 4"):
    h36m.prepare_first_kernel_2d(gmm, reference=longer)
  with pytest.raises(ValueError, match=r"\['S9'\]\['Eating'\]: the reference has no such"):
    h36m.prepare_first_kernel_2d(gmm, reference={"S9": {}})


def test_bad_prepared_files_are_clear_errors(tmp_path):
  path = tmp_path / "bad_norm.npy"
  np.save(path, {"S9": {"Eating": np.zeros((4, 3, 16, 2))}})
  with pytest.raises(ValueError,
                     match=r"bad_norm\.npy: \['S9'\]\['Eating'\]: expected \[4, T, 17, 2\]"):
    h36m.load_prepared_2d(path)
  np.save(path, np.zeros(3))
  with pytest.raises(ValueError, match=r"must be a pickled dict"):
    h36m.load_prepared_2d(path)
  with pytest.raises(FileNotFoundError, match=r"missing_norm\.npy"):
    h36m.load_prepared_2d(tmp_path / "missing_norm.npy")


def test_pickled_npy_that_runs_code_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil_norm.npy"
  np.save(path, np.array(RunsCode(marker), dtype=object))
  with pytest.raises(safe_load.UnsafePickleError, match=r"evil_norm\.npy.*system"):
    safe_load.load_pickled_npy(path)
  assert not marker.exists()
  path.write_bytes(b"not numpy")
  with pytest.raises(ValueError, match=r"evil_norm\.npy"):
    safe_load.load_pickled_npy(path)


def test_load_split_passes_the_family_data_options(files):
  paths, _ = files
  config = icassp_h36m.get_config("gt")
  config.data.update(root=str(paths["3d"].parent), train_2d=paths["gmm"].name,
                     test_2d=paths["gmm"].name, test_subjects=("S9",))
  frames = evaluation.load_split(config, "test")
  expected = h36m.load_frame_set(paths["3d"], paths["gmm"], ("S9",), kernel="first",
                                 fixed_resolution=(1000, 1000))
  np.testing.assert_array_equal(frames.gmm_2d, expected.gmm_2d)
