"""The unit folders as the local testbed reads them: one source of truth for both deployments.

`edgeoffload up` runs every unit with the settings its Kubernetes ConfigMap ships, drains a
replica for as long as its Deployment's preStop hook waits, and scales with the HPAs of
autoscale.yml, all read from the very files `kubectl apply -f` uses, so the local testbed and
the cluster cannot drift apart. The folders sit beside the package in a source checkout (the
documented install: `make`, i.e. `pip install -e .`); EDGEOFFLOAD_UNITS_DIR names another copy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from edgeoffload.hpa import parse_quantity

UNITS_DIR_ENV = "EDGEOFFLOAD_UNITS_DIR"
FOLDERS = {"edge-inference": "EdgeInferenceUnit", "cloud-inference": "CloudInferenceUnit",
           "preprocessor": "EdgePreprocessorUnit", "webserver": "EdgeWebServerUnit"}


class UnitFolderError(RuntimeError):
    """The unit folders are missing or do not hold what the testbed needs."""


@dataclass(frozen=True, slots=True)
class UnitSettings:
    """What the local testbed takes from one Deployment and its ConfigMap."""

    env: dict[str, str]          # the ConfigMap's data (WORKERS, THREADS, INFER_* / PRE_* / WEB_*)
    pre_stop_s: float            # the preStop sleep: how long a leaving replica keeps serving
    cpu_request: float           # cores requested: the base of the HPA's CPU utilisation
    memory_limit: float = 0.0    # bytes the container may use (0: no limit): what memory tests hold it to


def units_root() -> Path:
    """The folder holding EdgeInferenceUnit/ etc. and autoscale.yml."""
    root = Path(os.environ.get(UNITS_DIR_ENV) or Path(__file__).resolve().parent.parent)
    if not (root / FOLDERS["edge-inference"]).is_dir():
        raise UnitFolderError(f"unit folders not found under {root} (the local testbed reads the units' manifests; "
                              f"run from a source checkout or set {UNITS_DIR_ENV})")
    return root


def autoscale_file() -> Path:
    return units_root() / "autoscale.yml"


def unit_settings(deployment: str) -> UnitSettings:
    """The settings of Deployment `deployment` (edge-inference, cloud-inference, preprocessor, webserver)."""
    folder = units_root() / FOLDERS[deployment]
    documents = [doc for path in sorted(folder.glob("*.yml")) for doc in _documents(path)]
    config_maps = {doc["metadata"]["name"]: doc for doc in documents if doc.get("kind") == "ConfigMap"}
    deployments = [doc for doc in documents if doc.get("kind") == "Deployment" and doc["metadata"]["name"] == deployment]
    if deployment not in config_maps or len(deployments) != 1:
        raise UnitFolderError(f"{folder}: expected ConfigMap and Deployment named {deployment!r}")
    container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    return UnitSettings(env={str(k): str(v) for k, v in (config_maps[deployment].get("data") or {}).items()},
                        pre_stop_s=_pre_stop_s(container), cpu_request=_cpu_request(container),
                        memory_limit=parse_quantity(((container.get("resources") or {}).get("limits") or {})
                                                    .get("memory", "0")))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(doc, dict)]


def _pre_stop_s(container: Mapping[str, Any]) -> float:
    command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    return float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0.0


def _cpu_request(container: Mapping[str, Any]) -> float:
    return parse_quantity(((container.get("resources") or {}).get("requests") or {}).get("cpu", "1"))


__all__ = ["UnitSettings", "UnitFolderError", "units_root", "autoscale_file", "unit_settings", "FOLDERS"]
