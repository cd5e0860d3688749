"""Seeded fuzzing of `posediff_jax.safe_load` with hostile and damaged files.

Every case builds a tiny file in memory (a torch zip `.pth`, a TorchScript `.pt`, a pickled `.npz`
or a `.npy`), damages or forges it, writes it to a temporary folder and reads it. Each case must
either load or raise exactly `safe_load.ReadError` / `safe_load.UnsafePickleError` (one line,
naming the file); nothing from the file may run (a canary file that the hostile pickles would
create must never appear); and whatever loads must come from the file: every tensor element is an
element of a storage record (storages hold values that appear nowhere else), `.npy` / `.npz`
arrays are byte for byte in the file's data. Crafted tensor extents are also compared with an
independent oracle.

A failure names its family, case number and what was done to the file; the case is rebuilt from
`SEED` and that number (`np.random.default_rng([SEED, family, case])`).
"""

import collections
import io
import math
import pickle
import struct
import zipfile

import numpy as np
import pytest

from posediff_jax import safe_load
from posediff_jax.safe_load import reading

SEED = 20240616
CASES = {"pth_extents": 800, "pth_mutations": 600, "torchscript_mutations": 300,
         "npz_mutations": 300, "npy_mutations": 300}  # plus the hostile pickles, ~100 cases

_READER_ERRORS = (safe_load.ReadError, safe_load.UnsafePickleError)
_FAMILY_INDEX = {name: i for i, name in enumerate(CASES)}
_DATE = (2020, 1, 1, 0, 0, 0)

# (numpy dtype, torch storage class)
_STORAGES = [(np.float32, "FloatStorage"), (np.float64, "DoubleStorage"),
             (np.int64, "LongStorage"), (np.int32, "IntStorage"), (np.int16, "ShortStorage"),
             (np.uint8, "ByteStorage"), (np.bool_, "BoolStorage")]


def _rng(family: str, case: int) -> np.random.Generator:
  return np.random.default_rng([SEED, _FAMILY_INDEX.get(family, 99), case])


def _storage_values(dtype, numel: int, key: int) -> np.ndarray:
  """[numel] values that no other storage of the same dtype holds (bool: alternating)."""
  dtype = np.dtype(dtype)
  if dtype.kind == "b":
    return np.arange(numel) % 2 == 1
  if dtype.itemsize == 1:
    return (np.arange(numel) * 3 + 31 * key + 1).astype(dtype)
  if dtype.kind == "f":
    return (1000.0 * (key + 1) + 7.0 * np.arange(numel) + 0.5).astype(dtype)
  return (1000 * (key + 1) + 7 * np.arange(numel)).astype(dtype)


# --------------------------------------------------------------------------------------------------
# A protocol-2 pickle emitter: any value anywhere (bools, floats, strings as sizes; any global).


class _Tensor:

  def __init__(self, key, storage, numel, offset, size, stride):
    self.key, self.storage, self.numel = key, storage, numel
    self.offset, self.size, self.stride = offset, size, stride


class _Module:

  def __init__(self, qualified_name, attributes):
    self.qualified_name, self.attributes = qualified_name, attributes


class _Global:

  def __init__(self, module, name):
    self.module, self.name = module, name


class _Call:
  """`func(*args)` in the pickle, func a global."""

  def __init__(self, module, name, *args):
    self.func, self.args = _Global(module, name), args


class _Pickle:

  def __init__(self):
    self.out = bytearray(b"\x80\x02")

  def global_(self, module, name):
    self.out += b"c" + f"{module}\n{name}\n".encode()

  def value(self, v):
    if isinstance(v, _Tensor):
      self.global_("torch._utils", "_rebuild_tensor_v2")
      self.out += b"(("
      storage = v.storage if isinstance(v.storage, _Global) else _Global("torch", v.storage)
      for part in ("storage", storage, v.key, "cpu", v.numel):
        self.value(part)
      self.out += b"tQ"  # TUPLE BINPERSID
      for part in (v.offset, v.size, v.stride, False):
        self.value(part)
      self.global_("collections", "OrderedDict")
      self.out += b")RtR"  # OrderedDict() hooks; _rebuild_tensor_v2(...)
    elif isinstance(v, _Module):
      self.global_(*v.qualified_name.rsplit(".", 1))
      self.out += b")\x81}("  # EMPTY_TUPLE NEWOBJ EMPTY_DICT MARK
      for name, attr in v.attributes.items():
        self.value(name)
        self.value(attr)
      self.out += b"ub"  # SETITEMS BUILD
    elif isinstance(v, _Global):
      self.global_(v.module, v.name)
    elif isinstance(v, _Call):
      self.value(v.func)
      self.out += b"("
      for a in v.args:
        self.value(a)
      self.out += b"tR"
    elif isinstance(v, collections.OrderedDict):
      self.global_("collections", "OrderedDict")
      self.out += b")R("
      for k, x in v.items():
        self.value(k)
        self.value(x)
      self.out += b"u"
    elif isinstance(v, dict):
      self.out += b"}("
      for k, x in v.items():
        self.value(k)
        self.value(x)
      self.out += b"u"
    elif isinstance(v, list):
      self.out += b"]("
      for x in v:
        self.value(x)
      self.out += b"e"
    elif isinstance(v, tuple):
      self.out += b"("
      for x in v:
        self.value(x)
      self.out += b"t"
    else:  # str, bytes, int, float, bool, None: the standard pickler's opcodes (and memo puts)
      self.out += pickle.dumps(v, protocol=2)[2:-1]

  def dumps(self, v) -> bytes:
    self.value(v)
    return bytes(self.out + b".")


