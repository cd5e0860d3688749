"""The restricted reader: torch zip checkpoints and pickled npz files, read without running code."""

import collections
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from posediff_jax import safe_load
from tests import torch_format
from tests.conftest import RunsCode, parity_dir


def test_torch_roundtrip_of_containers_and_tensors(tmp_path):
  sd = collections.OrderedDict(
      w=np.arange(12, dtype=np.float32).reshape(3, 4), b=np.array([1.5], np.float64),
      n=np.arange(3, dtype=np.int64))
  obj = [sd, {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]}, 3, 7, dict(sd)]
  path = tmp_path / "ckpt.pth"
  torch_format.save(obj, path)
  back = safe_load.load_torch_checkpoint(path)
  assert isinstance(back, list) and len(back) == 5 and back[2:4] == [3, 7]
  assert isinstance(back[0], collections.OrderedDict) and list(back[0]) == ["w", "b", "n"]
  for k, v in sd.items():
    np.testing.assert_array_equal(back[0][k], v)
    assert back[0][k].dtype == v.dtype
  assert back[1]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_torch_pickle_that_runs_code_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch_format.save_raw_pickle({"model": RunsCode(marker)}, path)
  with pytest.raises(safe_load.UnsafePickleError, match=r"evil\.pth.*system"):
    safe_load.load_torch_checkpoint(path)
  assert not marker.exists()


def test_npz_pickle_that_runs_code_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.npz"
  np.savez(path, positions_3d=np.array(RunsCode(marker), dtype=object))
  with pytest.raises(safe_load.UnsafePickleError, match=r"evil\.npz.*system"):
    safe_load.load_pickled_npz(path)
  assert not marker.exists()


def test_npz_dicts_and_plain_arrays(tmp_path):
  data = {"S1": {"Walking 1": np.ones((4, 32, 3), np.float32)}}
  path = tmp_path / "d.npz"
  np.savez(path, positions_3d=data, plain=np.arange(5))
  back = safe_load.load_pickled_npz(path, required_keys=("positions_3d",))
  np.testing.assert_array_equal(back["positions_3d"]["S1"]["Walking 1"], data["S1"]["Walking 1"])
  np.testing.assert_array_equal(back["plain"], np.arange(5))
  with pytest.raises(KeyError, match=r"d\.npz.*missing key.*positions_2d"):
    safe_load.load_pickled_npz(path, required_keys=("positions_2d",))


