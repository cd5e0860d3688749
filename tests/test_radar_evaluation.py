"""mmDiff evaluation and the tools around it: phase 1 over a split, per-scene bookkeeping, files of
the wrong phase, and convert -> evaluate and train.py runs on the tiny synthetic radar set.

The torch files are written from Flax parameters by inverting the converter's own rules (every rule
maps one torch key onto one parameter by a gather), so converting them back must give the same
parameters exactly.
"""

import json
import re

import jax
import numpy as np
import pytest

from posediff_jax import checkpoint
from posediff_jax import datasets
from posediff_jax import evaluation
from posediff_jax import metrics
from posediff_jax import radar_phase1
from posediff_jax import training
from posediff_jax.convert import common
from posediff_jax.convert import mmdiff as convert_mmdiff
from posediff_jax.families import mmdiff
from tests import tiny_run
from tests import torch_format


@pytest.fixture(scope="module")
def radar_root(tmp_path_factory):
  return tiny_run.tiny_radar_data(tmp_path_factory)


@pytest.fixture(scope="module")
def config(radar_root):
  return tiny_run.tiny_family_config("mmdiff", radar_root)


@pytest.fixture(scope="module")
def params(config):
  return jax.tree.map(np.asarray, mmdiff.init_params(config, jax.random.key(3)))


# --- Flax parameters as upstream torch files ------------------------------------------------------


def _fill_groups(pattern: str, values) -> str:
  """The literal key `pattern` matches with its capture groups equal to `values`."""
  out, i, group = [], 0, 0
  while i < len(pattern):
    char = pattern[i]
    if char == "\\":
      out.append(pattern[i + 1])
      i += 2
    elif char == "(":
      depth, j = 1, i + 1
      while depth:
        if pattern[j] == "\\":
          j += 2
          continue
        depth += {"(": 1, ")": -1}.get(pattern[j], 0)
        j += 1
      out.append(values[group])
      group, i = group + 1, j
    else:
      out.append(char)
      i += 1
  return "".join(out)


def _target_regex(target: str, quantifier: str) -> str:
  """A regex matching the Flax paths a rule's target template produces, `{k}` as group `gk`
  (`quantifier` '+' or '+?': templates such as '{0}_{1}' split ambiguously)."""
  seen = set()

  def group(match):
    k = match[1]
    if k in seen:
      return f"(?P=g{k})"
    seen.add(k)
    return f"(?P<g{k}>[^/]{quantifier})"

  return re.sub(r"\\\{(\d+)\\\}", group, re.escape(target))


def _torch_state_dict(tree, rules) -> dict[str, np.ndarray]:
  """The torch state dict that `rules` map onto the Flax tree `tree` (nested dicts of arrays)."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      path = f"{prefix}/{key}" if prefix else key
      if isinstance(value, dict):
        walk(value, path)
      else:
        flat[path] = np.asarray(value)

  walk(tree, "")
  state_dict = {}
  for path, value in flat.items():
    key = None
    for rule in rules:
      for quantifier in ("+?", "+"):
        match = re.fullmatch(_target_regex(rule.target, quantifier), path)
        if match:
          values = [match[f"g{k}"] for k in range(len(match.groupdict()))]
          key = _fill_groups(rule.pattern, values)
          if re.fullmatch(rule.pattern, key):
            break
          key = None
      if key is not None:
        break
    else:
      raise AssertionError(f"no rule produces Flax parameter {path}")
    shape = rule.transform.torch_shape(value.shape)
    index = rule.transform.apply(np.arange(int(np.prod(shape))).reshape(shape))
    torch_value = np.empty(int(np.prod(shape)), value.dtype)
    torch_value[np.asarray(index).ravel()] = value.ravel()
    state_dict[key] = torch_value.reshape(shape)
  return state_dict


def _write_checkpoints(params, directory):
  """(phase-2 file, phase-1 file) in HEAD's layout for `params`."""
  # pylint: disable=protected-access
  denoiser = _torch_state_dict(params["denoiser"],
                               convert_mmdiff._RULES + convert_mmdiff._LOCAL_RULES)
  encoder = _torch_state_dict(params["encoder"], convert_mmdiff._P4TRANSFORMER_RULES)
  # pylint: enable=protected-access
  paths = directory / "mmBody_mmDiff_phase2.pth", directory / "mmBody_mmDiff_phase1.pth"
  for path, state_dict in zip(paths, (denoiser, encoder)):
    torch_format.save({"epoch": 0, "model_state_dict": state_dict, "optimizer_state_dict": {}},
                      path)
  return paths