def _dumps(v) -> bytes:
  return _Pickle().dumps(v)


def _zip(records: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    for name, data in records.items():
      z.writestr(zipfile.ZipInfo(name, date_time=_DATE), data, compress_type=compression)
  return buf.getvalue()


def _torch_records(data_pkl: bytes, storages: dict[str, bytes]) -> dict[str, bytes]:
  records = {"archive/data.pkl": data_pkl, "archive/byteorder": b"little",
             "archive/version": b"3\n"}
  records.update({f"archive/data/{key}": raw for key, raw in storages.items()})
  return records


def _npy(header: str, payload: bytes, version=(1, 0)) -> bytes:
  """An `.npy` stream with this header dict text, padded as numpy pads it."""
  text = header.encode("latin1")
  width = 2 if version == (1, 0) else 4
  pad = -(8 + width + len(text) + 1) % 64
  text += b" " * pad + b"\n"
  return (b"\x93NUMPY" + bytes(version) + len(text).to_bytes(width, "little") + text + payload)


# --------------------------------------------------------------------------------------------------
# Mutations.


def _flip(data: bytes, rng, start=0, stop=None, count=1) -> tuple[bytes, str]:
  stop = len(data) if stop is None else stop
  if stop <= start:
    return data, "nothing to flip"
  out, where = bytearray(data), []
  for _ in range(count):
    i = int(rng.integers(start, stop))
    mask = int(rng.integers(1, 256))
    out[i] ^= mask
    where.append(f"{i}^{mask:#04x}")
  return bytes(out), "flipped byte(s) " + ", ".join(where)


def _zip_regions(data: bytes) -> dict[str, list[tuple[int, int]]]:
  """Byte ranges of a zip: local headers, member data, central directory, end record."""
  archive = zipfile.ZipFile(io.BytesIO(data))
  end = data.rfind(b"PK\x05\x06")
  regions = {"local header": [], "member data": [],
             "central directory": [(archive.start_dir, end)], "end record": [(end, len(data))]}
  for info in archive.infolist():
    offset = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[offset + 26:offset + 30])
    start = offset + 30 + name_len + extra_len
    regions["local header"].append((offset, start))
    regions["member data"].append((start, start + info.compress_size))
  return regions


def _mutate_zip(data: bytes, rng) -> tuple[bytes, str]:
  """Flips bytes in one part of the zip structure, or truncates it."""
  choice = int(rng.integers(0, 6))
  if choice == 5:
    cut = int(rng.integers(0, len(data)))
    return data[:cut], f"zip truncated to {cut} of {len(data)} bytes"
  regions = _zip_regions(data)
  name = list(regions)[choice % 4]
  spans = [s for s in regions[name] if s[1] > s[0]] or [(0, len(data))]
  start, stop = spans[int(rng.integers(0, len(spans)))]
  out, what = _flip(data, rng, start, stop, count=int(rng.integers(1, 3)))
  return out, f"zip {name}: {what}"


def _mutate_bytes(data: bytes, rng) -> tuple[bytes, str]:
  """Flips, truncates, deletes or inserts bytes of a pickle or `.npy` stream."""
  choice = int(rng.integers(0, 5))
  if choice <= 1:
    return _flip(data, rng, count=int(rng.integers(1, 4)))
  if choice == 2:
    cut = int(rng.integers(0, len(data)))
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"
  i = int(rng.integers(0, len(data)))
  if choice == 3:
    return data[:i] + data[i + 1:], f"deleted byte {i}"
  b = int(rng.integers(0, 256))
  return data[:i] + bytes([b]) + data[i:], f"inserted byte {b:#04x} at {i}"


# --------------------------------------------------------------------------------------------------
# Checking one case.


