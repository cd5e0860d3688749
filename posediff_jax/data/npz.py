"""The pickled `.npz` files of VideoPose3D, DiffPose and P-STMO: the checks every reader of them
makes, and `save_npz`, which writes them (the synthetic sets, damaged files in tests).

Their members are pickled dicts, so they are read with the restricted unpickler of
`posediff_jax.safe_load`, never with `np.load(allow_pickle=True)`. The checks raise a ValueError
that names the file and the entry (subject, action, camera), so a broken file is found at once.
"""

import os
import pathlib
import zipfile
from typing import Any

import numpy as np

from posediff_jax import safe_load


def load_member(path, key: str) -> tuple[Any, dict[str, Any]]:
  """(the member `key` of the `.npz` file, all its members); a clear error when it is absent."""
  members = safe_load.load_pickled_npz(path)
  if key not in members:
    raise ValueError(f"{path}: no {key!r} entry; the file has {sorted(members)} "
                     f"(expected a VideoPose3D/DiffPose-style file with {key!r})")
  return members[key], members


def check_nested_dict(value, path, key: str) -> None:
  """Raises unless `value` is `{subject: {action: ...}}`."""
  if not isinstance(value, dict):
    raise ValueError(f"{path}: {key!r} must be a pickled dict {{subject: {{action: ...}}}}, "
                     f"found {type(value).__name__}")
  for subject, actions in value.items():
    if not isinstance(actions, dict):
      raise ValueError(f"{path}: {key}[{subject!r}] must be a dict {{action: ...}}, "
                       f"found {type(actions).__name__}")


def float_array(array, where: str) -> np.ndarray:
  """A numeric array as floats (integers become float32; float arrays keep their dtype)."""
  if not isinstance(array, np.ndarray) or not (np.issubdtype(array.dtype, np.floating)
                                               or np.issubdtype(array.dtype, np.integer)):
    raise ValueError(f"{where}: expected a numeric array, found {type(array).__name__} "
                     f"{getattr(array, 'dtype', '')}")
  return array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float32)


def check_finite(array: np.ndarray, where: str) -> None:
  """Raises on NaN or infinity, naming how many and where the first one is."""
  bad = ~np.isfinite(array)
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{where}: {int(bad.sum())} non-finite value(s) (NaN/inf), the first at index "
                     f"{first} of shape {array.shape}")


def save_npz(path: pathlib.Path, **members) -> None:
  """`np.savez_compressed` at the fastest deflate level (numpy's default level takes 4x longer).

  The file is written under a temporary name and renamed, so an interrupted run (or several
  processes generating at once) never leaves a truncated file under the final name.
  """
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
    for key, value in members.items():
      with archive.open(f"{key}.npy", "w", force_zip64=True) as fp:
        # A dict becomes a 0-d object array holding it, as np.savez stores it.
        array = np.empty((), dtype=object) if isinstance(value, dict) else np.asanyarray(value)
        if isinstance(value, dict):
          array[()] = value
        np.lib.format.write_array(fp, array, allow_pickle=True)
  os.replace(tmp, path)
