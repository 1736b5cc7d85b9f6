"""FrameRecord: the one per-frame outcome schema shared by the simulator and the testbed.

Both sides emit exactly these fields so one analysis pipeline compares policies and
compares simulation with reality. Records travel as JSON (MQTT) and are stored as CSV
or Parquet; detections are kept as a JSON string column in both file formats.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, fields
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

Site = Literal["edge", "cloud", "none"]
Status = Literal["ok", "dropped", "error"]
SITES: tuple[str, ...] = ("edge", "cloud", "none")
STATUSES: tuple[str, ...] = ("ok", "dropped", "error")


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object; box is (x, y, w, h) in pixels of the original frame."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(float(self.score), 4),
                "box": [round(float(v), 1) for v in self.box]}

    @staticmethod
    def from_dict(raw: Any) -> "Detection":
        if not isinstance(raw, dict):
            raise ValueError("detection must be an object")
        box = raw.get("box")
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise ValueError("detection box must be [x, y, w, h]")
        return Detection(label=str(raw.get("label", "")), score=_finite(raw.get("score"), "score"),
                         box=tuple(_finite(v, "box") for v in box))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """What happened to one frame. Times are milliseconds on the sender's monotonic clock."""

    camera: str
    frame_id: int
    captured_at: float
    site: Site
    status: Status
    reason: str = ""
    policy: str = ""
    model: str = ""
    detections: tuple[Detection, ...] = field(default_factory=tuple)
    bytes_sent: int = 0
    t_queue_ms: float = 0.0
    t_network_ms: float = 0.0
    t_inference_ms: float = 0.0
    t_total_ms: float = 0.0
    deadline_met: bool | None = None
    replica: str = ""             # the replica (pod name, local replica id) that answered; "" if none
    # Cascade policies (Policy.escalate_to_cloud): set only on frames the edge answered and the
    # policy then escalated to the cloud. The record's answer is the cloud's; if the escalation
    # failed it is the edge's (status ok, site edge, reason "escalation_failed: ...").
    escalated: bool = False
    edge_score: float | None = None   # the edge answer's best detection score (None: nothing found)
    edge_detections: int = 0          # how many objects the edge answer had
    t_edge_ms: float = 0.0            # arrival to the edge's answer (part of t_total_ms)

    def to_dict(self) -> dict[str, Any]:
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        raw["detections"] = [d.to_dict() for d in self.detections]
        return raw

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @staticmethod
    def from_dict(raw: Any) -> "FrameRecord":
        """Validate untrusted input (MQTT payloads, files); raise ValueError naming the bad field."""
        if not isinstance(raw, dict):
            raise ValueError("record must be a JSON object")
        missing = [n for n in ("camera", "frame_id", "site", "status") if n not in raw]
        if missing:
            raise ValueError(f"record is missing field(s): {', '.join(missing)}")
        site, status = raw["site"], raw["status"]
        if site not in SITES:
            raise ValueError(f"record field 'site' must be one of {SITES}, got {site!r}")
        if status not in STATUSES:
            raise ValueError(f"record field 'status' must be one of {STATUSES}, got {status!r}")
        camera = raw["camera"]
        if not isinstance(camera, str) or not camera:
            raise ValueError("record field 'camera' must be a non-empty string")
        detections = raw.get("detections") or []
        if isinstance(detections, str):
            detections = _parse_json(detections, "detections") if detections else []
        if not isinstance(detections, list):
            raise ValueError("record field 'detections' must be a list")
        deadline = _flag(raw.get("deadline_met"), "deadline_met")
        try:
            return FrameRecord(
                camera=camera, frame_id=_count(raw["frame_id"], "frame_id"),
                captured_at=_finite(raw.get("captured_at", 0.0), "captured_at"),
                site=site, status=status, reason=str(raw.get("reason", "")),
                policy=str(raw.get("policy", "")), model=str(raw.get("model", "")),
                detections=tuple(Detection.from_dict(d) for d in detections),
                bytes_sent=_count(raw.get("bytes_sent", 0), "bytes_sent"),
                t_queue_ms=_finite(raw.get("t_queue_ms", 0.0), "t_queue_ms"),
                t_network_ms=_finite(raw.get("t_network_ms", 0.0), "t_network_ms"),
                t_inference_ms=_finite(raw.get("t_inference_ms", 0.0), "t_inference_ms"),
                t_total_ms=_finite(raw.get("t_total_ms", 0.0), "t_total_ms"),
                deadline_met=None if deadline is None else bool(deadline),
                replica=_short_text(raw.get("replica"), "replica"),
                escalated=bool(_flag(raw.get("escalated"), "escalated")),
                edge_score=_optional_finite(raw.get("edge_score"), "edge_score"),
                edge_detections=_count(raw.get("edge_detections") or 0, "edge_detections"),
                t_edge_ms=_finite(raw.get("t_edge_ms") or 0.0, "t_edge_ms"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"invalid record: {exc}") from exc

    @staticmethod
    def from_json(payload: str | bytes) -> "FrameRecord":
        return FrameRecord.from_dict(_parse_json(payload, "record"))


MAX_INT64 = 2**63 - 1


def _parse_json(text: str | bytes, what: str) -> Any:
    """json.loads for untrusted text: every failure (also absurd nesting) is a ValueError."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{what} is not valid JSON: {str(exc)[:200]}") from None


def _count(value: Any, name: str) -> int:
    """A non-negative int64 from an int, an integral float or a decimal string (CSV)."""
    if isinstance(value, bool):
        raise ValueError(f"field {name!r} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"field {name!r} must be an integer, got {value!r}")
        value = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 19:
            raise ValueError(f"field {name!r} must be a non-negative integer, got {value[:40]!r}")
        value = int(text)
    elif not isinstance(value, int):
        raise ValueError(f"field {name!r} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_INT64:
        raise ValueError(f"field {name!r} must be between 0 and 2**63-1, got {value}")
    return value


def _flag(value: Any, name: str) -> bool | None:
    """An optional boolean from JSON, Parquet or CSV text ("True"/"False"/"", any case)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in ("true", "false", ""):
            raise ValueError(f"field {name!r} must be true or false, got {value[:40]!r}")
        return None if not text else text == "true"
    return None if value is None else bool(value)


def _optional_finite(value: Any, name: str) -> float | None:
    """An optional number: absent, null or "" (CSV) is None."""
    return None if value is None or value == "" else _finite(value, name)


def _short_text(value: Any, name: str, limit: int = 253) -> str:
    """An optional name (a pod name is at most 253 characters); absent or null is ""."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"field {name!r} must be a string of at most {limit} characters")
    return value


def _finite(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"field {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"field {name!r} must be finite, got {value!r}")
    return number


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(FrameRecord))


def _detections_json(detections: tuple[Detection, ...]) -> str:
    """The detections column of both file formats: a compact JSON list."""
    if not detections:
        return "[]"
    return json.dumps([d.to_dict() for d in detections], separators=(",", ":"))


def _columns(records: Sequence[FrameRecord]) -> dict[str, list[Any]]:
    """A batch of records as one list per field (gathered in C), detections as JSON text."""
    columns = {name: list(map(attrgetter(name), records)) for name in FIELD_NAMES}
    columns["detections"] = [_detections_json(d) if d else "[]" for d in columns["detections"]]
    return columns


def float_texts(values: Sequence[float | None]) -> Any:
    """`repr()` of each float as an Arrow string array (None stays null), computed in C.

    repr's shortest round-trip digits cost a few hundred ns per value in Python; Arrow's cast
    to text finds the same digits in C, and writes them the same way wherever repr uses fixed
    notation (1e-4 <= |x| < 1e16) except that an integral value lacks repr's ".0", which is
    added. Elsewhere (exponents, nan, inf) repr itself is used, so every text is repr's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numbers = pa.array(values, type=pa.float64())
    texts = pc.cast(numbers, pa.string())
    magnitude = pc.abs(numbers)
    no_exponent = pc.invert(pc.match_substring(texts, "e"))
    fraction = pc.match_substring(texts, ".")
    fixed = pc.and_(pc.and_(no_exponent, pc.less(magnitude, 1e16)),
                    pc.or_(pc.greater_equal(magnitude, 1e-4), pc.equal(magnitude, 0.0)))
    integral = pc.and_(fixed, pc.invert(fraction))
    texts = pc.if_else(integral, pc.binary_join_element_wise(texts, ".0", ""), texts)
    redo = pc.invert(pc.fill_null(fixed, True))
    if not pc.any(redo).as_py():
        return texts
    redone = [repr(values[index]) for index in pc.indices_nonzero(redo).to_pylist()]
    return pc.replace_with_mask(texts, redo, pa.array(redone, type=pa.string()))


def csv_rows(rows: Iterable[Sequence[Any]]) -> bytes:
    """Rows as Python's csv module writes them (minimal quoting, CRLF line ends), in UTF-8."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return text.getvalue().encode("utf-8")


def _csv_batch(columns: dict[str, list[Any]], schema: Any) -> bytes:
    """A batch of columns as CSV: the very bytes of csv_rows(zip(*columns.values())).

    Each value is first made the text the csv module would write (floats by float_texts,
    booleans as True/False), then Arrow's CSV writer joins them in C. It refuses a value that
    would need quotes (a comma, a quote or a line break: rare in records); such a batch goes
    through the csv module itself."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    texts = {}
    for name, values in columns.items():
        kind = schema.field(name).type
        if kind == pa.float64():
            texts[name] = float_texts(values)
        elif kind == pa.bool_():   # str(True) is "True"; Arrow would write "true"
            texts[name] = pc.if_else(pa.array(values, type=kind), "True", "False")
        else:
            texts[name] = pa.array(values, type=kind)
    sink = pa.BufferOutputStream()
    options = pa_csv.WriteOptions(include_header=False, eol="\r\n", quoting_style="none")
    try:
        pa_csv.write_csv(pa.table(texts), sink, options)
    except pa.ArrowInvalid:   # a value needs quoting
        return csv_rows(zip(*columns.values()))
    return sink.getvalue().to_pybytes()


class RecordWriter:
    """Writes FrameRecords to `.csv` or `.parquet` (chosen by suffix) in batches of
    `batch_size`, without holding them all.

    Writing a record only keeps it; a batch becomes one column per field (gathered in C, no
    per-record dict), written as one Parquet row group or as CSV rows formatted in C
    (_csv_batch), with the same bytes as the csv module writes."""

    def __init__(self, path: str | Path, batch_size: int = 4096) -> None:
        self.path = Path(path)
        self.format = _format_of(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._batch: list[FrameRecord] = []
        self._batch_size = batch_size
        self._parquet: Any = None
        self._file: Any = None
        if self.format == "csv":
            self._file = self.path.open("wb")
            self._file.write(csv_rows([FIELD_NAMES]))

    def write(self, record: FrameRecord) -> None:
        self.count += 1
        self._batch.append(record)
        if len(self._batch) >= self._batch_size:
            self._flush()

    def write_all(self, records: Iterable[FrameRecord]) -> None:
        for record in records:
            self.write(record)

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _arrow_schema()
        columns = _columns(self._batch)
        self._batch = []
        if self._file is not None:
            self._file.write(_csv_batch(columns, schema))
            return
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, schema)
        arrays = [pa.array(columns[column.name], type=column.type) for column in schema]
        self._parquet.write_table(pa.Table.from_arrays(arrays, schema=schema))

    def close(self) -> None:
        if self.format == "csv":
            if self._file is not None and not self._file.closed:
                if self._batch:
                    self._flush()
                self._file.close()
            return
        if self._batch or self._parquet is None:
            self._flush()
        self._parquet.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_records(path: str | Path) -> Iterator[FrameRecord]:
    """Yield the records of a file written by RecordWriter (CSV or Parquet)."""
    path = Path(path)
    if _format_of(path) == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                yield FrameRecord.from_dict(row)
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            yield FrameRecord.from_dict(row)


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"unsupported record file {path.name!r}: use a .csv or .parquet suffix")


def _arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("camera", pa.string()), ("frame_id", pa.int64()), ("captured_at", pa.float64()),
        ("site", pa.string()), ("status", pa.string()), ("reason", pa.string()),
        ("policy", pa.string()), ("model", pa.string()), ("detections", pa.string()),
        ("bytes_sent", pa.int64()), ("t_queue_ms", pa.float64()), ("t_network_ms", pa.float64()),
        ("t_inference_ms", pa.float64()), ("t_total_ms", pa.float64()), ("deadline_met", pa.bool_()),
        ("replica", pa.string()), ("escalated", pa.bool_()), ("edge_score", pa.float64()),
        ("edge_detections", pa.int64()), ("t_edge_ms", pa.float64()),
    ])


__all__ = ["Detection", "FrameRecord", "RecordWriter", "read_records", "FIELD_NAMES"]
