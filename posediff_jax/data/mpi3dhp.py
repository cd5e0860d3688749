"""MPI-INF-3DHP: P-STMO-style `_ori` files, read as whole videos for the clip families.

- `data_train_3dhp_ori.npz` (`load_train`): `data = {"S1 Seq1": [{camera: {'data_2d' [N, 17,
  2] px, 'data_3d' [N, 17, 3] mm}}, fps], ...}`.
- `data_test_3dhp_ori.npz` (`load_test`): `data = {"TS1".."TS6": {'data_2d', 'data_3d',
  'valid' [N] of 0/1}}`.

Layouts in spec §7.4. The 3D is camera-frame millimetres in the files and metres here, relative
to the pelvis (joint 14); the 2D is normalised with the image size upstream uses.
"""

import numpy as np

from posediff_jax import cameras
from posediff_jax import skeleton
from posediff_jax.data import npz
from posediff_jax.data import videos

ROOT_JOINT = skeleton.MPI3DHP_ROOT_JOINT
NUM_JOINTS = 17
# Upstream main_3dhp.py normalises all training 2D with 2048 x 2048, whatever the camera.
TRAIN_IMAGE_SIZE = (2048, 2048)
_MM_PER_METRE = np.float32(1000)


def _load_data(path) -> dict:
  value, _ = npz.load_member(path, "data")
  if not isinstance(value, dict) or not value:
    raise ValueError(f"{path}: 'data' must be a non-empty pickled dict, found "
                     f"{type(value).__name__} {value if isinstance(value, dict) else ''}")
  return value


def _array(anim: dict, key: str, channels: int, where: str) -> np.ndarray:
  if key not in anim:
    raise ValueError(f"{where}: no {key!r} entry; found {sorted(anim)}")
  array = npz.float_array(anim[key], f"{where}[{key!r}]")
  if array.ndim != 3 or array.shape[1:] != (NUM_JOINTS, channels) or len(array) < 1:
    raise ValueError(f"{where}[{key!r}]: expected [N >= 1, {NUM_JOINTS}, {channels}] (the "
                     f"17 relevant 3DHP joints), found shape {array.shape}")
  npz.check_finite(array, f"{where}[{key!r}]")
  return array


def _sequence(anim, where: str, *, subject: str, action: str, camera: str,
                   image_size: tuple[int, int], with_valid: bool) -> videos.VideoSequence:
  """One 3DHP video from `{'data_2d': [N,17,2] px, 'data_3d': [N,17,3] mm[, 'valid': [N]]}`."""
  if not isinstance(anim, dict):
    raise ValueError(f"{where}: expected a dict with 'data_2d' and 'data_3d', found "
                     f"{type(anim).__name__}")
  pixels = _array(anim, "data_2d", 2, where)
  mm = _array(anim, "data_3d", 3, where)
  if len(pixels) != len(mm):
    raise ValueError(f"{where}: data_2d has {len(pixels)} frames but data_3d has {len(mm)}")
  if with_valid:
    if "valid" not in anim:
      raise ValueError(f"{where}: no 'valid' entry; found {sorted(anim)}")
    valid = np.asarray(anim["valid"])
    if valid.shape != (len(mm),) or not np.isin(valid, (0, 1)).all():
      raise ValueError(f"{where}['valid']: expected [{len(mm)}] of 0/1 (or bool), found shape "
                       f"{valid.shape} with values {np.unique(valid)[:5].tolist()}")
    valid = valid.astype(bool)
  else:
    valid = np.ones(len(mm), bool)
  root = mm[:, ROOT_JOINT:ROOT_JOINT + 1]
  # Upstream subtracts the root in the file's mm; its model divides by 1000 in float32.
  relative = (mm - root).astype(np.float32) / _MM_PER_METRE
  w, h = image_size
  return videos.VideoSequence(
      input_2d=cameras.normalize_screen_coordinates(pixels, w, h).astype(np.float32, copy=False),
      target_3d=relative, trajectory=root.astype(np.float32) / _MM_PER_METRE,
      intrinsic=np.zeros(0, np.float32), subject=subject, action=action, camera=camera,
      image_size=(w, h), valid=valid, root_joint=ROOT_JOINT)


def load_train(path) -> list[videos.VideoSequence]:
  """Reads `data_train_3dhp_ori.npz`: `{"S1 Seq1": [{camera: {data_2d, data_3d}}, fps], ...}`.

  Args:
    path: the `.npz` file.

  Returns:
    One `VideoSequence` per (sequence, camera) in file order; subject 'S1', action 'Seq1',
    camera the file's camera name. 2D normalised with 2048 x 2048 as upstream does for every
    training camera; 3D root-relative at the pelvis (joint 14), in metres.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a key that is not 'S<i> Seq<j>', an entry that is not `[dict, fps]`, or an array
      of the wrong shape; the message names the file, sequence and camera.
  """
  data = _load_data(path)
  sequences = []
  for key, entry in data.items():
    where = f"{path}: data[{key!r}]"
    parts = str(key).split(" ")
    if len(parts) != 2:
      raise ValueError(f"{where}: expected a key 'S<subject> Seq<sequence>', e.g. 'S1 Seq1'")
    if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], dict):
      raise ValueError(f"{where}: expected [{{camera: {{'data_2d', 'data_3d'}}}}, fps], found "
                       f"{type(entry).__name__}")
    for camera, anim in entry[0].items():
      sequences.append(_sequence(
          anim, f"{where}[0][{camera!r}]", subject=parts[0], action=parts[1], camera=str(camera),
          image_size=TRAIN_IMAGE_SIZE, with_valid=False))
  return sequences


def load_test(path) -> list[videos.VideoSequence]:
  """Reads `data_test_3dhp_ori.npz`: `{"TS1": {data_2d, data_3d, valid}, ..., "TS6": ...}`.

  Args:
    path: the `.npz` file.

  Returns:
    One `VideoSequence` per test sequence in file order; subject, action and camera are all the
    sequence name. 2D normalised with 2048 x 2048 (TS1-4) or 1920 x 1080 (TS5/6); `valid` from
    the file.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unknown sequence name, a missing entry, a wrong shape, or `valid` not 0/1.
  """
  data = _load_data(path)
  sequences = []
  for key, anim in data.items():
    where = f"{path}: data[{key!r}]"
    try:
      image_size = cameras.mpi3dhp_test_camera(str(key)).image_size
    except ValueError as error:
      raise ValueError(f"{where}: {error}") from None
    sequences.append(_sequence(anim, where, subject=str(key), action=str(key),
                                    camera=str(key), image_size=image_size, with_valid=True))
  return sequences