def _arrays_in(obj) -> list[np.ndarray]:
  """Every non-object array (and numpy scalar) reachable from `obj`."""
  out, stack, seen = [], [obj], set()
  while stack:
    o = stack.pop()
    if id(o) in seen:
      continue
    seen.add(id(o))
    if isinstance(o, np.ndarray):
      if o.dtype.hasobject:
        stack.extend(o.ravel().tolist())
      else:
        out.append(o)
    elif isinstance(o, np.generic):
      out.append(np.asarray(o))
    elif isinstance(o, dict):
      stack.extend(o.values())
    elif isinstance(o, (list, tuple, set, frozenset)):
      stack.extend(o)
    elif isinstance(o, safe_load.TorchScriptObject):
      stack.append(o.state)
  return out


def _read(load, path, what: str):
  """(result, None) or (None, error); anything but the reader's errors fails the test."""
  try:
    return load(path), None
  except _READER_ERRORS as e:
    assert type(e) in _READER_ERRORS, f"{what}: {type(e).__name__}: {e}"
    message = str(e)
    assert "\n" not in message, f"{what}: a multi-line message: {message!r}"
    assert path.name in message, f"{what}: the message does not name the file: {message}"
    return None, e
  except Exception as e:  # pylint: disable=broad-except
    raise AssertionError(f"{what}: raised {type(e).__name__} instead of a ReadError: {e}") from e


def _check_from_storages(result, records: list[bytes], what: str) -> None:
  """Every tensor is an independent array whose elements are elements of the storage records.

  Compared as bytes, element-aligned: a tensor may read a record with any type the file declares
  (consistently), but never a byte from outside the records.
  """
  chunks: dict[int, set[bytes]] = {}
  for a in _arrays_in(result):
    assert a.flags.writeable and a.flags.owndata, f"{what}: {a.shape} is a view or read-only"
    if a.size == 0:
      continue
    k = a.itemsize
    if k not in chunks:
      chunks[k] = {r[i:i + k] for r in records for i in range(0, len(r) - k + 1, k)}
    raw = a.tobytes()
    outside = [raw[i:i + k] for i in range(0, len(raw), k) if raw[i:i + k] not in chunks[k]]
    assert not outside, (f"{what}: elements {outside[:3]} of a {a.shape} {a.dtype} array are "
                         "in no storage record")


def _check_from_bytes(result, blob: bytes, what: str) -> None:
  """Every array's bytes (C or Fortran order) appear in the file's own data."""
  for a in _arrays_in(result):
    if a.size == 0:
      continue
    assert a.flags.writeable or a.ndim == 0, f"{what}: {a.shape} {a.dtype} array is read-only"
    assert a.tobytes("C") in blob or a.tobytes("F") in blob, (
        f"{what}: the bytes of a {a.shape} {a.dtype} array are not in the file")


@pytest.fixture(name="canary")
def _canary(tmp_path):
  path = tmp_path / "canary"
  yield path
  assert not path.exists(), "a pickle ran code"


# --------------------------------------------------------------------------------------------------
# Crafted tensor extents, checked against an oracle.

_HOSTILE_INTS = [-1, -2, 2**31, 2**40, 2**62, 2**63, 2**64, True, False, 2.0, 1.5, "2", None]


def _pick(rng, valid: list, hostile: list = _HOSTILE_INTS, p_hostile: float = 0.12):
  pool = hostile if rng.random() < p_hostile else valid
  return pool[int(rng.integers(0, len(pool)))]


