"""Tests for the metric writer; event files are read back by an independent TFRecord reader."""

import io
import json
import struct
import zlib

import numpy as np
import pytest

from posediff_jax import summary


def _reference_crc32c(data: bytes) -> int:
  """Bitwise CRC-32C, no table: an independent check of the table-driven implementation."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos


def _decode_fields(buf: bytes) -> list[tuple[int, int, object]]:
  """(field number, wire type, raw value) of every field in a protobuf message."""
  fields, pos = [], 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    elif wire == 2:
      length, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + length], pos + length
    else:
      raise AssertionError(f"unexpected wire type {wire}")
    fields.append((number, wire, value))
  assert pos == len(buf)
  return fields


def _read_records(path) -> list[bytes]:
  data = path.read_bytes()
  records, pos = [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert length_crc == _masked(_reference_crc32c(header))
    payload = data[pos + 12:pos + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    assert payload_crc == _masked(_reference_crc32c(payload))
    records.append(payload)
    pos += 16 + length
  assert pos == len(data)
  return records


def _parse_event(payload: bytes) -> dict:
  event = {"scalars": {}}
  for number, wire, value in _decode_fields(payload):
    if number == 1:
      assert wire == 1
      event["wall_time"] = struct.unpack("<d", value)[0]
    elif number == 2:
      assert wire == 0
      event["step"] = value
    elif number == 3:
      assert wire == 2
      event["file_version"] = value.decode()
    elif number == 5:
      assert wire == 2
      for vnum, vwire, item in _decode_fields(value):
        assert (vnum, vwire) == (1, 2)
        parts = {n: v for n, _, v in _decode_fields(item)}
        event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
    elif number == 7:  # SessionLog: status 1 = START
      assert wire == 2
      event["session_log"] = {n: v for n, _, v in _decode_fields(value)}
    else:
      raise AssertionError(f"unexpected Event field {number}")
  return event


def test_crc32c_known_vectors():
  assert summary.crc32c(b"123456789") == 0xE3069283
  assert summary.crc32c(b"") == 0
  assert summary.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
  assert summary.crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4: 32 bytes of 0xFF
  rng = np.random.default_rng(0)
  for n in (1, 7, 100):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert summary.crc32c(data) == _reference_crc32c(data)
    assert summary.crc32c(data) != zlib.crc32(data)  # not the ordinary CRC-32


def test_event_file_round_trip(tmp_path):
  writer = summary.MetricWriter(tmp_path)
  writer.write_scalars(10, {"train/loss": 0.25, "train/lr": 1e-3})
  writer.write_scalars(20, {"eval/mpjpe_mm": np.float32(42.5)})
  writer.write_scalars(2**40, {"big/step": -3.0})
  writer.close()

  files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert len(files) == 1
  events = [_parse_event(r) for r in _read_records(files[0])]
  assert events[0]["file_version"] == "brain.Event:2"
  assert events[0]["step"] == 0 and not events[0]["scalars"]
  assert [e["step"] for e in events[1:]] == [10, 20, 2**40]
  assert events[1]["scalars"] == pytest.approx({"train/loss": 0.25, "train/lr": 1e-3}, rel=1e-7)
  assert events[2]["scalars"] == {"eval/mpjpe_mm": 42.5}
  assert events[3]["scalars"] == {"big/step": -3.0}
  assert all(abs(e["wall_time"] - events[0]["wall_time"]) < 60 for e in events)


def test_jsonl_and_config(tmp_path):
  writer = summary.MetricWriter(tmp_path)
  writer.write_config({"model": {"hid_dim": 64}, "subjects": ("S1", "S5"), "path": tmp_path})
  writer.write_scalars(1, {"a": 1.5, "b": 2})
  writer.write_scalars(2, {"a": float("nan")})
  writer.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(l["step"], l["a"]) for l in lines] == [(1, 1.5), (2, None)]
  assert lines[0]["b"] == 2.0 and "wall_time" in lines[0]
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"] == {"hid_dim": 64} and config["subjects"] == ["S1", "S5"]
  assert config["path"] == str(tmp_path)

  # A resumed run appends to the same jsonl and starts a second event file.
  with summary.MetricWriter(tmp_path) as again:
    again.write_scalars(3, {"a": 3.0})
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_resumed_run_forgets_what_was_logged_after_its_checkpoint(tmp_path):
  with summary.MetricWriter(tmp_path) as killed:
    for step in range(1, 6):
      killed.write_scalars(step, {"loss": float(step)})
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 6, "lo')  # the line the kill cut short
  with summary.MetricWriter(tmp_path) as resumed:
    resumed.resume_from(3)
    resumed.write_scalars(4, {"loss": 40.0})
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(l["step"], l["loss"]) for l in lines] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
  # TensorBoard drops the first file's events at steps >= 4 when it meets this session start.
  files = sorted((tmp_path / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
  assert len(files) == 2  # one per writer, also two of one process within one second
  events = [_parse_event(r) for r in _read_records(files[1])]
  assert events[1]["step"] == 4 and events[1]["session_log"] == {1: 1}
  assert events[2]["scalars"] == {"loss": 40.0}


def test_disabled_writer_writes_nothing(tmp_path):
  writer = summary.MetricWriter(tmp_path / "run", enabled=False)
  writer.write_config({"a": 1})
  writer.write_scalars(1, {"a": 1.0})
  writer.flush()
  writer.close()
  assert not (tmp_path / "run").exists()


def test_bad_scalar_and_write_after_close(tmp_path):
  writer = summary.MetricWriter(tmp_path)
  with pytest.raises(ValueError, match="'loss'"):
    writer.write_scalars(1, {"loss": "high"})
  writer.close()
  with pytest.raises(ValueError, match="after close"):
    writer.write_scalars(2, {"loss": 1.0})


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar():
  stream = _Terminal()
  bar = summary.ProgressBar(4, "train", stream=stream, min_interval_s=0.0)
  bar.update(1)
  bar.write("step 1 loss 0.5")
  bar.update(3)
  bar.close()
  text = stream.getvalue()
  assert "step 1 loss 0.5\n" in text
  assert "train: 4/4 (100.0%)" in text and "it/s" in text and "eta" in text
  assert text.endswith("\n") and "\r" in text

  quiet = io.StringIO()
  off = summary.ProgressBar(4, "x", enabled=False, stream=quiet)
  off.update(2)
  off.write("hidden")
  off.close()
  assert quiet.getvalue() == ""


def test_progress_bar_prints_plain_lines_when_not_a_terminal():
  stream = io.StringIO()
  bar = summary.ProgressBar(1000, "train", stream=stream, log_interval_s=3600.0)
  for _ in range(1000):
    bar.update(1)
  bar.close()
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert len(lines) <= 3 and lines[-1].startswith("train: 1000/1000")


def test_progress_bar_estimates_from_the_second_update_on(monkeypatch):
  # The first batch took 100 s (compiling), the next ones 1 s each: the ETA must not count the
  # compilation as the pace of the run.
  clock = [0.0]
  monkeypatch.setattr(summary.time, "monotonic", lambda: clock[0])
  stream = _Terminal()
  bar = summary.ProgressBar(11, "evaluate", stream=stream, min_interval_s=0.0)
  clock[0] = 100.0
  bar.update(1)
  assert stream.getvalue().split("\r")[-1].startswith("evaluate: 1/11 (  9.1%) ? it/s")
  assert "eta ?" in stream.getvalue()
  clock[0] = 102.0
  bar.update(2)
  line = stream.getvalue().split("\r")[-1]
  assert "1.00 it/s" in line and "elapsed 01:42" in line and "eta 00:08" in line, line
