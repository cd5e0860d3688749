"""PyTorch files: zip checkpoints (`torch.save`, torch >= 1.6) and TorchScript archives
(`torch.jit.save`), read through the restricted unpickler; torch is never imported.

A checkpoint's tensors are rebuilt as numpy arrays from the raw storages in the zip, every offset,
size and stride checked against the storage first. A TorchScript archive's module tree is
flattened into `{dotted.name: array}` of the parameters and buffers its `code/` declares (read as
text; nothing in `code/` is compiled or run).
"""

import ast
import pathlib
import re
import zipfile
from typing import Any

import numpy as np

from posediff_jax.safe_load import reading
from posediff_jax.safe_load import unpickler

_MAX_SCRIPT_MODULES = 100_000  # module visits while flattening a TorchScript tree


class _RecordError(reading.ReadError):
  """A record of a torch zip archive is missing or cannot be read (never leaves this package)."""

  def __init__(self, path: pathlib.Path, member: str, detail: str):
    self.member, self.detail = member, detail
    super().__init__(f"{path}: record {member!r} {detail}")




class _TorchZip:
  """An open torch zip archive (`torch.save` or `torch.jit.save`): its records and storages.

  Attributes:
    prefix: the archive's top folder with a trailing '/' ('' if the records sit at the root).
    names: every record name.
    storage_bytes: bytes of the storages read so far.
    copy_budget: bytes that tensors may still copy out of them (see `reading.COPY_FACTOR`).
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
    self._storages: dict[str, unpickler.Storage] = {}
    self.storage_bytes = 0
    self.copy_budget = reading.COPY_ALLOWANCE

  def _open(self) -> None:
    path = self.path
    try:
      self._zip = zipfile.ZipFile(self._file)
      self._infos = {info.filename: info for info in self._zip.infolist()}
    except reading.ZIP_ERRORS as e:
      raise reading.ReadError(
          f"{path}: not a torch zip checkpoint (truncated, corrupt, or saved by torch < 1.6 with "
          "_use_new_zipfile_serialization=False; re-save it with a recent torch) "
          f"({type(e).__name__}: {e})") from e
    self.names = list(self._infos)
    pickles = [n for n in self.names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise reading.ReadError(f"{path}: expected one data.pkl in the torch archive, found "
                              f"{reading.short(pickles) if pickles else 'none'}")
    self.prefix = pickles[0][: -len("data.pkl")]
    byteorder_name = self.prefix + "byteorder"
    if byteorder_name in self._infos:
      byteorder = bytes(self.read(byteorder_name)).strip()
      if byteorder not in (b"little", b""):
        raise reading.ReadError(
            f"{path}: byteorder record says {reading.short(byteorder)}; only little-endian "
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
      raise reading.ReadError(str(e)) from (e.__cause__ or e)

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
        data = reading.read_chunks(fp, info.file_size + 1)
    except reading.ZIP_ERRORS as e:
      raise _RecordError(self.path, member, f"cannot be read ({type(e).__name__}: {e})") from e
    if len(data) != info.file_size:
      raise _RecordError(self.path, member,
                         f"holds {len(data)} bytes, its zip entry says {info.file_size}")
    return data

  def data_pickle(self) -> bytes:
    return bytes(self.read(self.prefix + "data.pkl"))

  def storage(self, key: str, dtype: np.dtype, numel, tensor_index: int) -> unpickler.Storage:
    """The flat storage `data/<key>`: [numel] elements of `dtype`, checked against its bytes."""
    member = f"{self.prefix}data/{key}"
    source = str(self.path)
    cached = self._storages.get(key)
    if cached is not None:
      if cached.dtype != dtype or cached.numel != numel:
        raise unpickler.TensorError(
            source, member, f"referenced as {reading.short(numel)} x {dtype} after "
            f"{cached.numel} x {cached.dtype}: torch writes one type and size per "
            "storage", tensor_index)
      return cached
    if not reading.is_index(numel):
      raise unpickler.TensorError(
          source, member, f"element count {reading.short(numel)} is not a non-negative "
          "integer", tensor_index)
    info = self._infos.get(member)
    if info is None:
      raise unpickler.TensorError(source, member, "is missing from the archive (truncated file?)",
                                  tensor_index)
    if info.file_size % dtype.itemsize:
      raise unpickler.TensorError(
          source, member, f"holds {info.file_size} bytes, not a multiple of the "
          f"{dtype.itemsize}-byte {dtype} elements", tensor_index)
    if info.file_size != numel * dtype.itemsize:
      raise unpickler.TensorError(source, member, f"holds {info.file_size} bytes, expected "
                                  f"{numel * dtype.itemsize} ({numel} x {dtype})", tensor_index)
    try:
      raw = self._read_record(member, numel * dtype.itemsize)
    except _RecordError as e:
      raise unpickler.TensorError(source, member, e.detail, tensor_index) from (e.__cause__ or e)
    array = np.frombuffer(bytes(raw), dtype=dtype)
    reading.check_bools(array, f"{source}: storage {member!r}")
    self.storage_bytes += array.nbytes
    self.copy_budget += reading.COPY_FACTOR * array.nbytes
    self._storages[key] = storage = unpickler.Storage(member, dtype, numel, array)
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
    return unpickler.unpickle(archive.data_pickle(), str(path), archive)


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
      raise reading.ReadError(
          f"{self._archive.path}: the source of TorchScript class {qualified_name!r} "
          f"({member!r}) is missing from the archive")
    source = bytes(self._archive.read(member)).decode("utf-8", errors="replace")
    headers = list(_CLASS_HEADER.finditer(source))
    for i, header in enumerate(headers):
      if header.group(1) == class_name:
        break
    else:
      raise reading.ReadError(f"{where} has no 'class {class_name}' (for {qualified_name!r})")
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
        raise reading.ReadError(
            f"{where}: class {class_name} has a malformed {declaration.group(1)} "
            f"line: {reading.short(declaration.group(0).strip())}")
      found[declaration.group(1)] = tuple(names)
    if is_module and "__parameters__" not in found:
      raise reading.ReadError(f"{where}: module class {class_name} declares no __parameters__")
    # Archives from before buffers were declared separately list none: torch loads them without.
    return is_module, found.get("__parameters__", ()), found.get("__buffers__", ())


def _flatten_script_module(root: unpickler.TorchScriptObject, declarations: _ClassDeclarations,
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
      raise reading.ReadError(f"{source}: module {where} contains itself")
    visits += 1
    if visits > _MAX_SCRIPT_MODULES:
      raise reading.ReadError(
          f"{source}: the module tree has more than {_MAX_SCRIPT_MODULES} modules "
          "(shared submodules nested many levels deep?)")
    is_module, parameters, buffers = declarations(obj.qualified_name)
    if not is_module:
      continue
    state = obj.state
    if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
      raise reading.ReadError(
          f"{source}: module {where} ({obj.qualified_name}) stores its state as "
          f"{reading.describe(state)}, not an attribute dict; cannot read its tensors")
    for name in parameters + buffers:
      if name not in state:
        raise reading.ReadError(
            f"{source}: module {where} ({obj.qualified_name}) declares {name!r} but "
            "the pickle has no such attribute")
      value = state[name]
      if value is None:  # An optional parameter left unset, e.g. a Linear without bias.
        continue
      if not isinstance(value, np.ndarray):
        raise reading.ReadError(
            f"{source}: {prefix}{name} should be a tensor, found {reading.describe(value)}")
      out[prefix + name] = value
    active.add(id(obj))
    stack.append(("exit", obj, prefix))
    children = [(name, value) for name, value in state.items()
                if isinstance(value, unpickler.TorchScriptObject)]
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
      raise reading.ReadError(
          f"{path}: not a TorchScript archive (no {archive.prefix}constants.pkl and "
          f"no {archive.prefix}code/); it is a torch.save checkpoint: read it with "
          "load_torch_checkpoint")
    root = unpickler.unpickle(archive.data_pickle(), str(path), archive, torchscript=True)
    if not isinstance(root, unpickler.TorchScriptObject):
      raise reading.ReadError(
          f"{path}: data.pkl holds {reading.describe(root)}, expected a TorchScript module "
          "object (__torch__.*)")
    return _flatten_script_module(root, _ClassDeclarations(archive), str(path))