def _is_index(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _oracle(spec, dtype: np.dtype, record: bytes, budget: int):
  """(expected array, or None if it must be refused; bytes copied) for one crafted tensor.

  Written from the rules, not from the reader: the record must hold exactly the declared
  elements, every index a non-negative int, the last element inside, the copy within budget.
  """
  itemsize = dtype.itemsize
  offset, size, stride, declared = spec.offset, spec.size, spec.stride, spec.numel
  if not _is_index(declared) or len(record) != declared * itemsize:
    return None, 0
  if not _is_index(offset):
    return None, 0
  if not all(isinstance(x, (tuple, list)) and all(_is_index(n) for n in x) for x in (size, stride)):
    return None, 0
  if len(size) != len(stride):
    return None, 0
  count = math.prod(size)
  if count == 0:
    if math.prod(n for n in size if n) * itemsize >= 2**62:
      return None, 0
    return np.empty(tuple(size), dtype), 0
  if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= declared:
    return None, 0
  if count * itemsize > budget:
    return None, 0
  values = np.frombuffer(record, dtype)
  index = np.full(tuple(size), offset, dtype=np.int64)
  for axis, (n, s) in enumerate(zip(size, stride)):
    shape = [1] * len(size)
    shape[axis] = n
    index = index + (np.arange(n) * (s if n > 1 else 0)).reshape(shape)  # any stride if n == 1
  return values[index], count * itemsize


def _extent_case(rng):
  """A checkpoint {'w': tensor[, 'v': tensor]} on one storage, with forged or valid layout."""
  dtype, storage = _STORAGES[int(rng.integers(0, len(_STORAGES)))]
  numel = int(rng.integers(0, 9))
  values = _storage_values(dtype, numel, 0)
  raw = values.tobytes()
  record = raw
  note = []
  r = rng.random()
  if r < 0.05 and raw:
    record = raw[:-int(rng.integers(1, values.itemsize + 1))]
    note.append(f"record cut to {len(record)} bytes")
  elif r < 0.10:
    record = raw + bytes(int(rng.integers(1, values.itemsize + 1)))
    note.append(f"record padded to {len(record)} bytes")
  declared = _pick(rng, [numel], [numel + 1, max(numel - 1, 0), -1, True, 2.0, 2**40],
                   p_hostile=0.08)

  def layout():
    ndim = int(rng.integers(0, 4))
    size = [_pick(rng, [0, 1, 1, 2, 2, 3, max(numel, 1)],
                  _HOSTILE_INTS + [numel + 1, 2**40], 0.08) for _ in range(ndim)]
    stride = [_pick(rng, [0, 1, 1, 2, 3], _HOSTILE_INTS + [2**40], 0.08) for _ in range(ndim)]
    if rng.random() < 0.05:  # the forged shape: 2^40 elements
      size, stride = [2**40], [int(rng.integers(0, 2))]
    if rng.random() < 0.04:
      stride = stride + [1]
    offset = _pick(rng, [0, 0, 0, 1, 2, max(numel - 1, 0), numel], p_hostile=0.08)
    size, stride = tuple(size), tuple(stride)
    if rng.random() < 0.03:
      size = list(size) if rng.random() < 0.5 else (size[0] if size else 3)
    return _Tensor("0", storage, declared, offset, size, stride)

  tensors = {"w": layout()}
  if rng.random() < 0.25:
    second = layout()
    second.numel = declared
    if rng.random() < 0.3:
      _, name = _STORAGES[int(rng.integers(0, len(_STORAGES)))]
      second.storage = name
      note.append(f"'v' reads the storage as {name}")
    elif rng.random() < 0.2:
      second.numel = numel + 1
      note.append("'v' declares another numel")
    tensors["v"] = second
  return tensors, values, numel, record, note


def test_crafted_tensor_extents(tmp_path):
  """Sizes, strides, offsets and element counts beyond, inside and around the storage."""
  path = tmp_path / "case.pth"
  loaded = refused = 0
  for case in range(CASES["pth_extents"]):
    rng = _rng("pth_extents", case)
    tensors, values, numel, record, note = _extent_case(rng)
    desc = "; ".join([f"{k}: size {t.size} stride {t.stride} offset {t.offset} of "
                      f"{t.storage}[{t.numel}]" for k, t in tensors.items()] + note)
    what = f"pth_extents case {case} (seed {SEED}): {numel}-element record, {desc}"
    path.write_bytes(_zip(_torch_records(_dumps(dict(tensors)), {"0": record})))
    # The oracle: every tensor must be valid on its own storage, within the copy budget.
    expected, budget = {}, reading.COPY_ALLOWANCE + reading.COPY_FACTOR * len(record)
    first = tensors["w"]
    for key, spec in tensors.items():
      same_storage = (spec.storage == first.storage and spec.numel == first.numel)
      array, copied = (_oracle(spec, values.dtype, record, budget) if same_storage
                       else (None, 0))
      if array is None:
        expected = None
        break
      expected[key], budget = array, budget - copied
    result, error = _read(safe_load.load_torch_checkpoint, path, what)
    if expected is None:
      assert error is not None, f"{what}: loaded, but the oracle refuses it"
      message = str(error)
      assert "['w']" in message or "['v']" in message, (
          f"{what}: the message does not name the tensor: {message}")
      assert "data/0" in message, f"{what}: the message does not name the storage: {message}"
      refused += 1
      continue
    assert error is None, f"{what}: refused a valid tensor: {error}"
    assert list(result) == list(expected), what
    for key, array in expected.items():
      got = result[key]
      assert got.dtype == array.dtype and got.shape == array.shape, (
          f"{what}: {key} is {got.shape} {got.dtype}, expected {array.shape} {array.dtype}")
      if array.size:
        np.testing.assert_array_equal(got, array, err_msg=what)
    _check_from_storages(result, [record], what)
    loaded += 1
  # Both outcomes must be well represented, or the generator has drifted.
  assert loaded > CASES["pth_extents"] // 5 and refused > CASES["pth_extents"] // 5, (
      loaded, refused)


# --------------------------------------------------------------------------------------------------
# Damaged torch checkpoints.


