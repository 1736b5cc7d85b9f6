"""Experiment result folders as web pages: summary tables and plots, read-only and path-safe.

An experiment writes one folder under the results directory holding `summary.json`, CSV
tables and PNG plots (possibly in sub-folders). This module turns such a folder into
plain data (tables of strings, plot paths) for a template, and resolves file requests so
that no request can leave the folder: every path segment must be a plain name, only a
few file types are served, and the resolved path (symlinks followed) must stay inside.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgeoffload.sweep import CELLS_FOLDER

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SERVED_TYPES: dict[str, str] = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
    ".csv": "text/csv", ".json": "application/json",
}
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_TABLE_ROWS = 500
MAX_TABLE_BYTES = 5 * 1024 * 1024
MAX_FILES = 200
MAX_DEPTH = 2   # the folder itself and one level of sub-folders (e.g. plots/)
MAX_CELL_CHARS = 200
EPOCH_RANGE = (1e9, 1e10)   # seconds since 1970: September 2001 to 2286


class NotFound(LookupError):
    """No such experiment or file (or a name that could never be one)."""


_NUMBER_TEXT = re.compile(r"^-?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?(e[-+]?\d+)?$|^-?\.\d+$")


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    truncated: bool = False

    @property
    def numeric_columns(self) -> list[bool]:
        """Columns whose every non-empty cell is a number (right-aligned on the page)."""
        def numeric(index: int) -> bool:
            cells = [row[index] for row in self.rows if index < len(row) and row[index] != ""]
            return bool(cells) and all(_NUMBER_TEXT.match(cell) for cell in cells)
        return [numeric(i) for i in range(len(self.columns))]


@dataclass(frozen=True, slots=True)
class ExperimentEntry:
    name: str
    modified: float
    files: int
    has_summary: bool


@dataclass(frozen=True, slots=True)
class ExperimentPage:
    name: str
    tables: list[Table]
    plots: list[str]        # paths relative to the experiment folder
    downloads: list[str]
    notes: list[str]        # files that could not be shown, and why


def is_plain_name(segment: str) -> bool:
    """A folder or file name with no separators, no leading dot, no traversal."""
    return bool(NAME_PATTERN.fullmatch(segment)) and segment not in (".", "..")


class ExperimentResults:
    """Read-only view of one or more results folders (`roots`), one sub-folder per experiment.

    Several roots let the local testbed show its own runs beside the committed experiments;
    a name found in two roots is the first root's."""

    def __init__(self, roots: str | Path | Sequence[str | Path]) -> None:
        self.roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]

    def entries(self) -> list[ExperimentEntry]:
        """Experiments, newest first."""
        entries: dict[str, ExperimentEntry] = {}
        for root in self.roots:
            for folder in (root.iterdir() if root.is_dir() else ()):
                if folder.name in entries or not (folder.is_dir() and is_plain_name(folder.name)
                                                  and self._inside(folder, root)):
                    continue
                files = list(self._files(folder))
                modified = max((f.stat().st_mtime for f in files), default=folder.stat().st_mtime)
                entries[folder.name] = ExperimentEntry(folder.name, modified, len(files),
                                                       (folder / "summary.json").is_file())
        return sorted(entries.values(), key=lambda e: (-e.modified, e.name))

    def page(self, name: str) -> ExperimentPage:
        folder = self._folder(name)
        tables: list[Table] = []
        plots: list[str] = []
        downloads: list[str] = []
        notes: list[str] = []
        for path in self._files(folder):
            relative = path.relative_to(folder).as_posix()
            suffix = path.suffix.lower()
            if suffix in PLOT_SUFFIXES:
                plots.append(relative)
            if suffix in (".csv", ".json"):
                downloads.append(relative)
                try:
                    tables.extend(self._tables(path, relative))
                except (ValueError, OSError, csv.Error) as exc:
                    notes.append(f"{relative}: {exc}")
        summary_first = sorted(tables, key=lambda t: (not t.title.startswith("summary.json"), t.title))
        return ExperimentPage(name, summary_first, plots, downloads, notes)

    def resolve_file(self, name: str, relative: str) -> tuple[Path, str]:
        """The file to serve and its media type; NotFound for anything outside the folder."""
        folder = self._folder(name)
        segments = relative.split("/")
        if len(segments) > MAX_DEPTH or not all(is_plain_name(s) for s in segments):
            raise NotFound(relative)
        media_type = SERVED_TYPES.get(Path(segments[-1]).suffix.lower())
        path = folder.joinpath(*segments)
        if media_type is None or not path.is_file() or not self._inside(path, folder):
            raise NotFound(relative)
        return path.resolve(), media_type

    # -- helpers -------------------------------------------------------------------------------
    def _folder(self, name: str) -> Path:
        if is_plain_name(name):
            for root in self.roots:
                folder = root / name
                if folder.is_dir() and self._inside(folder, root):
                    return folder
        raise NotFound(name)

    @staticmethod
    def _inside(path: Path, parent: Path) -> bool:
        """After following symlinks, `path` is still below `parent`."""
        return path.resolve().is_relative_to(parent.resolve())

    def _files(self, folder: Path) -> Iterator[Path]:
        count = 0
        for path in _walk(folder, MAX_DEPTH):
            if path.suffix.lower() in SERVED_TYPES and self._inside(path, folder):
                yield path
                count += 1
                if count >= MAX_FILES:
                    return

    @staticmethod
    def _tables(path: Path, relative: str) -> list[Table]:
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise ValueError(f"larger than {MAX_TABLE_BYTES // (1024 * 1024)} MiB, not rendered")
        if path.suffix.lower() == ".csv":
            return [csv_table(path, relative)]
        return json_tables(json.loads(path.read_text(encoding="utf-8")), relative)


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    """Plain-named files, sorted, down to `depth` levels (hidden and odd names skipped, and a
    sweep's per-cell store: hundreds of small JSON files that the sweep's table already holds)."""
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not is_plain_name(path.name):
            continue
        if path.is_file():
            yield path
        elif path.is_dir() and not path.is_symlink() and depth > 1 and path.name != CELLS_FOLDER:
            yield from _walk(path, depth - 1)


