from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeoffload.records import FIELD_NAMES, Detection, FrameRecord, RecordWriter, _arrow_schema, float_texts, read_records


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
                           "t_inference_ms", "t_total_ms", "deadline_met", "replica", "escalated", "edge_score",
                           "edge_detections", "t_edge_ms")


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


# -- the writer's files are exactly what the plain per-row writers produce ------------------------------------

def reference_csv(path: Path, records: list[FrameRecord]) -> bytes:
    """The format's definition: csv.DictWriter rows of to_dict(), detections as compact JSON."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELD_NAMES)
        writer.writeheader()
        for record in records:
            writer.writerow({**record.to_dict(), "detections": json.dumps(record.to_dict()["detections"],
                                                                          separators=(",", ":"))})
    return path.read_bytes()


def reference_parquet(path: Path, records: list[FrameRecord], batch_size: int) -> bytes:
    """Row groups of `batch_size` rows built with pa.Table.from_pylist over to_dict() rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    rows = [{**r.to_dict(), "detections": json.dumps(r.to_dict()["detections"], separators=(",", ":"))}
            for r in records]
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(rows), 1), batch_size):
            writer.write_table(pa.Table.from_pylist(rows[start:start + batch_size], schema=schema))
    return path.read_bytes()


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", ",", '"', "\r", "\n", "a\rb", "a,b", 'say "hi"', " lead", "tab\t", "é→", "cam-1"])
special_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0, 100.0, 0.1 + 0.2, 5e-324, 1e300])
records_strategy = st.builds(
    FrameRecord, camera=texts, frame_id=st.integers(0, 2**63 - 1), captured_at=special_floats,
    site=st.sampled_from(["edge", "cloud", "none"]), status=st.sampled_from(["ok", "dropped", "error"]),
    reason=texts, policy=texts, model=texts,
    detections=st.lists(st.builds(Detection, texts, st.floats(0, 1), st.tuples(*[st.floats(0, 1e4)] * 4)),
                        max_size=2).map(tuple),
    bytes_sent=st.integers(0, 2**63 - 1), t_queue_ms=special_floats, t_network_ms=special_floats,
    t_inference_ms=special_floats, t_total_ms=special_floats, deadline_met=st.sampled_from([None, True, False]),
    replica=texts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(records_strategy, max_size=30), batch_size=st.integers(1, 12))
def test_written_files_are_byte_identical_to_the_plain_writers(tmp_path: Path, records, batch_size) -> None:
    for suffix, reference in ((".csv", lambda p: reference_csv(p, records)),
                              (".parquet", lambda p: reference_parquet(p, records, batch_size))):
        path = tmp_path / f"fast{suffix}"
        with RecordWriter(path, batch_size=batch_size) as writer:
            writer.write_all(records)
        assert path.read_bytes() == reference(tmp_path / f"reference{suffix}"), suffix


def test_simulated_records_are_byte_identical_to_the_plain_writers(tmp_path: Path) -> None:
    """A batch of simulator records takes the C path (no value needs quoting): same bytes."""
    from edgeoffload.sim import load_scenario, run_scenario

    scenario = load_scenario({"name": "s", "duration_s": 30, "seed": 2,
                              "cameras": [{"name": "c", "count": 5, "fps": 10, "frame_bytes": 20_000,
                                           "deadline_ms": 80}],
                              "edge": {"workers": 1, "queue_capacity": 2, "service_ms": {"dist": "exponential", "mean": 60}},
                              "cloud": {"workers": 4, "service_ms": 10}})
    collected: list[FrameRecord] = []

    class Collect:
        name = "collect"

        def __init__(self) -> None:
            self.count = 0

        def estimate_to_cloud(self, obs) -> bool:
            self.count += 1
            return self.count % 3 == 0

        def feedback(self, record: FrameRecord) -> None:
            collected.append(record)

    for suffix in (".csv", ".parquet"):
        collected.clear()
        run_scenario(scenario, Collect(), out=tmp_path / f"sim{suffix}")
        assert {r.status for r in collected} == {"ok", "dropped"} and {r.deadline_met for r in collected} == {True, False}
        reference = (reference_csv(tmp_path / "ref.csv", collected) if suffix == ".csv"
                     else reference_parquet(tmp_path / "ref.parquet", collected, 4096))
        assert (tmp_path / f"sim{suffix}").read_bytes() == reference


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.none(), max_size=50))
def test_float_texts_are_repr(values) -> None:
    assert float_texts(values).to_pylist() == [None if v is None else repr(v) for v in values]


def test_the_file_schema_has_every_field_in_order() -> None:
    """The writer takes columns from FIELD_NAMES and types from this schema: a new field needs
    only its entry here."""
    assert _arrow_schema().names == list(FIELD_NAMES)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_escalation_fields_round_trip_and_old_files_read_without_them(tmp_path: Path, suffix: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    escalated = sample(escalated=True, edge_score=2.75, edge_detections=2, t_edge_ms=31.5)
    nothing_found = sample(2, escalated=True, edge_score=None, edge_detections=0, t_edge_ms=12.0)
    kept = sample(3, site="edge")
    path = tmp_path / f"records{suffix}"
    with RecordWriter(path) as writer:
        writer.write_all([escalated, nothing_found, kept])
    assert list(read_records(path)) == [escalated, nothing_found, kept]
    assert FrameRecord.from_json(nothing_found.to_json()) == nothing_found
    # a file written before the cascade fields: the records read with their defaults
    old = tmp_path / f"old{suffix}"
    if suffix == ".csv":
        old.write_text("camera,frame_id,captured_at,site,status,replica\ncam,3,1.5,edge,ok,edge-0\n", encoding="utf-8")
    else:
        pq.write_table(pa.table({"camera": ["cam"], "frame_id": [3], "captured_at": [1.5], "site": ["edge"],
                                 "status": ["ok"], "replica": ["edge-0"]}), old)
    (record,) = read_records(old)
    assert (record.escalated, record.edge_score, record.edge_detections, record.t_edge_ms) == (False, None, 0, 0.0)
    with pytest.raises(ValueError, match="escalated"):
        FrameRecord.from_dict({**kept.to_dict(), "escalated": "maybe"})
    with pytest.raises(ValueError, match="edge_score"):
        FrameRecord.from_dict({**kept.to_dict(), "edge_score": "nan"})
