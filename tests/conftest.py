"""Shared fixtures: a real Mosquitto configured exactly like EdgeBrokerProvider."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeoffload.broker import BrokerProcess, find_mosquitto, start_broker

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `make system-deps` (apt-get install mosquitto)")


@pytest.fixture(scope="module")
def broker() -> BrokerProcess:
    """One broker per test module (random passwords per role in broker.users)."""
    _require_mosquitto()
    with start_broker() as running:
        yield running


@pytest.fixture
def fresh_broker() -> BrokerProcess:
    """A broker of the test's own, for tests that stop or restart it."""
    _require_mosquitto()
    with start_broker() as running:
        yield running


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at (screenshots, logs)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
