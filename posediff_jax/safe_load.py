"""Reading pickled files without running code from them.

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
"""

import ast
import collections
import io
import pathlib
import pickle
import re
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
  # ml_dtypes ships with jaxlib; only bfloat16 files need it.
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  return ml_dtypes.bfloat16


_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
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
  return str(name)


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


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only allowlisted globals; torch storages come from `storages`.

  With `torchscript=True` it also accepts `__torch__.*` class names (as inert `TorchScriptObject`
  subclasses) and the TorchScript list / type-tag helpers.
  """

  def __init__(self, data: bytes, source: str, storages=None, torchscript: bool = False):
    super().__init__(io.BytesIO(data))
    self._source = source
    self._storages = storages
    self._allowed = _allowed_globals()
    self._torchscript = torchscript
    self._script_classes: dict[str, type] = {}

  def _script_class(self, module: str, name: str) -> type:
    qualified = f"{module}.{name}"
    if not all(_IDENTIFIER.fullmatch(part) for part in qualified.split(".")):
      raise UnsafePickleError(f"{self._source}: malformed TorchScript class name {qualified!r}")
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
    if module == "__torch__" or module.startswith("__torch__."):
      hint = " (this is a TorchScript archive: read it with load_torchscript_state_dict)"
    raise UnsafePickleError(
        f"{self._source}: the pickle asks for '{module}.{name}', which is not allowed (only "
        "tensors, numpy arrays and scalars, RandomState and plain containers are read; nothing "
        f"from the file is executed){hint}") from None

  def persistent_load(self, pid):
    if self._storages is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise UnsafePickleError(f"{self._source}: unexpected persistent id {pid!r} in the pickle")
    if len(pid) != 5:
      raise ValueError(f"{self._source}: malformed storage reference {pid!r} in the pickle")
    _, storage_type, key, _, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(
          f"{self._source}: storage {key!r} has unsupported type {storage_type!r}")
    return self._storages(str(key), storage_type, numel)


def _unpickle(data: bytes, source: str, storages=None, torchscript: bool = False) -> Any:
  try:
    return _RestrictedUnpickler(data, source, storages, torchscript).load()
  except UnsafePickleError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise ValueError(f"{source}: corrupt or truncated pickle ({type(e).__name__}: {e})") from None


class _TorchZip:
  """An open torch zip archive (`torch.save` or `torch.jit.save`): its records and storages.

  Attributes:
    prefix: the archive's top folder with a trailing '/' ('' if the records sit at the root).
    names: every record name.
  """

  def __init__(self, path: pathlib.Path):
    self.path = path
    if not path.is_file():
      raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
      self._zip = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
      raise ValueError(
          f"{path}: not a torch zip checkpoint (truncated, corrupt, or saved by torch < 1.6 with "
          "_use_new_zipfile_serialization=False; re-save it with a recent torch)") from None
    self.names = self._zip.namelist()
    pickles = [n for n in self.names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      self._zip.close()
      raise ValueError(
          f"{path}: expected one data.pkl in the torch archive, found {pickles or 'none'}")
    self.prefix = pickles[0][: -len("data.pkl")]
    byteorder_name = self.prefix + "byteorder"
    if byteorder_name in self.names and self._zip.read(byteorder_name).strip() not in (b"little",
                                                                                         b""):
      self._zip.close()
      raise ValueError(f"{path}: big-endian torch checkpoints are not supported")
    self._cache: dict[str, np.ndarray] = {}

  def __enter__(self) -> "_TorchZip":
    return self

  def __exit__(self, *unused) -> None:
    self._zip.close()

  @property
  def is_torchscript(self) -> bool:
    """Whether this is a `torch.jit.save` archive (it has `constants.pkl` or a `code/` folder)."""
    code = self.prefix + "code/"
    return (self.prefix + "constants.pkl" in self.names
            or any(n.startswith(code) for n in self.names))

  def read(self, member: str) -> bytes:
    try:
      return self._zip.read(member)
    except KeyError:
      raise ValueError(f"{self.path}: record {member!r} is missing from the archive") from None
    except (zipfile.BadZipFile, OSError) as e:
      raise ValueError(f"{self.path}: cannot read {member!r} ({e})") from None

  def data_pickle(self) -> bytes:
    return self.read(self.prefix + "data.pkl")

  def storage(self, key: str, storage_type: _StorageType, numel: int) -> np.ndarray:
    """The flat storage `data/<key>` as a read-only numpy array of `numel` elements."""
    if key not in self._cache:
      member = f"{self.prefix}data/{key}"
      if member not in self.names:
        raise ValueError(f"{self.path}: tensor storage {member!r} is missing (truncated file?)")
      raw = self.read(member)
      dtype = storage_type.dtype
      dtype = np.dtype(dtype() if callable(dtype) and not isinstance(dtype, type) else dtype)
      if len(raw) < numel * dtype.itemsize:
        raise ValueError(f"{self.path}: storage {member!r} holds {len(raw)} bytes, expected "
                         f"{numel * dtype.itemsize} ({numel} x {dtype})")
      self._cache[key] = np.frombuffer(raw, dtype=dtype, count=numel)
    return self._cache[key]


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
    ValueError: the file is not a torch zip checkpoint, or it is truncated.
  """
  path = pathlib.Path(path)
  with _TorchZip(path) as archive:
    return _unpickle(archive.data_pickle(), str(path), archive.storage)