def _checkpoint(rng):
  """A small torch.save-like object: tensors (some sharing a storage, some transposed views)."""
  storages, tensors = {}, []
  for key in range(int(rng.integers(1, 4))):
    dtype, storage = _STORAGES[int(rng.integers(0, len(_STORAGES)))]
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    values = _storage_values(dtype, rows * cols, key)
    storages[str(key)] = values.tobytes()
    tensors.append(_Tensor(str(key), storage, rows * cols, 0, (rows, cols), (cols, 1)))
    if rng.random() < 0.4:  # the transpose, sharing the storage
      tensors.append(_Tensor(str(key), storage, rows * cols, 0, (cols, rows), (1, cols)))
    if rng.random() < 0.3:  # the last row, at an offset
      tensors.append(_Tensor(str(key), storage, rows * cols, (rows - 1) * cols, (cols,), (1,)))
  state = collections.OrderedDict((f"layer{i}.weight", t) for i, t in enumerate(tensors))
  obj = {"model_pos": state, "epoch": int(rng.integers(0, 100)), "lr": 1e-3,
         "names": ["a", "b"], "shape": (3, 4)}
  if rng.random() < 0.3:
    obj = [state, {"state": {}, "param_groups": [{"lr": 0.1}]}, 3]
  return obj, storages


def test_damaged_torch_checkpoints(tmp_path):
  """Flipped, cut, inserted pickle bytes; flipped or cut zip headers, directories and data."""
  path = tmp_path / "case.pth"
  outcomes = collections.Counter()
  for case in range(CASES["pth_mutations"]):
    rng = _rng("pth_mutations", case)
    obj, storages = _checkpoint(rng)
    data_pkl = _dumps(obj)
    compression = zipfile.ZIP_DEFLATED if rng.random() < 0.3 else zipfile.ZIP_STORED
    kind = int(rng.integers(0, 4))
    if kind <= 1:  # the pickle itself, in a sound zip
      data_pkl, change = _mutate_bytes(data_pkl, rng)
      raw = _zip(_torch_records(data_pkl, storages), compression)
    elif kind == 2:
      raw, change = _mutate_zip(_zip(_torch_records(data_pkl, storages), compression), rng)
    else:  # a storage record cut short or missing
      key = str(int(rng.integers(0, len(storages))))
      if rng.random() < 0.5:
        cut = int(rng.integers(0, len(storages[key]) + 1))
        storages = dict(storages, **{key: storages[key][:cut]})
        change = f"storage {key} cut to {cut} bytes"
      else:
        storages = {k: v for k, v in storages.items() if k != key}
        change = f"storage {key} removed"
      raw = _zip(_torch_records(data_pkl, storages), compression)
    what = f"pth_mutations case {case} (seed {SEED}, compression {compression}): {change}"
    path.write_bytes(raw)
    result, error = _read(safe_load.load_torch_checkpoint, path, what)
    outcomes["refused" if error else "loaded"] += 1
    if error is None:
      _check_from_storages(result, list(storages.values()), what)
  assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


# --------------------------------------------------------------------------------------------------
# Damaged TorchScript archives.

_SCRIPT_CODE = """class Net(Module):
  __parameters__ = ["weight", "bias", ]
  __buffers__ = ["steps", ]
  weight : Tensor
  bias : Tensor
  steps : Tensor
  sub : __torch__.net.Sub
  def forward(self: __torch__.net.Net, x: Tensor) -> Tensor:
    return torch.add(torch.matmul(x, self.weight), self.bias)
class Sub(Module):
  __parameters__ = ["scale", ]
  __buffers__ = []
  scale : Tensor
"""


def _torchscript(rng):
  keys = iter(range(10))
  storages = {}

  def tensor(dtype, storage, shape):
    key = next(keys)
    values = _storage_values(dtype, math.prod(shape), key)
    storages[str(key)] = values.tobytes()
    strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    return _Tensor(str(key), storage, values.size, 0, tuple(shape), strides)

  rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 4))
  sub = _Module("__torch__.net.Sub", {"training": False,
                                      "scale": tensor(np.float32, "FloatStorage", (cols,))})
  root = _Module("__torch__.net.Net", {
      "training": False, "weight": tensor(np.float32, "FloatStorage", (rows, cols)),
      "bias": tensor(np.float64, "DoubleStorage", (cols,)),
      "steps": tensor(np.int64, "LongStorage", ()), "sub": sub,
      "mask": tensor(np.uint8, "ByteStorage", (2, 2))})
  records = {"net/data.pkl": _dumps(root), "net/constants.pkl": b"\x80\x02).",
             "net/version": b"3\n", "net/code/__torch__/net.py": _SCRIPT_CODE.encode()}
  records.update({f"net/data/{k}": v for k, v in storages.items()})
  return records, list(storages.values())


