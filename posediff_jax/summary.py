"""Metrics to a JSON-lines file and a TensorBoard event file, and a console progress line.

No TensorFlow or tensorboardX: the event file is written by hand. Its format is TFRecord framing
around serialised `tensorflow.Event` protobufs:

  record  = uint64 length | uint32 masked_crc32c(length) | payload | uint32 masked_crc32c(payload)
  Event   = 1: wall_time (double) | 2: step (int64) | 3: file_version (string)
            | 5: summary (Summary) | 7: session_log (SessionLog)
  Summary = 1: value (repeated Summary.Value)
  Value   = 1: tag (string) | 2: simple_value (float)
  SessionLog = 1: status (enum; 1 = START)

All integers are little-endian. The first record of a file carries only
`file_version = "brain.Event:2"`.
"""

import json
import math
import os
import pathlib
import socket
import struct
import sys
import time
from typing import Any, Mapping


def _make_crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # reflected Castagnoli polynomial
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as used by TFRecord; `crc32c(b"123456789") == 0xE3069283`."""
  crc = 0xFFFFFFFF
  table = _CRC32C_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotated right by 15 bits plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(payload: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the payload and its masked CRC."""
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", masked_crc32c(length)) + payload
          + struct.pack("<I", masked_crc32c(payload)))


