"""Sweep specs: scenario files x parameter overrides x policy specs x seeds, as YAML.

    name: policy_comparison              # optional (default: the file's name)
    scenarios: [../scenarios/policy-base.yaml, ...]   # relative to the spec's folder
    policies: [edge-only, min-latency, "queue-threshold:2", my_policy.py:decide]
    seeds: [11]
    overrides:                           # optional: dotted scenario keys -> lists of values
      edge.workers: [1, 2, 4]            #   list items by index (cameras.0.fps) or all (cameras.*.fps)
    grids:                               # optional: several grids, each taking the keys above as defaults
      - name: policies
      - {name: "deadline:s", overrides: {cameras.*.deadline_ms: [null]}, policies: ["deadline:0.1"]}
    report:                              # optional
      compare: policies                  # the grid drawn as per-policy bars (default: the first)
      references: [min-latency]          # fixed policies marked on the Pareto plots

Each combination is a `Cell`: one simulation, keyed by a hash of everything that decides
its result (the parsed scenario with its overrides and seed, so the content of every file
the scenario references; the policy spec and the text of a policy file; the package
version). Errors name the field, as scenario errors do.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

from edgeoffload.policy import BUILTINS, is_policy_file, load_policy
from edgeoffload.sim.distributions import ScenarioError
from edgeoffload.sim.scenario import Scenario, _Fields, parse_scenario, read_yaml

GRID_KEYS = ("scenarios", "overrides", "policies", "seeds")
ALL_ITEMS = "*"


class SpecError(ScenarioError):
    """A sweep spec is invalid; the message starts with the field path."""


@lru_cache(maxsize=1)
def package_version() -> str:
    """The installed edgeoffload version: part of every cell's key (results of another
    version are not reused) and checked against the workers of a cluster."""
    return metadata.version("edgeoffload")


@dataclass(frozen=True, slots=True)
class PolicySource:
    """A policy file's text, shipped with the cell so that cluster workers need no copy of it."""

    filename: str
    text: str
    attr: str


@dataclass(frozen=True, slots=True)
class Cell:
    """One simulation of a sweep."""

    key: str
    scenario_file: str                            # as written in the spec
    overrides: tuple[tuple[str, Any], ...]        # (dotted key, value), in spec order
    policy: str                                   # as written in the spec
    seed: int
    scenario: Scenario                            # parsed, overrides applied, seed set
    policy_source: PolicySource | None = None     # for `file.py:attr` policies

    def inputs(self) -> dict[str, Any]:
        """The cell's inputs as JSON-ready values (what its stored result names)."""
        return {"scenario_file": self.scenario_file, "scenario": self.scenario.name,
                "overrides": dict(self.overrides), "policy": self.policy, "seed": self.seed}

    @property
    def expected_frames(self) -> float:
        """A cost estimate (frames to simulate), to start the longest cells first."""
        frames = 0.0
        for group in self.scenario.cameras:
            if group.trace:
                frames += len(group.trace)
            else:
                stop = self.scenario.duration_s if group.stop_s is None else min(group.stop_s, self.scenario.duration_s)
                frames += group.count * group.fps * max(0.0, stop - group.start_s)
        return frames