@pytest.fixture(scope="module")
def torch_files(params, tmp_path_factory):
  return _write_checkpoints(params, tmp_path_factory.mktemp("torch"))


def test_both_phases_convert_back_to_the_same_parameters(config, params, torch_files):
  converted, unused = mmdiff.convert(config, *torch_files)
  assert set(converted) == {"denoiser", "encoder"} and unused == {"denoiser": [], "encoder": []}
  for part in ("denoiser", "encoder"):
    jax.tree.map(np.testing.assert_array_equal, converted[part], params[part])
  encoder_only, _ = mmdiff.convert(config, None, torch_files[1])
  assert set(encoder_only) == {"encoder"}


def test_a_checkpoint_of_the_wrong_phase_is_named(config, torch_files):
  phase2, phase1 = torch_files
  with pytest.raises(common.ConversionError,
                     match=r"phase1\.pth: this looks like an mmDiff phase-1 encoder checkpoint"):
    mmdiff.convert(config, phase1)
  with pytest.raises(common.ConversionError,
                     match=r"phase2\.pth: this looks like an mmDiff phase-2 denoiser \(GCNdiff\)"):
    mmdiff.convert(config, phase2, phase2)


def test_bfloat16_compute_rounds_the_denoisers_matmul_operands(config, params):
  rng = np.random.default_rng(5)
  model = config.model
  batch = {"x_history": rng.normal(scale=0.3, size=(4, 17, 3 * (model.past_frames + 1))),
           "features": rng.normal(size=(4, 17, model.feature_size)),
           "radar": rng.normal(scale=0.5, size=(4, 2, 40, model.radar_channels))}
  batch = jax.tree.map(lambda a: a.astype(np.float32), batch)
  bf16_config = config.copy_and_resolve_references()
  bf16_config.eval.compute_dtype = "bfloat16"
  reference, pred = (np.asarray(jax.jit(lambda p, c=c: mmdiff.predict(c, p, batch))(params))
                     for c in (config, bf16_config))
  # bfloat16 keeps 8 bits of mantissa: a few parts in a thousand through the network.
  scale = np.abs(reference).max()
  assert pred.dtype == np.float32
  assert 0 < np.abs(pred - reference).max() < 3e-2 * scale
  program = str(jax.make_jaxpr(lambda p: mmdiff.predict(bf16_config, p, batch))(params))
  assert "bf16[" in program and "preferred_element_type=float32" in program


# --- phase 1 and the table ------------------------------------------------------------------------


def _fake_encode(config, variables, radar):
  """Coarse pose = the first 17 points of the current frame plus an offset; features from them."""
  pose = radar[:, 0, :17, :3] + variables["offset"]
  return pose, radar[:, 0, :17, :1] * np.ones(config.model.feature_size, np.float32)


def test_encode_split_runs_phase_one_over_every_frame_in_order(config, monkeypatch):
  monkeypatch.setattr(mmdiff, "encode", _fake_encode)
  split = datasets.load_split(config, "test")
  offset = np.arange(3, dtype=np.float32)
  encoded = radar_phase1.encode_split(config, {"offset": offset}, split, progress=False)
  assert encoded.has_phase1 and len(encoded.coarse) == len(split)
  rows = np.arange(len(split))
  expected = split.radar(rows)[:, 0, :17, :3] + offset
  np.testing.assert_allclose(encoded.coarse, expected - expected[:, :1], atol=1e-6)
  np.testing.assert_allclose(encoded.features[..., 0], split.radar(rows)[:, 0, :17, 0], atol=1e-6)


def _coarse_as_prediction(config, params, batch, key=None):
  del config, params, key
  coarse = batch["x_history"][..., -3:]
  return coarse - coarse[:, :1]


def _test_split_with_phase1(config, seed: int):
  """The test split with stand-in phase-1 outputs: the truth plus 5 cm noise, random features."""
  split = datasets.load_split(config, "test")
  rng = np.random.default_rng(seed)
  return split.with_phase1(split.target_3d + rng.normal(scale=0.05, size=split.target_3d.shape),
                           rng.normal(size=(len(split), 17, config.model.feature_size)))


