"""Data parallelism: a batch sharded over 8 devices gives the 1-device results, for every family.

JAX fixes its device count when it starts, so the comparison runs in a fresh interpreter with 8
simulated CPU devices (`--xla_force_host_platform_device_count=8`). It computes everything twice
in that process, once on device 0 alone and once with the batch sharded over the `data` axis of an
8-device mesh and the parameters and state replicated, and saves both to an npz for this process
to compare. The whole evaluation is compared the same way, between the meshes (data 8, model 1)
and (data 1, model 8), where every device computes the whole batch.
"""

import functools

import numpy as np
import pytest

from tests import tiny_run

NUM_DEVICES = 8
BATCH = 64
# Two sampler settings: upstream's (one hypothesis, eta = 0) and one that draws noise in the sampler
# and folds hypotheses into the batch axis, where sharded random draws must match unsharded ones.
PREDICT_CASES = {"upstream": {"sampling.hypotheses": 1, "sampling.eta": 0.0},
                 "noisy": {"sampling.hypotheses": 2, "sampling.eta": 0.5}}
# The evaluation check already runs every frame and radar family's upstream setting over the mesh;
# DiffPose alone also compares it here, and checks that its output stays split over the devices.
UPSTREAM_PREDICT_FAMILIES = ("diffpose",)
FAMILIES = ("diffpose", "icassp")  # frame families: [B, 17, C] batches
# Clip families: [B, F, 17, C] batches, multi-hypothesis samplers. The prompt families also take
# each clip's text cache row (`action_index`), and carry the cache in their params.
CLIP_FAMILIES = ("d3dp", "finepose", "dsgdiffu")
CLIPS = 8
# Radar families: their own batch dict (past coarse poses, features, radar windows) and two
# training stages (the phase-1 encoder, then the denoiser).
RADAR_FAMILIES = ("mmdiff",)
TRAIN_STEPS = ([(f, "denoiser") for f in FAMILIES + CLIP_FAMILIES + RADAR_FAMILIES]
               + [(f, "encoder") for f in RADAR_FAMILIES])
# Compiling dominates the subprocess (~40 programs, 1-12 s each on 2 cores). Without LLVM's
# optimisation passes and with XLA's older fusion emitters it takes a third of the time; the
# comparisons check the partitioning, which happens before either.
SUBPROCESS_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def predict_cases(family: str) -> list[str]:
  """The sampler settings of `PREDICT_CASES` compared for a frame or radar family."""
  return [c for c in sorted(PREDICT_CASES)
          if c != "upstream" or family in UPSTREAM_PREDICT_FAMILIES]