def csv_table(path: Path, title: str) -> Table:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows: list[list[str]] = []
        truncated = False
        for row in reader:
            if len(rows) >= MAX_TABLE_ROWS:
                truncated = True
                break
            rows.append([format_cell(_number_or_text(cell), column) for cell, column in zip(row, _padded(header, row))])
    return Table(title, [format_cell(c) for c in header], rows, truncated)


def _padded(header: list[str], row: list[str]) -> list[str]:
    """A column name per cell (a row longer than its header has unnamed cells)."""
    return header + [""] * (len(row) - len(header))


def json_tables(data: Any, title: str) -> list[Table]:
    """Tables for the common shapes of a summary: scalars, records, and named records.

    - object of scalars            -> one key/value table
    - list of objects              -> one table, a column per key
    - object of objects            -> one table, a row per key (e.g. one per policy)
    - object mixing these          -> a key/value table of its scalars plus one table per nested value
    """
    if isinstance(data, list):
        return [_records_table(title, [("", row) for row in data])]
    if not isinstance(data, dict):
        return [Table(title, ["value"], [[format_cell(data)]])]
    if data and all(isinstance(v, dict) for v in data.values()) and all(
            all(_is_scalar(x) for x in v.values()) for v in data.values()):
        return [_records_table(title, list(data.items()), key_column="name")]
    tables: list[Table] = []
    scalars = [(k, v) for k, v in data.items() if _is_scalar(v)]
    if scalars:
        tables.append(Table(title, ["key", "value"], [[format_cell(k), format_cell(v, k)] for k, v in scalars]))
    for key, value in data.items():
        if not _is_scalar(value):
            tables.extend(json_tables(value, f"{title} › {key}"))
    return tables


def _records_table(title: str, rows: list[tuple[str, Any]], key_column: str = "") -> Table:
    columns: list[str] = [key_column] if key_column else []
    for _, row in rows:
        for key in (row if isinstance(row, dict) else {"value": row}):
            if key not in columns:
                columns.append(key)
    body = []
    for name, row in rows[:MAX_TABLE_ROWS]:
        values = row if isinstance(row, dict) else {"value": row}
        body.append([format_cell(name) if key_column and c == key_column else format_cell(values.get(c, ""), c)
                     for c in columns])
    return Table(title, [format_cell(c) for c in columns], body, len(rows) > MAX_TABLE_ROWS)


def _number_or_text(cell: str) -> Any:
    """CSV numbers come back as text; parse them so long floats are shown rounded."""
    if "_" in cell:  # int() and float() accept digit separators; a CSV cell "1_0" is text
        return cell
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        return cell


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def is_timestamp(column: str, value: Any) -> bool:
    """A wall-clock instant: a `*_at` column (captured_at, received_at...) holding seconds
    since the epoch between 2001 and 2286, which people read as a time, not as 1.8 billion."""
    return (column.endswith("_at") and isinstance(value, (int, float)) and not isinstance(value, bool)
            and EPOCH_RANGE[0] <= value < EPOCH_RANGE[1])


def format_cell(value: Any, column: str = "") -> str:
    """Readable text for a table cell (escaping is the template's job); `column` names it."""
    if is_timestamp(column, value):
        instant = datetime.fromtimestamp(value, tz=timezone.utc)
        return instant.strftime("%Y-%m-%d %H:%M:%S.") + f"{instant.microsecond // 1000:03d} UTC"
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{round(value, 3):,}"
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS - 1] + "…"


__all__ = ["ExperimentResults", "ExperimentEntry", "ExperimentPage", "Table", "NotFound",
           "json_tables", "csv_table", "format_cell", "is_plain_name", "SERVED_TYPES"]