def test_table_files_every_frame_under_its_scene(config, monkeypatch):
  monkeypatch.setattr(mmdiff, "predict", _coarse_as_prediction)
  split = _test_split_with_phase1(config, seed=0)
  result = evaluation.evaluate(config, {"denoiser": {}}, split, progress=False)
  p1 = 1000 * np.asarray(metrics.mpjpe(split.coarse, split.target_3d))
  p2 = 1000 * np.asarray(metrics.p_mpjpe(split.coarse, split.target_3d))
  table = result.to_dict()
  assert list(table["actions"]) == list(split.scene_names)
  for s, name in enumerate(split.scene_names):
    row = table["actions"][name]
    assert row["count"] == int(np.sum(split.scene == s))
    assert row["p1_mm"] == pytest.approx(p1[split.scene == s].mean(), rel=1e-5)
    assert row["p2_mm"] == pytest.approx(p2[split.scene == s].mean(), rel=1e-4)
    # The refined pose is the coarse one here, so phase 1's columns agree.
    assert table["phase1"]["actions"][name]["p1_mm"] == pytest.approx(row["p1_mm"], rel=1e-6)
  assert table["all_frames"]["p1_mm"] == pytest.approx(p1.mean(), rel=1e-5)
  scene_means = [p1[split.scene == s].mean() for s in range(len(split.scene_names))]
  assert table["mean_of_scenes"]["p1_mm"] == pytest.approx(np.mean(scene_means), rel=1e-5)
  assert result.averages()[0] == pytest.approx(
      table["all_frames" if config.eval.average == "frames" else "mean_of_scenes"]["p1_mm"])
  text = result.format_table()
  assert all(name in text for name in split.scene_names) and "mean of scenes" in text


def test_raw_data_without_an_encoder_is_refused(config, params, tmp_path):
  split = datasets.load_split(config, "test")
  with pytest.raises(ValueError, match=r"needs the phase-1 encoder.*--lifter"):
    evaluation.evaluate(config, {"denoiser": params["denoiser"]}, split, progress=False)
  path = checkpoint.save_model(tmp_path / "phase2_only", {"denoiser": params["denoiser"]},
                               mmdiff.checkpoint_meta(config))
  with pytest.raises(ValueError, match=r"has no encoder .*--lifter"):
    evaluation.run(config, path, progress=False)
  train_config = tiny_run.tiny_family_config(
      "mmdiff", config.data.root, {"train.encoder_steps": 0, "train.encoder_checkpoint": str(path)})
  with pytest.raises(ValueError, match=r"holds no phase-1 encoder \(parts: \['denoiser'\]\)"):
    training.train_and_evaluate(train_config, tmp_path / "run")
  no_encoder = tiny_run.tiny_family_config("mmdiff", config.data.root, {"train.encoder_steps": 0})
  with pytest.raises(ValueError, match=r"needs a phase-1 encoder.*encoder_checkpoint"):
    training.train_and_evaluate(no_encoder, tmp_path / "run2")


# --- the command-line tools -----------------------------------------------------------------------


def _flags(radar_root, **changes) -> list[str]:
  overrides = {**tiny_run.FAMILY_OVERRIDES["mmdiff"], "data.root": radar_root, **changes}
  return [f"--config.{k}={v}" for k, v in overrides.items()]


@pytest.mark.slow
def test_convert_then_evaluate_cli(radar_root, config, params, torch_files, tmp_path,
                                   tmp_path_factory):
  cache = tiny_run.session_dir(tmp_path_factory, "xla_cache")
  flags = _flags(radar_root)
  phase2, phase1 = torch_files
  wrong = tiny_run.python(["convert_torch_weights.py", "--family=mmdiff",
                           "--config=configs/mmdiff_mmbody.py", f"--checkpoint={phase1}",
                           f"--output={tmp_path / 'wrong'}", *flags], cache_dir=cache, check=False)
  assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
  assert "looks like an mmDiff phase-1 encoder checkpoint" in wrong.stderr
  tiny_run.python(["convert_torch_weights.py", "--family=mmdiff",
                   "--config=configs/mmdiff_mmbody.py", f"--checkpoint={phase2}",
                   f"--lifter={phase1}", f"--output={tmp_path / 'ckpt'}", *flags], cache_dir=cache)
  proc = tiny_run.python(["evaluate.py", "--config=configs/mmdiff_mmbody.py",
                          f"--checkpoint={tmp_path / 'ckpt'}",
                          f"--output={tmp_path / 'result.json'}", *flags], cache_dir=cache)
  result = json.loads((tmp_path / "result.json").read_text())["results"]
  assert list(result["actions"]) == list(config.data.test_scenes)
  assert "mean of scenes" in proc.stdout
  expected = evaluation.evaluate(config, params, datasets.load_split(config, "test"),
                                 progress=False).to_dict()
  for scene, row in expected["actions"].items():
    assert result["actions"][scene]["p1_mm"] == pytest.approx(row["p1_mm"], rel=1e-4)


