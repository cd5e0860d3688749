"""Replaying the upstream training-step fixtures through the train step `train.py` runs.

Each `../shared/parity/<family>/train_step.{npz,json,md}` holds three optimizer steps of the
authors' training code (every random draw recorded): the batches, losses, learning rates and
gradient norms, the step-0 gradients, and the parameters, optimizer moments and EMA after the
last step, keyed by the checkpoint's torch names. Two layouts exist:

- DiffPose, ICASSP, mmDiff: `<name>_<k>` per step, per-parameter arrays stored whole or as
  `flat[::stride]` (`param_strides`), plus `<prefix>__fullnorm` / `__fullsum` of every full tensor;
- D3DP, FinePOSE, DSGDiffu: `step<k>/<name>` per step, whole gradients and parameters, and AdamW
  moments whole for some keys and as `exp_avg_norm` / `exp_avg_sum` for every key.

Our parameters are the converter's image of the torch ones. `TorchLayout` finds, for every element
of every parameter leaf, the torch key and element it came from, by converting two "tag" state
dicts (key numbers, then element numbers) with the family's own converter; any tree of our
parameters' structure (gradients, moments, EMA) then maps back to torch names and shapes.
"""

import json
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax import sharding
from posediff_jax import training
from tests.conftest import parity_dir

# Relative error ≤ 1e-5 of each array's largest value (the float32 tolerance).
RTOL = 1e-5


def load(family: str) -> tuple[pathlib.Path, dict[str, np.ndarray], dict]:
  """(fixture folder, train_step.npz arrays, train_step.json) of one family (skip if absent)."""
  root = parity_dir(family)
  with np.load(root / "train_step.npz", allow_pickle=False) as f:
    arrays = dict(f)
  return root, arrays, json.loads((root / "train_step.json").read_text())


def set_frame_recipe(config, up: dict) -> None:
  """Gives `config` the recipe of a DiffPose-layout fixture's json (DiffPose, ICASSP, mmDiff):
  Adam, clipping, EMA, the staircase lr, the schedule length, and every dropout at 0 (the
  fixtures run with dropout zeroed, train_step.md "Determinism"). The batch runs in one pass, as
  upstream's: its antithetic timesteps (`t_half`) pair rows across the whole batch."""
  assert tuple(up["betas"]) == (0.9, 0.999) and not up["amsgrad"], up  # make_optimizer's Adam
  config.train.update(lr=up["lr_init"], adam_eps=up["eps"], weight_decay=up["weight_decay"],
                      grad_clip=up.get("grad_clip_max_norm", 0.0), ema_rate=up["ema_rate"],
                      lr_decay_epochs=up["decay"], lr_gamma=up["lr_gamma"], grad_accum_steps=1,
                      compute_dtype="float32", cpu_chunk_size=0)
  config.diffusion.num_steps = up["num_timesteps"]
  config.model.update(dropout=0.0, inner_dropout=0.0)


def lr_start_step(arrays: dict, up: dict) -> int:
  """The global step of a DiffPose-layout fixture's step 0, with one-step epochs: upstream's lr
  decay at the end of epoch `decay` then falls just before step `lr_decay_applied_before_step`."""
  return up["decay"] + 1 - int(arrays["lr_decay_applied_before_step"])


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    out.update(_flatten(value, path) if isinstance(value, dict) else {path: value})
  return out


