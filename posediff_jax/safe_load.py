"""Reading pickled files without running code from them, and without trusting what they declare.

PyTorch checkpoints (`.pth` / `.bin`, the zip format of torch >= 1.6) and the VideoPose3D-style
`.npz` files both hold pickles. A pickle can name any Python callable and have the loader call it,
so neither is ever read with `torch.load` or `np.load(allow_pickle=True)` here. Instead a
restricted unpickler resolves only an allowlist of names:

- containers: dict, OrderedDict, list, tuple, set, str, bytes, numbers, None;
- torch tensors, rebuilt as numpy arrays from the raw storages in the zip (torch is never imported);
- numpy arrays, dtypes and scalars, and numpy `RandomState` objects (D3DP saves one in its
  checkpoints).

Any other global in the stream raises `UnsafePickleError` naming the file and the global, before
anything from the file is called.

TorchScript archives (`torch.jit.save`, e.g. OpenAI's CLIP `ViT-B-32.pt`) are the same zip layout
with module objects in `data.pkl`: there a `__torch__.*` class name becomes an inert
`TorchScriptObject` that only holds the attributes the pickle sets, and
`load_torchscript_state_dict` flattens the module tree into `{dotted.name: array}` of the
parameters and buffers that the archive's `code/` declares (read as text; nothing in `code/` is
compiled or run).

What a file declares is checked against what it holds before anything is allocated or read: a
tensor's offset, sizes and strides must stay inside its storage (numpy's `as_strided` checks
nothing), a storage's byte length must match its element count, an `.npy` header's shape and dtype
must match its data length, and numpy arrays, dtypes and RNG states inside pickles are rebuilt
only from states numpy itself would write. Every way a damaged or hostile file can fail comes out
as `ReadError` (a `ValueError`), one line naming the file and the tensor or member.
"""

import ast
import collections
import io
import lzma
import math
import os
import pathlib
import pickle
import re
import struct
import zipfile
import zlib
from typing import Any

import numpy as np


class ReadError(ValueError):
  """A file cannot be read: damaged, truncated, not the expected format, or hostile.

  The message is one line that names the file and, where one is involved, the tensor, storage or
  member, with what was expected and what was found.
  """

  def __init__(self, message: str):
    # File content ends up in messages (keys, global names); keep them one bounded line.
    text = " ".join(str(message).split())
    super().__init__(text if len(text) <= 2000 else text[:1997] + "...")


class UnsafePickleError(ReadError):
  """A pickle asked for something outside the allowlist."""


# What zipfile, zlib, lzma, bz2 and file reads raise on damaged archives: a flipped byte can give
# any of these (RuntimeError: a set "encrypted" flag; NotImplementedError: an unknown compression
# method). Caught only around the calls that decode archive bytes.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError,
               OSError, struct.error, UnicodeDecodeError, ValueError, NotImplementedError,
               RuntimeError, IndexError, KeyError, TypeError, AttributeError, OverflowError,
               SystemError, MemoryError)
# What the unpickler and the allowlisted constructors raise on malformed pickle streams.
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, struct.error, UnicodeError, ValueError,
                  IndexError, KeyError, TypeError, AttributeError, RecursionError, OverflowError,
                  SystemError, MemoryError, LookupError)

_CHUNK = 1 << 20
# Tensors are copied out of their storages. Views of one storage may overlap (tied weights,
# expanded tensors), so the copies may exceed the storage bytes, but only by this much: enough for
# any real checkpoint, too little for a few-byte pickle to ask for terabytes.
_COPY_FACTOR = 16
_COPY_ALLOWANCE = 64 << 20
_MAX_NPY_HEADER = 10000  # numpy's own default limit on .npy header sizes
_MAX_DIMS = 64  # numpy's limit on array dimensions
_MAX_SCRIPT_MODULES = 100_000  # module visits while flattening a TorchScript tree


