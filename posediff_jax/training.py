"""The training loop: stages, sharded jitted steps, evaluation, checkpoints with the data iterator.

A run trains the family's stages in order over one global step counter (DiffPose: `lifter` for
`train.lifter_steps`, then `denoiser` for `train.steps`; mmDiff: `encoder` for
`train.encoder_steps`, then `denoiser`, whose data the frozen encoder prepares). The state is a
plain dict pytree:

  {'step': int32 [], 'rng': key data, 'params': {stage: ...}, 'opt_state': {stage: ...},
   'ema_params': {stage: ...}}

Every checkpoint holds that state and the grain iterator state, so a resumed run continues exactly
where the interrupted one stopped. Layouts with one stream per stage (`datasets.staged`) start each
stage's stream when the stage starts, with the stage's own batch size (`train.<stage>_batch_size`).
Parameters are replicated and batches sharded over the `data` axis of the mesh `config.mesh`
describes (`posediff_jax.sharding`).
"""

import json
import pathlib
import signal
import threading
import time

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import grain

from posediff_jax import checkpoint
from posediff_jax import datasets
from posediff_jax import evaluation
from posediff_jax import families
from posediff_jax import sharding
from posediff_jax import summary


def make_mesh(config=None) -> jax.sharding.Mesh:
  """The ('data', 'model') mesh of `config.mesh` (all devices on `data` when absent)."""
  return sharding.make_mesh(config.get("mesh") if config is not None else None)


def stage_plan(config, steps_per_epoch: int,
               stage_steps_per_epoch: dict[str, int] | None = None) -> list[tuple[str, int]]:
  """[(stage, number of steps)] in training order; stages with 0 steps are left out.

  `stage_steps_per_epoch` overrides `steps_per_epoch` for stages with their own batch size.
  """
  t = config.train
  stages = families.get(config.family).STAGES
  counts = {"lifter": (t.get("lifter_steps", 0), t.get("lifter_epochs", 0)),
            "encoder": (t.get("encoder_steps", 0), t.get("encoder_epochs", 0)),
            "denoiser": (t.steps, t.epochs)}
  plan = []
  for name in stages:
    steps, epochs = counts[name]
    per_epoch = (stage_steps_per_epoch or {}).get(name, steps_per_epoch)
    n = steps if steps > 0 else epochs * per_epoch
    if n > 0:
      plan.append((name, n))
  return plan


