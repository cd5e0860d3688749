"""What every reader of the package shares: its errors, the limits it keeps, and reading bytes
(the boundary where archive and file errors become `ReadError`)."""

import lzma
import pickle
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
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError,
              OSError, struct.error, UnicodeDecodeError, ValueError, NotImplementedError,
              RuntimeError, IndexError, KeyError, TypeError, AttributeError, OverflowError,
              SystemError, MemoryError)
# What the unpickler and the allowlisted constructors raise on malformed pickle streams.
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, struct.error, UnicodeError, ValueError,
                 IndexError, KeyError, TypeError, AttributeError, RecursionError, OverflowError,
                 SystemError, MemoryError, LookupError)

_CHUNK = 1 << 20
# Tensors are copied out of their storages. Views of one storage may overlap (tied weights,
# expanded tensors), so the copies may exceed the storage bytes, but only by this much: enough for
# any real checkpoint, too little for a few-byte pickle to ask for terabytes.
COPY_FACTOR = 16
COPY_ALLOWANCE = 64 << 20
MAX_DIMS = 64  # numpy's limit on array dimensions


def short(value: Any, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return f"array {value.shape} {value.dtype}"
  return type(value).__name__


def is_index(value: Any) -> bool:
  """A non-negative Python int (bools and floats are refused: torch never writes them here)."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------------------------------
# Reading bytes: the boundary where archive and file errors become ReadError.


def read_chunks(fp, limit: int) -> bytearray:
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


def read_stream(fp, limit: int, where: str) -> bytearray:
  """`read_chunks` of a plain file or an `.npz` member, its failures as ReadError."""
  try:
    return read_chunks(fp, limit)
  except ZIP_ERRORS as e:
    raise ReadError(f"{where}: cannot read the data ({type(e).__name__}: {e})") from e


def read_exactly(fp, size: int, where: str, what: str = "bytes") -> bytearray:
  data = read_stream(fp, size, where)
  if len(data) != size:
    raise ReadError(f"{where}: truncated: expected {size} {what}, found {len(data)}")
  return data


def check_bools(array: np.ndarray, where: str) -> None:
  # numpy would keep any byte as a bool whose comparisons then disagree with its value.
  if array.dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
    raise ReadError(f"{where}: bool data holds bytes other than 0 and 1")
