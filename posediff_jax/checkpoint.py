"""Orbax checkpoints: converted weights and training state share one layout.

A checkpoint directory is an orbax `CheckpointManager` directory whose steps hold up to three items:

- `meta`  (JSON): the family, the model sizes, where the weights came from;
- `state` (pytree): `{'params': {'lifter': ..., 'denoiser': ...}}`, plus `opt_state`, `ema_params`,
  `step` and `rng` when written by training;
- `data`  (grain iterator state): training only.

`convert_torch_weights.py` writes step 0 of such a directory; `train.py` writes
`WORKDIR/checkpoints`. `evaluate.py` reads either.
"""

import logging
import pathlib
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

# Orbax logs a warning for every item a partial restore leaves out; those are expected here.
logging.getLogger("absl").addFilter(lambda r: "could not be restored" not in r.getMessage())


def manager(directory, *, keep: int | None = None, create: bool = True) -> ocp.CheckpointManager:
  """A synchronous `CheckpointManager` over `directory` keeping the newest `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def resolve(directory) -> pathlib.Path:
  """The orbax directory behind `directory`: itself, or a training workdir's `checkpoints`."""
  path = pathlib.Path(directory)
  if not path.is_dir():
    raise FileNotFoundError(f"checkpoint directory not found: {path}")
  if (path / "checkpoints").is_dir():
    return path / "checkpoints"
  return path


def save_model(directory, params: dict[str, Any], meta: dict[str, Any]) -> pathlib.Path:
  """Writes converted weights as step 0 of a new checkpoint directory."""
  path = pathlib.Path(directory)
  if path.exists() and any(path.iterdir()):
    raise FileExistsError(f"output directory {path} exists and is not empty; choose a new one")
  mngr = manager(path)
  mngr.save(0, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"params": params}), meta=ocp.args.JsonSave(meta)))
  mngr.wait_until_finished()
  mngr.close()
  return path


def load_model(directory, *, use_ema: bool = False) -> tuple[dict[str, Any], dict[str, Any], int]:
  """Reads the newest complete step of a converted or training checkpoint.

  Args:
    directory: a directory written by `convert_torch_weights.py`, or a `train.py` workdir.
    use_ema: take the EMA weights of a training checkpoint instead of the live ones.

  Returns:
    (params {'lifter': ..., 'denoiser': ...} as numpy pytrees, meta dict, step).
  """
  path = resolve(directory)
  mngr = manager(path, create=False)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"{path} holds no complete checkpoint step")
  # A checkpoint written over other devices (8 GPUs, a pod) is read onto this process's first one.
  fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(fallback_sharding=fallback), meta=ocp.args.JsonRestore()))
  mngr.close()
  state, meta = restored["state"], restored["meta"] or {}
  key = "ema_params" if use_ema else "params"
  if key not in state:
    raise KeyError(f"{path} step {step} has no {key!r} (items: {sorted(state)})")
  return state[key], meta, step


def restore_newest_intact(mngr: ocp.CheckpointManager, restore: Callable[[int], Any],
                          *, is_main: bool = True) -> tuple[int | None, Any]:
  """Restores the newest step that reads back whole, setting damaged newer steps aside.

  Orbax lists only committed steps, but a committed step can still be damaged (a disk filled up, a
  file truncated by a copy). Such a step is renamed to `damaged_<step>` (so a resumed run can write
  that step again) and the previous one is tried.

  Args:
    mngr: the manager over the checkpoint directory.
    restore: `restore(step)` returns the restored items or raises if the step is unreadable.
    is_main: whether this process renames damaged steps (process 0 of a multi-process job).

  Returns:
    (step, restored items), or (None, None) when the directory holds no readable step.
  """
  damaged = False
  try:
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        return step, restore(step)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the previous one",
                        step, mngr.directory, type(e).__name__, str(e)[:300])
        path = pathlib.Path(mngr.directory) / str(step)
        if is_main and path.exists():
          target = path.with_name(f"damaged_{step}")
          suffix = 1
          while target.exists():
            target, suffix = path.with_name(f"damaged_{step}.{suffix}"), suffix + 1
          path.rename(target)
        damaged = True
    return None, None
  finally:
    if damaged:
      mngr.reload()