def test_damaged_torchscript_archives(tmp_path):
  path = tmp_path / "case.pt"
  outcomes = collections.Counter()
  for case in range(CASES["torchscript_mutations"]):
    rng = _rng("torchscript_mutations", case)
    records, storages = _torchscript(rng)
    kind = int(rng.integers(0, 4))
    if kind <= 1:
      records["net/data.pkl"], change = _mutate_bytes(records["net/data.pkl"], rng)
      raw = _zip(records)
    elif kind == 2:
      code = records["net/code/__torch__/net.py"]
      records["net/code/__torch__/net.py"], change = _flip(code, rng, count=3)
      change = "code/: " + change
      raw = _zip(records)
    else:
      raw, change = _mutate_zip(_zip(records, zipfile.ZIP_DEFLATED if rng.random() < 0.3
                                     else zipfile.ZIP_STORED), rng)
    what = f"torchscript_mutations case {case} (seed {SEED}): {change}"
    path.write_bytes(raw)
    result, error = _read(safe_load.load_torchscript_state_dict, path, what)
    outcomes["refused" if error else "loaded"] += 1
    if error is None:
      assert all(isinstance(k, str) for k in result), what
      _check_from_storages(result, storages, what)
  assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


def test_undamaged_torchscript_archive_loads(tmp_path):
  records, _ = _torchscript(_rng("torchscript_mutations", 0))
  path = tmp_path / "net.pt"
  path.write_bytes(_zip(records))
  loaded = safe_load.load_torchscript_state_dict(path)
  assert list(loaded) == ["weight", "bias", "steps", "sub.scale"]
  assert loaded["steps"].shape == () and loaded["steps"].dtype == np.int64


# --------------------------------------------------------------------------------------------------
# Damaged .npz and .npy files.


def _data_arrays(rng) -> dict:
  """VideoPose3D-like members: pickled dicts of arrays, plain arrays of several layouts."""
  counter = iter(range(1000))

  def array(shape, dtype=np.float32):
    n = math.prod(shape)
    return (1000.0 * (next(counter) + 1) + np.arange(n) + 0.25).astype(dtype).reshape(shape)

  frames = int(rng.integers(1, 4))
  positions = {"S1": {"Walking": array((frames, 4, 3)), "Sitting 1": array((frames, 4, 3))},
               "S5": {"Eating": array((frames, 4, 3), np.float64)}}
  cameras = {"S1": {"Walking": [array((frames, 4, 2)) for _ in range(2)]}}
  return {
      "positions_3d": np.array(positions, dtype=object),
      "positions_2d": np.array(cameras, dtype=object),
      "metadata": np.array({"layout_name": "h36m", "num_joints": 4,
                            "keypoints_symmetry": [[1, 2], [3]]}, dtype=object),
      "plain": array((2, 3), np.float64),
      "fortran": np.asfortranarray(array((3, 2))),
      "ints": np.arange(5, dtype=">i4") * 7 + 3,
      "flags": np.array([True, False, True]),
      "names": np.array(["ab", "c"]),
  }


_FORGED_HEADERS = [
    "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (True, 2), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (2.0,), }",
    "{'descr': '<f8', 'fortran_order': 1, 'shape': (2, 3), }",
    "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': '<U1000000000', 'fortran_order': False, 'shape': (2,), }",
    "{'descr': '|V0', 'fortran_order': False, 'shape': (1099511627776,), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (1099511627776,), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (), }",
    "{'descr': [('a', '<f8'), ('b', '|O')], 'fortran_order': False, 'shape': (2,), }",
    "{'descr': ('<f8', (3,)), 'fortran_order': False, 'shape': (2,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'extra': 1, }",
    "{'descr': '<f8', 'shape': (2, 3), }",
    "[1, 2, 3]",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (" + "(" * 200 + ")" * 200 + ",), }",
    "__import__('os').system('true')",
]


def _forge_header(member: bytes, rng) -> tuple[bytes, str]:
  header = _FORGED_HEADERS[int(rng.integers(0, len(_FORGED_HEADERS)))]
  length = int.from_bytes(member[8:10], "little")
  version = (1, 0) if rng.random() < 0.8 else (2, 0)
  return _npy(header, member[10 + length:], version), f"header replaced by {header[:90]}"


def _mutate_npy(member: bytes, rng) -> tuple[bytes, str]:
  """A forged header, damage anywhere, or damage in the data (or pickle) after the header."""
  r = rng.random()
  if r < 0.25:
    return _forge_header(member, rng)
  if r < 0.5:
    return _mutate_bytes(member, rng)
  start = 10 + int.from_bytes(member[8:10], "little")
  data, change = _mutate_bytes(member[start:], rng)
  return member[:start] + data, f"data after the header: {change}"


def _npy_bytes(value) -> bytes:
  buf = io.BytesIO()
  np.save(buf, value, allow_pickle=True)
  return buf.getvalue()