def _random_params(config, rng: np.random.Generator):
  """Parameters with the model's structure and arbitrary values (no init compile needed)."""
  import jax  # pylint: disable=g-import-not-at-top
  from posediff_jax import families  # pylint: disable=g-import-not-at-top
  from posediff_jax.models import prompts  # pylint: disable=g-import-not-at-top

  family = families.get(config.family)
  shapes = jax.eval_shape(functools.partial(family.init_params, config), jax.random.key(0))

  def fill(path, shape):
    if jax.tree_util.keystr(path).endswith("['A_hat']"):
      # A learnt adjacency stays positive: its column sums are raised to the power -1/2.
      return (np.eye(shape.shape[0]) + rng.uniform(0, 0.05, shape.shape)).astype(shape.dtype)
    if jax.tree_util.keystr(path).endswith("['eot_index']"):
      return rng.integers(0, prompts.CONTEXT_LENGTH, shape.shape).astype(shape.dtype)
    return rng.normal(scale=0.2, size=shape.shape).astype(shape.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _random_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
  target = rng.normal(scale=0.3, size=(BATCH, 17, 3)).astype(np.float32)
  return {"input_2d": rng.uniform(-1, 1, (BATCH, 17, 2)).astype(np.float32),
          "input_2d_var": rng.uniform(1e-3, 1e-2, (BATCH, 17, 2)).astype(np.float32),
          "target_3d": target - target[:, :1],
          "action": rng.integers(0, 15, BATCH).astype(np.int32)}


def _random_clip_batch(rng: np.random.Generator, config, params) -> dict[str, np.ndarray]:
  """Clips [CLIPS, F, 17, C]; for a prompt family also `action_index` [CLIPS], mixed prompts."""
  num_frames = config.model.num_frames
  target = rng.normal(scale=0.3, size=(CLIPS, num_frames, 17, 3)).astype(np.float32)
  batch = {"input_2d": rng.uniform(-1, 1, (CLIPS, num_frames, 17, 2)).astype(np.float32),
           "target_3d": target - target[:, :, :1]}
  if "text_cache" in params:
    # Different prompts per clip: upstream's text tiling mixes them across the batch's rows.
    rows = params["text_cache"]["eot_index"].shape[0]
    batch["action_index"] = rng.integers(0, rows, CLIPS).astype(np.int32)
  return batch


def _random_radar_batch(rng: np.random.Generator, config) -> dict[str, np.ndarray]:
  """An mmDiff batch: phase-2 inputs, plus what the encoder stage reads (`radar`, `target_3d`)."""
  m, d = config.model, config.data
  target = rng.normal(scale=0.3, size=(BATCH, 17, 3)).astype(np.float32)
  frames = len(d.radar_window_offsets)
  radar = np.concatenate(
      [rng.uniform(-1, 1, (BATCH, frames, d.points_per_frame, 3)),
       rng.uniform(0, 2, (BATCH, frames, d.points_per_frame, d.radar_channels - 3))], axis=-1)
  return {"x_history": rng.normal(scale=0.3, size=(BATCH, 17, 3 * (m.past_frames + 1))
                                  ).astype(np.float32),
          "features": rng.normal(size=(BATCH, 17, m.feature_size)).astype(np.float32),
          "radar": radar.astype(np.float32), "target_3d": target - target[:, :1]}


def compute_on_one_and_all_devices(out_path: str, data_root: str, radar_root: str) -> None:
  """The subprocess's work: predictions, one train step per stage and an evaluation, per family."""
  import jax  # pylint: disable=g-import-not-at-top
  from posediff_jax import datasets  # pylint: disable=g-import-not-at-top
  from posediff_jax import evaluation  # pylint: disable=g-import-not-at-top
  from posediff_jax import families  # pylint: disable=g-import-not-at-top
  from posediff_jax import sharding  # pylint: disable=g-import-not-at-top
  from posediff_jax import training  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == NUM_DEVICES, jax.devices()
  mesh = sharding.make_mesh()
  replicated = sharding.replicated(mesh)
  by_batch = sharding.by_batch(mesh)
  out = {}

  def save(prefix, tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)

  for name in FAMILIES + CLIP_FAMILIES + RADAR_FAMILIES:
    rng = np.random.default_rng(0)
    root = radar_root if name in RADAR_FAMILIES else data_root
    config = tiny_run.tiny_family_config(name, root)
    params = _random_params(config, rng)
    family = families.get(config.family)
    if name in RADAR_FAMILIES:
      batch = _random_radar_batch(rng, config)
      sharded_batch = jax.device_put(batch, by_batch)
      for case in predict_cases(name):
        # The whole phase-2 pipeline: hypotheses, every DDIM step, the radar neighbourhoods.
        sample = jax.jit(functools.partial(
            family.predict, tiny_run.tiny_family_config(name, root, PREDICT_CASES[case])))
        key = jax.random.key(7)
        save(f"{name}/predict/{case}/one", sample(params, batch, key))
        save(f"{name}/predict/{case}/all",
             sample(jax.device_put(params, replicated), sharded_batch, key))
    elif name in CLIP_FAMILIES:
      batch = _random_clip_batch(rng, config, params)
      sharded_batch = jax.device_put(batch, by_batch)
      # The whole sampler: every hypothesis, both flips, every step, with noise drawn from the key.
      sample = jax.jit(lambda params, batch, key: family.sample(
          config, params, batch["input_2d"], key,
          **({"action_index": batch["action_index"]} if "action_index" in batch else {})))
      key = jax.random.key(7)
      save(f"{name}/predict/sampler/one", sample(params, batch, key))
      save(f"{name}/predict/sampler/all",
           sample(jax.device_put(params, replicated), sharded_batch, key))
    else:
      batch = _random_batch(rng)
      sharded_batch = jax.device_put(batch, by_batch)
      for case in predict_cases(name):
        predict = evaluation.make_predict_fn(
            tiny_run.tiny_family_config(name, data_root, PREDICT_CASES[case]))
        key = jax.random.key(7)
        save(f"{name}/predict/{case}/one", predict(params, batch["input_2d"], key))
        pred = predict(jax.device_put(params, replicated), sharded_batch["input_2d"], key)
        out[f"{name}/predict/{case}/shard_rows"] = np.array(
            [s.data.shape[0] for s in pred.addressable_shards])
        save(f"{name}/predict/{case}/all", pred)

    steps_per_epoch = 10
    optimizers = {stage: training.make_optimizer(config, stage,
                                                 training.untrained_params(config, stage))
                  for stage in family.STAGES if stage in params}
    state = training.init_state(config, params, optimizers)
    # Prompt families bind their text cache into the loss, as training does.
    losses = (family.losses(params["text_cache"]) if "text_cache" in params
              else family.LOSSES)
    # The denoiser's step draws per-sample timesteps, noise and dropout masks across the batch;
    # mmDiff's encoder step samples and groups points per sample.
    for family_name, stage in TRAIN_STEPS:
      if family_name != name:
        continue
      step = training.make_train_step(config, stage, optimizers[stage], losses[stage],
                                      steps_per_epoch=steps_per_epoch)
      save(f"{name}/step/{stage}/one", jax.jit(step)(state, batch))
      sharded_step = jax.jit(step, out_shardings=(replicated, replicated))
      save(f"{name}/step/{stage}/all",
           sharded_step(jax.device_put(state, replicated), sharded_batch))

    test = datasets.load_split(config, "test")
    eval_batch = {**dict.fromkeys(CLIP_FAMILIES, 2), **dict.fromkeys(RADAR_FAMILIES, 16)}
    for layout, mesh_sizes in (("one", (1, NUM_DEVICES)), ("all", (NUM_DEVICES, 1))):
      # mmDiff: phase 1 over the raw test frames, then phase 2, both split over the devices.
      eval_config = tiny_run.tiny_family_config(
          name, root, {"mesh.data": mesh_sizes[0], "mesh.model": mesh_sizes[1],
                       "eval.batch_size": eval_batch.get(name, 64)})
      # Clip families: 9 mini-batches = 2 calls of 8 (data 8; the second holds 7 fillers) or 9
      # calls of 1 (data 1).
      table = evaluation.evaluate(eval_config, params, test,
                                  max_batches=9 if name in CLIP_FAMILIES else 3, progress=False)
      out[f"{name}/eval/{layout}"] = np.array(table.averages())
  np.savez(out_path, **out)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharding") / "results.npz"
  data = tiny_run.tiny_data(tmp_path_factory)
  radar = tiny_run.tiny_radar_data(tmp_path_factory)
  code = ("from tests import test_sharding; "
          f"test_sharding.compute_on_one_and_all_devices({str(out)!r}, {str(data)!r}, "
          f"{str(radar)!r})")
  tiny_run.python(["-c", code], devices=NUM_DEVICES, xla_flags=SUBPROCESS_XLA_FLAGS,
                  cache_dir=tiny_run.session_dir(tmp_path_factory, "xla_cache"))
  with np.load(out) as f:
    return dict(f)


def _pairs(results, prefix):
  """{name: (1-device value, 8-device value)} of the arrays saved under `prefix`."""
  one = {k[len(prefix + "/one"):]: v for k, v in results.items() if k.startswith(prefix + "/one")}
  every = {k[len(prefix + "/all"):]: v for k, v in results.items() if k.startswith(prefix + "/all")}
  assert one and sorted(one) == sorted(every), (prefix, sorted(one), sorted(every))
  return {name: (one[name], every[name]) for name in one}


@pytest.mark.parametrize("family,case", [(f, c) for f in FAMILIES for c in predict_cases(f)])
def test_predict_with_sharded_batch_matches_one_device(results, family, case):
  ((one, every),) = _pairs(results, f"{family}/predict/{case}").values()
  assert one.shape == (BATCH, 17, 3) and np.all(np.isfinite(one))
  # Float32 noise relative to the output's scale (arbitrary weights give poses of a few metres).
  np.testing.assert_allclose(every, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())


def test_upstream_predict_keeps_the_batch_split_over_the_devices(results):
  # Each device holds its own 8 rows of the output. (With 2 hypotheses the output currently comes
  # back replicated on every device; its values still match, see above.)
  rows = list(results["diffpose/predict/upstream/shard_rows"])
  assert rows == [BATCH // NUM_DEVICES] * NUM_DEVICES


@pytest.mark.parametrize("family", CLIP_FAMILIES)
def test_clip_sampler_with_sharded_batch_matches_one_device(results, family):
  ((one, every),) = _pairs(results, f"{family}/predict/sampler").values()
  config = tiny_run.tiny_family_config(family, "unused")
  s, m = config.sampling, config.model
  assert one.shape == (CLIPS, s.num_steps, s.num_hypotheses, m.num_frames, 17, 3)
  assert np.all(np.isfinite(one))
  np.testing.assert_allclose(every, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())


@pytest.mark.parametrize("family,case",
                         [(f, c) for f in RADAR_FAMILIES for c in predict_cases(f)])
def test_radar_pipeline_with_sharded_batch_matches_one_device(results, family, case):
  ((one, every),) = _pairs(results, f"{family}/predict/{case}").values()
  assert one.shape == (BATCH, 17, 3) and np.all(np.isfinite(one))
  np.testing.assert_allclose(every, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())


@pytest.mark.parametrize("family", FAMILIES + CLIP_FAMILIES + RADAR_FAMILIES)
def test_data_parallel_evaluation_matches_replicated_evaluation(results, family):
  one, every = results[f"{family}/eval/one"], results[f"{family}/eval/all"]
  assert np.all(np.isfinite(one)) and np.all(one > 0)
  np.testing.assert_allclose(every, one, rtol=1e-5)


@pytest.mark.parametrize("family,stage", TRAIN_STEPS)
def test_train_step_with_sharded_batch_matches_one_device(results, family, stage):
  from posediff_jax import training  # pylint: disable=g-import-not-at-top

  lr = float(training.learning_rate(tiny_run.tiny_family_config(family, "unused"), stage, 10)(0))
  pairs = _pairs(results, f"{family}/step/{stage}")
  groups = {"measurements": {}, "moments": {}, "weights": {}, "carried": {}}
  for name, pair in pairs.items():
    if name.startswith("[1]"):
      groups["measurements"][name] = pair
    elif f"['{stage}']" in name and (".mu[" in name or ".nu[" in name):
      groups["moments"][name] = pair
    elif f"['{stage}']" in name and name.startswith(("[0]['params']", "[0]['ema_params']")):
      groups["weights"][name] = pair
    else:
      groups["carried"][name] = pair
  clipped = tiny_run.tiny_family_config(family, "unused").train.get("grad_clip", 0.0)
  expected = ["grad_norm", "loss", "lr"] + (["clip_coef"] if clipped else [])
  expected += ["terms/eps", "terms/limb"] if (family, stage) == ("mmdiff", "denoiser") else []
  assert sorted(groups["measurements"]) == sorted(f"[1]['{name}']" for name in expected)
  # mu and nu; params and EMA. Parameters kept out of the optimizer (DSGDiffu's never-run
  # STEblocks.0, `training.untrained_params`) have weights but no moments.
  assert 0 < len(groups["moments"]) <= len(groups["weights"])
  for name, (one, every) in groups["measurements"].items():
    assert np.isfinite(one) and one > 0, name
    np.testing.assert_allclose(every, one, rtol=1e-5, err_msg=name)
  # Adam's moments after one step are (1 - b1) g and (1 - b2) g^2 of the clipped gradient g, the
  # all-reduced sum over the 8 shards: equal up to float32 noise relative to their scale.
  for moment in (".mu[", ".nu["):
    leaves = {n: p for n, p in groups["moments"].items() if moment in n}
    scale = max(np.abs(one).max() for one, _ in leaves.values())
    for name, (one, every) in leaves.items():
      np.testing.assert_allclose(every, one, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
  # Adam's first step moves a weight by lr * g / (|g| + eps). Where g is 0 in exact arithmetic
  # (e.g. the attention's key bias, which softmax cancels), float32 noise in g of ~1e-10 moves it by
  # up to ~lr * 1e-10 / eps, a few percent of lr.
  for name, (one, every) in groups["weights"].items():
    np.testing.assert_allclose(every, one, rtol=1e-5, atol=0.1 * lr, err_msg=name)
  # What the step only carries (the other stage, the step counter, the key) stays bit-identical.
  for name, (one, every) in groups["carried"].items():
    np.testing.assert_array_equal(every, one, err_msg=name)


def _one_lifter_step(overrides: dict, batch: dict, params: dict):
  """The updated lifter parameters after one train step of the tiny config with `overrides`."""
  import jax  # pylint: disable=g-import-not-at-top
  from posediff_jax import families  # pylint: disable=g-import-not-at-top
  from posediff_jax import training  # pylint: disable=g-import-not-at-top

  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  config = tiny_run.tiny_config("unused", overrides)
  family = families.get(config.family)
  optimizer = training.make_optimizer(config, "lifter")
  state = training.init_state(config, params, {"lifter": optimizer})

  def loss_without_dropout(config, lifter_params, batch, key):
    del key  # the model has fixed dropout layers, so the test switches them off
    xyz = family.lifter_module(config).apply({"params": lifter_params}, batch["input_2d"],
                                             deterministic=True)
    return jnp.mean(jnp.square(xyz - batch["target_3d"]))

  step = training.make_train_step(config, "lifter", optimizer, loss_without_dropout,
                                  steps_per_epoch=100)
  new_state, measured = jax.jit(step)(state, batch)
  return jax.tree.map(np.asarray, new_state["params"]["lifter"]), float(measured["loss"])


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
  # Without dropout, a batch-mean loss over 2 micro-batches of 32 has the batch of 64's gradient.
  rng = np.random.default_rng(3)
  config = tiny_run.tiny_config("unused")
  params, batch = _random_params(config, rng), _random_batch(rng)
  whole, loss_whole = _one_lifter_step({"train.grad_accum_steps": 1}, batch, params)
  accum, loss_accum = _one_lifter_step({"train.grad_accum_steps": 2}, batch, params)
  assert loss_accum == pytest.approx(loss_whole, rel=1e-5)
  for a, b in zip(_leaves(accum), _leaves(whole)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # Adam moves weights by ~1e-3


def test_bfloat16_compute_keeps_float32_parameters_and_stays_close():
  rng = np.random.default_rng(4)
  config = tiny_run.tiny_config("unused")
  params, batch = _random_params(config, rng), _random_batch(rng)
  f32, loss_f32 = _one_lifter_step({}, batch, params)
  bf16, loss_bf16 = _one_lifter_step({"train.compute_dtype": "bfloat16"}, batch, params)
  assert all(x.dtype == np.float32 for x in _leaves(bf16))
  assert loss_bf16 == pytest.approx(loss_f32, rel=2e-2)
  # Adam's first step moves every weight by about lr; bfloat16 gradients may flip only tiny ones.
  moved = [np.abs(b - p).max() for b, p in zip(_leaves(bf16), _leaves(params["lifter"]))]
  assert max(moved) > 0
  close = np.mean(np.concatenate([np.isclose(a, b, atol=2e-3).ravel()
                                  for a, b in zip(_leaves(bf16), _leaves(f32))]))
  assert close > 0.95


def _leaves(tree) -> list[np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_mesh_shape_from_the_config():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from posediff_jax import sharding  # pylint: disable=g-import-not-at-top

  mesh = lambda **kw: ml_collections.ConfigDict(kw)
  assert sharding.mesh_shape(None, 8) == (8, 1)
  assert sharding.mesh_shape(mesh(data=-1, model=1), 8) == (8, 1)
  assert sharding.mesh_shape(mesh(data=-1, model=2), 8) == (4, 2)
  assert sharding.mesh_shape(mesh(data=2, model=4), 8) == (2, 4)
  with pytest.raises(ValueError, match=r"needs 3 devices, but there are 8"):
    sharding.mesh_shape(mesh(data=3, model=1), 8)
  with pytest.raises(ValueError, match=r"mesh.model=3 does not divide the 8 devices"):
    sharding.mesh_shape(mesh(data=-1, model=3), 8)