class TorchLayout:
  """Maps trees shaped like our params back to the torch state dict they were converted from.

  Args:
    convert: torch state dict -> our params tree (the family's converter for this model).
    state_dict: the checkpoint's state dict (keys as the fixture names them; buffers included, so
      a converter that checks them still passes).
    keys: the torch keys of the parameters (the fixture's `param2/` keys).
  """

  def __init__(self, convert: Callable[[dict], dict], state_dict: dict[str, np.ndarray],
               keys: list[str]):
    self.keys = list(keys)
    self.shapes = {k: np.shape(state_dict[k]) for k in self.keys}
    for key, shape in self.shapes.items():
      # Tags travel as float32 through the converter: exact below 2^24.
      assert int(np.prod(shape)) < 2**24, (key, shape)
    by_key = dict(state_dict)
    by_key.update({k: np.full(self.shapes[k], i + 1, np.float32)
                   for i, k in enumerate(self.keys)})
    by_element = dict(state_dict)
    by_element.update({k: np.arange(int(np.prod(s)), dtype=np.float32).reshape(s)
                       for k, s in self.shapes.items()})
    key_tags = _flatten(convert(by_key))
    element_tags = _flatten(convert(by_element))
    # For each torch key: [(our leaf path, positions in the flat leaf, elements of the flat key)].
    self.sources: dict[str, list] = {k: [] for k in self.keys}
    for path, tags in key_tags.items():
      tags = np.asarray(tags).ravel()
      elements = np.asarray(element_tags[path]).ravel().astype(np.int64)
      for index in np.unique(tags):
        assert index == int(index) and 1 <= index <= len(self.keys), (path, index)
        where = np.nonzero(tags == index)[0]
        self.sources[self.keys[int(index) - 1]].append((path, where, elements[where]))

  def mapped(self, key: str) -> bool:
    """Whether our model holds the torch parameter `key` (upstream-unused ones are dropped)."""
    return bool(self.sources[key])

  def to_torch(self, tree) -> dict[str, np.ndarray]:
    """{torch key: float64 array in the torch shape} of a tree shaped like our params (keys whose
    leaves the tree lacks, e.g. frozen parameters in an optimizer state, are left out)."""
    leaves = {p: np.asarray(v, np.float64).ravel() for p, v in _flatten(tree).items()
              if hasattr(v, "shape")}
    out = {}
    for key, sources in self.sources.items():
      if not sources or any(path not in leaves for path, _, _ in sources):
        continue
      flat = np.full(int(np.prod(self.shapes[key])), np.nan)
      for path, where, elements in sources:
        flat[elements] = leaves[path][where]
      assert not np.isnan(flat).any(), f"{key}: not every element has a source"
      out[key] = flat.reshape(self.shapes[key])
    return out