@pytest.mark.parametrize("suffix", [".npz", ".pth"])
def test_truncated_files_give_a_clear_error(tmp_path, suffix):
  path = tmp_path / f"t{suffix}"
  if suffix == ".npz":
    np.savez(path, positions_3d={"S1": {"A": np.ones((50, 32, 3), np.float32)}})
    loader = safe_load.load_pickled_npz
  else:
    torch_format.save([{"w": np.ones((50, 50), np.float32)}], path)
    loader = safe_load.load_torch_checkpoint
  raw = path.read_bytes()
  path.write_bytes(raw[: len(raw) // 2])
  with pytest.raises(ValueError, match=str(path.name)):
    loader(path)


def test_missing_file():
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    safe_load.load_torch_checkpoint(pathlib.Path("nope.pth"))


def test_reads_upstream_fixture_checkpoints():
  root = parity_dir("diffpose")
  states = safe_load.load_torch_checkpoint(root / "denoiser.pth")
  assert isinstance(states, list) and len(states) == 5
  assert all(k.startswith("module.") for k in states[0])
  assert states[0]["module.gconv_input.weight"].shape[:2] == (3, 1)


def test_reads_numpy_random_state_in_d3dp_bin():
  root = parity_dir("d3dp")
  ckpt = safe_load.load_torch_checkpoint(root / "denoiser_with_random_state.bin")
  assert isinstance(ckpt["random_state"], np.random.RandomState)
  assert "model_pos" in ckpt


# --------------------------------------------------------------------------------------------------
# Forged tensor layouts, damaged archives, forged .npy headers: the reader's own one-line error.


def _tensor_checkpoint(path, size, stride, offset=0, numel=4, record=None, storage="FloatStorage",
                       second=None):
  """A .pth of {'w': tensor} over a record of 4 float32 values, its layout written verbatim.

  `second` = (storage class, numel) adds 'v', the same layout on the same storage key.
  """

  def ops(value):
    return pickle.dumps(value, protocol=2)[2:-1]

  def tensor(storage_name, declared):
    return (b"ctorch._utils\n_rebuild_tensor_v2\n((" + ops("storage")
            + f"ctorch\n{storage_name}\n".encode() + ops("0") + ops("cpu") + ops(declared) + b"tQ"
            + ops(offset) + ops(size) + ops(stride)
            + b"\x89ccollections\nOrderedDict\n)RtR")

  data_pkl = b"\x80\x02}(" + ops("w") + tensor(storage, numel)
  if second is not None:
    data_pkl += ops("v") + tensor(*second)
  record = np.array([1.5, 2.5, 3.5, 4.5], np.float32).tobytes() if record is None else record
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data_pkl + b"u.")
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/data/0", record)
  return path


def _refused(path, pattern, loader=safe_load.load_torch_checkpoint):
  """The reader's own error (exactly ReadError), one line, naming the file and matching."""
  with pytest.raises(safe_load.ReadError, match=pattern) as info:
    loader(path)
  assert type(info.value) is safe_load.ReadError
  message = str(info.value)
  assert "\n" not in message and path.name in message
  return message


def test_error_classes():
  assert issubclass(safe_load.ReadError, ValueError)
  assert issubclass(safe_load.UnsafePickleError, safe_load.ReadError)


def test_storage_of_4_floats_declaring_64_elements(tmp_path):
  # The pickle says the storage has 64 elements; its record holds 16 bytes.
  message = _refused(_tensor_checkpoint(tmp_path / "a.pth", (64,), (1,), numel=64),
                     r"holds 16 bytes, expected 256 \(64 x float32\)")
  assert "['w']" in message and "archive/data/0" in message
  # The storage is honest, the tensor reaches past it: 60 of its elements would be heap bytes.
  message = _refused(_tensor_checkpoint(tmp_path / "b.pth", (64,), (1,)),
                     r"reaches element 63, but the storage holds 4 float32 elements")
  assert "tensor ['w']" in message and "archive/data/0" in message


def test_huge_stride_negative_offset_and_stride(tmp_path):
  _refused(_tensor_checkpoint(tmp_path / "stride.pth", (2,), (2**60,)),
           r"tensor \['w'\].*reaches element 1152921504606846976")
  _refused(_tensor_checkpoint(tmp_path / "offset.pth", (2,), (1,), offset=-1),
           r"tensor \['w'\].*storage offset -1 is not a non-negative integer")
  _refused(_tensor_checkpoint(tmp_path / "negative.pth", (4,), (-1,), offset=3),
           r"tensor \['w'\].*stride \(-1,\) is not a sequence of non-negative integers")
  _refused(_tensor_checkpoint(tmp_path / "past.pth", (2,), (1,), offset=3),
           r"reaches element 4, but the storage holds 4")


@pytest.mark.parametrize("size, stride", [((True, 2), (2, 1)), ((2.0,), (1,)), (("2",), (1,)),
                                          ((2,), (1.0,)), ((2,), (False,)), ((2, 2), (1,)),
                                          (2, 1)])
def test_sizes_and_strides_must_be_plain_integers(tmp_path, size, stride):
  _refused(_tensor_checkpoint(tmp_path / "t.pth", size, stride), r"tensor \['w'\]")


def test_forged_2_to_the_40_element_shapes_are_refused_before_allocating(tmp_path):
  _refused(_tensor_checkpoint(tmp_path / "strided.pth", (2**40,), (1,)),
           r"reaches element 1099511627775, but the storage holds 4")
  # Stride 0 stays inside the storage (torch's expand), but the copy would be 4 TiB.
  _refused(_tensor_checkpoint(tmp_path / "expanded.pth", (2**40,), (0,)),
           r"would copy 4398046511104 bytes out of a 4-element storage")
  _refused(_tensor_checkpoint(tmp_path / "empty.pth", (0, 2**62, 2**62), (1, 1, 1)),
           r"too large to describe")


def test_valid_views_load_as_independent_copies(tmp_path):
  path = _tensor_checkpoint(tmp_path / "ok.pth", (2, 2), (1, 2))  # a transposed 2x2
  w = safe_load.load_torch_checkpoint(path)["w"]
  np.testing.assert_array_equal(w, [[1.5, 3.5], [2.5, 4.5]])
  assert w.flags.owndata and w.flags.writeable
  # Any stride on a size-1 dimension, an expanded (stride 0) row, an empty tensor.
  w = safe_load.load_torch_checkpoint(_tensor_checkpoint(tmp_path / "one.pth", (1, 2),
                                                         (2**62, 1), offset=2))["w"]
  np.testing.assert_array_equal(w, [[3.5, 4.5]])
  w = safe_load.load_torch_checkpoint(_tensor_checkpoint(tmp_path / "expand.pth", (3,), (0,),
                                                         offset=1))["w"]
  np.testing.assert_array_equal(w, [2.5, 2.5, 2.5])
  w = safe_load.load_torch_checkpoint(_tensor_checkpoint(tmp_path / "empty.pth", (0, 5),
                                                         (5, 1), offset=9))["w"]
  assert w.shape == (0, 5) and w.dtype == np.float32


def test_storage_bytes_must_match_its_type_and_every_reference(tmp_path):
  _refused(_tensor_checkpoint(tmp_path / "odd.pth", (1,), (1,), record=b"\x00" * 15),
           r"holds 15 bytes, not a multiple of the 4-byte float32 elements")
  _refused(_tensor_checkpoint(tmp_path / "int.pth", (2,), (1,), second=("IntStorage", 4)),
           r"tensor \['v'\].*referenced as 4 x int32 after 4 x float32")
  _refused(_tensor_checkpoint(tmp_path / "size.pth", (2,), (1,), second=("FloatStorage", 3)),
           r"tensor \['v'\].*referenced as 3 x float32 after 4 x float32")
  _refused(_tensor_checkpoint(tmp_path / "bool.pth", (4,), (1,), storage="BoolStorage",
                              numel=16), r"bool data holds bytes other than 0 and 1")


def _flip(path, offset):
  raw = bytearray(path.read_bytes())
  raw[offset] ^= 0x5A
  path.write_bytes(bytes(raw))


def test_flipped_zip_bytes_name_the_file_and_the_tensor(tmp_path):
  sd = collections.OrderedDict(w=np.arange(6, dtype=np.float32), b=np.ones(3, np.float64))
  path = tmp_path / "flipped.pth"
  torch_format.save({"model": sd}, path)
  with zipfile.ZipFile(path) as z:
    info = z.getinfo("archive/data/1")  # b's storage
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
  _flip(path, start + 5)  # inside b's data: the CRC no longer matches
  message = _refused(path, r"CRC")
  assert "tensor ['model']['b']" in message and "archive/data/1" in message
  torch_format.save({"model": sd}, path)
  with zipfile.ZipFile(path) as z:
    start_dir = z.start_dir
  _flip(path, start_dir + 2)  # the central directory's first signature
  _refused(path, r"not a torch zip checkpoint")
  torch_format.save({"model": sd}, path)
  _flip(path, start_dir + 10)  # data.pkl's compression method in the central directory
  _refused(path, r"record 'archive/data.pkl' cannot be read \(NotImplementedError")


def test_npy_headers_must_match_the_data(tmp_path):
  array = np.arange(6, dtype=np.float64).reshape(2, 3)
  path = tmp_path / "a.npy"
  np.save(path, np.asfortranarray(array))
  back = safe_load.load_pickled_npy(path)
  np.testing.assert_array_equal(back, array)
  assert back.flags.f_contiguous and back.flags.writeable
  raw = path.read_bytes()
  for header, pattern in [(b"'shape': (2, 3)", r"header says shape \(2, 3\)"),
                          (b"'shape': (1099511627776, 3)", r"= 26388279066624 bytes, the file "
                                                           r"holds 48 bytes"),
                          (b"'shape': (-2, 3)", r"shape \(-2, 3\) is not a tuple of at most 64"),
                          (b"'shape': (True, 3)", r"shape \(True, 3\) is not a tuple")]:
    text = raw[:raw.index(b"\n") + 1].replace(b"'shape': (2, 3)", header)
    body = raw[raw.index(b"\n") + 1:]
    if header == b"'shape': (2, 3)":
      body = body[:-8]  # truncated data
    length = len(text) - 10
    path.write_bytes(text[:8] + length.to_bytes(2, "little") + text[10:] + body)
    _refused(path, pattern, safe_load.load_pickled_npy)


class _Reduce:

  def __init__(self, *reduce_value):
    self.reduce_value = reduce_value

  def __reduce__(self):
    return self.reduce_value


def test_numpy_states_in_pickles_are_checked(tmp_path):
  """numpy's own __setstate__ trusts these; the reader must not."""
  reconstruct = np.empty(0).__reduce__()[0]
  hostile = {
      # A 4-byte item whose field sits 1000 bytes further: reading it reads the heap.
      "field.npz": (_Reduce(np.dtype, ("V4", False, True),
                            (3, "|", None, ("a",), {"a": (np.dtype("f8"), 1000)}, 4, 1, 0)),
                    r"never writes for it"),
      "objects.npz": (_Reduce(reconstruct, (np.ndarray, (0,), b"b"),
                              (1, (2**40,), np.dtype("O"), False, [1])),
                      r"needs a list of 1099511627776 items, found list of 1"),
      "mt.npz": (_Reduce(np.random._pickle.__randomstate_ctor, ("MT19937",),
                         {"bit_generator": "MT19937", "state": {
                             "key": np.arange(624, dtype=np.uint32), "pos": 10**6},
                          "has_gauss": 0, "gauss": 0.0}),
                 r"MT19937 state position 1000000 is outside 0..624"),
  }
  for name, (value, pattern) in hostile.items():
    path = tmp_path / name
    np.savez(path, positions_3d=np.array(value, dtype=object))
    _refused(path, pattern, safe_load.load_pickled_npz)
  # What numpy itself writes still loads: dtypes, scalars, RandomState, arrays of all layouts.
  rs = np.random.RandomState(3)
  data = {"rs": rs, "x": np.float32(2.5), "dt": np.dtype(">i2"), "f": np.asfortranarray(
      np.arange(6.0).reshape(2, 3)), "s": np.array(["ab", "c"]), "e": np.zeros((0, 3))}
  path = tmp_path / "good.npz"
  np.savez(path, positions_3d=data)
  back = safe_load.load_pickled_npz(path)["positions_3d"]
  assert back["rs"].randint(1000) == rs.randint(1000)
  assert back["x"] == np.float32(2.5) and back["dt"] == np.dtype(">i2")
  np.testing.assert_array_equal(back["f"], data["f"])
  assert back["f"].flags.f_contiguous and list(back["s"]) == ["ab", "c"]
  assert back["e"].shape == (0, 3)
