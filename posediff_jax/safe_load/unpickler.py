"""The restricted unpickler: only allowlisted globals, torch storages from an archive, numpy
arrays, dtypes and RNG states rebuilt only from states numpy itself would write.

`unpickle` reads one pickle stream; a tensor that fails its checks is named by its state-dict
path, found in a second pass that reads no storage.
"""

import collections
import io
import math
import pickle
import re
from typing import Any

import numpy as np

from posediff_jax.safe_load import reading


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


class Storage:
  """One `data/<key>` record: a read-only flat array of `numel` elements."""

  __slots__ = ("member", "dtype", "numel", "array")

  def __init__(self, member: str, dtype: np.dtype, numel: int, array: np.ndarray):
    self.member, self.dtype, self.numel, self.array = member, dtype, numel, array


class _TensorMarker:
  """What a tensor becomes in the pass that only looks for where a bad tensor sits."""

  __slots__ = ("index",)

  def __init__(self, index: int):
    self.index = index


class TensorError(reading.ReadError):
  """A tensor or its storage is invalid; carries what is needed to find its state-dict path.

  Never leaves the package: `unpickle` turns it into a ReadError that names the path.
  """

  def __init__(self, source: str, member: str | None, detail: str, index: int):
    self.source, self.member, self.detail, self.index = source, member, detail, index
    super().__init__(self.render(None))

  def render(self, path: str | None) -> str:
    storage = f", storage {self.member!r}" if self.member is not None else ""
    name = f"tensor {path} (#{self.index}{storage})" if path else f"tensor #{self.index}{storage}"
    return f"{self.source}: {name}: {self.detail}"


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

  def __init__(self, data: bytes, source: str, archive=None,
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
      raise reading.UnsafePickleError(f"{self._source}: malformed TorchScript class name "
                                      f"{reading.short(qualified)}")
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
    raise reading.UnsafePickleError(
        f"{self._source}: the pickle asks for "
        f"'{reading.short(module)[1:-1]}.{reading.short(name)[1:-1]}', "
        "which is not allowed (only tensors, numpy arrays and scalars, RandomState and plain "
        f"containers are read; nothing from the file is executed){hint}") from None

  def persistent_load(self, pid):
    if ((self._archive is None and not self._locate)
        or not (isinstance(pid, tuple) and pid and pid[0] == "storage")):
      raise reading.UnsafePickleError(
          f"{self._source}: unexpected persistent id {reading.short(pid)} in the "
          "pickle")
    if len(pid) != 5:
      raise reading.ReadError(
          f"{self._source}: malformed storage reference {reading.short(pid)} in the pickle "
          "(expected ('storage', type, key, location, numel))")
    _, storage_type, key, _, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise reading.UnsafePickleError(f"{self._source}: storage {reading.short(key)} has "
                                      f"unsupported type {reading.short(storage_type)}")
    if not isinstance(key, str) or not key:
      raise reading.ReadError(f"{self._source}: storage key {reading.short(key)} is not a name")
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
      raise reading.UnsafePickleError(f"{self._source}: the pickle sets the state of a "
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
      raise reading.UnsafePickleError(
          f"{self._source}: numpy _reconstruct of {reading.short(subtype)} is not "
          "allowed (only numpy.ndarray)")
    return self._pending("array")

  def _dtype(self, spec, align=False, copy=False) -> _Pending:
    if not (isinstance(spec, str) and len(spec) <= 32 and isinstance(align, bool)
            and isinstance(copy, bool)):
      raise reading.ReadError(
          f"{self._source}: numpy dtype{reading.short((spec, align, copy))} is not a dtype "
          "numpy pickles")
    try:
      base = np.dtype(spec)
    except (TypeError, ValueError) as e:
      raise reading.ReadError(
          f"{self._source}: unknown numpy dtype {reading.short(spec)} ({e})") from e
    if (base.kind not in _PICKLE_DTYPE_KINDS or base.fields is not None
        or base.subdtype is not None or base.itemsize == 0):
      raise reading.ReadError(
          f"{self._source}: numpy dtype {base} is not supported in pickles (plain "
          "numeric, bool, string and object dtypes are)")
    return self._pending("dtype", base)

  def _finish_array(self, state) -> np.ndarray:
    where = f"{self._source}: numpy array in the pickle"
    if not (isinstance(state, tuple) and len(state) in (4, 5)):
      raise reading.ReadError(
          f"{where}: state is {reading.describe(state)}, expected (version, shape, dtype, "
          "fortran, data)")
    if len(state) == 5:
      if state[0] != 1 or isinstance(state[0], bool):
        raise reading.ReadError(f"{where}: state version {reading.short(state[0])}, expected 1")
      state = state[1:]
    shape, dtype, fortran, data = state
    if not (isinstance(shape, tuple) and len(shape) <= reading.MAX_DIMS
            and all(reading.is_index(n) for n in shape)):
      raise reading.ReadError(
          f"{where}: shape {reading.short(shape)} is not a tuple of at most {reading.MAX_DIMS} "
          "non-negative integers")
    if not isinstance(dtype, np.dtype):
      raise reading.ReadError(
          f"{where}: dtype is {reading.describe(dtype)}, expected a numpy dtype")
    if not isinstance(fortran, bool):
      raise reading.ReadError(f"{where}: fortran flag {reading.short(fortran)} is not a bool")
    count = math.prod(shape)
    order = "F" if fortran else "C"
    if dtype.hasobject:
      if not isinstance(data, list) or len(data) != count:
        raise reading.ReadError(
            f"{where}: object array of shape {shape} needs a list of {count} items, "
            f"found {reading.describe(data)}"
            + (f" of {len(data)}" if isinstance(data, list) else ""))
      if any(isinstance(item, _Pending) for item in data):
        raise pickle.UnpicklingError("the pickle stores a numpy object before setting its state")
      array = np.empty(count, dtype=object)
      for i, item in enumerate(data):
        array[i] = item  # item by item: a list item must stay one element, not broadcast
      return array.reshape(shape, order=order)
    if not isinstance(data, (bytes, bytearray)):
      raise reading.ReadError(f"{where}: data is {reading.describe(data)}, expected bytes")
    if len(data) != count * dtype.itemsize:
      raise reading.ReadError(
          f"{where}: shape {shape} x {dtype} needs {count * dtype.itemsize} bytes, "
          f"found {len(data)}")
    array = np.frombuffer(bytearray(data), dtype=dtype).reshape(shape, order=order)
    reading.check_bools(array, where)
    return array

  def _rebuild_tensor(self, storage, storage_offset, size, stride, *unused):
    """`torch._utils._rebuild_tensor_v2` as a copy of the elements the tensor covers.

    Args:
      storage: the `Storage` from `persistent_load`: [numel] elements.
      storage_offset: first element of the tensor in the storage.
      size: [ndim] sizes; stride: [ndim] strides, in elements.

    Returns:
      A writable array of shape `size`, independent of the storage buffer.
    """
    self._tensors += 1
    index = self._tensors
    if self._locate:
      return _TensorMarker(index)
    if not isinstance(storage, Storage):
      raise TensorError(self._source, None,
                        f"built from {reading.describe(storage)}, not a storage of "
                        "the archive", index)

    def fail(detail):
      raise TensorError(self._source, storage.member, detail, index)

    if not reading.is_index(storage_offset):
      fail(f"storage offset {reading.short(storage_offset)} is not a non-negative integer")
    if not (isinstance(size, (tuple, list)) and all(reading.is_index(n) for n in size)):
      fail(f"size {reading.short(size)} is not a sequence of non-negative integers")
    if not (isinstance(stride, (tuple, list)) and all(reading.is_index(n) for n in stride)):
      fail(f"stride {reading.short(stride)} is not a sequence of non-negative integers")
    if len(size) != len(stride):
      fail(f"size {reading.short(tuple(size))} and stride {reading.short(tuple(stride))} differ in "
           "length")
    if len(size) > reading.MAX_DIMS:
      fail(f"has {len(size)} dimensions, more than numpy's {reading.MAX_DIMS}")
    shape, itemsize = tuple(size), storage.dtype.itemsize
    count = math.prod(shape)
    if count == 0:
      # Nothing is read; the other sizes still have to fit in an array header.
      if math.prod(n for n in shape if n) * itemsize >= 2**62:
        fail(f"empty tensor of size {reading.short(shape)} is too large to describe")
      return np.empty(shape, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if last >= storage.numel:
      fail(f"size {reading.short(shape)} stride {reading.short(tuple(stride))} offset "
           f"{storage_offset} reaches element {last}, but the storage holds {storage.numel} "
           f"{storage.dtype} elements")
    nbytes = count * itemsize
    if nbytes > self._archive.copy_budget:
      fail(f"size {reading.short(shape)} would copy {nbytes} bytes out of a {storage.numel}"
           f"-element storage, beyond what this file's {self._archive.storage_bytes} bytes of "
           f"tensor data allow ({reading.COPY_FACTOR}x + {reading.COPY_ALLOWANCE >> 20} MiB): a "
           "forged or expanded shape")
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
                    f"encode({reading.describe(text)}, {reading.short(encoding)})")
  return text.encode("latin1")


def _empty_bytes():
  # Only the no-argument form: bytes(n) would allocate n bytes on the pickle's say-so.
  return b""


def _numpy_scalar(dtype, raw):
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise TypeError(f"numpy scalar of {reading.describe(dtype)} is not supported")
  if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.itemsize:
    raise ValueError(f"numpy {dtype} scalar needs {dtype.itemsize} bytes, found "
                     f"{reading.describe(raw)}"
                     + (f" of {len(raw)}" if isinstance(raw, bytes) else ""))
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
  raise reading.ReadError(
      f"{source}: numpy dtype {base} has the state {reading.short(state, 120)}, which numpy "
      "never writes for it")


def _bit_generator(name="MT19937"):
  if name not in ("MT19937", _MT19937_CLASS):
    raise TypeError(f"bit generator {reading.short(name)} is not supported (only MT19937)")
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
      raise reading.ReadError(
          f"{source}: MT19937 state is {reading.describe(state)}, expected a dict")
    inst.state = state
    pos = inst.state["state"]["pos"]
  else:
    inst.__setstate__(state)
    pos = inst.get_state(legacy=False)["state"]["pos"]
  # numpy stores `pos` unchecked and later indexes its 624-word key with it.
  if not 0 <= pos <= _MT19937_STATE_LEN:
    raise reading.ReadError(
        f"{source}: MT19937 state position {pos} is outside 0..{_MT19937_STATE_LEN}")


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
      items = [(v, f"{path}[{reading.short(k, 120)}]") for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
      items = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    else:
      continue
    stack.extend(reversed(items))
  return None


def _locate_tensor(data: bytes, source: str, torchscript: bool, error: TensorError) -> str | None:
  """The state-dict path of the tensor `error` is about, from a second pass that reads nothing."""
  try:
    root = _RestrictedUnpickler(data, source, None, torchscript, locate=True).load()
  except (reading.ReadError, *reading.PICKLE_ERRORS):  # only a better message is at stake
    return None
  return _find_marker(root, lambda marker: marker.index == error.index)


def unpickle(data: bytes, source: str, archive=None,
             torchscript: bool = False) -> Any:
  try:
    return _RestrictedUnpickler(data, source, archive, torchscript).load_checked()
  except TensorError as e:
    path = _locate_tensor(data, source, torchscript, e)
    raise reading.ReadError(e.render(path)) from (e.__cause__ or e)
  except reading.ReadError:
    raise
  except reading.PICKLE_ERRORS as e:
    raise reading.ReadError(
        f"{source}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e