def learning_rate(config, stage: str, steps_per_epoch: int):
  """The stage's learning rate as a function of how many steps the stage has taken.

  With `train.lr_decay` (D3DP family): lr0 · decay^epoch, multiplied in after every epoch.
  Otherwise DiffPose's staircase: lr0 · gamma^((epoch − 1) // decay) from epoch 1 on (spec §A.8).
  mmDiff's encoder stage keeps `train.encoder_lr` throughout (upstream `phase1_train`).
  """
  t = config.train
  if stage == "encoder":
    return lambda count: jnp.full((), t.encoder_lr, jnp.float32)
  lr0 = t.lifter_lr if stage == "lifter" else t.lr
  if t.get("lr_decay"):
    return lambda count: jnp.float32(lr0) * jnp.float32(t.lr_decay) ** (count // steps_per_epoch)

  def schedule(count):
    epoch = count // steps_per_epoch
    # Upstream decays after finishing epoch e with e % decay == 0 (so epochs 0..60 keep lr0).
    return lr0 * t.lr_gamma ** (jnp.maximum(epoch - 1, 0) // t.lr_decay_epochs)

  return schedule


def untrained_params(config, stage: str) -> tuple[str, ...]:
  """Parameter path prefixes of `stage` that its loss never reaches (the family's declaration).

  Upstream's optimizer skips a parameter whose `.grad` is None: no moments, no weight decay. Such
  parameters are kept out of the optimizer here too, so AdamW does not decay them.
  """
  declared = getattr(families.get(config.family), "untrained_params", None)
  return tuple(declared(config).get(stage, ())) if declared else ()


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                  ) -> optax.GradientTransformation:
  """Adam's direction m̂ / (sqrt(v̂) + eps) as torch's `Adam` computes it.

  Unlike `optax.scale_by_adam`, the bias corrections 1 − b^t are accurate in float32: optax takes
  b2 = 0.999 to float32 first, which leaves 1 − b2^t off by 1.3e-5 at the first step and every
  early update off by ~6e-6 relative. Here 1 − b^t = −expm1(t · log1p(−(1 − b))), with 1 − b exact
  in double precision, as torch's Python scalars are. The state is optax's `ScaleByAdamState`.
  """

  def init(params):
    zeros = lambda: jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)
    return optax.ScaleByAdamState(count=jnp.zeros((), jnp.int32), mu=zeros(), nu=zeros())

  def update(grads, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: m + (1.0 - b1) * (g - m), state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * (g * g), state.nu, grads)
    correction1 = -jnp.expm1(t * jnp.log1p(jnp.float32(-(1.0 - b1))))
    correction2 = -jnp.expm1(t * jnp.log1p(jnp.float32(-(1.0 - b2))))
    direction = jax.tree.map(
        lambda m, v: (m / correction1) / (jnp.sqrt(v) / jnp.sqrt(correction2) + eps), mu, nu)
    return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def make_optimizer(config, stage: str, frozen: tuple[str, ...] = ()
                   ) -> optax.GradientTransformation:
  """The stage's update direction before the learning rate: Adam's, plus the weight decay.

  `train.weight_decay` > 0 is AdamW's decoupled decay (the direction gains wd · param). The
  encoder stage uses torch's Adam `weight_decay` (`train.encoder_weight_decay`): the decay is
  added to the clipped gradient before Adam. The train step scales the direction by −lr itself
  (`make_train_step`), so the learning rate of every step is explicit and measured. Parameters
  under a `frozen` path prefix (`untrained_params`) get no moments and no update.
  """
  t = config.train
  adam = scale_by_adam(b1=0.9, b2=0.999, eps=t.adam_eps)
  if stage == "encoder":
    decay = t.get("encoder_weight_decay", 0.0)
    tx = optax.chain(optax.add_decayed_weights(decay), adam) if decay else adam
  else:
    decay = t.get("weight_decay", 0.0)
    tx = optax.chain(adam, optax.add_decayed_weights(decay)) if decay else adam
  if not frozen:
    return tx

  def labels(params):
    def label(path, _):
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      return "frozen" if any(name == p or name.startswith(p + "/") for p in frozen) else "train"
    return jax.tree_util.tree_map_with_path(label, params)

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def clip_by_global_norm(grads, max_norm: float):
  """torch's `clip_grad_norm_`: every gradient times min(1, max_norm / (‖grads‖ + 1e-6)).

  Returns:
    (clipped gradients, the global L2 norm before clipping, the coefficient applied).
  """
  norm = optax.tree.norm(grads)
  coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
  return jax.tree.map(lambda g: (g * coef).astype(g.dtype), grads), norm, coef


def init_state(config, params, optimizers) -> dict:
  return {
      "step": jnp.zeros((), jnp.int32),
      "rng": jax.random.key_data(jax.random.key(config.seed)),
      "params": params,
      "opt_state": {name: tx.init(params[name]) for name, tx in optimizers.items()},
      # A copy: the jitted step donates the state, and one buffer cannot be donated twice.
      "ema_params": jax.tree.map(lambda x: jnp.array(x, copy=True), params),
  }


def _split_loss_output(out):
  """A loss returns `loss` or `(loss, aux)`; aux may hold 'collections' and 'terms' (dicts)."""
  if not isinstance(out, tuple):
    return out, {}, {}
  loss, aux = out
  unknown = set(aux) - {"collections", "terms"}
  if unknown:
    raise ValueError(f"a loss's aux output may hold 'collections' and 'terms', got {sorted(aux)}")
  return loss, aux.get("collections", {}), aux.get("terms", {})


