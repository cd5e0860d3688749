"""Orbax checkpoints: converted weights and training state share one layout.

A checkpoint directory is an orbax `CheckpointManager` directory whose steps hold up to three items:

- `meta`  (JSON): the family, the model sizes, where the weights came from;
- `state` (pytree): `{'params': {'lifter': ..., 'denoiser': ...}}`, plus `opt_state`, `ema_params`, `step`
  and `rng` when written by training;
- `data`  (grain iterator state): training only.

`convert_torch_weights.py` writes step 0 of such a directory; `train.py` writes `WORKDIR/checkpoints`.
`evaluate.py` reads either.
"""

import logging
import pathlib
from typing import Any

import orbax.checkpoint as ocp

# Orbax logs a warning for every item a partial restore leaves out; those are expected here.
logging.getLogger("absl").addFilter(lambda r: "could not be restored" not in r.getMessage())


def manager(directory, *, keep: int | None = None, create: bool = True) -> ocp.CheckpointManager:
  """A synchronous `CheckpointManager` over `directory` keeping the newest `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def resolve(directory) -> pathlib.Path:
  """The orbax directory behind `directory`: itself, or `directory/checkpoints` for a training workdir."""
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
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  mngr.close()
  state, meta = restored["state"], restored["meta"] or {}
  key = "ema_params" if use_ema else "params"
  if key not in state:
    raise KeyError(f"{path} step {step} has no {key!r} (items: {sorted(state)})")
  return state[key], meta, step