def _short(value: Any, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return f"array {value.shape} {value.dtype}"
  return type(value).__name__


def _is_index(value: Any) -> bool:
  """A non-negative Python int (bools and floats are refused: torch never writes them here)."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------------------------------
# Reading bytes: the boundary where archive and file errors become ReadError.


def _read_chunks(fp, limit: int) -> bytearray:
  """Up to `limit` bytes, grown chunk by chunk from what the file really holds.

  Never preallocates a declared size: a forged zip size or header shape cannot make it allocate
  more than the data actually present. Archive errors propagate: callers name what they read.
  """
  buf = bytearray()
  while len(buf) < limit:
    chunk = fp.read(min(_CHUNK, limit - len(buf)))
    if not chunk:
      break
    buf += chunk
  return buf


def _read_stream(fp, limit: int, where: str) -> bytearray:
  """`_read_chunks` of a plain file or an `.npz` member, its failures as ReadError."""
  try:
    return _read_chunks(fp, limit)
  except _ZIP_ERRORS as e:
    raise ReadError(f"{where}: cannot read the data ({type(e).__name__}: {e})") from e


def _read_exactly(fp, size: int, where: str, what: str = "bytes") -> bytearray:
  data = _read_stream(fp, size, where)
  if len(data) != size:
    raise ReadError(f"{where}: truncated: expected {size} {what}, found {len(data)}")
  return data


def _check_bools(array: np.ndarray, where: str) -> None:
  # numpy would keep any byte as a bool whose comparisons then disagree with its value.
  if array.dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
    raise ReadError(f"{where}: bool data holds bytes other than 0 and 1")


# --------------------------------------------------------------------------------------------------
# The restricted unpickler.


class _StorageType:
  """Stands for a `torch.<Type>Storage` class: only its element dtype matters here."""

  __slots__ = ("name", "_dtype")

  def __init__(self, name: str, dtype):
    self.name, self._dtype = name, dtype

  @property
  def dtype(self) -> np.dtype:
    dtype = self._dtype
    return np.dtype(dtype() if callable(dtype) and not isinstance(dtype, type) else dtype)

  def __repr__(self) -> str:
    return f"torch.{self.name}"


def _bfloat16():
  # ml_dtypes ships with jaxlib; only bfloat16 files need it.
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  return ml_dtypes.bfloat16


_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Name:
  """An allowlisted global that the pickle may pass as an argument but never call."""

  __slots__ = ("name",)

  def __init__(self, name: str):
    self.name = name

  def __repr__(self) -> str:
    return self.name


_NDARRAY = _Name("numpy.ndarray")
_MT19937_CLASS = _Name("numpy.random._mt19937.MT19937")


class _Storage:
  """One `data/<key>` record: a read-only flat array of `numel` elements."""

  __slots__ = ("member", "dtype", "numel", "array")

  def __init__(self, member: str, dtype: np.dtype, numel: int, array: np.ndarray):
    self.member, self.dtype, self.numel, self.array = member, dtype, numel, array


class _TensorMarker:
  """What a tensor becomes in the pass that only looks for where a bad tensor sits."""

  __slots__ = ("index",)

  def __init__(self, index: int):
    self.index = index


class _TensorError(ReadError):
  """A tensor or its storage is invalid; carries what is needed to find its state-dict path.

  Never leaves this module: `_unpickle` turns it into a ReadError that names the path.
  """

  def __init__(self, source: str, member: str | None, detail: str, index: int):
    self.source, self.member, self.detail, self.index = source, member, detail, index
    super().__init__(self.render(None))

  def render(self, path: str | None) -> str:
    storage = f", storage {self.member!r}" if self.member is not None else ""
    name = f"tensor {path} (#{self.index}{storage})" if path else f"tensor #{self.index}{storage}"
    return f"{self.source}: {name}: {self.detail}"


class _RecordError(ReadError):
  """A record of a torch zip archive is missing or cannot be read (never leaves this module)."""

  def __init__(self, path: pathlib.Path, member: str, detail: str):
    self.member, self.detail = member, detail
    super().__init__(f"{path}: record {member!r} {detail}")


class _Pending:
  """A numpy array or dtype between its REDUCE and its BUILD.

  numpy pickles these as `_reconstruct(...)` / `dtype(...)` followed by BUILD with the real state.
  numpy's own `__setstate__` trusts that state (a dtype's field offsets and flags, an object
  array's shape), so here BUILD hands the state to `finish`, which checks it and builds a fresh
  object; the unpickler then puts that object where the pending one was (stack and memo).
  """

  def __init__(self, kind: str, base: np.dtype | None = None):
    self.kind, self.base = kind, base
    self.memo_keys: list[Any] = []

  def __repr__(self) -> str:
    return f"<pending numpy {self.kind}>"


class _Memo(dict):
  """The unpickler's memo, which remembers where pending objects sit and never hands one out."""

  def __setitem__(self, key, value):
    if isinstance(value, _Pending):
      value.memo_keys.append(key)
    super().__setitem__(key, value)

  def __getitem__(self, key):
    value = super().__getitem__(key)
    if isinstance(value, _Pending):
      raise pickle.UnpicklingError(f"the pickle reuses a numpy {value.kind} before setting its "
                                   "state")
    return value

  def resolve(self, pending: _Pending, value: Any) -> None:
    for key in pending.memo_keys:
      if dict.get(self, key) is pending:
        super().__setitem__(key, value)


class TorchScriptObject:
  """Inert stand-in for an instance of a TorchScript class (`__torch__.*`) read from a pickle.

  TorchScript pickles a module as `GLOBAL __torch__.<module> <Class>`, `NEWOBJ` with no arguments
  and `BUILD` with its attribute dict. Each class name gets its own subclass of this one, so that
  `qualified_name` says which class it was; `state` holds whatever BUILD passed (normally
  {attribute: value}). No method of the original class exists here and none is ever looked up.
  """

  qualified_name = "__torch__"
  state: Any = None

  def __init__(self):  # A REDUCE that passes arguments fails here instead of building anything.
    self.state = None

  def __setstate__(self, state):
    self.state = state

  def __repr__(self) -> str:
    return f"<TorchScriptObject {self.qualified_name}>"


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _as_list(data):
  return list(data)


def _restore_type_tag(value, unused_type_name):
  return value


def _device(name):
  if not isinstance(name, str):
    raise TypeError(f"torch.device expects a string, got {type(name).__name__}")
  return name


# Globals the TorchScript pickler names: torch/jit/_pickle.py's helpers, which just return their
# data, and torch.device, kept as its string.
_TORCHSCRIPT_GLOBALS = {
    ("torch.jit._pickle", "build_intlist"): _as_list,
    ("torch.jit._pickle", "build_tensorlist"): _as_list,
    ("torch.jit._pickle", "build_doublelist"): _as_list,
    ("torch.jit._pickle", "build_boollist"): _as_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    ("torch", "device"): _device,
}

# Kinds of dtype a pickled numpy array or scalar may have (no structured dtypes: numpy's pickled
# state for those carries field offsets that it does not check; no datetimes: none are needed).
_PICKLE_DTYPE_KINDS = "biufcSUVO"
_MT19937_STATE_LEN = 624


class _RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Resolves only allowlisted globals; torch storages come from `archive`.

  The pure-Python unpickler, so that BUILD, REDUCE, DUP and the memo can be checked: BUILD only
  applies to the objects that need it (pending numpy arrays and dtypes, RNG states,
  `OrderedDict` metadata, TorchScript objects), never to a function or class from the allowlist.

  With `torchscript=True` it also accepts `__torch__.*` class names (as inert `TorchScriptObject`
  subclasses) and the TorchScript list / type-tag helpers. With `locate=True` tensors become
  `_TensorMarker`s and no storage is read: that pass only finds where a bad tensor sits.
  """

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, data: bytes, source: str, archive: "_TorchZip | None" = None,
               torchscript: bool = False, locate: bool = False):
    super().__init__(io.BytesIO(data))
    self.memo = _Memo()
    self._source = source
    self._archive = archive
    self._torchscript = torchscript
    self._locate = locate
    self._script_classes: dict[str, type] = {}
    self._unfinished = 0
    self._tensors = 0
    self._allowed = self._allowed_globals()

  def _allowed_globals(self) -> dict[tuple[str, str], Any]:
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("__builtin__", "set"): set,
        ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): self._dtype,
        # `_codecs.encode(text, "latin1")` is how protocol-2 pickles spell bytes; `bytes()` empty.
        ("_codecs", "encode"): _latin1_bytes,
        ("builtins", "bytes"): _empty_bytes, ("__builtin__", "bytes"): _empty_bytes,
        ("numpy.random._pickle", "__randomstate_ctor"): _random_state,
        ("numpy.random._pickle", "__bit_generator_ctor"): _bit_generator,
        ("numpy.random._mt19937", "MT19937"): _MT19937_CLASS,
    }
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
      allowed[(core, "_reconstruct")] = self._reconstruct
      allowed[(core, "scalar")] = _numpy_scalar
    for name, dtype in _TORCH_STORAGE_DTYPES.items():
      allowed[("torch", name)] = _StorageType(name, dtype)
    return allowed

  def _script_class(self, module: str, name: str) -> type:
    qualified = f"{module}.{name}"
    if not all(_IDENTIFIER.fullmatch(part) for part in qualified.split(".")):
      raise UnsafePickleError(f"{self._source}: malformed TorchScript class name "
                              f"{_short(qualified)}")
    if qualified not in self._script_classes:
      self._script_classes[qualified] = type(
          name, (TorchScriptObject,), {"qualified_name": qualified, "__module__": __name__})
    return self._script_classes[qualified]

  def find_class(self, module, name):
    key = (module, name)
    if key in self._allowed:
      return self._allowed[key]
    if self._torchscript:
      if key in _TORCHSCRIPT_GLOBALS:
        return _TORCHSCRIPT_GLOBALS[key]
      if module == "__torch__" or module.startswith("__torch__."):
        return self._script_class(module, name)
    hint = ""
    if isinstance(module, str) and (module == "__torch__" or module.startswith("__torch__.")):
      hint = " (this is a TorchScript archive: read it with load_torchscript_state_dict)"
    raise UnsafePickleError(
        f"{self._source}: the pickle asks for '{_short(module)[1:-1]}.{_short(name)[1:-1]}', "
        "which is not allowed (only tensors, numpy arrays and scalars, RandomState and plain "
        f"containers are read; nothing from the file is executed){hint}") from None

  def persistent_load(self, pid):
    if ((self._archive is None and not self._locate)
        or not (isinstance(pid, tuple) and pid and pid[0] == "storage")):
      raise UnsafePickleError(f"{self._source}: unexpected persistent id {_short(pid)} in the "
                              "pickle")
    if len(pid) != 5:
      raise ReadError(f"{self._source}: malformed storage reference {_short(pid)} in the pickle "
                      "(expected ('storage', type, key, location, numel))")
    _, storage_type, key, _, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(
          f"{self._source}: storage {_short(key)} has unsupported type {_short(storage_type)}")
    if not isinstance(key, str) or not key:
      raise ReadError(f"{self._source}: storage key {_short(key)} is not a name")
    if self._locate:
      return None  # nothing is read in this pass
    return self._archive.storage(key, storage_type.dtype, numel, self._tensors + 1)

  # Opcode handlers that replace the pure-Python unpickler's.

  def _load_build(self):
    state = self.stack.pop()
    inst = self.stack[-1]
    if isinstance(inst, _Pending):
      value = (self._finish_array(state) if inst.kind == "array"
               else _finish_dtype(inst.base, state, self._source))
      self._unfinished -= 1
      self.stack[-1] = value
      self.memo.resolve(inst, value)
    elif isinstance(inst, TorchScriptObject) and self._torchscript:
      inst.__setstate__(state)
    elif (type(inst) is collections.OrderedDict  # pylint: disable=unidiomatic-typecheck
          and isinstance(state, dict) and all(isinstance(k, str) for k in state)):
      inst.__dict__.update(state)  # torch state dicts carry `_metadata` this way
    elif isinstance(inst, (np.random.RandomState, np.random.MT19937)):
      _set_generator_state(inst, state, self._source)
    else:
      raise UnsafePickleError(f"{self._source}: the pickle sets the state of a "
                              f"{type(inst).__name__}, which is not allowed")

  def _load_reduce(self):
    args = self.stack.pop()
    func = self.stack[-1]
    if not isinstance(args, tuple):
      raise pickle.UnpicklingError(f"REDUCE arguments are a {type(args).__name__}, not a tuple")
    if any(isinstance(a, _Pending) for a in args):
      raise pickle.UnpicklingError("the pickle passes a numpy object before setting its state")
    self.stack[-1] = func(*args)

  def _load_dup(self):
    if isinstance(self.stack[-1], _Pending):
      raise pickle.UnpicklingError("the pickle duplicates a numpy object before setting its state")
    self.append(self.stack[-1])

  dispatch[pickle.BUILD[0]] = _load_build
  dispatch[pickle.REDUCE[0]] = _load_reduce
  dispatch[pickle.DUP[0]] = _load_dup

  def load_checked(self) -> Any:
    value = self.load()
    if self._unfinished:
      raise pickle.UnpicklingError(f"{self._unfinished} numpy object(s) in the pickle never "
                                   "receive their state")
    return value

  # Allowlisted constructors that need this unpickler.

  def _pending(self, kind: str, base: np.dtype | None = None) -> _Pending:
    self._unfinished += 1
    return _Pending(kind, base)

  def _reconstruct(self, subtype, unused_shape, unused_code) -> _Pending:
    # The shape and type code are placeholders ((0,), b"b"): BUILD brings the real ones.
    if subtype is not _NDARRAY:
      raise UnsafePickleError(f"{self._source}: numpy _reconstruct of {_short(subtype)} is not "
                              "allowed (only numpy.ndarray)")
    return self._pending("array")

  def _dtype(self, spec, align=False, copy=False) -> _Pending:
    if not (isinstance(spec, str) and len(spec) <= 32 and isinstance(align, bool)
            and isinstance(copy, bool)):
      raise ReadError(f"{self._source}: numpy dtype{_short((spec, align, copy))} is not a dtype "
                      "numpy pickles")
    try:
      base = np.dtype(spec)
    except (TypeError, ValueError) as e:
      raise ReadError(f"{self._source}: unknown numpy dtype {_short(spec)} ({e})") from e
    if (base.kind not in _PICKLE_DTYPE_KINDS or base.fields is not None
        or base.subdtype is not None or base.itemsize == 0):
      raise ReadError(f"{self._source}: numpy dtype {base} is not supported in pickles (plain "
                      "numeric, bool, string and object dtypes are)")
    return self._pending("dtype", base)

  def _finish_array(self, state) -> np.ndarray:
    where = f"{self._source}: numpy array in the pickle"
    if not (isinstance(state, tuple) and len(state) in (4, 5)):
      raise ReadError(f"{where}: state is {_describe(state)}, expected (version, shape, dtype, "
                      "fortran, data)")
    if len(state) == 5:
      if state[0] != 1 or isinstance(state[0], bool):
        raise ReadError(f"{where}: state version {_short(state[0])}, expected 1")
      state = state[1:]
    shape, dtype, fortran, data = state
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
            and all(_is_index(n) for n in shape)):
      raise ReadError(f"{where}: shape {_short(shape)} is not a tuple of at most {_MAX_DIMS} "
                      "non-negative integers")
    if not isinstance(dtype, np.dtype):
      raise ReadError(f"{where}: dtype is {_describe(dtype)}, expected a numpy dtype")
    if not isinstance(fortran, bool):
      raise ReadError(f"{where}: fortran flag {_short(fortran)} is not a bool")
    count = math.prod(shape)
    order = "F" if fortran else "C"
    if dtype.hasobject:
      if not isinstance(data, list) or len(data) != count:
        raise ReadError(f"{where}: object array of shape {shape} needs a list of {count} items, "
                        f"found {_describe(data)}"
                        + (f" of {len(data)}" if isinstance(data, list) else ""))
      if any(isinstance(item, _Pending) for item in data):
        raise pickle.UnpicklingError("the pickle stores a numpy object before setting its state")
      array = np.empty(count, dtype=object)
      for i, item in enumerate(data):
        array[i] = item  # item by item: a list item must stay one element, not broadcast
      return array.reshape(shape, order=order)
    if not isinstance(data, (bytes, bytearray)):
      raise ReadError(f"{where}: data is {_describe(data)}, expected bytes")
    if len(data) != count * dtype.itemsize:
      raise ReadError(f"{where}: shape {shape} x {dtype} needs {count * dtype.itemsize} bytes, "
                      f"found {len(data)}")
    array = np.frombuffer(bytearray(data), dtype=dtype).reshape(shape, order=order)
    _check_bools(array, where)
    return array

  def _rebuild_tensor(self, storage, storage_offset, size, stride, *unused):
    """`torch._utils._rebuild_tensor_v2` as a copy of the elements the tensor covers.

    Args:
      storage: the `_Storage` from `persistent_load`: [numel] elements.
      storage_offset: first element of the tensor in the storage.
      size: [ndim] sizes; stride: [ndim] strides, in elements.

    Returns:
      A writable array of shape `size`, independent of the storage buffer.
    """
    self._tensors += 1
    index = self._tensors
    if self._locate:
      return _TensorMarker(index)
    if not isinstance(storage, _Storage):
      raise _TensorError(self._source, None, f"built from {_describe(storage)}, not a storage of "
                         "the archive", index)

    def fail(detail):
      raise _TensorError(self._source, storage.member, detail, index)

    if not _is_index(storage_offset):
      fail(f"storage offset {_short(storage_offset)} is not a non-negative integer")
    if not (isinstance(size, (tuple, list)) and all(_is_index(n) for n in size)):
      fail(f"size {_short(size)} is not a sequence of non-negative integers")
    if not (isinstance(stride, (tuple, list)) and all(_is_index(n) for n in stride)):
      fail(f"stride {_short(stride)} is not a sequence of non-negative integers")
    if len(size) != len(stride):
      fail(f"size {_short(tuple(size))} and stride {_short(tuple(stride))} differ in length")
    if len(size) > _MAX_DIMS:
      fail(f"has {len(size)} dimensions, more than numpy's {_MAX_DIMS}")
    shape, itemsize = tuple(size), storage.dtype.itemsize
    count = math.prod(shape)
    if count == 0:
      # Nothing is read; the other sizes still have to fit in an array header.
      if math.prod(n for n in shape if n) * itemsize >= 2**62:
        fail(f"empty tensor of size {_short(shape)} is too large to describe")
      return np.empty(shape, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if last >= storage.numel:
      fail(f"size {_short(shape)} stride {_short(tuple(stride))} offset {storage_offset} reaches "
           f"element {last}, but the storage holds {storage.numel} {storage.dtype} elements")
    nbytes = count * itemsize
    if nbytes > self._archive.copy_budget:
      fail(f"size {_short(shape)} would copy {nbytes} bytes out of a {storage.numel}-element "
           f"storage, beyond what this file's {self._archive.storage_bytes} bytes of tensor data "
           f"allow ({_COPY_FACTOR}x + {_COPY_ALLOWANCE >> 20} MiB): a forged or expanded shape")
    self._archive.copy_budget -= nbytes
    # A dimension of size 1 never moves, whatever its stride (torch writes any value there).
    strides = tuple(s * itemsize if n > 1 else 0 for n, s in zip(shape, stride))
    view = np.lib.stride_tricks.as_strided(storage.array[storage_offset:], shape=shape,
                                           strides=strides, writeable=False)
    return np.array(view)  # contiguous, writable, independent of the storage buffer


def _rebuild_parameter(data, *unused):
  return data


def _latin1_bytes(text, encoding):
  if not (isinstance(text, str) and encoding == "latin1"):
    raise TypeError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got "
                    f"encode({_describe(text)}, {_short(encoding)})")
  return text.encode("latin1")


def _empty_bytes():
  # Only the no-argument form: bytes(n) would allocate n bytes on the pickle's say-so.
  return b""


def _numpy_scalar(dtype, raw):
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise TypeError(f"numpy scalar of {_describe(dtype)} is not supported")
  if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.itemsize:
    raise ValueError(f"numpy {dtype} scalar needs {dtype.itemsize} bytes, found "
                     f"{_describe(raw)}" + (f" of {len(raw)}" if isinstance(raw, bytes) else ""))
  if dtype.kind == "b" and raw[0] > 1:
    raise ValueError(f"numpy bool scalar holds the byte {raw[0]}, not 0 or 1")
  return np.frombuffer(bytes(raw), dtype=dtype, count=1)[0]


def _finish_dtype(base: np.dtype, state, source: str) -> np.dtype:
  """The dtype whose pickled state is `state`, if it is what numpy writes for `base`."""
  if isinstance(state, tuple) and all(isinstance(x, (int, str, tuple, type(None))) for x in state):
    byteorders = ("<", ">") if base.byteorder != "|" else ()
    for candidate in (base, *(base.newbyteorder(b) for b in byteorders)):
      if candidate.__reduce__()[2] == state:
        return candidate
  raise ReadError(f"{source}: numpy dtype {base} has the state {_short(state, 120)}, which numpy "
                  "never writes for it")


def _bit_generator(name="MT19937"):
  if name not in ("MT19937", _MT19937_CLASS):
    raise TypeError(f"bit generator {_short(name)} is not supported (only MT19937)")
  return np.random.MT19937()


def _random_state(bit_generator="MT19937", bit_generator_ctor=None):
  if bit_generator_ctor not in (None, _bit_generator):
    raise TypeError("RandomState is only rebuilt with numpy's own bit generator constructor")
  if not isinstance(bit_generator, np.random.MT19937):
    bit_generator = _bit_generator(bit_generator)
  return np.random.RandomState(bit_generator)


def _set_generator_state(inst, state, source: str) -> None:
  if isinstance(inst, np.random.MT19937):
    if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
      state = state[0]  # (state, seed sequence); a seed sequence is not kept
    if not isinstance(state, dict):
      raise ReadError(f"{source}: MT19937 state is {_describe(state)}, expected a dict")
    inst.state = state
    pos = inst.state["state"]["pos"]
  else:
    inst.__setstate__(state)
    pos = inst.get_state(legacy=False)["state"]["pos"]
  # numpy stores `pos` unchecked and later indexes its 624-word key with it.
  if not 0 <= pos <= _MT19937_STATE_LEN:
    raise ReadError(f"{source}: MT19937 state position {pos} is outside 0..{_MT19937_STATE_LEN}")


def _find_marker(root: Any, match) -> str | None:
  """Where in `root` (dicts, lists, tuples, TorchScript attributes) the matching marker sits."""
  stack, seen = [(root, "")], set()
  while stack:
    obj, path = stack.pop()
    if isinstance(obj, _TensorMarker):
      if match(obj):
        return path or "<the whole file>"
      continue
    if id(obj) in seen:
      continue
    seen.add(id(obj))
    if isinstance(obj, TorchScriptObject) and isinstance(obj.state, dict):
      items = [(v, f"{path}.{k}" if path else f"{k}") for k, v in obj.state.items()
               if isinstance(k, str)]
    elif isinstance(obj, dict):
      items = [(v, f"{path}[{_short(k, 120)}]") for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
      items = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    else:
      continue
    stack.extend(reversed(items))
  return None


def _locate_tensor(data: bytes, source: str, torchscript: bool, error: _TensorError) -> str | None:
  """The state-dict path of the tensor `error` is about, from a second pass that reads nothing."""
  try:
    root = _RestrictedUnpickler(data, source, None, torchscript, locate=True).load()
  except (ReadError, *_PICKLE_ERRORS):  # only a better message is at stake
    return None
  return _find_marker(root, lambda marker: marker.index == error.index)


def _unpickle(data: bytes, source: str, archive: "_TorchZip | None" = None,
              torchscript: bool = False) -> Any:
  try:
    return _RestrictedUnpickler(data, source, archive, torchscript).load_checked()
  except _TensorError as e:
    raise ReadError(e.render(_locate_tensor(data, source, torchscript, e))) from (e.__cause__ or e)
  except ReadError:
    raise
  except _PICKLE_ERRORS as e:
    raise ReadError(f"{source}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------------------------------
# Torch zip archives.


class _TorchZip:
  """An open torch zip archive (`torch.save` or `torch.jit.save`): its records and storages.

  Attributes:
    prefix: the archive's top folder with a trailing '/' ('' if the records sit at the root).
    names: every record name.
    storage_bytes: bytes of the storages read so far.
    copy_budget: bytes that tensors may still copy out of them (see `_COPY_FACTOR`).
  """

  def __init__(self, path: pathlib.Path):
    self.path = path
    if not path.is_file():
      raise FileNotFoundError(f"checkpoint file not found: {path}")
    self._file = open(path, "rb")  # pylint: disable=consider-using-with
    self._zip = None
    try:
      self._open()
    except BaseException:
      self.close()
      raise
    self._storages: dict[str, _Storage] = {}
    self.storage_bytes = 0
    self.copy_budget = _COPY_ALLOWANCE

  def _open(self) -> None:
    path = self.path
    try:
      self._zip = zipfile.ZipFile(self._file)
      self._infos = {info.filename: info for info in self._zip.infolist()}
    except _ZIP_ERRORS as e:
      raise ReadError(
          f"{path}: not a torch zip checkpoint (truncated, corrupt, or saved by torch < 1.6 with "
          "_use_new_zipfile_serialization=False; re-save it with a recent torch) "
          f"({type(e).__name__}: {e})") from e
    self.names = list(self._infos)
    pickles = [n for n in self.names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ReadError(f"{path}: expected one data.pkl in the torch archive, found "
                      f"{_short(pickles) if pickles else 'none'}")
    self.prefix = pickles[0][: -len("data.pkl")]
    byteorder_name = self.prefix + "byteorder"
    if byteorder_name in self._infos:
      byteorder = bytes(self.read(byteorder_name)).strip()
      if byteorder not in (b"little", b""):
        raise ReadError(f"{path}: byteorder record says {_short(byteorder)}; only little-endian "
                        "torch checkpoints are supported")

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()
    self._file.close()

  def __enter__(self) -> "_TorchZip":
    return self

  def __exit__(self, *unused) -> None:
    self.close()

  @property
  def is_torchscript(self) -> bool:
    """Whether this is a `torch.jit.save` archive (it has `constants.pkl` or a `code/` folder)."""
    code = self.prefix + "code/"
    return (self.prefix + "constants.pkl" in self._infos
            or any(n.startswith(code) for n in self.names))

  def read(self, member: str) -> bytearray:
    """The bytes of `member`."""
    try:
      return self._read_record(member)
    except _RecordError as e:  # internal: carries the detail that storage errors reuse
      raise ReadError(str(e)) from (e.__cause__ or e)

  def _read_record(self, member: str, size: int | None = None) -> bytearray:
    """The bytes of `member`; exactly `size` of them if given (checked before reading)."""
    info = self._infos.get(member)
    if info is None:
      raise _RecordError(self.path, member, "is missing from the archive")
    if size is not None and info.file_size != size:
      raise _RecordError(self.path, member, f"holds {info.file_size} bytes, expected {size}")
    try:
      with self._zip.open(info) as fp:
        # One byte more than declared: reaching the end makes zipfile check the CRC, and the
        # data itself, not the declared size, bounds what is allocated.
        data = _read_chunks(fp, info.file_size + 1)
    except _ZIP_ERRORS as e:
      raise _RecordError(self.path, member, f"cannot be read ({type(e).__name__}: {e})") from e
    if len(data) != info.file_size:
      raise _RecordError(self.path, member,
                         f"holds {len(data)} bytes, its zip entry says {info.file_size}")
    return data

  def data_pickle(self) -> bytes:
    return bytes(self.read(self.prefix + "data.pkl"))

  def storage(self, key: str, dtype: np.dtype, numel, tensor_index: int) -> _Storage:
    """The flat storage `data/<key>`: [numel] elements of `dtype`, checked against its bytes."""
    member = f"{self.prefix}data/{key}"
    source = str(self.path)
    cached = self._storages.get(key)
    if cached is not None:
      if cached.dtype != dtype or cached.numel != numel:
        raise _TensorError(source, member, f"referenced as {_short(numel)} x {dtype} after "
                           f"{cached.numel} x {cached.dtype}: torch writes one type and size per "
                           "storage", tensor_index)
      return cached
    if not _is_index(numel):
      raise _TensorError(source, member, f"element count {_short(numel)} is not a non-negative "
                         "integer", tensor_index)
    info = self._infos.get(member)
    if info is None:
      raise _TensorError(source, member, "is missing from the archive (truncated file?)",
                         tensor_index)
    if info.file_size % dtype.itemsize:
      raise _TensorError(source, member, f"holds {info.file_size} bytes, not a multiple of the "
                         f"{dtype.itemsize}-byte {dtype} elements", tensor_index)
    if info.file_size != numel * dtype.itemsize:
      raise _TensorError(source, member, f"holds {info.file_size} bytes, expected "
                         f"{numel * dtype.itemsize} ({numel} x {dtype})", tensor_index)
    try:
      raw = self._read_record(member, numel * dtype.itemsize)
    except _RecordError as e:
      raise _TensorError(source, member, e.detail, tensor_index) from (e.__cause__ or e)
    array = np.frombuffer(bytes(raw), dtype=dtype)
    _check_bools(array, f"{source}: storage {member!r}")
    self.storage_bytes += array.nbytes
    self.copy_budget += _COPY_FACTOR * array.nbytes
    self._storages[key] = storage = _Storage(member, dtype, numel, array)
    return storage


def load_torch_checkpoint(path) -> Any:
  """Reads a `torch.save` file (zip format) without torch and without running code from it.

  Args:
    path: a `.pth` / `.bin` / `.pt` file written by `torch.save` (torch >= 1.6).

  Returns:
    The saved object with every tensor replaced by a numpy array of the same shape and dtype
    (lists, dicts and OrderedDicts, ints, floats, strings and numpy RandomState objects are kept as
    they are).

  Raises:
    FileNotFoundError: the file does not exist.
    UnsafePickleError: the pickle names anything outside the allowlist (a TorchScript archive's
      `__torch__.*` classes included: read those with `load_torchscript_state_dict`).
    ReadError: the file is not a torch zip checkpoint, or it is truncated, damaged or malformed
      (e.g. a tensor reaching past its storage).
  """
  path = pathlib.Path(path)
  with _TorchZip(path) as archive:
    return _unpickle(archive.data_pickle(), str(path), archive)


def is_torchscript_archive(path) -> bool:
  """Whether `path` is a `torch.jit.save` archive rather than a `torch.save` checkpoint.

  Raises:
    FileNotFoundError, ReadError: as `load_torch_checkpoint` (missing, not a torch zip file).
  """
  with _TorchZip(pathlib.Path(path)) as archive:
    return archive.is_torchscript


# Possessive quantifiers: the regexes run over text from the file and must stay linear.
_CLASS_HEADER = re.compile(
    r"^class[ \t]++([A-Za-z_][A-Za-z0-9_]*+)[ \t]*+(?:\(([^)\n]*+)\))?+[ \t]*+:", re.M)
_DECLARATION = re.compile(
    r"^[ \t]++(__parameters__|__buffers__)[ \t]*+=[ \t]*+(\[[^\n]*\])[ \t]*+$", re.M)


class _ClassDeclarations:
  """Which attributes of each TorchScript module class are parameters and buffers.

  `torch.jit.save` prints every module class into `code/<module path>.py` with
  `__parameters__ = ["weight", ...]` and `__buffers__ = [...]` lines in the class body. These two
  list literals are parsed with `ast.literal_eval`; the rest of the source is never interpreted.
  """

  def __init__(self, archive: _TorchZip):
    self._archive = archive
    self._cache: dict[str, tuple[bool, tuple[str, ...], tuple[str, ...]]] = {}

  def __call__(self, qualified_name: str) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """(is a Module, parameter names, buffer names) of one class."""
    if qualified_name not in self._cache:
      self._cache[qualified_name] = self._parse(qualified_name)
    return self._cache[qualified_name]

  def _parse(self, qualified_name: str) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    module, _, class_name = qualified_name.rpartition(".")
    member = f"{self._archive.prefix}code/{module.replace('.', '/')}.py"
    where = f"{self._archive.path}: {member}"
    if member not in self._archive.names:
      raise ReadError(f"{self._archive.path}: the source of TorchScript class {qualified_name!r} "
                      f"({member!r}) is missing from the archive")
    source = bytes(self._archive.read(member)).decode("utf-8", errors="replace")
    headers = list(_CLASS_HEADER.finditer(source))
    for i, header in enumerate(headers):
      if header.group(1) == class_name:
        break
    else:
      raise ReadError(f"{where} has no 'class {class_name}' (for {qualified_name!r})")
    body_end = headers[i + 1].start() if i + 1 < len(headers) else len(source)
    body = source[header.end():body_end]
    is_module = (header.group(2) or "").strip() == "Module"
    found: dict[str, tuple[str, ...]] = {}
    for declaration in _DECLARATION.finditer(body):
      try:
        names = ast.literal_eval(declaration.group(2))
      except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        names = None
      if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ReadError(f"{where}: class {class_name} has a malformed {declaration.group(1)} "
                        f"line: {_short(declaration.group(0).strip())}")
      found[declaration.group(1)] = tuple(names)
    if is_module and "__parameters__" not in found:
      raise ReadError(f"{where}: module class {class_name} declares no __parameters__")
    # Archives from before buffers were declared separately list none: torch loads them without.
    return is_module, found.get("__parameters__", ()), found.get("__buffers__", ())


def _flatten_script_module(root: TorchScriptObject, declarations: _ClassDeclarations,
                           source: str) -> dict[str, np.ndarray]:
  """The parameters and buffers of `root` and its submodules, in state_dict order.

  Depth-first with an explicit stack (a pickle can nest modules deeper than Python recursion
  allows); `active` holds the modules on the current path, to refuse a module inside itself.
  """
  out: dict[str, np.ndarray] = {}
  stack: list[tuple[str, Any, str]] = [("enter", root, "")]
  active: set[int] = set()
  visits = 0
  while stack:
    action, obj, prefix = stack.pop()
    if action == "exit":
      active.discard(id(obj))
      continue
    where = prefix[:-1] or "the root module"
    if id(obj) in active:
      raise ReadError(f"{source}: module {where} contains itself")
    visits += 1
    if visits > _MAX_SCRIPT_MODULES:
      raise ReadError(f"{source}: the module tree has more than {_MAX_SCRIPT_MODULES} modules "
                      "(shared submodules nested many levels deep?)")
    is_module, parameters, buffers = declarations(obj.qualified_name)
    if not is_module:
      continue
    state = obj.state
    if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
      raise ReadError(f"{source}: module {where} ({obj.qualified_name}) stores its state as "
                      f"{_describe(state)}, not an attribute dict; cannot read its tensors")
    for name in parameters + buffers:
      if name not in state:
        raise ReadError(f"{source}: module {where} ({obj.qualified_name}) declares {name!r} but "
                        "the pickle has no such attribute")
      value = state[name]
      if value is None:  # An optional parameter left unset, e.g. a Linear without bias.
        continue
      if not isinstance(value, np.ndarray):
        raise ReadError(f"{source}: {prefix}{name} should be a tensor, found {_describe(value)}")
      out[prefix + name] = value
    active.add(id(obj))
    stack.append(("exit", obj, prefix))
    children = [(name, value) for name, value in state.items()
                if isinstance(value, TorchScriptObject)]
    stack.extend(("enter", value, f"{prefix}{name}.") for name, value in reversed(children))
  return out


def load_torchscript_state_dict(path) -> dict[str, np.ndarray]:
  """Reads the parameters and buffers of a TorchScript archive without torch and without its code.

  The module tree in `data.pkl` is unpickled into inert `TorchScriptObject`s (tensors come from
  the `data/` storages as in `load_torch_checkpoint`); which attributes are parameters or buffers
  is read from the `__parameters__` / `__buffers__` lines of each class in `code/`. Nothing from
  the archive is compiled, imported or called; `constants.pkl` (tensor constants of the code) is
  not read.

  Args:
    path: a `torch.jit.save` archive, e.g. OpenAI's CLIP `ViT-B-32.pt`.

  Returns:
    `{dotted.name: array}` in `state_dict()` order, as `torch.jit.load(path).state_dict()` would
    give (e.g. `transformer.resblocks.0.attn.in_proj_weight`), arrays in their stored dtype.

  Raises:
    FileNotFoundError: the file does not exist.
    UnsafePickleError: `data.pkl` names a global that is neither a `__torch__.*` class nor allowed.
    ReadError: not a TorchScript archive (a plain `torch.save` file), truncated or damaged, or its
      module tree or class declarations are not as `torch.jit.save` writes them.
  """
  path = pathlib.Path(path)
  with _TorchZip(path) as archive:
    if not archive.is_torchscript:
      raise ReadError(f"{path}: not a TorchScript archive (no {archive.prefix}constants.pkl and "
                      f"no {archive.prefix}code/); it is a torch.save checkpoint: read it with "
                      "load_torch_checkpoint")
    root = _unpickle(archive.data_pickle(), str(path), archive, torchscript=True)
    if not isinstance(root, TorchScriptObject):
      raise ReadError(f"{path}: data.pkl holds {_describe(root)}, expected a TorchScript module "
                      "object (__torch__.*)")
    return _flatten_script_module(root, _ClassDeclarations(archive), str(path))


# --------------------------------------------------------------------------------------------------
# .npy and .npz files.


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
    except _ZIP_ERRORS as e:
      raise ReadError(f"{path}: not a valid .npz file (truncated or corrupt: "
                      f"{type(e).__name__}: {e})") from e
    with archive:
      for info in infos:
        member = info.filename
        key = member[:-4] if member.endswith(".npy") else member
        where = f"{path}[{key}]"
        try:
          fp = archive.open(info)
        except _ZIP_ERRORS as e:
          raise ReadError(f"{where}: cannot open the member ({type(e).__name__}: {e})") from e
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
  magic = bytes(_read_exactly(fp, 8, source))
  if magic[:6] != b"\x93NUMPY":
    raise ReadError(f"{source}: not a .npy file (magic {_short(magic[:6])}, expected "
                    "b'\\x93NUMPY')")
  version = (magic[6], magic[7])
  if version not in ((1, 0), (2, 0), (3, 0)):
    raise ReadError(f"{source}: .npy format version {version[0]}.{version[1]} is not 1.0, 2.0 "
                    "or 3.0")
  width = 2 if version == (1, 0) else 4
  length = int.from_bytes(_read_exactly(fp, width, source), "little")
  if length > _MAX_NPY_HEADER:
    raise ReadError(f"{source}: .npy header of {length} bytes, more than {_MAX_NPY_HEADER}")
  raw = bytes(_read_exactly(fp, length, source, "header bytes"))
  try:
    header = ast.literal_eval(raw.decode("utf-8" if version == (3, 0) else "latin1"))
  except (UnicodeDecodeError, ValueError, TypeError, SyntaxError, MemoryError,
          RecursionError) as e:
    raise ReadError(f"{source}: unreadable .npy header ({type(e).__name__}: {e})") from e
  if not (isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}):
    raise ReadError(f"{source}: .npy header {_short(header)} does not have exactly the keys "
                    "descr, fortran_order, shape")
  shape, fortran = header["shape"], header["fortran_order"]
  if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
          and all(_is_index(n) for n in shape)):
    raise ReadError(f"{source}: .npy shape {_short(shape)} is not a tuple of at most "
                    f"{_MAX_DIMS} non-negative integers")
  if not isinstance(fortran, bool):
    raise ReadError(f"{source}: .npy fortran_order {_short(fortran)} is not a bool")
  try:
    dtype = np.lib.format.descr_to_dtype(header["descr"])
  except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as e:
    raise ReadError(f"{source}: .npy dtype {_short(header['descr'])} is not valid "
                    f"({type(e).__name__}: {e})") from e
  if dtype.itemsize == 0 or dtype.subdtype is not None:
    raise ReadError(f"{source}: .npy dtype {dtype} is not an array element type")
  return shape, fortran, dtype, 8 + width + length


def _read_npy(fp, source: str, size: int) -> Any:
  """One `.npy` stream of `size` bytes (header included): its array, or the object it pickles."""
  shape, fortran, dtype, header_bytes = _read_npy_header(fp, source)
  available = size - header_bytes
  if not dtype.hasobject:
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes != available:
      raise ReadError(f"{source}: header says shape {shape} x {dtype} = {nbytes} bytes, the file "
                      f"holds {available} bytes of data")
    # One byte more than needed: reaching the end makes zipfile check the member's CRC.
    data = _read_stream(fp, nbytes + 1, source)
    if len(data) != nbytes:
      raise ReadError(f"{source}: holds {len(data)} bytes of array data, expected {nbytes}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    _check_bools(array, source)
    return array  # its own buffer, writable, nothing else refers to it
  data = bytes(_read_stream(fp, max(available, 0) + 1, source))
  if len(data) != available:
    raise ReadError(f"{source}: holds {len(data)} bytes of pickled data, expected {available}")
  value = _unpickle(data, source)
  if not (isinstance(value, np.ndarray) and value.dtype == dtype and value.shape == shape):
    raise ReadError(f"{source}: header declares shape {shape} x {dtype}, the pickle holds "
                    f"{_describe(value)}")
  if value.shape == ():
    return value.item()
  return value