def relative_error(actual, expected) -> float:
  """max |actual − expected| / max |expected| (0 when both are all zero)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  err = np.max(np.abs(actual - expected)) if expected.size else 0.0
  scale = np.max(np.abs(expected)) if expected.size else 0.0
  return 0.0 if err == 0 else err / max(scale, 1e-30)


# How far above float32's own noise (see `Comparison`) a difference from upstream may lie.
FLOOR_FACTOR = 4.0


class Comparison:
  """Collects every difference between our replay and the fixture, then fails once listing all.

  Each array is compared at `RTOL` of its largest value, or at `FLOOR_FACTOR` times the spread
  float32 rounding alone gives that array, whichever is larger. The spread is measured: `floor`
  is a second replay of ours with every batch's rows in reverse order (the same batch means,
  summed in another order) and every weight nudged by one unit in the last place (`nudge`), the
  level at which two float32 implementations already differ after their first operation. It matters
  after the first update: where a clipped gradient is not much larger than Adam's eps (1e-8; the
  recipes that clip ~1000x make ~3% of them so), float32 rounding decides the update, and the
  later steps inherit it.

  Parameters whose gradient is zero in exact arithmetic (the attention key bias, which the
  softmax cancels) get float32 noise as their gradient on both sides (`noise_keys`); Adam then
  moves them by up to ~lr per step in a direction rounding decides. Their gradients and moments
  must be negligible on both sides, and their parameters agree within Adam's largest move.
  """

  def __init__(self):
    self.failures: list[str] = []
    self.count = 0
    self.widened: list[tuple[float, str]] = []  # (tolerance, array) where the floor exceeds RTOL

  def tensor(self, ours, stored, what: str, *, stride: int = 1, floor=None,
             atol: float = 0.0) -> None:
    """`ours` (full torch layout) against the fixture's whole or `flat[::stride]` copy; `atol`
    (absolute) only where rounding decides the values (see the class docstring)."""
    self.count += 1
    take = lambda a: (np.asarray(a, np.float64).ravel()[::stride] if stride > 1
                      else np.asarray(a, np.float64).reshape(np.shape(stored)))
    tol = RTOL if floor is None else max(RTOL, FLOOR_FACTOR * relative_error(take(floor),
                                                                             take(ours)))
    if tol > RTOL:
      self.widened.append((tol, what))
    err = relative_error(take(ours), stored)
    if err > tol and np.max(np.abs(take(ours) - stored)) > atol:
      self.failures.append(f"{what}: relative error {err:.2e} > {tol:.1e}")

  def scalar(self, ours, stored, what: str, *, floor=None) -> None:
    self.tensor(np.float64(ours), np.float64(stored), what, floor=floor)

  def norm_sum(self, ours, norm: float, total: float, what: str, *, floor=None) -> None:
    """A full array's L2 norm and sum against the fixture's float64 figures; the sum relative to
    the array's L1 norm, as a sum may cancel to near zero."""
    ours = np.asarray(ours, np.float64)
    l1 = max(np.abs(ours).sum(), 1e-30)
    norm_tol, sum_tol = RTOL, RTOL
    if floor is not None:
      floor = np.asarray(floor, np.float64)
      norm_tol = max(RTOL, FLOOR_FACTOR * abs(np.linalg.norm(floor) - np.linalg.norm(ours))
                     / max(np.linalg.norm(ours), 1e-30))
      sum_tol = max(RTOL, FLOOR_FACTOR * abs(floor.sum() - ours.sum()) / l1)
    self.count += 2
    if abs(np.linalg.norm(ours) - norm) > norm_tol * max(norm, 1e-30):
      self.failures.append(f"{what}: L2 norm {np.linalg.norm(ours):.9g} != {norm:.9g}")
    if abs(ours.sum() - total) > sum_tol * l1:
      self.failures.append(f"{what}: sum {ours.sum():.9g} != {total:.9g}")

  def fact(self, ok: bool, message: str) -> None:
    self.count += 1
    if not ok:
      self.failures.append(message)

  def check(self) -> None:
    if os.environ.get("POSEDIFF_SHOW_FLOORS"):
      print("\n".join(f"{tol:.1e} {what}" for tol, what in sorted(self.widened)))
    assert not self.failures, (f"{len(self.failures)} of {self.count} comparisons fail:\n"
                               + "\n".join(self.failures[:40]))


# A gradient this small next to the largest one is float32 noise around an exact zero.
NOISE_LEVEL = 1e-6
# The largest move of one Adam step in units of lr: m̂/sqrt(v̂) <= (1 − b1)/sqrt(1 − b2) at b1 0.9,
# b2 0.999 (a sign flip after a large gradient), and 1 whenever the gradients keep their sign.
ADAM_MAX_STEP = 0.1 / np.sqrt(0.001)


def noise_keys(grads: dict[str, np.ndarray]) -> set[str]:
  """The keys whose gradient is zero in exact arithmetic: at most `NOISE_LEVEL` of the largest."""
  top = max(float(np.max(np.abs(g))) for g in grads.values())
  return {k for k, g in grads.items() if float(np.max(np.abs(g))) <= NOISE_LEVEL * top}


