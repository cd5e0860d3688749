"""The restricted reader: torch zip checkpoints and pickled npz files, read without running code."""

import collections
import os
import pathlib

import numpy as np
import pytest

from posediff_jax import safe_load
from tests import torch_format
from tests.conftest import parity_dir


class _RunsCode:
  """Unpickling this would run a shell command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


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
  torch_format.save_raw_pickle({"model": _RunsCode(marker)}, path)
  with pytest.raises(safe_load.UnsafePickleError, match=r"evil\.pth.*system"):
    safe_load.load_torch_checkpoint(path)
  assert not marker.exists()


def test_npz_pickle_that_runs_code_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.npz"
  np.savez(path, positions_3d=np.array(_RunsCode(marker), dtype=object))
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
