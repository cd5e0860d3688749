"""A torch-free writer of `torch.save`-format zip files, for tests.

It lets tests build checkpoints of any shape (wrong families, wrong widths, code-running pickles)
without torch. The pickle references `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage` by
name, exactly as torch does, through stand-in modules that exist only while a file is being written.
"""

import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import numpy as np

_DTYPE_TO_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                     np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
                     np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}


@contextlib.contextmanager
def _fake_torch():
  torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called while writing")

  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
  storages = {}
  for name in set(_DTYPE_TO_STORAGE.values()):
    cls = type(name, (), {"__module__": "torch"})
    setattr(torch_mod, name, cls)
    storages[name] = cls
  torch_mod._utils = utils_mod
  saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
  sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils_mod
  try:
    yield _rebuild_tensor_v2, storages
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


class _Storage:

  def __init__(self, key, array):
    self.key, self.array = key, array


class _Tensor:

  def __init__(self, rebuild, storage, shape, strides):
    self.rebuild, self.storage, self.shape, self.strides = rebuild, storage, shape, strides

  def __reduce__(self):
    return (self.rebuild,
            (self.storage, 0, self.shape, self.strides, False, collections.OrderedDict()))


def save(obj, path, archive_name="archive"):
  """Writes `obj` (containers of numpy arrays) as `torch.save` would, arrays becoming tensors."""
  buf = io.BytesIO()
  blobs = {}
  with _fake_torch() as (rebuild, storage_classes):

    def to_torch(x):
      if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        key = str(len(blobs))
        blobs[key] = x
        strides = tuple(s // x.itemsize for s in x.strides) if x.ndim else ()
        return _Tensor(rebuild, _Storage(key, x), tuple(x.shape), strides)
      if isinstance(x, collections.OrderedDict):
        return collections.OrderedDict((k, to_torch(v)) for k, v in x.items())
      if isinstance(x, dict):
        return {k: to_torch(v) for k, v in x.items()}
      if isinstance(x, (list, tuple)):
        return type(x)(to_torch(v) for v in x)
      return x

    class Pickler(pickle.Pickler):

      def persistent_id(self, o):
        if isinstance(o, _Storage):
          cls = storage_classes[_DTYPE_TO_STORAGE[o.array.dtype]]
          return ("storage", cls, o.key, "cpu", o.array.size)
        return None

    Pickler(buf, protocol=2).dump(to_torch(obj))
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{archive_name}/data.pkl", buf.getvalue())
    z.writestr(f"{archive_name}/byteorder", "little")
    z.writestr(f"{archive_name}/version", "3\n")
    for key, arr in blobs.items():
      z.writestr(f"{archive_name}/data/{key}", arr.tobytes())


def save_raw_pickle(payload_obj, path, archive_name="archive"):
  """Writes a torch-style zip whose data.pkl is just `payload_obj` pickled (e.g. a code-runner)."""
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{archive_name}/data.pkl", pickle.dumps(payload_obj, protocol=2))
    z.writestr(f"{archive_name}/byteorder", "little")