def _check_noise_keys(cmp: "Comparison", keys: set[str], theirs: dict, ours: dict,
                      moments: dict) -> None:
  """Our gradients of upstream's noise keys are noise too, and so are their moments."""
  top = max(float(np.max(np.abs(g))) for g in ours.values())
  for key in sorted(keys):
    cmp.fact(key in ours and np.max(np.abs(ours[key])) <= NOISE_LEVEL * top,
             f"{key}: upstream's gradient is float32 noise around 0, ours is not")
    for name, value in moments.items():
      if key in value:
        bound = (NOISE_LEVEL * top) ** (2 if name.endswith("sq") else 1)
        cmp.fact(np.max(np.abs(value[key])) <= bound, f"{name}/{key} exceeds noise level")


def nudge(params, seed: int = 0):
  """Every float32 weight moved by −1, 0 or +1 unit in the last place (seeded): the rounding
  level at which any float32 implementation's first operations already differ."""
  rng = np.random.default_rng(seed)

  def move(x):
    x = np.asarray(x)
    if x.dtype != np.float32:
      return x
    steps = rng.integers(-1, 2, x.shape)
    return np.where(steps > 0, np.nextafter(x, np.float32(np.inf)),
                    np.where(steps < 0, np.nextafter(x, np.float32(-np.inf)), x))

  return jax.tree.map(move, params)


def reverse_rows(batch: dict) -> dict:
  """The batch (and its per-row draws) with its rows in reverse order."""
  flip = lambda x: np.asarray(x)[::-1]
  draws = {k: flip(v) for k, v in batch.get("draws", {}).items()}
  return {**{k: flip(v) for k, v in batch.items() if k != "draws"}, "draws": draws}


def replay(config, family, runs: list[tuple[dict, list[dict]]], *, stage: str = "denoiser",
           steps_per_epoch: int, start_step: int = 0, losses=None) -> list[tuple[dict, list]]:
  """Runs batches (with their `draws`) through `training.jit_train_step`, as train.py does.

  Args:
    config: the experiment config, set to the fixture's sizes and recipe.
    family: the family module.
    runs: (params {part: params}, one batch dict per recorded step) per run; every run starts from
      its own params and a fresh optimizer, and all share one compiled step.
    stage: the trained stage.
    steps_per_epoch: for the learning-rate schedule.
    start_step: the global step of the first batch (places the fixture's lr decay; the optimizer's
      own counters, Adam's bias correction among them, start at 0 as upstream's fresh optimizer).
    losses: {stage: loss} (default `family.LOSSES`).

  Returns:
    [(state after the last step, [measurements of each step])] per run, as numpy.
  """
  mesh = sharding.make_mesh(None)
  optimizer = training.make_optimizer(config, stage, training.untrained_params(config, stage))
  step = training.jit_train_step(config, stage, optimizer, (losses or family.LOSSES)[stage], mesh,
                                 steps_per_epoch=steps_per_epoch, return_grads=True)
  results = []
  for params, batches in runs:
    state = training.init_state(config, jax.tree.map(jnp.asarray, params), {stage: optimizer})
    state["step"] = jnp.asarray(start_step, jnp.int32)
    measured = []
    for batch in batches:
      state, out = step(state, jax.tree.map(jnp.asarray, batch))
      measured.append(jax.tree.map(np.asarray, out))
    results.append((jax.tree.map(np.asarray, state), measured))
  return results


def replay_with_floor(config, family, params: dict, batches: list[dict],
                      floor_batches: list[dict], **kwargs):
  """`replay` of the fixture's run and of its noise-floor twin (`Comparison`): the same batches
  with rows reversed (`floor_batches`) from `nudge`d params. Returns (run, floor run)."""
  return tuple(replay(config, family, [(params, batches), (nudge(params), floor_batches)],
                      **kwargs))


def adam_moments(opt_state) -> tuple[int, dict, dict]:
  """(step count, first moments, second moments) of an optimizer state from
  `training.make_optimizer`, the moments as trees shaped like the params (frozen parameters'
  leaves absent)."""
  found = []

  def visit(node):
    if hasattr(node, "mu") and hasattr(node, "nu"):
      found.append(node)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)
    elif isinstance(node, (tuple, list)):
      for child in node:
        visit(child)

  visit(opt_state)
  assert len(found) == 1, f"expected one Adam state, found {len(found)}"
  return int(found[0].count), found[0].mu, found[0].nu