@pytest.mark.slow
def test_train_cli_trains_both_phases_and_evaluates(radar_root, tmp_path, tmp_path_factory):
  proc = tiny_run.python(["train.py", "--config=configs/mmdiff_mmbody.py",
                          f"--workdir={tmp_path / 'run'}",
                          *_flags(radar_root, **{"train.eval_every": 1,
                                                 "train.eval_max_batches": 1})],
                         cache_dir=tiny_run.session_dir(tmp_path_factory, "xla_cache"))
  logged = proc.stdout + proc.stderr  # the loss lines go through the progress bar (stderr)
  assert "[encoder] loss" in logged and "[denoiser] loss" in logged
  assert "step 3: eval MPJPE" in proc.stdout and "mean of scenes" in proc.stdout
  result = json.loads((tmp_path / "run" / "eval_results.json").read_text())
  assert result["step"] == 4 and set(result["results"]["actions"]) == set(
      tiny_run.tiny_family_config("mmdiff", radar_root).data.test_scenes)
  params, meta, _ = checkpoint.load_model(tmp_path / "run")
  assert set(params) == {"encoder", "denoiser"} and meta["family"] == "mmdiff"


def test_saved_predictions_hold_every_frame_with_its_scene(config, monkeypatch):
  from posediff_jax.evaluation import predictions  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(mmdiff, "predict", _coarse_as_prediction)
  split = _test_split_with_phase1(config, seed=1)
  collector = predictions.Collector("radar", "mmdiff")
  result = evaluation.evaluate(config, {"denoiser": {}}, split, progress=False,
                               collector=collector)
  saved = collector.arrays()
  np.testing.assert_array_equal(saved["index"], np.arange(len(split)))
  np.testing.assert_allclose(saved["pred"], saved["coarse"], atol=1e-6)
  np.testing.assert_allclose(saved["target"], split.target_3d - split.target_3d[:, :1],
                             atol=1e-6)
  table = result.to_dict()["actions"]
  for name in split.scene_names:
    rows = saved["scene"] == name
    assert rows.sum() == table[name]["count"]
    assert saved["mpjpe_mm"][rows].mean() == pytest.approx(table[name]["p1_mm"], rel=1e-5)
    assert saved["coarse_p_mpjpe_mm"][rows].mean() == pytest.approx(table[name]["p2_mm"],
                                                                    rel=1e-4)


def test_replayed_noise_reaches_the_radar_sampler_row_by_row(config, monkeypatch, tmp_path):
  seen = []

  def predict(config_, params, batch, key=None, noise=None):
    jax.debug.callback(lambda z: seen.append(np.asarray(z)), noise)  # runs inside the jit
    return _coarse_as_prediction(config_, params, batch, key)

  monkeypatch.setattr(mmdiff, "predict", predict)
  split = datasets.load_split(config, "test")
  rng = np.random.default_rng(2)
  split = split.with_phase1(split.target_3d, rng.normal(size=(len(split), 17,
                                                              config.model.feature_size)))
  batch, steps = config.eval.batch_size, len(mmdiff.sampler_timesteps(config))
  hyp, count = config.sampling.hypotheses, -(-len(split) // config.eval.batch_size)
  recorded = {f"noise_{i}": rng.normal(size=(steps, hyp * min(batch, len(split) - i * batch),
                                             17, 3)) for i in range(count)}
  np.savez(tmp_path / "z.npz", **recorded)
  replay = config.copy_and_resolve_references()
  replay.eval.noise_file = str(tmp_path / "z.npz")
  evaluation.evaluate(replay, {"denoiser": {}}, split, progress=False)
  assert len(seen) == count
  last = len(split) - (count - 1) * batch  # real rows of the last, padded batch
  got = seen[-1].reshape(steps, hyp, batch, 17, 3)
  np.testing.assert_allclose(got[:, :, :last].reshape(steps, -1, 17, 3),
                             recorded[f"noise_{count - 1}"], rtol=1e-6)
  assert not got[:, :, last:].any()
