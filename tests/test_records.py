from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeoffload.records import FIELD_NAMES, Detection, FrameRecord, RecordWriter, read_records


def sample(frame_id: int = 1, **changes: object) -> FrameRecord:
    base = dict(camera="cam-1", frame_id=frame_id, captured_at=12.5, site="cloud", status="ok",
                reason="", policy="min-latency", model="haar-face",
                detections=(Detection("face", 0.9, (10.0, 20.0, 30.0, 40.0)),), bytes_sent=51234,
                t_queue_ms=1.5, t_network_ms=20.25, t_inference_ms=30.0, t_total_ms=52.0, deadline_met=True)
    base.update(changes)
    return FrameRecord(**base)  # type: ignore[arg-type]


def test_schema_has_the_documented_fields_in_order() -> None:
    assert FIELD_NAMES == ("camera", "frame_id", "captured_at", "site", "status", "reason", "policy",
                           "model", "detections", "bytes_sent", "t_queue_ms", "t_network_ms",
                           "t_inference_ms", "t_total_ms", "deadline_met", "replica")


def test_records_written_before_the_replica_field_read_with_an_empty_replica(tmp_path) -> None:
    legacy = tmp_path / "old.csv"
    legacy.write_text("camera,frame_id,captured_at,site,status\ncam,3,1.5,edge,ok\n", encoding="utf-8")
    (record,) = read_records(legacy)
    assert (record.frame_id, record.replica) == (3, "")
    assert FrameRecord.from_dict({**sample().to_dict(), "replica": "edge-inference-7d9f-x2"}).replica == "edge-inference-7d9f-x2"
    with pytest.raises(ValueError, match="replica"):
        FrameRecord.from_dict({**sample().to_dict(), "replica": "x" * 300})


def test_json_round_trip() -> None:
    record = sample()
    payload = record.to_json()
    assert json.loads(payload)["detections"] == [{"label": "face", "score": 0.9, "box": [10.0, 20.0, 30.0, 40.0]}]
    assert FrameRecord.from_json(payload) == record
    assert FrameRecord.from_json(sample(deadline_met=None).to_json()).deadline_met is None


@pytest.mark.parametrize("payload, message", [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"camera": "c"}', "missing field"),
    (b'{"camera": "c", "frame_id": 1, "site": "moon", "status": "ok"}', "'site' must be one of"),
    (b'{"camera": "c", "frame_id": 1, "site": "edge", "status": "meh"}', "'status' must be one of"),
    (b'{"camera": "c", "frame_id": "x", "site": "edge", "status": "ok"}', "invalid record"),
    (b'{"camera": "c", "frame_id": 1, "site": "edge", "status": "ok", "t_total_ms": "NaN"}', "finite"),
    (b'{"camera": "c", "frame_id": 1, "site": "edge", "status": "ok", "detections": [{"box": [1]}]}', "box"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b'{"camera": "c", "frame_id": 1, "site": "edge", "status": "ok", "detections": "' + b"[" * 100_000 + b'"}',
     "detections is not valid JSON"),
    (b'{"camera": "c", "frame_id": Infinity, "site": "edge", "status": "ok"}', "frame_id"),
    (b'{"camera": "c", "frame_id": 1, "site": "edge", "status": "ok", "bytes_sent": 1e400}', "bytes_sent"),
    (b'{"camera": "c", "frame_id": 1000000000000000000000000000000, "site": "edge", "status": "ok"}', "2\\*\\*63"),
    (b'{"camera": "c", "frame_id": -5, "site": "edge", "status": "ok"}', "between 0"),
    (b'{"camera": "c", "frame_id": 1.5, "site": "edge", "status": "ok"}', "integer"),
    (b'{"camera": {"name": "c"}, "frame_id": 1, "site": "edge", "status": "ok"}', "non-empty string"),
])
def test_from_json_rejects_malformed_payloads_with_a_clear_message(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrameRecord.from_json(payload)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_writer_and_reader_round_trip(tmp_path: Path, suffix: str) -> None:
    records = [sample(i, site=("edge", "cloud", "none")[i % 3], deadline_met=(True, False, None)[i % 3],
                      status="dropped" if i % 3 == 2 else "ok") for i in range(10_000)]
    path = tmp_path / f"records{suffix}"
    with RecordWriter(path, batch_size=1000) as writer:
        writer.write_all(records)
    assert writer.count == len(records)
    assert list(read_records(path)) == records


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_empty_file_is_readable(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    RecordWriter(path).close()
    assert list(read_records(path)) == []


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        RecordWriter(tmp_path / "records.txt")