def _trees(layout: TorchLayout, state, measured, stage: str) -> dict[str, dict]:
  """{fixture prefix: {torch key: array}} of one replay."""
  count, mu, nu = adam_moments(state["opt_state"][stage])
  trees = {"grad0_pre_clip": measured[0]["grads"], "param2": state["params"][stage],
           "ema2": state["ema_params"][stage], "adam2/exp_avg": mu, "adam2/exp_avg_sq": nu}
  if "clipped_grads" in measured[0]:
    trees["grad0"] = measured[0]["clipped_grads"]
  out = {prefix: layout.to_torch(tree) for prefix, tree in trees.items()}
  out["count"] = count
  return out


def check_frame_layout(arrays: dict, layout: TorchLayout, original: dict, run, floor_run,
                       stage: str = "denoiser", terms: dict[str, str] | None = None) -> None:
  """Every array of a DiffPose-layout fixture (DiffPose, ICASSP, mmDiff) against a replay.

  Args:
    arrays: the fixture's npz arrays.
    layout: the torch <-> ours map of the trained model.
    original: the checkpoint's state dict (torch names), for parameters our model drops.
    run, floor_run: (state, measurements) of `replay`, and of the replay on reversed rows.
    stage: the trained stage.
    terms: {measurement name: fixture prefix} of loss terms, e.g. {'terms/eps': 'loss_eps'}.
  """
  cmp = Comparison()
  keys = [str(k) for k in arrays["param_keys"]]
  strides = dict(zip(keys, (int(s) for s in arrays["param_strides"])))
  no_grad = {str(k) for k in arrays["no_grad_params"] if str(k)}
  for key in keys:
    # Our model drops exactly the parameters upstream's forward never reaches.
    cmp.fact(layout.mapped(key) or key in no_grad or key.split("module.", 1)[-1] in no_grad,
             f"{key}: upstream trains it, our model lacks it")
  no_grad |= {k for k in keys if not layout.mapped(k)}
  for k, (out, low) in enumerate(zip(run[1], floor_run[1])):
    for name, prefix in {"loss": "loss", "lr": "lr", "grad_norm": "grad_norm",
                         "clip_coef": "clip_coef", **(terms or {})}.items():
      cmp.scalar(out[name], arrays[f"{prefix}_{k}"], f"{prefix}_{k}", floor=low[name])
  ours, floors = _trees(layout, *run, stage), _trees(layout, *floor_run, stage)
  noise = noise_keys({k: arrays[f"grad0_pre_clip/{k}"] for k in keys if k not in no_grad})
  _check_noise_keys(cmp, noise, arrays, ours["grad0_pre_clip"],
                    {p: ours[p] for p in ("adam2/exp_avg", "adam2/exp_avg_sq")})
  adam_bound = ADAM_MAX_STEP * sum(float(out["lr"]) for out in run[1])
  for prefix in ("grad0_pre_clip", "grad0", "param2", "ema2", "adam2/exp_avg",
                 "adam2/exp_avg_sq"):
    norms, sums = arrays.get(f"{prefix}__fullnorm"), arrays.get(f"{prefix}__fullsum")
    for i, key in enumerate(keys):
      if key in noise and prefix not in ("param2", "ema2"):
        continue  # checked by _check_noise_keys
      if key in ours[prefix]:
        value, floor = ours[prefix][key], floors[prefix][key]
      elif prefix in ("param2", "ema2"):
        value = floor = np.asarray(original[key], np.float64)  # never trained: as loaded
      else:
        value = floor = np.zeros(layout.shapes[key])  # no gradient, no optimizer state
      cmp.tensor(value, arrays[f"{prefix}/{key}"], f"{prefix}/{key}", stride=strides[key],
                 floor=floor, atol=adam_bound if key in noise else 0.0)
      if norms is not None and key not in noise:
        cmp.norm_sum(value, norms[i], sums[i], f"{prefix}/{key} (whole)", floor=floor)
  for key, stored in zip(keys, arrays["adam2/step"]):
    cmp.fact(int(stored) == (0 if key in no_grad else len(run[1])),
             f"adam2/step of {key} is {stored}")
  cmp.fact(ours["count"] == len(run[1]), f"our Adam step count is {ours['count']}")
  cmp.check()


