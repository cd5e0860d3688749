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
import sys
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
  if path.is_file():
    raise FileNotFoundError(f"checkpoint {path} is a file, not a checkpoint directory (a torch "
                            "file must be converted first: convert_torch_weights.py)")
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


def _quiet_aborted_restore() -> None:
  """Drops the "Event loop is closed" reports an aborted orbax restore leaves behind.

  When one file of a step is unreadable, orbax gives up while TensorStore is still reading the
  others; as those reads finish they post to the already closed event loop, and Python prints each
  failure as an unraisable RuntimeError with its traceback (dozens of them, arriving after the
  restore has raised, so they cannot be waited for). They say nothing about the damage, which the
  restore's own exception names, so from the first failed restore on the process drops exactly
  these reports; every other unraisable error still goes to the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "posediff_quiet_restore", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    previous(unraisable)

  hook.posediff_quiet_restore = True
  sys.unraisablehook = hook


def _reason(error: Exception) -> str:
  """The first line of an exception (TensorStore's run over many lines), at most 200 characters."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  text = text if len(text) <= 200 else text[:197] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_meta(directory) -> tuple[dict[str, Any], int]:
  """The `meta` item (family, model sizes) of the newest complete step, without the arrays.

  For checks before the real load: reading a few hundred bytes of JSON, not the weights.

  Raises:
    FileNotFoundError: no such directory, or no complete step in it.
    ValueError: the step's meta cannot be read back.
  """
  path = resolve(directory)
  mngr = manager(path, create=False)
  try:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"{path} holds no complete checkpoint step")
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"checkpoint {path} step {step} is unreadable, probably damaged "
                       f"(truncated or missing files): {_reason(e)}") from e
  finally:
    mngr.close()
  return restored["meta"] or {}, step


def load_model(directory, *, use_ema: bool = False) -> tuple[dict[str, Any], dict[str, Any], int]:
  """Reads the newest complete step of a converted or training checkpoint.

  Unlike a resumed training run, which sets a damaged newest step aside and falls back
  (`restore_newest_intact`), this never changes the directory: an unreadable step is an error
  that says which step it is and what to do.

  Args:
    directory: a directory written by `convert_torch_weights.py`, or a `train.py` workdir.
    use_ema: take the EMA weights of a training checkpoint instead of the live ones.

  Returns:
    (params {'lifter': ..., 'denoiser': ...} as numpy pytrees, meta dict, step).

  Raises:
    FileNotFoundError: no such directory, or no complete step in it.
    ValueError: the newest step cannot be read back (truncated or missing files).
    KeyError: the step holds no `params` (or `ema_params`).
  """
  path = resolve(directory)
  mngr = manager(path, create=False)
  try:
    steps = sorted(mngr.all_steps())
    if not steps:
      raise FileNotFoundError(f"{path} holds no complete checkpoint step")
    step = steps[-1]
    # A checkpoint written over other devices (8 GPUs, a pod) is read onto this process's first
    # one.
    fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(fallback_sharding=fallback),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for a damaged file; all mean the same to the user.
      _quiet_aborted_restore()
      step_dir = path / str(step)
      if len(steps) > 1:
        remedy = (f"to use the previous step {steps[-2]}, move {step_dir} out of the way (as "
                  f"train.py does when it resumes: it renames it damaged_{step})")
      else:
        remedy = ("write the checkpoint again (convert_torch_weights.py, or train.py) or use "
                  "another one")
      raise ValueError(f"checkpoint {path} step {step} is unreadable, probably damaged "
                       f"(truncated or missing files): {_reason(e)}; {remedy}") from e
  finally:
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
        _quiet_aborted_restore()
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