def test_damaged_npz_files(tmp_path):
  path = tmp_path / "case.npz"
  outcomes = collections.Counter()
  for case in range(CASES["npz_mutations"]):
    rng = _rng("npz_mutations", case)
    members = {f"{k}.npy": _npy_bytes(v) for k, v in _data_arrays(rng).items()}
    compression = zipfile.ZIP_DEFLATED if rng.random() < 0.3 else zipfile.ZIP_STORED
    if rng.random() < 0.6:  # one member damaged inside a sound zip
      name = list(members)[int(rng.integers(0, len(members)))]
      members[name], change = _mutate_npy(members[name], rng)
      change = f"{name}: {change}"
      raw = _zip(members, compression)
    else:
      raw, change = _mutate_zip(_zip(members, compression), rng)
    what = f"npz_mutations case {case} (seed {SEED}, compression {compression}): {change}"
    path.write_bytes(raw)
    result, error = _read(safe_load.load_pickled_npz, path, what)
    outcomes["refused" if error else "loaded"] += 1
    if error is None:
      _check_from_bytes(result, b"".join(members.values()), what)
  assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


def test_damaged_npy_files(tmp_path):
  path = tmp_path / "case.npy"
  outcomes = collections.Counter()
  for case in range(CASES["npy_mutations"]):
    rng = _rng("npy_mutations", case)
    arrays = list(_data_arrays(rng).values())
    raw, change = _mutate_npy(_npy_bytes(arrays[int(rng.integers(0, len(arrays)))]), rng)
    if rng.random() < 0.1:
      raw, change = raw + b"\x00" * 8, change + "; 8 bytes appended"
    what = f"npy_mutations case {case} (seed {SEED}): {change}"
    path.write_bytes(raw)
    result, error = _read(safe_load.load_pickled_npy, path, what)
    outcomes["refused" if error else "loaded"] += 1
    if error is None:
      _check_from_bytes(result, raw, what)
  assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


# --------------------------------------------------------------------------------------------------
# Hostile pickles, in every container.


class _Reduce:
  """Pickles as `func(*args)` with an optional BUILD state, through the standard pickler."""

  def __init__(self, func, args, state=None):
    self.func, self.args, self.state = func, args, state

  def __reduce__(self):
    return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _hostile_pickles(canary) -> list[tuple[str, bytes]]:
  """(description, pickle) pairs that must all be refused."""
  touch = f"touch {canary}"
  python = f"open({str(canary)!r}, 'w').close()"
  reconstruct = np.empty(0).__reduce__()[0]
  out = [
      ("os.system", _dumps(_Call("os", "system", touch))),
      ("posix.system", _dumps(_Call("posix", "system", touch))),
      ("builtins.eval", _dumps(_Call("builtins", "eval", python))),
      ("__builtin__.eval", _dumps(_Call("__builtin__", "eval", python))),
      ("builtins.exec", _dumps(_Call("builtins", "exec", python))),
      ("subprocess.call", _dumps(_Call("subprocess", "call", ["touch", str(canary)]))),
      ("subprocess.Popen", _dumps(_Call("subprocess", "Popen", ["touch", str(canary)]))),
      ("subprocess.check_output",
       _dumps(_Call("subprocess", "check_output", ["touch", str(canary)]))),
      ("getattr(__import__('os'), 'system')", _dumps(_Call(
          "builtins", "getattr", _Call("builtins", "__import__", "os"), "system"))),
      ("importlib.import_module", _dumps(_Call("importlib", "import_module", "os"))),
      ("os.system as a tensor's offset", _dumps({"w": _Tensor(
          "0", "FloatStorage", 1, _Call("os", "system", touch), (1,), (1,))})),
      ("posix.system as a storage type", _dumps({"w": _Tensor(
          "0", _Global("posix", "system"), 1, 0, (1,), (1,))})),
      ("numpy runstring", _dumps(_Call("numpy.testing._private.utils", "runstring",
                                       python, {}))),
      ("protocol 0 INST os.system", f"(S'{touch}'\nios\nsystem\n.".encode()),
      ("protocol 4 STACK_GLOBAL os.system",
       b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(touch)]) + touch.encode()
       + b"\x85R."),
      ("EXT1 opcode (copyreg registry)", b"\x80\x02\x82\x01)R."),
      ("hex codec doubling", _dumps(_Call("_codecs", "encode", _Call(
          "_codecs", "encode", b"x" * 64, "hex_codec"), "hex_codec"))),
      ("copyreg._reconstructor", _dumps(_Call("copyreg", "_reconstructor",
                                              _Global("os", "system"), None, None))),
      ("torch.load", _dumps(_Call("torch", "load", "x.pth"))),
      ("numpy.ndarray called directly with 2^40 elements",
       _dumps(_Call("numpy", "ndarray", (2**40,)))),
      ("BUILD setting __defaults__ of numpy's RandomState constructor",
       _Pickle().dumps(_Global("numpy.random._pickle", "__randomstate_ctor"))[:-1]
       + b"N}X\x0c\x00\x00\x00__defaults__X\x01\x00\x00\x00x\x85s\x86b."),
      ("__torch__ class called with arguments", _dumps(_Call("__torch__.m", "M", touch))),
  ]
  # numpy objects whose pickled state numpy itself does not check.
  out += [
      ("dtype with a field 1000 bytes past its 4-byte item", pickle.dumps(_Reduce(
          np.dtype, ("V4", False, True),
          (3, "|", None, ("a",), {"a": (np.dtype("f8"), 1000)}, 4, 1, 0)), protocol=2)),
      ("float64 dtype flagged as holding objects", pickle.dumps(_Reduce(
          np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63)), protocol=2)),
      ("object array of 2^40 elements", pickle.dumps(_Reduce(
          reconstruct, (np.ndarray, (0,), b"b"), (1, (2**40,), np.dtype("O"), False, [1, 2])),
          protocol=2)),
      ("float array of 2^40 elements with 8 bytes", pickle.dumps(_Reduce(
          reconstruct, (np.ndarray, (0,), b"b"),
          (1, (2**40,), np.dtype("f8"), False, b"12345678")), protocol=2)),
      ("array of negative shape", pickle.dumps(_Reduce(
          reconstruct, (np.ndarray, (0,), b"b"), (1, (-1,), np.dtype("f8"), False, b"")),
          protocol=2)),
      ("numpy object scalar", pickle.dumps(np.float64(1.0), protocol=2).replace(
          b"f8", b"O8")),
  ]
  # RandomState as numpy pickles it, with a key position numpy stores unchecked.
  for pos in (10**6, -5):
    state = {"bit_generator": "MT19937", "state": {"key": np.arange(624, dtype=np.uint32),
                                                   "pos": pos}, "has_gauss": 0, "gauss": 0.0}
    out.append((f"MT19937 state position {pos}", pickle.dumps(
        _Reduce(np.random._pickle.__randomstate_ctor, ("MT19937",), state), protocol=2)))
  # A numpy array reused or passed on before its state is set, and a self-referencing state.
  head = _Pickle()
  head.global_("numpy._core.multiarray", "_reconstruct")
  head.global_("numpy", "ndarray")
  head.out += b"K\x00\x85C\x01b\x87R"  # _reconstruct(ndarray, (0,), b"b")
  pending = bytes(head.out)
  out += [
      ("array fetched from the memo before BUILD", pending + b"q\x01h\x01."),
      ("array duplicated before BUILD", pending + b"2."),
      ("array never given a state", pending + b"."),
      ("array passed to _rebuild_parameter before BUILD",
       b"\x80\x02ctorch._utils\n_rebuild_parameter\n" + pending[2:] + b"\x85R."),
  ]
  return out