def is_torchscript_archive(path) -> bool:
  """Whether `path` is a `torch.jit.save` archive rather than a `torch.save` checkpoint.

  Raises:
    FileNotFoundError, ValueError: as `load_torch_checkpoint` (missing, not a torch zip file).
  """
  with _TorchZip(pathlib.Path(path)) as archive:
    return archive.is_torchscript


_CLASS_HEADER = re.compile(r"^class\s+([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?\s*:", re.M)
_DECLARATION = re.compile(r"^\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$", re.M)


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
      raise ValueError(f"{self._archive.path}: the source of TorchScript class {qualified_name!r} "
                       f"({member!r}) is missing from the archive")
    source = self._archive.read(member).decode("utf-8", errors="replace")
    headers = list(_CLASS_HEADER.finditer(source))
    for i, header in enumerate(headers):
      if header.group(1) == class_name:
        break
    else:
      raise ValueError(f"{where} has no 'class {class_name}' (for {qualified_name!r})")
    body_end = headers[i + 1].start() if i + 1 < len(headers) else len(source)
    body = source[header.end():body_end]
    is_module = (header.group(2) or "").strip() == "Module"
    found: dict[str, tuple[str, ...]] = {}
    for declaration in _DECLARATION.finditer(body):
      try:
        names = ast.literal_eval(declaration.group(2))
      except (ValueError, SyntaxError):
        names = None
      if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{where}: class {class_name} has a malformed {declaration.group(1)} "
                         f"line: {declaration.group(0).strip()!r}")
      found[declaration.group(1)] = tuple(names)
    if is_module and "__parameters__" not in found:
      raise ValueError(f"{where}: module class {class_name} declares no __parameters__")
    # Archives from before buffers were declared separately list none: torch loads them without.
    return is_module, found.get("__parameters__", ()), found.get("__buffers__", ())


def _flatten_script_module(obj: TorchScriptObject, prefix: str, declarations: _ClassDeclarations,
                           out: dict[str, np.ndarray], source: str, active: set[int]) -> None:
  """Adds `obj`'s parameters and buffers, then its submodules', to `out` (state_dict order)."""
  where = prefix[:-1] or "the root module"
  if id(obj) in active:
    raise ValueError(f"{source}: module {where} contains itself")
  is_module, parameters, buffers = declarations(obj.qualified_name)
  if not is_module:
    return
  state = obj.state
  if not isinstance(state, dict):
    raise ValueError(f"{source}: module {where} ({obj.qualified_name}) stores its state as "
                     f"{type(state).__name__}, not an attribute dict; cannot read its tensors")
  for name in parameters + buffers:
    if name not in state:
      raise ValueError(f"{source}: module {where} ({obj.qualified_name}) declares {name!r} but "
                       "the pickle has no such attribute")
    value = state[name]
    if value is None:  # An optional parameter left unset, e.g. a Linear without bias.
      continue
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{source}: {prefix}{name} should be a tensor, found "
                       f"{type(value).__name__}")
    out[prefix + name] = value
  active.add(id(obj))
  for name, value in state.items():
    if isinstance(value, TorchScriptObject):
      _flatten_script_module(value, f"{prefix}{name}.", declarations, out, source, active)
  active.discard(id(obj))


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
    ValueError: not a TorchScript archive (a plain `torch.save` file), truncated, or its module
      tree or class declarations are not as `torch.jit.save` writes them.
  """
  path = pathlib.Path(path)
  with _TorchZip(path) as archive:
    if not archive.is_torchscript:
      raise ValueError(f"{path}: not a TorchScript archive (no {archive.prefix}constants.pkl and "
                       f"no {archive.prefix}code/); it is a torch.save checkpoint: read it with "
                       "load_torch_checkpoint")
    root = _unpickle(archive.data_pickle(), str(path), archive.storage, torchscript=True)
    if not isinstance(root, TorchScriptObject):
      raise ValueError(f"{path}: data.pkl holds {type(root).__name__}, expected a TorchScript "
                       "module object (__torch__.*)")
    out: dict[str, np.ndarray] = {}
    _flatten_script_module(root, "", _ClassDeclarations(archive), out, str(path), set())
  return out


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
