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
  """The stage's learning rate as a function of its optimizer step count.

  With `train.lr_decay` (D3DP family): lr0 · decay^epoch, multiplied in after every epoch.
  Otherwise DiffPose's staircase: lr0 · gamma^((epoch − 1) // decay) from epoch 1 on (spec §A.8).
  mmDiff's encoder stage keeps `train.encoder_lr` throughout (upstream `phase1_train`).
  """
  t = config.train
  if stage == "encoder":
    return lambda count: jnp.full((), t.encoder_lr, jnp.float32)
  lr0 = t.lifter_lr if stage == "lifter" else t.lr
  if t.get("lr_decay"):
    return lambda count: lr0 * t.lr_decay ** (count // steps_per_epoch)

  def schedule(count):
    epoch = count // steps_per_epoch
    # Upstream decays after finishing epoch e with e % decay == 0 (so epochs 0..60 keep lr0).
    return lr0 * t.lr_gamma ** (jnp.maximum(epoch - 1, 0) // t.lr_decay_epochs)

  return schedule


def make_optimizer(config, stage: str, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam (AdamW when `train.weight_decay` > 0), after global-norm clipping if `train.grad_clip`.

  The encoder stage uses torch's Adam `weight_decay` (`train.encoder_weight_decay`): the decay is
  added to the clipped gradient before Adam, not decoupled.
  """
  t = config.train
  lr = learning_rate(config, stage, steps_per_epoch)
  weight_decay = t.get("weight_decay", 0.0)
  if stage == "encoder":
    adam = optax.adam(lr, b1=0.9, b2=0.999, eps=t.adam_eps)
    if t.get("encoder_weight_decay", 0.0):
      adam = optax.chain(optax.add_decayed_weights(t.encoder_weight_decay), adam)
  elif weight_decay:
    adam = optax.adamw(lr, b1=0.9, b2=0.999, eps=t.adam_eps, weight_decay=weight_decay)
  else:
    adam = optax.adam(lr, b1=0.9, b2=0.999, eps=t.adam_eps)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), adam) if t.grad_clip else adam


def init_state(config, params, optimizers) -> dict:
  return {
      "step": jnp.zeros((), jnp.int32),
      "rng": jax.random.key_data(jax.random.key(config.seed)),
      "params": params,
      "opt_state": {name: tx.init(params[name]) for name, tx in optimizers.items()},
      # A copy: the jitted step donates the state, and one buffer cannot be donated twice.
      "ema_params": jax.tree.map(lambda x: jnp.array(x, copy=True), params),
  }


def make_train_step(config, stage: str, optimizer, loss_fn):
  """A pure `(state, batch) -> (state, measurements)` that updates only `stage`'s parameters.

  A loss may return `(loss, collections)`: variables it updates itself rather than by gradient
  (batch-norm running statistics, `{'batch_stats': ...}`), written over the stage's parameters
  after the optimizer step.
  """
  ema_rate = config.train.ema_rate
  accum = config.train.get("grad_accum_steps", 1)
  compute_dtype = jnp.dtype(config.train.get("compute_dtype", "float32"))
  if accum < 1:
    raise ValueError(f"train.grad_accum_steps must be >= 1, got {accum}")

  def loss_in_compute_dtype(params, batch, key):
    originals = params
    if compute_dtype != jnp.float32:
      # Parameters stay float32 in the state (and in the optimizer); only the forward pass is cast,
      # so gradients come back float32 through the cast.
      cast = lambda x: x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
      params, batch = jax.tree.map(cast, params), jax.tree.map(cast, batch)
    out = loss_fn(config, params, batch, key)
    loss, updated = out if isinstance(out, tuple) else (out, {})
    updated = {name: jax.tree.map(lambda u, p: u.astype(p.dtype), tree, originals[name])
               for name, tree in updated.items()}
    return loss.astype(jnp.float32), updated

  grad_fn = jax.value_and_grad(loss_in_compute_dtype, has_aux=True)

  def loss_and_grads(params, batch, key):
    if accum == 1:
      (loss, updated), grads = grad_fn(params, batch, key)
      return loss, grads, updated
    # Micro-batch i holds rows i, i + k, i + 2k, ... so each one stays spread over every device.
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

    def body(carry, inputs):
      i, micro_batch = inputs
      (loss, updated), grads = grad_fn(params, micro_batch, jax.random.fold_in(key, i))
      if updated:
        raise ValueError(f"train.grad_accum_steps > 1 is not supported for the {stage} stage, "
                         "whose loss updates batch statistics")
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
    loss, grads = jax.tree.map(lambda x: x / accum, total)
    return loss, grads, {}

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    params = state["params"][stage]
    loss, grads, updated = loss_and_grads(params, batch, key)
    updates, opt_state = optimizer.update(grads, state["opt_state"][stage], params)
    params = optax.apply_updates(params, updates)
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
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step




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
  optimizers = {name: make_optimizer(config, name, stage_steps[name] if staged else steps_per_epoch)
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
  if step0 is not None:
    state = restored["state"]
    if is_main:
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
  steps = {name: jax.jit(make_train_step(config, name, optimizers[name], losses[name]),
                         out_shardings=(repl, repl), donate_argnums=0)
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
      (workdir / "eval_results.json").write_text(json.dumps(result, indent=2))
  writer.close()
  return result