def _varint(value: int) -> bytes:
  if value < 0:
    value &= (1 << 64) - 1  # protobuf encodes negative int64 as its 64-bit two's complement
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field_key(number: int, wire_type: int) -> bytes:
  return _varint((number << 3) | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field_key(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None, session_start: bool = False
                 ) -> bytes:
  """A serialised `Event` holding a file version, a summary of scalar values or a session start.

  Args:
    wall_time: seconds since the epoch.
    step: the global step.
    file_version: set only in a file's first event.
    scalars: {tag: value}; each becomes a `Summary.Value` with `simple_value` (float32).
    session_start: a `SessionLog` START: TensorBoard then drops every event of the run at steps
      >= `step` written before it (the steps a resumed run repeats).

  Returns:
    The protobuf wire bytes.
  """
  out = _field_key(1, 1) + struct.pack("<d", wall_time) + _field_key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if session_start:
    out += _length_delimited(7, _field_key(1, 0) + _varint(1))
  if scalars:
    summary = b""
    for tag, value in scalars.items():
      item = (_length_delimited(1, str(tag).encode())
              + _field_key(2, 5) + struct.pack("<f", float(value)))
      summary += _length_delimited(1, item)
    out += _length_delimited(5, summary)
  return out


def _to_float(tag: str, value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ValueError(f"write_scalars: value of {tag!r} is {value!r}, expected a number") from None


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and to a TensorBoard event file under `workdir/tb/`.

  Re-opening the same workdir (a resumed run) appends to `metrics.jsonl` and starts a new event
  file; TensorBoard merges all event files of a folder. A run resumed from a checkpoint at step S
  calls `resume_from(S)`, which drops what the interrupted run logged after S, so each step is
  logged once. With `enabled=False` (the non-main processes of a multi-process job) nothing is
  created or written.
  """

  def __init__(self, workdir, *, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._jsonl = None
    self._events = None
    if not enabled:
      return
    tb_dir = self.workdir / "tb"
    tb_dir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")
    now = time.time()
    # The pid keeps two writers started in the same second on one host apart, the counter two
    # of one process (a resumed run in the same interpreter).
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
    self.event_path, count = tb_dir / name, 0
    while self.event_path.exists():
      count += 1
      self.event_path = tb_dir / f"{name}.{count}"
    self._events = open(self.event_path, "wb")
    self._events.write(tfrecord_frame(encode_event(now, 0, file_version="brain.Event:2")))
    self._events.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Records `{tag: value}` at `step`: one JSON line and one TensorBoard event."""
    if not self.enabled:
      return
    if self._events is None:
      raise ValueError(f"MetricWriter({self.workdir}): write_scalars after close()")
    values = {str(tag): _to_float(tag, value) for tag, value in scalars.items()}
    now = time.time()
    # JSON has no NaN/inf; null keeps the line parseable by strict readers.
    line = {"step": int(step), "wall_time": now,
            **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
    self._jsonl.write(json.dumps(line) + "\n")
    self._events.write(tfrecord_frame(encode_event(now, int(step), scalars=values)))
    self.flush()

  def resume_from(self, step: int) -> None:
    """Forgets what was logged after `step`: `metrics.jsonl` keeps only lines at steps <= `step`,
    and the event file gets a session start at step + 1, which tells TensorBoard to drop the
    interrupted run's later events (a run killed after its last checkpoint logged them)."""
    if not self.enabled:
      return
    self._jsonl.close()
    path = self.workdir / "metrics.jsonl"
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        logged = json.loads(line).get("step")
      except json.JSONDecodeError:
        continue  # a line cut short by the kill
      if logged is not None and logged <= step:
        kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    self._jsonl = open(path, "a", encoding="utf-8")
    self._events.write(tfrecord_frame(encode_event(time.time(), step + 1, session_start=True)))
    self.flush()

  def write_config(self, config: Mapping[str, Any]) -> None:
    """Writes `config` to `workdir/config.json`; values JSON cannot encode become strings."""
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    (self.workdir / "config.json").write_text(text + "\n", encoding="utf-8")

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    """Flushes and closes both files; further writes raise, a second close does nothing."""
    for f in (self._jsonl, self._events):
      if f is not None:
        f.close()
    self._jsonl = self._events = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
  """A one-line progress display on stderr, redrawn with `\\r`: count, percent, rate and ETA.

  Redraws at most every `min_interval_s` seconds (and at the end), so calling `update` every step is
  cheap. When the stream is not a terminal (a log file, CI), it prints plain lines at most every
  `log_interval_s` seconds instead. With `enabled=False` every method does nothing.

  The rate and ETA are measured from the end of the first update on: the first batch or step
  includes compiling, which would otherwise make the first estimates hours too long. Until a
  second update they show as '?'.
  """

  def __init__(self, total: int, desc: str = "", *, enabled: bool = True, initial: int = 0,
               min_interval_s: float = 0.2, stream=None, log_interval_s: float = 30.0):
    self.total = int(total)
    self.desc = desc
    self.enabled = enabled
    self.count = int(initial)
    self._initial = int(initial)
    self._stream = stream if stream is not None else sys.stderr
    self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
    self._min_interval_s = min_interval_s if self._tty else log_interval_s
    self._start = time.monotonic()
    # (time, count) after the first update: where the rate is measured from (class docstring).
    self._rate_start: tuple[float, int] | None = None
    self._last_draw = -math.inf
    self._width = 0
    self._closed = False

  def _line(self) -> str:
    now = time.monotonic()
    elapsed = now - self._start
    rate = math.nan
    if self._rate_start is not None:
      since, first = self._rate_start
      if self.count > first and now > since:
        rate = (self.count - first) / (now - since)
    remaining = self.total - self.count
    eta = 0.0 if remaining <= 0 else remaining / rate if rate > 0 else math.inf
    percent = 100.0 * self.count / self.total if self.total > 0 else 100.0
    prefix = f"{self.desc}: " if self.desc else ""
    shown_rate = f"{rate:.2f}" if math.isfinite(rate) else "?"
    return (f"{prefix}{self.count}/{self.total} ({percent:5.1f}%) {shown_rate} it/s "
            f"elapsed {_format_seconds(elapsed)} eta {_format_seconds(eta)}")

  def _draw(self, force: bool = False) -> None:
    now = time.monotonic()
    if not force and now - self._last_draw < self._min_interval_s:
      return
    self._last_draw = now
    line = self._line()
    if not self._tty:
      self._stream.write(line + "\n")
      self._stream.flush()
      return
    pad = " " * max(0, self._width - len(line))  # blank out what a longer previous line left
    self._width = len(line)
    self._stream.write("\r" + line + pad)
    self._stream.flush()

  def update(self, n: int = 1) -> None:
    """Advances by `n` and redraws if due."""
    if not self.enabled or self._closed:
      return
    self.count += n
    if self._rate_start is None:
      self._rate_start = (time.monotonic(), self.count)
    self._draw(force=self.count >= self.total)

  def write(self, message: str) -> None:
    """Prints `message` on its own line and redraws the bar below it."""
    if not self.enabled:
      return
    self._stream.write(("\r" + " " * self._width + "\r" if self._tty else "") + message + "\n")
    self._width = 0
    if not self._closed:
      self._draw(force=True)
    else:
      self._stream.flush()

  def close(self) -> None:
    """Draws the final state and ends the line."""
    if not self.enabled or self._closed:
      return
    self._draw(force=True)
    if self._tty:
      self._stream.write("\n")
    self._stream.flush()
    self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
