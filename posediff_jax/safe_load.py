"""Reading pickled files without running code from them.

PyTorch checkpoints (`.pth` / `.bin`, the zip format of torch >= 1.6) and the VideoPose3D-style `.npz`
files both hold pickles. A pickle can name any Python callable and have the loader call it, so neither is
ever read with `torch.load` or `np.load(allow_pickle=True)` here. Instead a restricted unpickler resolves
only an allowlist of names:

- containers: dict, OrderedDict, list, tuple, set, str, bytes, numbers, None;
- torch tensors, rebuilt as numpy arrays from the raw storages in the zip (torch is never imported);
- numpy arrays, dtypes and scalars, and numpy `RandomState` objects (D3DP saves one in its checkpoints).

Any other global in the stream raises `UnsafePickleError` naming the file and the global, before anything
from the file is called.
"""

import collections
import io
import pathlib
import pickle
import zipfile
from typing import Any

import numpy as np


class UnsafePickleError(ValueError):
  """A pickle asked for something outside the allowlist."""


class _StorageType:
  """Stands for a `torch.<Type>Storage` class: only its element dtype matters here."""

  def __init__(self, name: str, dtype):
    self.name, self.dtype = name, dtype


def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top  # shipped with jaxlib; only bf16 files need it
  return ml_dtypes.bfloat16


