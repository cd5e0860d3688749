""".npy and .npz files whose members may be pickled objects (the VideoPose3D / DiffPose data
files), read without running code: every `.npy` header is checked against the data present and
pickled members go through the restricted unpickler.
"""

import ast
import math
import os
import pathlib
import zipfile
from typing import Any

import numpy as np

from posediff_jax.safe_load import reading
from posediff_jax.safe_load import unpickler

_MAX_NPY_HEADER = 10000  # numpy's own default limit on .npy header sizes


def load_pickled_npz(path, required_keys=()) -> dict[str, Any]:
  """Reads an `.npz` whose members may be pickled objects, without running code from it.

  Args:
    path: the `.npz` file.
    required_keys: member names that must be present (without `.npy`).

  Returns:
    {member name: value}; a 0-d object array (how `np.savez` stores a dict) comes back as the
    object.

  Raises:
    FileNotFoundError, KeyError (a required key is missing, naming the file and the keys present),
    UnsafePickleError, ReadError (truncated, corrupt or malformed file).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data file not found: {path}")
  out = {}
  with open(path, "rb") as file:
    try:
      archive = zipfile.ZipFile(file)
      infos = archive.infolist()
    except reading.ZIP_ERRORS as e:
      raise reading.ReadError(f"{path}: not a valid .npz file (truncated or corrupt: "
                              f"{type(e).__name__}: {e})") from e
    with archive:
      for info in infos:
        member = info.filename
        key = member[:-4] if member.endswith(".npy") else member
        where = f"{path}[{key}]"
        try:
          fp = archive.open(info)
        except reading.ZIP_ERRORS as e:
          raise reading.ReadError(
              f"{where}: cannot open the member ({type(e).__name__}: {e})") from e
        with fp:
          out[key] = _read_npy(fp, where, info.file_size)
  missing = [k for k in required_keys if k not in out]
  if missing:
    raise KeyError(f"{path}: missing key(s) {missing}; the file has {sorted(out)}")
  return out


def load_pickled_npy(path) -> Any:
  """Reads a `.npy` that may hold a pickled object (e.g. `np.save` of a dict), without running code.

  Args:
    path: the `.npy` file.

  Returns:
    The array; a 0-d object array (how `np.save` stores a dict) comes back as the object.

  Raises:
    FileNotFoundError, UnsafePickleError, ReadError (not a `.npy` file, truncated or corrupt).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data file not found: {path}")
  with open(path, "rb") as fp:
    return _read_npy(fp, str(path), os.fstat(fp.fileno()).st_size)


def _read_npy_header(fp, source: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
  """(shape, fortran_order, dtype, header bytes) of an `.npy` stream, all checked."""
  magic = bytes(reading.read_exactly(fp, 8, source))
  if magic[:6] != b"\x93NUMPY":
    raise reading.ReadError(
        f"{source}: not a .npy file (magic {reading.short(magic[:6])}, expected "
        "b'\\x93NUMPY')")
  version = (magic[6], magic[7])
  if version not in ((1, 0), (2, 0), (3, 0)):
    raise reading.ReadError(
        f"{source}: .npy format version {version[0]}.{version[1]} is not 1.0, 2.0 "
        "or 3.0")
  width = 2 if version == (1, 0) else 4
  length = int.from_bytes(reading.read_exactly(fp, width, source), "little")
  if length > _MAX_NPY_HEADER:
    raise reading.ReadError(f"{source}: .npy header of {length} bytes, more than {_MAX_NPY_HEADER}")
  raw = bytes(reading.read_exactly(fp, length, source, "header bytes"))
  try:
    header = ast.literal_eval(raw.decode("utf-8" if version == (3, 0) else "latin1"))
  except (UnicodeDecodeError, ValueError, TypeError, SyntaxError, MemoryError,
          RecursionError) as e:
    raise reading.ReadError(f"{source}: unreadable .npy header ({type(e).__name__}: {e})") from e
  if not (isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}):
    raise reading.ReadError(
        f"{source}: .npy header {reading.short(header)} does not have exactly the keys "
        "descr, fortran_order, shape")
  shape, fortran = header["shape"], header["fortran_order"]
  if not (isinstance(shape, tuple) and len(shape) <= reading.MAX_DIMS
          and all(reading.is_index(n) for n in shape)):
    raise reading.ReadError(
        f"{source}: .npy shape {reading.short(shape)} is not a tuple of at most "
        f"{reading.MAX_DIMS} non-negative integers")
  if not isinstance(fortran, bool):
    raise reading.ReadError(f"{source}: .npy fortran_order {reading.short(fortran)} is not a bool")
  try:
    dtype = np.lib.format.descr_to_dtype(header["descr"])
  except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as e:
    raise reading.ReadError(f"{source}: .npy dtype {reading.short(header['descr'])} is not valid "
                            f"({type(e).__name__}: {e})") from e
  if dtype.itemsize == 0 or dtype.subdtype is not None:
    raise reading.ReadError(f"{source}: .npy dtype {dtype} is not an array element type")
  return shape, fortran, dtype, 8 + width + length


def _read_npy(fp, source: str, size: int) -> Any:
  """One `.npy` stream of `size` bytes (header included): its array, or the object it pickles."""
  shape, fortran, dtype, header_bytes = _read_npy_header(fp, source)
  available = size - header_bytes
  if not dtype.hasobject:
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes != available:
      raise reading.ReadError(
          f"{source}: header says shape {shape} x {dtype} = {nbytes} bytes, the file "
          f"holds {available} bytes of data")
    # One byte more than needed: reaching the end makes zipfile check the member's CRC.
    data = reading.read_stream(fp, nbytes + 1, source)
    if len(data) != nbytes:
      raise reading.ReadError(f"{source}: holds {len(data)} bytes of array data, expected {nbytes}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    reading.check_bools(array, source)
    return array  # its own buffer, writable, nothing else refers to it
  data = bytes(reading.read_stream(fp, max(available, 0) + 1, source))
  if len(data) != available:
    raise reading.ReadError(
        f"{source}: holds {len(data)} bytes of pickled data, expected {available}")
  value = unpickler.unpickle(data, source)
  if not (isinstance(value, np.ndarray) and value.dtype == dtype and value.shape == shape):
    raise reading.ReadError(f"{source}: header declares shape {shape} x {dtype}, the pickle holds "
                            f"{reading.describe(value)}")
  if value.shape == ():
    return value.item()
  return value