def check_clip_layout(arrays: dict, layout: TorchLayout, original: dict, run, floor_run,
                      stage: str = "denoiser") -> None:
  """Every array of a D3DP-layout fixture (D3DP, FinePOSE, DSGDiffu) against a replay."""
  cmp = Comparison()
  for k, (out, low) in enumerate(zip(run[1], floor_run[1])):
    for name in ("loss", "lr", "grad_norm"):
      cmp.scalar(out[name], arrays[f"{name}_{k}"], f"{name}_{k}", floor=low[name])
  ours, floors = _trees(layout, *run, stage), _trees(layout, *floor_run, stage)
  param_keys = [k[len("param2/"):] for k in arrays if k.startswith("param2/")]
  with_grad = {k[len("grad0/"):] for k in arrays if k.startswith("grad0/")}
  noise = noise_keys({k: arrays[f"grad0/{k}"] for k in with_grad})
  _check_noise_keys(cmp, noise, arrays, ours["grad0_pre_clip"],
                    {p: ours[p] for p in ("adam2/exp_avg", "adam2/exp_avg_sq")})
  adam_bound = ADAM_MAX_STEP * sum(float(out["lr"]) for out in run[1])
  for key in param_keys:
    if key in ours["param2"]:
      cmp.tensor(ours["param2"][key], arrays[f"param2/{key}"], f"param2/{key}",
                 floor=floors["param2"][key], atol=adam_bound if key in noise else 0.0)
    else:
      cmp.fact(key not in with_grad, f"param2/{key}: upstream trains it, our model lacks it")
      cmp.tensor(np.asarray(original[key]), arrays[f"param2/{key}"], f"param2/{key}")
    if key not in with_grad:
      # Upstream's grad is None: no step, no moments, no decay. Ours must not move it either.
      grad = ours["grad0_pre_clip"].get(key)
      cmp.fact(grad is None or not np.any(grad), f"grad0/{key}: upstream has none, ours is not 0")
      cmp.fact(f"adam2/step/{key}" not in arrays, f"adam2/step/{key}: upstream has state")
      cmp.fact(key not in ours["adam2/exp_avg"], f"{key}: upstream keeps no moments, ours does")
      continue
    if key in noise:
      continue  # checked by _check_noise_keys
    cmp.tensor(ours["grad0_pre_clip"][key], arrays[f"grad0/{key}"], f"grad0/{key}",
               floor=floors["grad0_pre_clip"][key])
    cmp.fact(int(arrays[f"adam2/step/{key}"]) == len(run[1]),
             f"adam2/step/{key} is {arrays[f'adam2/step/{key}']}")
    for name in ("exp_avg", "exp_avg_sq"):
      value, floor = ours[f"adam2/{name}"][key], floors[f"adam2/{name}"][key]
      if f"adam2/{name}/{key}" in arrays:
        cmp.tensor(value, arrays[f"adam2/{name}/{key}"], f"adam2/{name}/{key}", floor=floor)
      cmp.norm_sum(value, arrays[f"adam2/{name}_norm/{key}"], arrays[f"adam2/{name}_sum/{key}"],
                   f"adam2/{name}/{key} (norm, sum)", floor=floor)
  cmp.fact(ours["count"] == len(run[1]), f"our Adam step count is {ours['count']}")
  cmp.check()