def make_train_step(config, stage: str, optimizer, loss_fn, *, steps_per_epoch: int,
                    stage_start: int = 0, return_grads: bool = False):
  """A pure `(state, batch) -> (state, measurements)` that updates only `stage`'s parameters.

  One step, in upstream's order: the loss and its gradient; the global gradient norm, and
  torch-style clipping at `train.grad_clip` (if set); the optimizer's direction (Adam/AdamW,
  `make_optimizer`); params −= lr · direction with lr = `learning_rate` at the stage's step
  (`state['step'] − stage_start`); EMA ← rate · EMA + (1 − rate) · params.

  The batch runs in `train.grad_accum_steps` micro-batches, on CPU further cut into passes of
  `train.cpu_chunk_size` rows (`train_chunk_rows`), the gradients averaged; with
  `train.upstream_loss_scaled_gradient` the batch's gradient is then multiplied by its loss.

  A loss may return `(loss, aux)`: `aux['collections']` are variables it updates itself rather than
  by gradient (batch-norm running statistics, `{'batch_stats': ...}`), written over the stage's
  parameters after the optimizer step; `aux['terms']` are named parts of the loss, reported as
  `terms/<name>`. A batch may carry `draws` (the timesteps, noise and augmentation decisions a
  recorded run used), which the family's loss then takes instead of drawing from the step's key.

  Measurements: `loss`, `grad_norm` (before clipping), `lr`, `clip_coef` (with clipping), the loss
  terms, and with `return_grads` the gradients (`grads`, before clipping; `clipped_grads`).
  """
  ema_rate = config.train.ema_rate
  accum = config.train.get("grad_accum_steps", 1)
  max_norm = config.train.get("grad_clip", 0.0)
  loss_scaled = config.train.get("upstream_loss_scaled_gradient", False)
  schedule = learning_rate(config, stage, steps_per_epoch)
  if accum < 1:
    raise ValueError(f"train.grad_accum_steps must be >= 1, got {accum}")
  chunk = train_chunk_rows(config, stage)

  def loss_with_aux(params, batch, key):
    loss, updated, terms = _split_loss_output(loss_fn(config, params, batch, key))
    updated = {name: jax.tree.map(lambda u, p: u.astype(p.dtype), tree, params[name])
               for name, tree in updated.items()}
    return loss.astype(jnp.float32), (updated, terms)

  grad_fn = jax.value_and_grad(loss_with_aux, has_aux=True)

  def loss_and_grads(params, batch, key):
    passes = _passes(batch, accum, chunk)
    if passes == 1:
      (loss, (updated, terms)), grads = grad_fn(params, batch, key)
      return loss, grads, updated, terms
    # Pass i holds rows i, i + k, i + 2k, ... so each one stays spread over every device. Every
    # loss here is a mean over equally weighted rows, so the mean over passes is the batch's.
    micro = _split_rows(batch, passes)

    def body(carry, inputs):
      i, micro_batch = inputs
      (loss, (updated, terms)), grads = grad_fn(params, micro_batch, jax.random.fold_in(key, i))
      if updated:
        raise ValueError(f"the {stage} stage's loss updates batch statistics, which several "
                         "passes over one batch cannot: set train.grad_accum_steps=1 and "
                         "train.cpu_chunk_size=0")
      return jax.tree.map(jnp.add, carry, (loss, grads, terms)), None

    (loss_shape, (_, terms_shape)), grads_shape = jax.eval_shape(
        grad_fn, params, jax.tree.map(lambda x: x[0], micro), key)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         (loss_shape, grads_shape, terms_shape))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(passes), micro))
    loss, grads, terms = jax.tree.map(lambda x: x / passes, total)
    return loss, grads, {}, terms

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    params = state["params"][stage]
    loss, grads, updated, terms = loss_and_grads(params, batch, key)
    if loss_scaled:
      # Upstream quirk (D3DP family): `loss.backward(loss)`, the gradient of ½·loss².
      grads = jax.tree.map(lambda g: g * loss, grads)
    measured = {"loss": loss, **{f"terms/{k}": v for k, v in terms.items()}}
    if max_norm:
      clipped, measured["grad_norm"], measured["clip_coef"] = clip_by_global_norm(grads, max_norm)
    else:
      clipped, measured["grad_norm"] = grads, optax.tree.norm(grads)
    lr = jnp.asarray(schedule(state["step"] - stage_start), jnp.float32)
    measured["lr"] = lr
    direction, opt_state = optimizer.update(clipped, state["opt_state"][stage], params)
    params = jax.tree.map(lambda p, d: (p - lr * d).astype(p.dtype), params, direction)
    if updated:
      params = {**params, **updated}
    ema = jax.tree.map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p,
                       state["ema_params"][stage], params)
    new_state = {
        "step": state["step"] + 1, "rng": state["rng"],
        "params": {**state["params"], stage: params},
        "opt_state": {**state["opt_state"], stage: opt_state},
        "ema_params": {**state["ema_params"], stage: ema},
    }
    if return_grads:
      measured["grads"] = grads
      if max_norm:
        measured["clipped_grads"] = clipped
    return new_state, measured

  return train_step