def _containers(payload: bytes) -> list[tuple[str, str, bytes, object]]:
  """The payload as a .pth data.pkl, a TorchScript data.pkl, an .npz member and a .npy file."""
  header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
  script = {"m/data.pkl": payload, "m/constants.pkl": b"\x80\x02).", "m/version": b"3\n",
            "m/code/__torch__/m.py": b"class M(Module):\n  __parameters__ = []\n"}
  return [
      ("pth", "case.pth", _zip(_torch_records(payload, {"0": b"\x00" * 4})),
       safe_load.load_torch_checkpoint),
      ("torchscript", "case.pt", _zip(script), safe_load.load_torchscript_state_dict),
      ("npz", "case.npz", _zip({"positions_3d.npy": _npy(header, payload)}),
       safe_load.load_pickled_npz),
      ("npy", "case.npy", _npy(header, payload), safe_load.load_pickled_npy),
  ]


def test_hostile_pickles_never_run_and_are_refused(tmp_path, canary):
  randomstate_defaults = np.random._pickle.__randomstate_ctor.__defaults__
  float32_state = np.dtype("f4").__reduce__()
  cases = 0
  for description, payload in _hostile_pickles(canary):
    for container, name, raw, load in _containers(payload):
      what = f"hostile pickle {description!r} in a {container}"
      path = tmp_path / name
      path.write_bytes(raw)
      _, error = _read(load, path, what)
      assert error is not None, f"{what}: loaded"
      assert not canary.exists(), f"{what}: ran code"
      cases += 1
  # Nothing in the process was changed by BUILD opcodes aimed at shared objects.
  assert np.random._pickle.__randomstate_ctor.__defaults__ is randomstate_defaults
  assert np.dtype("f4").__reduce__() == float32_state
  assert cases >= 100


def test_total_case_count():
  """The suite's promise: at least 2,000 seeded cases (hostile pickles counted separately)."""
  assert sum(CASES.values()) >= 2000