_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor_v2` as a numpy view copied out of the storage."""
  array = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=tuple(size),
      strides=tuple(s * storage.itemsize for s in stride))
  return np.array(array)  # contiguous, writable, independent of the storage buffer


def _rebuild_parameter(data, *unused):
  return data


def _numpy_scalar(dtype, raw=None):
  return np.frombuffer(raw, dtype=dtype, count=1)[0] if raw is not None else dtype.type()


def _allowed_globals() -> dict[tuple[str, str], Any]:
  import numpy.random._pickle as np_random_pickle  # pylint: disable=g-import-not-at-top
  from numpy.random import _mt19937  # pylint: disable=g-import-not-at-top
  import _codecs  # pylint: disable=g-import-not-at-top

  allowed = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("builtins", "set"): set,
      ("builtins", "frozenset"): frozenset,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("numpy", "ndarray"): np.ndarray,
      ("numpy", "dtype"): np.dtype,
      # `_codecs.encode(text, "latin1")` is how protocol-2 pickles spell bytes.
      ("_codecs", "encode"): _codecs.encode,
      ("numpy.random._pickle", "__randomstate_ctor"): np_random_pickle.__randomstate_ctor,
      ("numpy.random._pickle", "__bit_generator_ctor"): np_random_pickle.__bit_generator_ctor,
      ("numpy.random._mt19937", "MT19937"): _mt19937.MT19937,
  }
  reconstruct_array = np.empty(0).__reduce__()[0]  # numpy's own `_reconstruct`, whatever its module
  for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(core, "_reconstruct")] = reconstruct_array
    allowed[(core, "scalar")] = _numpy_scalar
  for name, dtype in _TORCH_STORAGE_DTYPES.items():
    allowed[("torch", name)] = _StorageType(name, dtype)
  return allowed


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only allowlisted globals; torch storages come from `storages`."""

  def __init__(self, data: bytes, source: str, storages=None):
    super().__init__(io.BytesIO(data))
    self._source = source
    self._storages = storages
    self._allowed = _allowed_globals()

  def find_class(self, module, name):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f"{self._source}: the pickle asks for '{module}.{name}', which is not allowed (only tensors, "
          "numpy arrays and scalars, RandomState and plain containers are read; nothing from the file "
          "is executed)") from None

  def persistent_load(self, pid):
    if self._storages is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise UnsafePickleError(f"{self._source}: unexpected persistent id {pid!r} in the pickle")
    _, storage_type, key, _, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(f"{self._source}: storage {key!r} has unsupported type {storage_type!r}")
    return self._storages(str(key), storage_type, numel)


def _unpickle(data: bytes, source: str, storages=None) -> Any:
  try:
    return _RestrictedUnpickler(data, source, storages).load()
  except UnsafePickleError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise ValueError(f"{source}: corrupt or truncated pickle ({type(e).__name__}: {e})") from None


def load_torch_checkpoint(path) -> Any:
  """Reads a `torch.save` file (zip format) without torch and without running code from it.

  Args:
    path: a `.pth` / `.bin` / `.pt` file written by `torch.save` (torch >= 1.6).

  Returns:
    The saved object with every tensor replaced by a numpy array of the same shape and dtype (lists,
    dicts and OrderedDicts, ints, floats, strings and numpy RandomState objects are kept as they are).

  Raises:
    FileNotFoundError: the file does not exist.
    UnsafePickleError: the pickle names anything outside the allowlist.
    ValueError: the file is not a torch zip checkpoint, or it is truncated.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file not found: {path}")
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    raise ValueError(
        f"{path}: not a torch zip checkpoint (truncated, corrupt, or saved by torch < 1.6 with "
        "_use_new_zipfile_serialization=False; re-save it with a recent torch)") from None
  with archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ValueError(f"{path}: expected one data.pkl in the torch archive, found {pickles or 'none'}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder_name = prefix + "byteorder"
    if byteorder_name in names and archive.read(byteorder_name).strip() not in (b"little", b""):
      raise ValueError(f"{path}: big-endian torch checkpoints are not supported")
    cache = {}

    def storage(key, storage_type, numel):
      if key not in cache:
        member = f"{prefix}data/{key}"
        try:
          raw = archive.read(member)
        except KeyError:
          raise ValueError(f"{path}: tensor storage {member!r} is missing (truncated file?)") from None
        dtype = storage_type.dtype
        dtype = np.dtype(dtype() if callable(dtype) and not isinstance(dtype, type) else dtype)
        if len(raw) < numel * dtype.itemsize:
          raise ValueError(f"{path}: storage {member!r} holds {len(raw)} bytes, expected "
                           f"{numel * dtype.itemsize} ({numel} x {dtype})")
        cache[key] = np.frombuffer(raw, dtype=dtype, count=numel)
      return cache[key]

    try:
      data = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError) as e:
      raise ValueError(f"{path}: cannot read data.pkl ({e})") from None
    return _unpickle(data, str(path), storage)


def load_pickled_npz(path, required_keys=()) -> dict[str, Any]:
  """Reads an `.npz` whose members may be pickled objects, without running code from it.

  Args:
    path: the `.npz` file.
    required_keys: member names that must be present (without `.npy`).

  Returns:
    {member name: value}; a 0-d object array (how `np.savez` stores a dict) comes back as the object.

  Raises:
    FileNotFoundError, KeyError (a required key is missing, naming the file and the keys present),
    UnsafePickleError, ValueError (truncated or corrupt file).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data file not found: {path}")
  out = {}
  try:
    with zipfile.ZipFile(path) as archive:
      for member in archive.namelist():
        key = member[:-4] if member.endswith(".npy") else member
        with archive.open(member) as fp:
          out[key] = _read_npy(fp, f"{path}[{key}]")
  except zipfile.BadZipFile:
    raise ValueError(f"{path}: not a valid .npz file (truncated or corrupt)") from None
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
    FileNotFoundError, UnsafePickleError, ValueError (not a `.npy` file, truncated or corrupt).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data file not found: {path}")
  with open(path, "rb") as fp:
    return _read_npy(fp, str(path))


def _read_npy(fp, source: str) -> Any:
  try:
    version = np.lib.format.read_magic(fp)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(fp)
  except ValueError as e:
    raise ValueError(f"{source}: not a valid .npy member ({e})") from None
  if not dtype.hasobject:
    count = int(np.prod(shape))
    raw = fp.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
      raise ValueError(f"{source}: truncated array data")
    array = np.frombuffer(raw, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape).copy()
  value = _unpickle(fp.read(), source)
  if isinstance(value, np.ndarray) and value.dtype == object and value.shape == ():
    return value.item()
  return value