@dataclass(frozen=True, slots=True)
class Grid:
    name: str
    scenarios: tuple[str, ...]
    overrides: tuple[tuple[str, tuple[Any, ...]], ...]
    policies: tuple[str, ...]
    seeds: tuple[int, ...]
    where: str = ""                 # its place in the spec ("grids[2]"; "" for a spec without grids)

    def field(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name


@dataclass(frozen=True, slots=True)
class SweepSpec:
    name: str
    path: Path
    grids: tuple[Grid, ...]
    compare: str
    references: tuple[str, ...]

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent

    @property
    def override_keys(self) -> tuple[str, ...]:
        """Every overridden key of every grid, in order of appearance (the table's columns)."""
        return tuple(dict.fromkeys(key for grid in self.grids for key, _ in grid.overrides))


# ------------------------------------------------------------------ reading and validation
def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    with _as_spec_error():
        return _parse_spec(read_yaml(path, "sweep spec"), path)


def parse_spec(raw: Any, path: Path) -> SweepSpec:
    """A SweepSpec from the parsed YAML of the spec file at `path` (files are relative to it)."""
    with _as_spec_error():
        return _parse_spec(raw, path)


@contextmanager
def _as_spec_error(where: str | None = None) -> Iterator[None]:
    """ScenarioErrors of the helpers shared with scenario files, as SpecErrors (at `where`)."""
    try:
        yield
    except SpecError:
        raise
    except ScenarioError as exc:
        message = str(exc).removeprefix(f"{exc.path}: ") if exc.path else str(exc)
        raise SpecError(exc.path if where is None else where, message) from None


def _parse_spec(raw: Any, path: Path) -> SweepSpec:
    if not isinstance(raw, Mapping):
        raise SpecError("", f"{path.name} must be a mapping (name, scenarios, policies, seeds, overrides, grids, report)")
    top = _Fields(raw, "", {"name", "grids", "report", *GRID_KEYS})
    base_dir = path.resolve().parent
    defaults = {key: raw[key] for key in GRID_KEYS if key in raw}
    grids_raw = raw.get("grids")
    if grids_raw is None:
        grids = (_grid(top.text("name", path.stem), defaults, "", base_dir),)
    elif not isinstance(grids_raw, list) or not grids_raw:
        raise SpecError("grids", "must be a non-empty list of grids")
    else:
        grids = tuple(_grid_entry(entry, f"grids[{i}]", defaults, base_dir) for i, entry in enumerate(grids_raw))
    names = [grid.name for grid in grids]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise SpecError(f"grids[{index}].name", f"{name!r} is used twice")
    report = _Fields(raw.get("report") or {}, "report", {"compare", "references"})
    compare = report.text("compare", names[0])
    if compare not in names:
        raise SpecError("report.compare", f"must name a grid ({', '.join(names)}), got {compare!r}")
    compared = next(grid for grid in grids if grid.name == compare)
    references = _strings(raw.get("report") or {}, "references", "report", required=False)
    for index, policy in enumerate(references):
        if policy not in compared.policies:
            raise SpecError(f"report.references[{index}]", f"{policy!r} is not a policy of grid {compare!r}")
    return SweepSpec(name=top.text("name", path.stem), path=path, grids=grids, compare=compare,
                     references=references)


def _grid_entry(raw: Any, where: str, defaults: Mapping[str, Any], base_dir: Path) -> Grid:
    fields = _Fields(raw, where, {"name", *GRID_KEYS})
    name = fields.text("name", "")
    if not name:
        raise SpecError(f"{where}.name", "is required")
    return _grid(name, {**defaults, **{k: raw[k] for k in GRID_KEYS if k in raw}}, where, base_dir)


def _grid(name: str, raw: Mapping[str, Any], where: str, base_dir: Path) -> Grid:
    prefix = f"{where}." if where else ""
    scenarios = _strings(raw, "scenarios", where)
    for index, file in enumerate(scenarios):
        if not (base_dir / file).is_file():
            raise SpecError(f"{prefix}scenarios[{index}]", f"no such scenario file {file!r} (relative to the spec)")
    policies = _strings(raw, "policies", where)
    for index, policy in enumerate(policies):
        try:
            load_policy(resolved_policy(policy, base_dir))
        except Exception as exc:  # noqa: BLE001 - a policy file may raise anything when it is loaded
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise SpecError(f"{prefix}policies[{index}]", " ".join(message.split())) from None
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise SpecError(f"{prefix}seeds", "is required: a non-empty list of integer seeds (here or at the top level)")
    for index, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError(f"{prefix}seeds[{index}]", f"must be an integer >= 0, got {seed!r}")
        if seed in seeds[:index]:
            raise SpecError(f"{prefix}seeds[{index}]", f"{seed} is listed twice")
    return Grid(name=name, scenarios=scenarios, overrides=_overrides(raw.get("overrides"), f"{prefix}overrides"),
                policies=policies, seeds=tuple(seeds), where=where)


def _strings(raw: Mapping[str, Any], key: str, where: str, required: bool = True) -> tuple[str, ...]:
    field = f"{where}.{key}" if where else key
    values = raw.get(key)
    if values is None and not required:
        return ()
    if not isinstance(values, list) or not values:
        raise SpecError(field, "is required: a non-empty list" + (" (here or at the top level)" if where else ""))
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise SpecError(f"{field}[{index}]", f"must be a non-empty string, got {value!r}")
        if value in values[:index]:
            raise SpecError(f"{field}[{index}]", f"{value!r} is listed twice")
    return tuple(values)


def _overrides(raw: Any, where: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SpecError(where, "must be a mapping of dotted scenario keys to lists of values")
    overrides = []
    for key, values in raw.items():
        if not isinstance(key, str) or not all(part.strip() for part in key.split(".")):
            raise SpecError(f"{where}.{key}", "must be a dotted scenario key such as edge.workers or cameras.0.fps")
        if key == "seed":
            raise SpecError(f"{where}.{key}", "a cell's seed comes from `seeds`, not from an override")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}.{key}", "must be a non-empty list of values (a list-valued setting "
                                              "goes inside the list: [[edge, cloud]])")
        overrides.append((key, tuple(values)))
    return tuple(overrides)


def _policy_file(spec: str, base_dir: Path) -> tuple[Path, str] | None:
    """(file, attr) of a `file.py:attr` spec, the file relative to the sweep spec; else None."""
    target, _, attr = spec.rpartition(":")
    if spec.partition(":")[0] in BUILTINS or not target or not is_policy_file(target):
        return None
    return (base_dir / target).resolve(), attr


def resolved_policy(spec: str, base_dir: Path) -> str:
    """The spec as load_policy takes it: a policy file's path made absolute, other specs unchanged."""
    file = _policy_file(spec, base_dir)
    return spec if file is None else f"{file[0]}:{file[1]}"


def policy_source(spec: str, base_dir: Path) -> PolicySource | None:
    file = _policy_file(spec, base_dir)
    return None if file is None else PolicySource(file[0].name, file[0].read_text(encoding="utf-8"), file[1])


# ------------------------------------------------------------------ overrides
def apply_override(raw: Any, key: str, value: Any) -> Any:
    """A copy of the scenario mapping `raw` with the dotted `key` set to `value`. A segment
    indexes a list (`cameras.0`) or names all its items (`cameras.*`); missing mappings on
    the way are created (`observer.ewma_alpha` in a scenario without `observer`)."""
    raw = copy.deepcopy(raw)
    parts = key.split(".")
    nodes = [raw]
    for depth, part in enumerate(parts):
        parent, last = ".".join(parts[:depth]) or "the scenario", depth == len(parts) - 1
        children = []
        for node in nodes:
            if isinstance(node, list):
                indexes = _indexes(node, part, parent)
                if last:
                    for index in indexes:
                        node[index] = copy.deepcopy(value)
                children += [node[index] for index in indexes]
            elif isinstance(node, dict):
                if last:
                    node[part] = copy.deepcopy(value)
                elif node.get(part) is None:
                    node[part] = {}
                children.append(node[part])
            else:
                raise ValueError(f"{parent} is {node!r}, which has no key {part!r}")
        nodes = children
    return raw


def _indexes(items: list[Any], part: str, where: str) -> list[int]:
    if part == ALL_ITEMS:
        return list(range(len(items)))
    if not part.isdigit() or int(part) >= len(items):
        raise ValueError(f"{where} is a list of {len(items)} item(s): index it with 0 to {len(items) - 1} "
                         f"or {ALL_ITEMS}, not {part!r}")
    return [int(part)]


# ------------------------------------------------------------------ cells
def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def scenario_digest(scenario: Scenario) -> str:
    """A hash of everything the simulator reads from a parsed scenario but its seed: the
    content of its traces, profiles and manifests included."""
    return _digest(dataclasses.asdict(scenario.with_seed(0)))


def cell_key(scenario_digest: str, overrides: tuple[tuple[str, Any], ...], policy: str,
             source: PolicySource | None, seed: int) -> str:
    """A hash (128 bits, hex) of the cell's inputs: what decides its result, and nothing else."""
    return _digest({"edgeoffload": package_version(), "scenario": scenario_digest,
                    "overrides": [list(item) for item in overrides], "policy": policy, "seed": seed,
                    "policy_file": None if source is None else _digest(source.text)})[:32]


def expand(spec: SweepSpec) -> list[tuple[str, Cell]]:
    """(grid name, cell) for every combination, in spec order: grid, scenario, overrides,
    policy, seed. Cells with the same inputs in two grids are the same cell (same key)."""
    base = spec.base_dir
    raws: dict[str, Any] = {}
    variants: dict[str, tuple[Scenario, str]] = {}    # (file, overrides) -> parsed scenario and its digest
    names: dict[str, str] = {}
    sources = {policy: policy_source(policy, base) for grid in spec.grids for policy in grid.policies}
    cells: list[tuple[str, Cell]] = []
    for grid in spec.grids:
        for file_index, file in enumerate(grid.scenarios):
            where = grid.field(f"scenarios[{file_index}]")
            if file not in raws:
                with _as_spec_error(where):
                    raws[file] = read_yaml(base / file, "scenario")
            keys = [key for key, _ in grid.overrides]
            for values in itertools.product(*(values for _, values in grid.overrides)):
                assignment = tuple(zip(keys, values))
                variant = json.dumps([file, assignment])
                if variant not in variants:
                    scenario = _scenario(raws[file], assignment, base / file, where)
                    variants[variant] = scenario, scenario_digest(scenario)
                scenario, digest = variants[variant]
                if names.setdefault(scenario.name, file) != file:
                    raise SpecError(where,
                                    f"{file} and {names[scenario.name]} are both named {scenario.name!r}: "
                                    "give each scenario its own name")
                for policy in grid.policies:
                    for seed in grid.seeds:
                        key = cell_key(digest, assignment, policy, sources[policy], seed)
                        cells.append((grid.name, Cell(key, file, assignment, policy, seed, scenario.with_seed(seed),
                                                      sources[policy])))
    return cells


def _scenario(raw: Any, assignment: tuple[tuple[str, Any], ...], file: Path, where: str) -> Scenario:
    described = ", ".join(f"{key}={json.dumps(value)}" for key, value in assignment)
    try:
        for key, value in assignment:
            raw = apply_override(raw, key, value)
        return parse_scenario(raw, file.resolve().parent)
    except (ScenarioError, ValueError) as exc:
        with_overrides = f" with {described}" if described else ""
        raise SpecError(where, f"{file.name}{with_overrides}: {exc}") from None


__all__ = ["Cell", "Grid", "PolicySource", "SpecError", "SweepSpec", "apply_override", "cell_key", "expand",
           "load_spec", "package_version", "parse_spec", "policy_source", "resolved_policy", "scenario_digest"]