def train_chunk_rows(config, stage: str) -> int:
  """Rows of the training batch per forward/backward pass on CPU (0: the whole batch at once).

  `train.cpu_chunk_size` > 0 runs the batch as passes of that many rows, accumulating the
  gradient, on the CPU backend only (accelerators always take the whole batch): activations that
  stay in cache make the backward's matmuls faster. The gradient is the batch's (up to float32
  rounding) because every loss is a mean over equally weighted rows; a family whose rows interact
  (`families.*.rows_interact`) refuses it.
  """
  chunk = int(config.train.get("cpu_chunk_size", 0) or 0)
  if chunk < 0:
    raise ValueError(f"train.cpu_chunk_size must be >= 0, got {chunk}")
  if not chunk or jax.default_backend() != "cpu":
    return 0
  interact = getattr(families.get(config.family), "rows_interact", None)
  if interact is not None and interact(config, stage):
    raise ValueError(f"{config.family}'s {stage} rows interact within a batch, so it cannot run "
                     "in passes: set train.cpu_chunk_size=0")
  return chunk


def _passes(batch: dict, accum: int, chunk: int) -> int:
  """Passes over a batch: `accum` micro-batches, each cut further into passes of at most `chunk`
  rows (the largest divisor of its rows that fits)."""
  rows = jax.tree.leaves({k: v for k, v in batch.items() if k != "draws"})[0].shape[0]
  if rows % accum:
    raise ValueError(f"the batch of {rows} rows does not split into train.grad_accum_steps="
                     f"{accum} micro-batches")
  per = rows // accum
  if chunk and per > chunk:
    size = max(d for d in range(1, chunk + 1) if per % d == 0)
    return accum * (per // size)
  return accum


def _split_rows(batch: dict, passes: int) -> dict:
  """[rows, ...] leaves -> [passes, rows / passes, ...], pass i taking rows i, i + passes, ...

  Replayed draws are split with their rows; a draw that is not per row (DiffPose's antithetic
  `t_half`) cannot be, and is refused.
  """
  rows = jax.tree.leaves({k: v for k, v in batch.items() if k != "draws"})[0].shape[0]

  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // passes, passes, *x.shape[1:]), 0, 1)

  draws = batch.get("draws") or {}
  for name, value in draws.items():
    if jnp.shape(value)[:1] != (rows,):
      raise ValueError(f"draws[{name!r}] of shape {jnp.shape(value)} is not per row, so a batch "
                       f"that carries it cannot run in {passes} passes: set "
                       "train.grad_accum_steps=1 and train.cpu_chunk_size=0, or give per-row "
                       "draws (e.g. 't' instead of 't_half')")
  out = jax.tree.map(split, {k: v for k, v in batch.items() if k != "draws"})
  if draws:
    out["draws"] = jax.tree.map(split, draws)
  return out


def jit_train_step(config, stage: str, optimizer, loss_fn, mesh, **kwargs):
  """`make_train_step` jitted as train.py runs it: state replicated over `mesh` and donated, the
  batch as it comes (sharded over `data`). `kwargs` go to `make_train_step`."""
  repl = sharding.replicated(mesh)
  return jax.jit(make_train_step(config, stage, optimizer, loss_fn, **kwargs),
                 out_shardings=(repl, repl), donate_argnums=0)


class _PreemptionFlag:
  """Records SIGTERM (how clusters and TPU pods announce preemption) until the loop can save.

  The handler only sets a flag: writing a checkpoint from inside a signal handler could interrupt a
  step or an orbax write half-way. In a multi-process job every process must stop at the same step,
  so the flags of all processes are combined (one tiny all-gather per step).
  """

  def __init__(self):
    self._received = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._received = True

  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self._received
    flags = multihost_utils.process_allgather(np.array(self._received))
    return bool(np.any(flags))

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _global_batch(local_batch: dict, batch_sharding) -> dict:
  return sharding.global_batch(local_batch, batch_sharding)


def _stage_at(plan: list[tuple[str, int]], step: int) -> str:
  """The stage that trains global step `step` (counted from 0; past the end, the last stage)."""
  start = 0
  for stage, n in plan:
    if step < start + n:
      return stage
    start += n
  return plan[-1][0]


def train_and_evaluate(config, workdir) -> dict:
  """Trains `config`'s model into `workdir` (resuming if it holds a checkpoint) and evaluates it."""
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  family = families.get(config.family)
  mesh = make_mesh(config)
  staged = datasets.staged(config)

  def batch_field(stage: str) -> str:
    own = f"{stage}_batch_size"
    return f"train.{own}" if staged and config.train.get(own) else "train.batch_size"

  def batch_size_of(stage: str) -> int:
    return int(config.train[batch_field(stage).split(".", 1)[1]])

  accum = config.train.get("grad_accum_steps", 1)
  for field in sorted({batch_field(stage) for stage in family.STAGES}):
    size = int(config.train[field.split(".", 1)[1]])
    sharding.check_divisible(size, mesh, field)
    sharding.check_divisible(size // max(accum, 1), mesh,
                             f"{field} / train.grad_accum_steps ({accum})")
    if size % accum:
      raise ValueError(f"{field}={size} must be divisible by train.grad_accum_steps={accum}")
  repl = sharding.replicated(mesh)
  data_sharding = sharding.by_batch(mesh)
  local_batch = config.train.batch_size // jax.process_count()

  train_data = datasets.load_split(config, "train")
  test_data = datasets.load_split(config, "test")
  num_examples = datasets.num_train_examples(config, train_data)
  steps_per_epoch = num_examples // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"train.batch_size={config.train.batch_size} exceeds the {num_examples} "
                     "training examples")
  stage_steps = {name: num_examples // batch_size_of(name) for name in family.STAGES}
  for name, n in stage_steps.items():
    if n == 0:
      raise ValueError(f"{batch_field(name)}={batch_size_of(name)} exceeds the {num_examples} "
                       "training examples")
  plan = stage_plan(config, steps_per_epoch, stage_steps if staged else None)
  if not plan:
    raise ValueError("nothing to train: set train.steps/epochs (and/or train.lifter_steps/epochs, "
                     "train.encoder_steps/epochs)")
  if staged:
    datasets.check_stages(config, [name for name, _ in plan])
  total_steps = sum(n for _, n in plan)
  optimizers = {name: make_optimizer(config, name, untrained_params(config, name))
                for name in family.STAGES}

  # The lifter checkpoint is checked before the (slow) parameter init, so a wrong one fails at once.
  lifter = None
  if "lifter" in family.STAGES and config.train.get("lifter_checkpoint"):
    path = config.train.lifter_checkpoint
    loaded, meta, _ = checkpoint.load_model(path)
    if meta.get("family") and meta["family"] not in family.LIFTER_FAMILIES:
      raise ValueError(f"lifter checkpoint {path} holds a {meta['family']!r} model; a lifter "
                       f"comes from one of: {', '.join(family.LIFTER_FAMILIES)}")
    evaluation.check_checkpoint_matches(config, {"lifter": meta.get("lifter")}, path)
    if "lifter" not in loaded:
      raise ValueError(f"lifter checkpoint {path} holds no lifter (parts: {sorted(loaded)})")
    lifter = loaded["lifter"]
  elif "lifter" in family.STAGES and not any(stage == "lifter" for stage, _ in plan):
    raise ValueError(f"{config.family} needs a lifter for evaluation: pass "
                     "--config.train.lifter_checkpoint=DIR (e.g. the converted gcn_xyz_cpn.pth) "
                     "or train one with --config.train.lifter_steps=N")
  # The same for mmDiff's phase-1 encoder, which phase 2 needs on raw radar data.
  encoder = None
  if "encoder" in family.STAGES and config.train.get("encoder_checkpoint"):
    path = config.train.encoder_checkpoint
    loaded, meta, _ = checkpoint.load_model(path)
    if meta.get("family") and meta["family"] != config.family:
      raise ValueError(f"encoder checkpoint {path} holds a {meta['family']!r} model, not "
                       f"{config.family!r}")
    evaluation.check_checkpoint_matches(config, {"phase1": meta.get("phase1")}, path)
    if "encoder" not in loaded:
      raise ValueError(f"encoder checkpoint {path} holds no phase-1 encoder (parts: "
                       f"{sorted(loaded)}); convert one with convert_torch_weights.py --lifter "
                       "{mmBody,MetaFi}_mmDiff_phase1.pth")
    encoder = loaded["encoder"]
  elif ("encoder" in getattr(family, "eval_parts", lambda c: ())(config)
        and not any(stage == "encoder" for stage, _ in plan)):
    raise ValueError(f"{config.family} on raw radar data needs a phase-1 encoder: pass "
                     "--config.train.encoder_checkpoint=DIR (a converted "
                     "{mmBody,MetaFi}_mmDiff_phase1.pth) or train one with "
                     "--config.train.encoder_epochs=N (or encoder_steps)")
  params = family.init_params(config, jax.random.key(config.seed))
  if config.train.get("init_checkpoint"):
    # Start from a converted or trained checkpoint's parts (FinePOSE/DSGDiffu: also its text
    # cache, which only a conversion with CLIP can make).
    path = config.train.init_checkpoint
    loaded, meta, _ = checkpoint.load_model(path)
    evaluation.check_checkpoint_matches(config, meta, path)
    for part, value in loaded.items():
      if part not in params:
        raise ValueError(f"init checkpoint {path} has a part {part!r} that {config.family} "
                         f"does not use (it uses {sorted(params)})")
      params[part] = jax.tree.map(jnp.asarray, value)
  if lifter is not None:
    params["lifter"] = jax.tree.map(jnp.asarray, lifter)
  if encoder is not None:
    params["encoder"] = jax.tree.map(jnp.asarray, encoder)
  optimizers = {name: tx for name, tx in optimizers.items() if name in params}
  state = jax.device_put(init_state(config, params, optimizers), repl)

  ckpt = checkpoint.manager(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  writer = summary.MetricWriter(workdir, enabled=is_main)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  if not staged:
    dataset = datasets.train_dataset(config, train_data, batch_size=local_batch,
                                     shard_index=jax.process_index(),
                                     shard_count=jax.process_count())
    data_iter = iter(dataset)
    step0, restored = checkpoint.restore_newest_intact(
        ckpt, lambda s: ckpt.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(data_iter))), is_main=is_main)
  else:
    # One stream per stage, started with the stage (the denoiser's needs the trained encoder):
    # the state first, then the data iterator of the stage the step is in.
    step0, restored = checkpoint.restore_newest_intact(
        ckpt, lambda s: ckpt.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract))), is_main=is_main)
  results_path = workdir / "eval_results.json"
  if step0 is not None and step0 >= total_steps:
    # A finished run run again: nothing to train; its results stand unless they were never
    # written (final evaluation off, or the process ended during it).
    done = results_path.is_file() or not config.train.get("final_eval", True)
    if is_main:
      where = f"; results in {results_path}" if results_path.is_file() else ""
      print(f"{workdir}: training is complete (step {step0} of {total_steps}){where}"
            + ("" if done else "; running its final evaluation"), flush=True)
    if done:
      ckpt.close()
      writer.close()
      if results_path.is_file():
        return json.loads(results_path.read_text())
      return {"step": step0}
  if step0 is not None:
    state = restored["state"]
    writer.resume_from(step0)
    if is_main and step0 < total_steps:
      print(f"resumed from {workdir / 'checkpoints'} step {step0}", flush=True)
  else:
    writer.write_config(json.loads(config.to_json_best_effort()))

  raw_test_data = test_data

  def start_stage(stage: str):
    """(training iterator, test data) of a stage of a staged layout."""
    train_stage, test_stage = datasets.stage_data(config, stage, state["params"], train_data,
                                                  raw_test_data, progress=is_main)
    stream = datasets.train_dataset(
        config, train_stage, batch_size=batch_size_of(stage) // jax.process_count(),
        shard_index=jax.process_index(), shard_count=jax.process_count(), stage=stage)
    return iter(stream), test_stage

  current_stage = None
  if staged:
    current_stage = _stage_at(plan, int(state["step"]))
    data_iter, test_data = start_stage(current_stage)
    # A checkpoint written as the previous stage ended holds that stage's iterator: start afresh.
    if step0 and _stage_at(plan, step0 - 1) == current_stage:
      ckpt.restore(step0, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data_iter)))

  text_conditioned = getattr(family, "TEXT_CONDITIONED", False)
  if text_conditioned:
    # Prompt families: the (frozen) per-action text cache is bound into the loss, and each
    # clip's cache row comes from the action of the video it was cut from.
    losses = family.losses(state["params"]["text_cache"])
    action_of_sequence = family.action_indices(config, [s.action for s in train_data])
  else:
    losses = family.LOSSES
  stage_starts = dict(zip((name for name, _ in plan),
                          np.cumsum([0] + [n for _, n in plan[:-1]]).tolist()))
  steps = {name: jit_train_step(config, name, optimizers[name], losses[name], mesh,
                                steps_per_epoch=stage_steps[name] if staged else steps_per_epoch,
                                stage_start=stage_starts[name])
           for name, _ in plan}

  def save(step):
    meta = {**family.checkpoint_meta(config), "source": "train.py"}
    ckpt.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter),
        meta=ocp.args.JsonSave(meta)), force=True)

  # One compilation for every evaluation of the run, with the family's in-training settings.
  eval_config = evaluation.training_eval_config(config)
  predict = evaluation.make_predict_fn(eval_config)

  def quick_eval(step):
    table = evaluation.evaluate(eval_config, state["params"], test_data, predict_fn=predict,
                                max_batches=config.train.eval_max_batches, progress=False)
    p1, p2 = table.averages()
    writer.write_scalars(step, {"eval/mpjpe_mm": p1, "eval/p_mpjpe_mm": p2})
    if is_main:
      print(f"step {step}: eval MPJPE {p1:.2f} mm, P-MPJPE {p2:.2f} mm", flush=True)

  if config.train.eval_at_start and int(state["step"]) == 0:
    quick_eval(0)
  eval_every = config.train.eval_every or steps_per_epoch
  ckpt_every = config.train.checkpoint_every or steps_per_epoch
  step = int(state["step"])
  bar = summary.ProgressBar(total_steps, "train", enabled=is_main, initial=step)
  t_last, step_last = time.time(), step
  preemption = _PreemptionFlag()
  try:
    while step < total_steps:
      if preemption.requested():
        if step not in ckpt.all_steps():
          save(step)
        ckpt.wait_until_finished()
        ckpt.close()
        bar.close()
        writer.close()
        if is_main:
          print(f"preempted (SIGTERM): saved {workdir / 'checkpoints'} step {step}; "
                "run the same command to resume", flush=True)
        return {"step": step, "preempted": True}
      stage_start = 0
      for stage, n in plan:
        if step < stage_start + n:
          break
        stage_start += n
      if staged and stage != current_stage:
        current_stage = stage
        data_iter, test_data = start_stage(stage)
      local = next(data_iter)
      if text_conditioned:
        local = {**local, "action_index": action_of_sequence[np.asarray(local["sequence"])]}
      batch = _global_batch(local, data_sharding)
      state, measured = steps[stage](state, batch)
      step += 1
      bar.update(1)
      if step % config.train.log_every == 0 or step == total_steps:
        measured = jax.device_get(measured)
        if not np.isfinite(measured["loss"]):
          raise FloatingPointError(f"loss is {measured['loss']} at step {step} ({stage} stage)")
        elapsed = time.time() - t_last
        rate = (step - step_last) * batch_size_of(stage) / max(elapsed, 1e-9)
        scalars = {f"train/{stage}_loss": float(measured["loss"]),
                   f"train/{stage}_grad_norm": float(measured["grad_norm"]),
                   "train/examples_per_s": rate,
                   "train/step_time_s": elapsed / max(step - step_last, 1)}
        writer.write_scalars(step, scalars)
        if is_main:
          loss = scalars[f"train/{stage}_loss"]
          bar.write(f"step {step}/{total_steps} [{stage}] loss {loss:.5f} ({rate:.0f} examples/s, "
                    f"{scalars['train/step_time_s'] * 1e3:.1f} ms/step)")
        t_last, step_last = time.time(), step
      if step % ckpt_every == 0 or step == total_steps:
        save(step)
      # The lifter (if any) is trained or loaded once the denoiser stage runs: evaluating is useful.
      if stage == "denoiser" and step % eval_every == 0 and step != total_steps:
        quick_eval(step)
  finally:
    preemption.restore()
  bar.close()
  ckpt.wait_until_finished()
  ckpt.close()

  result = {"step": total_steps}
  if config.train.get("final_eval", True):
    table = evaluation.evaluate(config, state["params"], test_data, progress=is_main,
                                predict_fn=predict if eval_config is config else None)
    p1, p2 = table.averages()
    writer.write_scalars(total_steps, {"eval/mpjpe_mm": p1, "eval/p_mpjpe_mm": p2})
    result["results"] = table.to_dict()
    if is_main:
      print(table.format_table(), flush=True)
      results_path.write_text(json.dumps(result, indent=2))
  writer.close()
  return result
